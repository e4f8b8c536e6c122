"""The analytic model of speculative decoding, local and split across a network.

This module owns the closed forms every other part compares against or plans
with: tokens per cycle E[tau] under per-position acceptance (i.i.d. as the
special case), the acceptance estimates from verified cycles (pooled and by
position), cycle times on one node and across a link, throughput, the
crossover RTT past which cloud-edge speculation loses to plain cloud
decoding, the throughput-optimal speculation depth K (the objective a K
controller maximises, ``distributed_throughputs``, and its argmax,
``optimal_k``), the tail objective a controller may minimise instead (a percentile
of the time to commit a query's tokens, ``decode_time_quantiles_s``), the expected
decode time of a whole query whose last cycles draft fewer tokens to fit its token
budget (``query_decode_time_s``);
and the stretches a controller serves without speculating once it stops
paying: handed to the cloud to decode (one round trip, then streamed tokens,
``stretch_throughput``), or, with the edge-only cutoff, decoded by the draft
alone; ``stretch_tokens`` sizes a stretch so its one round trip stays a small
share of it; and draft-ahead, blocks pipelined on the premise that the block
before each is kept whole (``pipelined_throughput``, below).

Model: draft i of a cycle (position i = 1..K in the block) is accepted with
probability a_i given that drafts 1..i-1 were (``Acceptance``: one rate for
every position is the i.i.d. process); a cycle stops at the first rejection,
so it accepts at least j drafts with probability S_j = a_1 a_2 ... a_j
(``acceptance_survival``, the one place the law is evaluated) and commits
the accepted drafts plus one target token.

Draft-ahead of depth D: the edge keeps up to D + 1 blocks of k drafts in
flight, each drafted on the premise that every block before it is kept whole;
a block kept whole commits no bonus (the next block's first draft takes its
place), so an epoch (from a corrected context to the next verdict that does
not keep its block whole) commits its blocks' drafts up to the first rejection
plus the correction: (E[tau(k)] - S_k) / (1 - S_k) tokens
(``pipelined_tokens_per_epoch``; 1 / (1 - a) for i.i.d. a, whatever k), and
lasts until the edge holds that verdict (``pipelined_notice_times``).

Pure: no I/O, no clocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np

Acceptance = Union[float, Sequence[float]]
"""Per-token acceptance: one rate a for every position (the i.i.d. process), or the
rates a_1, a_2, ... by position in the block, a_i being the probability that draft i
is accepted given that drafts 1..i-1 were; positions past the end of the sequence
take its last value."""


def position_rates(acceptance: Acceptance, k: int) -> np.ndarray:
    """a_1..a_k, shape (k,): ``acceptance`` spread over the k positions of a block."""
    _check_depth(k)
    rates = np.asarray(acceptance, dtype=np.float64).reshape(-1)
    if rates.size == 0:
        raise ValueError("acceptance by position needs at least one rate")
    if not ((rates >= 0.0) & (rates <= 1.0)).all():
        raise ValueError(f"acceptance rates must be in [0, 1], got {rates.tolist()}")
    if k <= rates.size:
        return rates[:k]
    return np.concatenate([rates, np.full(k - rates.size, rates[-1])])


def acceptance_survival(acceptance: Acceptance, k: int) -> np.ndarray:
    """S_0..S_k, shape (k+1,): S_j = a_1 ... a_j (S_0 = 1) is the probability that a cycle
    of k drafts accepts at least j of them; for i.i.d. acceptance, S_j = a^j."""
    return np.concatenate([[1.0], np.cumprod(position_rates(acceptance, k))])


def expected_tokens_per_cycle(acceptance: Acceptance, k: int) -> float:
    """E[tau] = S_0 + S_1 + ... + S_k = 1 + a_1 + a_1 a_2 + ... + a_1...a_k: expected tokens
    committed per cycle of k drafts (the accepted drafts, each counted by the probability
    of reaching it, plus the target's correction or bonus token).

    For i.i.d. acceptance a it is the finite sum 1 + a + ... + a^k = (1 - a^(k+1)) / (1 - a),
    which needs no special case at a == 1 (giving k + 1).
    """
    return float(acceptance_survival(acceptance, k).sum())


def accepted_distribution(acceptance: Acceptance, k: int) -> np.ndarray:
    """P(exactly j drafts accepted) for j = 0..k, shape (k+1,): S_j - S_(j+1) for j < k, S_k
    for j = k (all kept); the cycle then commits j + 1 tokens."""
    survival = acceptance_survival(acceptance, k)
    return survival - np.append(survival[1:], 0.0)


def acceptance_from_counts(accepted: int, rejections: int) -> float:
    """Maximum-likelihood pooled (i.i.d.) per-token acceptance from verified cycles.

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


def position_counts(drafted: Sequence[int], accepted: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-position evidence from verified cycles: ``drafted[c]`` and ``accepted[c]`` are
    cycle c's drafts and accepted drafts.  Returns (reached, kept), each of shape (P,) with
    P the longest cycle: reached[i-1] counts the cycles that tested position i (drafted at
    least i and accepted the i-1 before it), kept[i-1] those that accepted it."""
    drafted, accepted = np.asarray(drafted, dtype=int), np.asarray(accepted, dtype=int)
    if drafted.shape != accepted.shape or (accepted < 0).any() or (accepted > drafted).any():
        raise ValueError("need one accepted count in 0..drafted per cycle")
    positions = np.arange(1, int(drafted.max(initial=0)) + 1)[:, None]
    reached = (drafted >= positions) & (accepted >= positions - 1)    # (P, cycles)
    kept = accepted >= positions
    return reached.sum(axis=1).astype(float), kept.sum(axis=1).astype(float)


def acceptance_by_position_from_counts(reached: Sequence[float], kept: Sequence[float],
                                       pooled: float | None = None,
                                       prior_weight: float | None = None) -> tuple[float, ...]:
    """Per-position acceptance a_1..a_P from the counts of ``position_counts`` (or decayed ones).

    Each a_i is kept_i / reached_i, the maximum-likelihood estimate (the likelihood of
    verified cycles factorises over positions), shrunk toward ``pooled`` by ``prior_weight``
    pseudo-observations: (kept_i + w * pooled) / (reached_i + w), so a position seen in few
    cycles stays near the pooled rate.  ``pooled`` defaults to the pooled maximum-likelihood
    rate of the same counts (``acceptance_from_counts``: sum kept over sum reached).
    ``prior_weight`` 0 gives the plain maximum-likelihood rates; None (the default) an
    empirical-Bayes weight, w = p (1 - p) / tau^2, with tau^2 the spread of the true rates
    around the pooled one p estimated by moments from the same counts: the weighted spread
    of the plain rates, sum reached_i (kept_i / reached_i - p)^2 / sum reached_i, less what
    sampling alone gives, (P - 1) p (1 - p) / sum reached_i.  An i.i.d. pair (no spread
    beyond sampling) then gets the pooled rate at every position, a pair whose rates do
    vary gets them.  Only the positions ever reached are returned; beyond them an
    ``Acceptance`` takes the last value.  Empty when nothing was reached.
    """
    reached, kept = np.asarray(reached, dtype=float), np.asarray(kept, dtype=float)
    if reached.shape != kept.shape or (kept < 0).any() or (kept > reached + 1e-9).any():
        raise ValueError("need kept counts in 0..reached at every position")
    if prior_weight is not None and prior_weight < 0:
        raise ValueError(f"prior_weight must be non-negative, got {prior_weight}")
    seen = reached > 0
    reached, kept = reached[seen], kept[seen]
    if pooled is None:
        pooled = acceptance_from_counts(kept.sum(), (reached - kept).sum())
    if not reached.size:
        return ()
    _check_acceptance(pooled)
    if prior_weight is None:
        variance = pooled * (1.0 - pooled)
        spread = (reached * (kept / reached - pooled) ** 2).sum() - (reached.size - 1) * variance
        if spread <= 0 or variance <= 0:
            return (float(pooled),) * reached.size
        prior_weight = variance * reached.sum() / spread
    estimate = (kept + prior_weight * pooled) / (reached + prior_weight)
    return tuple(float(rate) for rate in np.clip(estimate, 0.0, 1.0))


@dataclass(frozen=True)
class ComputeTimes:
    """Per-stage compute times in seconds.

    ``draft_token_s`` is one draft forward on the host that drafts; a cycle's drafting
    also pays ``draft_base_s`` once, whatever k (the draft message built and sent, the
    catch-up forward after a block kept whole):
    t_draft(k) = draft_base_s + draft_token_s * k.  Verifying
    k drafts is one target forward over k + 1 positions:
    t_verify(k) = verify_base_s + verify_per_token_s * (k + 1).  One plain
    decoding step is ``decode_s`` where it was measured as a stage of its own
    (a real model's streaming step skips the verifier's work), else t_verify(0).
    """

    draft_token_s: float
    verify_base_s: float
    verify_per_token_s: float
    decode_s: float | None = None
    draft_base_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("draft_token_s", "verify_base_s", "verify_per_token_s", "decode_s",
                     "draft_base_s"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite non-negative number, got {value}")
        if self.decode_time_s() <= 0:
            raise ValueError("the decode time (decode_s, or verify_base_s + "
                             "verify_per_token_s) must be positive")

    def draft_time_s(self, k: int | np.ndarray) -> float | np.ndarray:
        """Drafting k tokens in one cycle (k: one depth, or an array of depths)."""
        _check_depth(k)
        return self.draft_base_s + self.draft_token_s * k

    def verify_time_s(self, k: int | np.ndarray) -> float | np.ndarray:
        _check_depth(k)
        return self.verify_base_s + self.verify_per_token_s * (k + 1)

    def decode_time_s(self) -> float:
        """One plain target decoding step: a forward over one position."""
        return self.decode_s if self.decode_s is not None else self.verify_time_s(0)


def cycle_time_local_s(k: int | np.ndarray, times: ComputeTimes) -> float | np.ndarray:
    """T_local(k) = t_draft(k) + t_verify(k): draft and target on one node (k: one depth, or
    an array of depths, each its own time)."""
    return times.draft_time_s(k) + times.verify_time_s(k)


def cycle_time_distributed_s(
    k: int | np.ndarray,
    times: ComputeTimes,
    rtt_s: float,
    transmit_up_s: float | np.ndarray = 0.0,
    transmit_down_s: float | np.ndarray = 0.0,
) -> float | np.ndarray:
    """T_dist(k) = T_local(k) + RTT + the transfer of the drafts up and the verdict down
    (serialisation, and on a lossy link the mean resend wait: ``shaping.link_model.transfer_s``;
    k and the transmissions: scalars, or arrays of one entry per depth)."""
    _check_non_negative(rtt_s=rtt_s, transmit_up_s=transmit_up_s, transmit_down_s=transmit_down_s)
    return cycle_time_local_s(k, times) + rtt_s + transmit_up_s + transmit_down_s


def throughput_tokens_per_s(acceptance: Acceptance, k: int, cycle_time_s: float) -> float:
    """E[tau(k)] / T: committed tokens per second at steady state."""
    if not cycle_time_s > 0:
        raise ValueError(f"cycle_time_s must be positive, got {cycle_time_s}")
    return expected_tokens_per_cycle(acceptance, k) / cycle_time_s


def cloud_only_throughput(times: ComputeTimes) -> float:
    """1 / t_decode: the target decoding alone (streaming hides the RTT after the first token)."""
    return 1.0 / times.decode_time_s()


def stretch_throughput(step_s: float, tokens: int, rtt_s: float = 0.0) -> float:
    """tokens / (RTT + tokens * step): a stretch decoded one ``step_s`` a token and one
    round trip (a cloud hand-off: the request up, then streamed tokens; a stretch the edge
    decodes itself: the speculation cycle after it, which measures the link again)."""
    _check_non_negative(rtt_s=rtt_s)
    if tokens < 1 or not step_s > 0:
        raise ValueError(f"need tokens >= 1 and a positive step, got {tokens}, {step_s}")
    return tokens / (rtt_s + tokens * step_s)


def stretch_tokens(step_s: float, rtt_s: float, rtt_share: float = 0.1,
                   max_s: float = math.inf) -> int:
    """The fewest tokens a stretch of ``step_s`` per token needs for one round trip to be at
    most ``rtt_share`` of its time, ceil(RTT (1 - share) / (share * step)), but no more than
    ``max_s`` of steps (how long a decision on one RTT sample may stand), and at least 1."""
    if not 0 < rtt_share < 1:
        raise ValueError(f"rtt_share must be in (0, 1), got {rtt_share}")
    _check_non_negative(rtt_s=rtt_s)
    amortizing = math.ceil(rtt_s * (1.0 - rtt_share) / (rtt_share * step_s))
    return max(1, min(amortizing, math.floor(max_s / step_s) if math.isfinite(max_s)
                      else amortizing))


def query_decode_time_s(acceptance: Acceptance, k: int, new_tokens: int,
                        cycle_time_s: Callable[[int], float]) -> float:
    """Expected seconds for cycles to commit ``new_tokens`` tokens when each drafts
    min(k, remaining - 1), so that its correction or bonus still fits the budget (as the
    edge does), a cycle of d drafts taking ``cycle_time_s(d)``.  No sequence ends early.

    By the recursion over the tokens still to commit, r = 1..new_tokens:
    E[T(r)] = cycle_time_s(d) + sum_j P(j accepted of d) E[T(r - j - 1)], d = min(k, r - 1),
    E[T(0)] = 0.  A query of N tokens decodes N - 1 of them after its first at the rate
    (N - 1) / query_decode_time_s(..., N - 1, ...); long queries approach E[tau] / T(k).
    """
    _check_depth(k)
    if new_tokens < 0:
        raise ValueError(f"new_tokens must be non-negative, got {new_tokens}")
    expected = np.zeros(new_tokens + 1)
    for remaining in range(1, new_tokens + 1):
        depth = min(k, remaining - 1)
        after = expected[remaining - 1 - np.arange(depth + 1)]   # j accepted: j + 1 committed
        expected[remaining] = cycle_time_s(depth) + accepted_distribution(acceptance, depth) @ after
    return float(expected[new_tokens])


def pipelined_tokens_per_epoch(acceptance: Acceptance, k: int) -> float:
    """Draft-ahead: expected tokens committed from a corrected context up to and including
    the next correction, blocks of ``k`` drafts each kept whole with probability S_k and a
    kept block's bonus deferred to the next block: sum over blocks j of S_k^j (A + 1 - S_k),
    A = S_1 + ... + S_k the expected accepted drafts of a block, that is
    (E[tau(k)] - S_k) / (1 - S_k); infinite when S_k = 1."""
    if k < 1:
        raise ValueError(f"draft-ahead blocks need k >= 1, got {k}")
    whole = float(acceptance_survival(acceptance, k)[-1])
    if whole >= 1.0:
        return math.inf
    return (expected_tokens_per_cycle(acceptance, k) - whole) / (1.0 - whole)


def pipelined_notice_times(block_draft_s: float, verify_s: float, rtt_s: float, depth: int,
                           blocks: int) -> np.ndarray:
    """Draft-ahead: r_0..r_{blocks-1}, the instants (from an epoch's start) the edge holds the
    verdicts of the epoch's blocks, all kept whole, each block taking ``block_draft_s`` to
    draft and ``verify_s`` at the cloud, ``rtt_s`` the round trip (transfers included).

    The edge drafts and sends blocks 0..D back to back (block j sent at s_j = (j + 1) d),
    then waits for the oldest verdict; on holding verdict j it drafts and sends block
    j + D + 1 (at r_j + d) and waits for verdict j + 1.  The cloud verifies one block at a
    time, in order: it finishes block j at g_j = max(s_j, g_(j-1)) + c on a clock shifted
    by the uplink's delay, and the verdict reaches the edge at v_j = g_j + RTT.  The edge
    holds it at r_0 = max(v_0, (D + 1) d), r_(j+1) = max(v_(j+1), r_j + d).

    While D + 1 blocks do not cover a round trip, (D + 1) max(d, c) <= d + c + RTT, this is
    r_(m(D+1)+i) = d + c + RTT + i max(d, c) + m (d + c + RTT): D + 1 verdicts a max(d, c)
    apart, a round trip per D + 1 blocks.
    """
    _check_non_negative(block_draft_s=block_draft_s, verify_s=verify_s, rtt_s=rtt_s)
    if depth < 0 or blocks < 0:
        raise ValueError(f"need depth >= 0 and blocks >= 0, got {depth}, {blocks}")
    sent, held = np.zeros(blocks), np.zeros(blocks)
    finished = 0.0
    for j in range(blocks):
        sent[j] = (j + 1) * block_draft_s if j <= depth \
            else held[j - depth - 1] + block_draft_s
        finished = max(sent[j], finished) + verify_s
        ready = (depth + 1) * block_draft_s if j == 0 else held[j - 1] + block_draft_s
        held[j] = max(finished + rtt_s, ready)
    return held


def pipelined_throughput(acceptance: Acceptance, k: int, depth: int, times: ComputeTimes,
                         rtt_s: float, transmit_up_s: float = 0.0,
                         transmit_down_s: float = 0.0) -> float:
    """Expected tokens/s of fixed-k speculation with draft-ahead of depth ``depth`` (0: none,
    the plain E[tau] / T_dist): tokens per epoch (``pipelined_tokens_per_epoch``) over the
    epoch's expected length, sum_j S_k^j (1 - S_k) r_j with r_j the instant the edge holds
    block j's verdict (``pipelined_notice_times``; the transfers count in the round trip).
    The sum runs over the verdict times computed for the first blocks and continues them
    periodically (D + 1 blocks per period, as the recursion settles to) in closed form.
    In the regime where D + 1 blocks do not cover a round trip (``pipelined_notice_times``),
    with L = D + 1, d = k t_draft, c = t_verify(k), delta = max(d, c), P = d + c + RTT and
    S = S_k, this is the closed form

        E[epoch] = (1 - S) / (1 - S^L) * sum_{i<L} S^i (P + i delta) + P S^L / (1 - S^L):

    a round trip P per L blocks kept whole.  With i.i.d. acceptance a an epoch commits
    1 / (1 - a) tokens whatever k and D, the bound plain fixed K approaches as K grows, so
    what draft-ahead gains is time: blocks short enough to draft and verify fast, a round
    trip per D + 1 of them rather than per block.
    """
    if depth == 0:
        return throughput_tokens_per_s(acceptance, k, cycle_time_distributed_s(
            k, times, rtt_s, transmit_up_s, transmit_down_s))
    _check_non_negative(transmit_up_s=transmit_up_s, transmit_down_s=transmit_down_s)
    period = depth + 1
    whole = float(acceptance_survival(acceptance, k)[-1])
    first = 4 * period   # blocks summed term by term; beyond them, period by period
    held = pipelined_notice_times(times.draft_time_s(k), times.verify_time_s(k),
                                  rtt_s + transmit_up_s + transmit_down_s, depth,
                                  first + period + 1)
    step = held[first + period] - held[first]     # one period's length, settled
    if whole >= 1.0:
        return k * period / step
    weights = whole ** np.arange(first) * (1.0 - whole)
    tail_weights = whole ** np.arange(period)
    repeat = whole ** period
    tail = (1.0 - whole) * whole ** first * (
        tail_weights @ held[first:first + period] / (1.0 - repeat)
        + tail_weights.sum() * step * repeat / (1.0 - repeat) ** 2)
    return pipelined_tokens_per_epoch(acceptance, k) / (weights @ held[:first] + tail)


def crossover_rtt_s(
    acceptance: Acceptance,
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
    acceptance: Acceptance,
    times: ComputeTimes,
    rtt_s: float,
    depths: Sequence[int],
    transmit_s: Callable[[int], float] | None = None,
) -> np.ndarray:
    """E[tau(k)] / T_dist(k) for each k of ``depths``: what a K controller maximises.

    ``transmit_s(k)`` is the total serialisation time (up plus down) of a
    cycle with k drafts; omitted means zero.
    """
    depths = [int(k) for k in depths]
    # E[tau(k)] for every k at once: the running sums of one survival curve; T_dist(k) for
    # every k in one array expression (the controller evaluates this twice per cycle)
    taus = np.cumsum(acceptance_survival(acceptance, max(depths, default=0)))
    transmit = np.array([transmit_s(k) for k in depths]) if transmit_s else 0.0
    return taus[depths] / cycle_time_distributed_s(np.array(depths, dtype=int), times, rtt_s,
                                                   transmit)


def decode_time_quantiles_s(
    acceptance: Acceptance,
    times: ComputeTimes,
    rtt_s: float,
    rtt_variance_s2: float,
    depths: Sequence[int],
    tokens: int,
    quantile: float,
    transmit_s: Callable[[int], float] | None = None,
) -> np.ndarray:
    """The ``quantile`` of the seconds to commit ``tokens`` tokens at each k of ``depths``,
    cycles' RTTs independent with mean ``rtt_s`` and variance ``rtt_variance_s2``: what a
    K controller minimises when it optimises a tail percentile instead of the mean.

    Cycles form a renewal-reward process (a cycle of k drafts lasts T = T_dist(k) with the
    RTT random, and commits tau tokens, tau independent of T), so the time to commit N
    tokens is about normal (the renewal central limit theorem) with mean N m and variance
    N (Var T + m^2 Var tau) / E[tau], where m = E[T] / E[tau]; the quantile is
    N m + z_q sqrt(that variance).  Its mean term is N over ``distributed_throughputs``;
    the spread term weighs the K whose cycles are longer and their tau more variable.
    """
    from scipy.stats import norm
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    _check_non_negative(rtt_variance_s2=rtt_variance_s2, tokens=tokens)
    depths = [int(k) for k in depths]
    committed = np.arange(1, max(depths, default=0) + 2)    # j accepted: j + 1 committed
    z = norm.ppf(quantile)
    quantiles = []
    for k in depths:
        chances = accepted_distribution(acceptance, k)
        tau_mean = chances @ committed[:k + 1]
        tau_variance = chances @ committed[:k + 1] ** 2 - tau_mean ** 2
        per_token = cycle_time_distributed_s(k, times, rtt_s,
                                             transmit_s(k) if transmit_s else 0.0) / tau_mean
        variance = tokens * (rtt_variance_s2 + per_token ** 2 * tau_variance) / tau_mean
        quantiles.append(tokens * per_token + z * math.sqrt(variance))
    return np.array(quantiles)


def optimal_k(
    acceptance: Acceptance,
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


def _check_depth(k: int | np.ndarray) -> None:
    if (np.asarray(k) < 0).any():
        raise ValueError(f"k must be non-negative, got {k}")


def _check_non_negative(**values: float | np.ndarray) -> None:
    for name, value in values.items():
        if not (np.asarray(value) >= 0).all():
            raise ValueError(f"{name} must be non-negative, got {value}")
