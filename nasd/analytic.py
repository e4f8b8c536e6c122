"""The analytic model of speculative decoding, local and split across a network.

This module owns the closed forms every other part compares against or plans
with: tokens per cycle E[tau] under i.i.d. per-token acceptance, the acceptance
estimate from verified cycles, cycle times on one node and across a link,
throughput, the crossover RTT past which cloud-edge speculation loses to plain
cloud decoding, and the throughput-optimal speculation depth K (the objective a
K controller maximises, ``distributed_throughputs``, and its argmax, ``optimal_k``);
and the stretches a controller serves without speculating once it stops paying:
handed to the cloud to decode (one round trip, then streamed tokens,
``stretch_throughput``), or, with the edge-only cutoff, decoded by the draft
alone; ``stretch_tokens`` sizes a stretch so its one round trip stays a small
share of it.

Model: each drafted token is accepted independently with probability ``a``;
a cycle stops at the first rejection, so the number accepted is a geometric
count truncated at K, and the cycle commits that many plus one target token.

Pure: no I/O, no clocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


def expected_tokens_per_cycle(acceptance: float, k: int) -> float:
    """E[tau] = (1 - a^(k+1)) / (1 - a): expected tokens committed per cycle.

    Computed as the equal finite sum 1 + a + ... + a^k, which needs no special
    case at a == 1 (giving k + 1) and stays accurate as a approaches 1.
    """
    _check_acceptance(acceptance)
    _check_depth(k)
    return float(np.sum(acceptance ** np.arange(k + 1)))


def acceptance_from_counts(accepted: int, rejections: int) -> float:
    """Maximum-likelihood per-token acceptance from verified cycles.

    ``accepted`` is the total number of drafted tokens accepted over all
    cycles; ``rejections`` the number of cycles that ended on a rejected draft
    (cycles that kept all their drafts, or stopped at an accepted EOS, count
    no rejection).  A cycle with j acceptances then a rejection has likelihood
    a^j (1 - a); one that kept all its j drafts has likelihood a^j (censored).
    The total log-likelihood is therefore accepted*log(a) + rejections*log(1 - a),
    maximised at a = accepted / (accepted + rejections).  Note that the plain
    ratio accepted / drafted is not this estimate and is biased low, because
    drafts after a rejection are never tested.

    Returns NaN when there is no evidence (no acceptances and no rejections).
    """
    if accepted < 0 or rejections < 0:
        raise ValueError(
            f"counts must be non-negative, got accepted={accepted}, rejections={rejections}"
        )
    tested = accepted + rejections
    if tested == 0:
        return float("nan")
    return accepted / tested


@dataclass(frozen=True)
class ComputeTimes:
    """Per-stage compute times in seconds.

    ``draft_token_s`` is one draft forward on the host that drafts.  Verifying
    k drafts is one target forward over k + 1 positions:
    t_verify(k) = verify_base_s + verify_per_token_s * (k + 1).  One plain
    decoding step is ``decode_s`` where it was measured as a stage of its own
    (a real model's streaming step skips the verifier's work), else t_verify(0).
    """

    draft_token_s: float
    verify_base_s: float
    verify_per_token_s: float
    decode_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("draft_token_s", "verify_base_s", "verify_per_token_s", "decode_s"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite non-negative number, got {value}")
        if self.decode_time_s() <= 0:
            raise ValueError("the decode time (decode_s, or verify_base_s + "
                             "verify_per_token_s) must be positive")

    def verify_time_s(self, k: int) -> float:
        _check_depth(k)
        return self.verify_base_s + self.verify_per_token_s * (k + 1)

    def decode_time_s(self) -> float:
        """One plain target decoding step: a forward over one position."""
        return self.decode_s if self.decode_s is not None else self.verify_time_s(0)


def cycle_time_local_s(k: int, times: ComputeTimes) -> float:
    """T_local(k) = k * t_draft + t_verify(k): draft and target on one node."""
    return k * times.draft_token_s + times.verify_time_s(k)


def cycle_time_distributed_s(
    k: int,
    times: ComputeTimes,
    rtt_s: float,
    transmit_up_s: float = 0.0,
    transmit_down_s: float = 0.0,
) -> float:
    """T_dist(k) = T_local(k) + RTT + serialisation time of the drafts up and the verdict down."""
    _check_non_negative(rtt_s=rtt_s, transmit_up_s=transmit_up_s, transmit_down_s=transmit_down_s)
    return cycle_time_local_s(k, times) + rtt_s + transmit_up_s + transmit_down_s


def throughput_tokens_per_s(acceptance: float, k: int, cycle_time_s: float) -> float:
    """E[tau(k)] / T: committed tokens per second at steady state."""
    if not cycle_time_s > 0:
        raise ValueError(f"cycle_time_s must be positive, got {cycle_time_s}")
    return expected_tokens_per_cycle(acceptance, k) / cycle_time_s


def cloud_only_throughput(times: ComputeTimes) -> float:
    """1 / t_decode: the target decoding alone (streaming hides the RTT after the first token)."""
    return 1.0 / times.decode_time_s()


def stretch_throughput(step_s: float, tokens: int, rtt_s: float = 0.0) -> float:
    """tokens / (RTT + tokens * step): a stretch decoded one ``step_s`` a token after one
    round trip (a cloud hand-off: the request up, then streamed tokens; no RTT for a stretch
    the edge decodes itself)."""
    _check_non_negative(rtt_s=rtt_s)
    if tokens < 1 or not step_s > 0:
        raise ValueError(f"need tokens >= 1 and a positive step, got {tokens}, {step_s}")
    return tokens / (rtt_s + tokens * step_s)


def stretch_tokens(step_s: float, rtt_s: float, rtt_share: float = 0.1) -> int:
    """The fewest tokens a stretch of ``step_s`` per token needs for one round trip to be at
    most ``rtt_share`` of its time: ceil(RTT (1 - share) / (share * step)), at least 1."""
    if not 0 < rtt_share < 1:
        raise ValueError(f"rtt_share must be in (0, 1), got {rtt_share}")
    _check_non_negative(rtt_s=rtt_s)
    return max(1, math.ceil(rtt_s * (1.0 - rtt_share) / (rtt_share * step_s)))


def crossover_rtt_s(
    acceptance: float,
    k: int,
    times: ComputeTimes,
    transmit_up_s: float = 0.0,
    transmit_down_s: float = 0.0,
) -> float:
    """The RTT at which fixed-k cloud-edge speculation matches cloud-only throughput.

    Solving E[tau] / (T_local + RTT + transmit) = 1 / t_decode for RTT gives
    E[tau] * t_decode - k * t_draft - t_verify(k) - transmit.  Below it
    speculation is faster, above it slower.  A negative value means speculation
    with this k never pays, not even on a zero-latency link; it is returned as
    is so callers can tell by how much it misses.
    """
    _check_non_negative(transmit_up_s=transmit_up_s, transmit_down_s=transmit_down_s)
    return (
        expected_tokens_per_cycle(acceptance, k) * times.decode_time_s()
        - cycle_time_local_s(k, times)
        - transmit_up_s
        - transmit_down_s
    )


def distributed_throughputs(
    acceptance: float,
    times: ComputeTimes,
    rtt_s: float,
    depths: Sequence[int],
    transmit_s: Callable[[int], float] | None = None,
) -> np.ndarray:
    """E[tau(k)] / T_dist(k) for each k of ``depths``: what a K controller maximises.

    ``transmit_s(k)`` is the total serialisation time (up plus down) of a
    cycle with k drafts; omitted means zero.
    """
    return np.array([
        throughput_tokens_per_s(
            acceptance,
            k,
            cycle_time_distributed_s(k, times, rtt_s, transmit_s(k) if transmit_s else 0.0),
        )
        for k in depths
    ])


def optimal_k(
    acceptance: float,
    times: ComputeTimes,
    rtt_s: float,
    k_max: int = 32,
    transmit_s: Callable[[int], float] | None = None,
    k_min: int = 1,
) -> int:
    """argmax over k in k_min..k_max of E[tau(k)] / T_dist(k); ties go to the smaller k.

    ``transmit_s(k)`` is the total serialisation time (up plus down) of a
    cycle with k drafts; omitted means zero.  Whether speculating at all beats
    cloud-only decoding is a separate question (``crossover_rtt_s``).

    The argmax never decreases as ``rtt_s`` grows (a delay-monotone threshold):
    log E[tau(k)] - log(T_local(k) + transmit(k) + RTT) has increasing
    differences in (k, RTT) whenever the cycle's own time grows with k.
    """
    if k_min < 1:
        raise ValueError(f"k_min must be at least 1, got {k_min}")
    if k_max < k_min:
        raise ValueError(f"k_max must be at least k_min ({k_min}), got {k_max}")
    depths = range(k_min, k_max + 1)
    throughputs = distributed_throughputs(acceptance, times, rtt_s, depths, transmit_s)
    return depths[int(np.argmax(throughputs))]


def _check_acceptance(acceptance: float) -> None:
    if not 0.0 <= acceptance <= 1.0:
        raise ValueError(f"acceptance must be in [0, 1], got {acceptance}")


def _check_depth(k: int) -> None:
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")


def _check_non_negative(**values: float) -> None:
    for name, value in values.items():
        if not value >= 0:
            raise ValueError(f"{name} must be non-negative, got {value}")
