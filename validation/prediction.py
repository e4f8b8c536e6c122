"""What the analytic model predicts for a strategy on a link.

Bridges runs to ``nasd.analytic``: compute times are measured from the run's own
records (``measured_times``), or taken from a synthetic pair's latency profile
(``modeled_times``: what the pair promises); the link state gives RTT and serialization;
the acceptance is the one measured in the run where there is one, by position
in the block (``measured_acceptance``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from agents.backends import ModelPairConfig
from nasd.analytic import (Acceptance, ComputeTimes, acceptance_by_position_from_counts,
                           cloud_only_throughput, crossover_rtt_s, cycle_time_distributed_s,
                           cycle_time_local_s, expected_tokens_per_cycle, pipelined_throughput,
                           position_counts, query_decode_time_s)
from nasd.estimator import Line, physical_draft_line
from nasd.policy import POLICY_NAMES
from shaping.link_model import transfer_s
from shaping.profile import LinkState


LINE_MIN_CYCLES = 10   # cycles at each of two K, at least, for the draft's line in K


@dataclass(frozen=True)
class HostTimes:
    """Compute times with the draft on the edge (fixed-K) and in the cloud (cloud-spec), and
    the draft's plain decoding step on the edge (edge-only) where it was measured as a stage
    of its own: a draft token inside a speculation cycle costs more than one in a hot
    decoding loop (the cycle's first forward follows a wait on the network)."""

    edge: ComputeTimes
    cloud: ComputeTimes
    edge_decode_s: float | None = None

    def edge_only_step_s(self) -> float:
        return self.edge_decode_s if self.edge_decode_s is not None else self.edge.draft_token_s


def modeled_times(pair: ModelPairConfig) -> HostTimes:
    """From a synthetic pair's latency profile: t_forward(n) = base + per_token * n."""
    target = pair.latency.cloud_target
    times = lambda draft: ComputeTimes(draft_token_s=draft.seconds(1),  # noqa: E731
                                       verify_base_s=target.base_ms / 1000.0,
                                       verify_per_token_s=target.per_token_ms / 1000.0)
    return HostTimes(edge=times(pair.latency.edge_draft), cloud=times(pair.latency.cloud_draft),
                     edge_decode_s=pair.latency.edge_draft.seconds(1))


def plain_step_s(queries: pd.DataFrame, strategy: str, side: str) -> float | None:
    """Seconds per token after the first, on ``side``, over ``strategy``'s queries; None
    without any.  The edge's: its compute (``edge_compute_s`` less ``edge_first_s``: its
    loop does nothing else).  The cloud's: the wall time its stream took from the first
    token message to the last (``cloud_stream_s``), which holds the serving loop's turn
    between two tokens as well as their passes (about 7 % of a 3 ms step for the shipped
    pair); records from before the stream was timed give its compute alone."""
    own = queries[(queries["strategy"] == strategy) & (queries["n_tokens"] > 1)]
    if own.empty or f"{side}_compute_s" not in own:
        return None
    if side == "cloud" and "cloud_stream_s" in own and (own["cloud_stream_s"] > 0).all():
        seconds = own["cloud_stream_s"]
    else:
        seconds = own[f"{side}_compute_s"] - own[f"{side}_first_s"]
    return float(seconds.sum() / (own["n_tokens"] - 1).sum())


def speculation_cycles(cycles: pd.DataFrame) -> pd.DataFrame:
    """The cycles that drafted and verified: not the stretches a controller served without
    drafts (``served_by`` cloud or edge; folders from before stretches have none), nor the
    draft-ahead blocks dropped unverified (``dropped``)."""
    if "served_by" not in cycles:
        return cycles
    return cycles[cycles["served_by"] == "speculation"]


def measured_times(queries: pd.DataFrame, cycles: pd.DataFrame) -> HostTimes | None:
    """From a run of real models, stage by stage: t_draft(k) = base + per_token * k fitted
    by least squares to the cycles' draft times where at least two K were drafted in
    ``LINE_MIN_CYCLES`` cycles each (else the mean time per drafted token);
    t_verify(k) = base + per_token * (k + 1) fitted by least squares to the cycles'
    verify times; the plain decoding steps from cloud-only's streamed tokens and from
    edge-only's own loop where the run has them (steps of their own: cloud-only skips
    the verifier's work, edge-only decodes without waiting on the network).  The cloud's
    draft (cloud-spec) is taken to run as fast as the edge's does in a loop of its own:
    edge-only's step where the run has it.  None when the run has no speculation cycles."""
    cycles = speculation_cycles(cycles)
    drafted = cycles[cycles["k"] > 0] if not cycles.empty else cycles
    if drafted.empty:
        return None
    draft = draft_line(drafted["k"], drafted["t_draft"])
    positions, seconds = cycles["k"] + 1, cycles["t_verify"]
    if positions.nunique() > 1:
        per_token, base = np.polyfit(positions, seconds, 1)
        per_token = max(per_token, 0.0)
    else:
        per_token, base = 0.0, float(seconds.mean())
    times = ComputeTimes(draft_token_s=draft.slope, draft_base_s=draft.intercept,
                         verify_base_s=max(base, 0.0), verify_per_token_s=per_token,
                         decode_s=plain_step_s(queries, "cloud-only", "cloud"))
    edge_decode_s = plain_step_s(queries, "edge-only", "edge")
    cloud = times if edge_decode_s is None else replace(times, draft_token_s=edge_decode_s,
                                                        draft_base_s=0.0)
    return HostTimes(edge=times, cloud=cloud, edge_decode_s=edge_decode_s)



def draft_line(k: pd.Series, t_draft: pd.Series) -> Line:
    """t_draft against k by least squares where at least two K have ``LINE_MIN_CYCLES``
    cycles each and the line is a physical one (a positive slope, a non-negative
    intercept); else a line through zero at the mean time per drafted token (a fixed K's
    few shorter last cycles cannot tell a slope)."""
    fitted = Line(0.0)
    if (k.value_counts() >= LINE_MIN_CYCLES).sum() >= 2:
        slope, intercept = np.polyfit(k, t_draft, 1)
        fitted = Line(float(intercept), float(slope))
    return physical_draft_line(fitted, float(t_draft.sum() / k.sum()))


def measured_acceptance(cycles: pd.DataFrame) -> Acceptance | None:
    """Acceptance by position, maximum likelihood over ``cycles`` (their ``k`` and
    ``accepted``); None without a cycle that drafted."""
    if cycles.empty or not (cycles["k"] > 0).any():
        return None
    return acceptance_by_position_from_counts(*position_counts(cycles["k"], cycles["accepted"]),
                                              prior_weight=0.0)


def cycle_time_s(strategy: str, times: HostTimes, link: LinkState, bytes_up: float = 0.0,
                 bytes_down: float = 0.0) -> Callable[[int], float]:
    """Seconds of one cycle of k drafts under a speculating ``strategy``."""
    if strategy == "cloud-spec":
        return lambda k: cycle_time_local_s(k, times.cloud)
    if strategy in POLICY_NAMES:    # edge drafts, cloud verifies, a round trip per cycle
        up, down = transfer_s(link, "uplink", bytes_up), transfer_s(link, "downlink", bytes_down)
        return lambda k: cycle_time_distributed_s(k, times.edge, link.rtt_ms / 1000.0, up, down)
    raise ValueError(f"no prediction for strategy {strategy!r}")


def predicted_tokens_per_s(strategy: str, ks: Sequence[int], acceptance: Acceptance,
                           times: HostTimes, link: LinkState,
                           bytes_up: float = 0.0, bytes_down: float = 0.0,
                           stretches: Sequence[tuple[str, int, int]] = (),
                           draft_ahead: int = 0,
                           answer_ends: Sequence[tuple[int, int]] = ()) -> float:
    """Decode rate (tokens/s after the first token) of one strategy.

    ``ks`` are the draft lengths of the cycles (the run's own where it
    recorded them, so a query's shorter last cycle and a controller's
    changing K are modeled too): expected tokens over expected time, summed
    over cycles; ``stretches`` (served_by, tokens, cycle) are those a
    controller served without drafts: the cloud's (one RTT, then its decoding
    steps; no RTT for a query's cycle 1, which rode on the open) and the
    edge's (the draft's steps).  ``answer_ends`` (k, tokens) are the cycles, not in
    ``ks``, whose block the draft ended with its EOS: the answer's end, whose tokens are
    the text's (kept whole such a block commits no bonus, and blocks at the formulaic end
    of an answer are accepted far more often than the rest: counted at E[tau(k)] on the
    pooled acceptance, 24-token answers read 10 % fast at K = 15).

    With ``draft_ahead`` (blocks pipelined that deep) a cycle is no longer the
    unit of time: the rate is the steady state of pipelined blocks of the K
    most of the run's blocks drafted (``nasd.analytic.pipelined_throughput``),
    stretches aside; a short query's last blocks, drafted fewer to fit its
    budget, are not modeled.
    """
    if strategy == "edge-only":
        return 1.0 / times.edge_only_step_s()
    if strategy == "cloud-only":
        return cloud_only_throughput(times.cloud)
    if draft_ahead and strategy in POLICY_NAMES and len(ks):
        up, down = transfer_s(link, "uplink", bytes_up), transfer_s(link, "downlink", bytes_down)
        k = int(pd.Series(ks).mode().max())
        return pipelined_throughput(acceptance, k, draft_ahead, times.edge,
                                    link.rtt_ms / 1000.0, up, down)
    cycle_s = cycle_time_s(strategy, times, link, bytes_up, bytes_down)

    def stretch_s(served_by: str, n: int, cycle: int) -> float:
        if served_by == "edge":
            return n * times.edge_only_step_s()
        return (link.rtt_ms / 1000.0 if cycle > 1 else 0.0) + n * times.cloud.decode_time_s()

    tokens = sum(expected_tokens_per_cycle(acceptance, k) for k in ks) \
        + sum(n for _, n in answer_ends) + sum(n for _, n, _ in stretches)
    return tokens / (sum(cycle_s(k) for k in ks) + sum(cycle_s(k) for k, _ in answer_ends)
                     + sum(stretch_s(*stretch) for stretch in stretches))


def predicted_query_tokens_per_s(strategy: str, k: int, n_tokens: int, acceptance: Acceptance,
                                 times: HostTimes, link: LinkState, bytes_up: float = 0.0,
                                 bytes_down: float = 0.0) -> float:
    """Decode rate of a speculating strategy at fixed ``k`` over queries of ``n_tokens``
    tokens, a priori: the last cycles of each draft fewer to fit the budget
    (``nasd.analytic.query_decode_time_s``), so short answers decode slower than
    E[tau] / T(k)."""
    seconds = query_decode_time_s(acceptance, k, n_tokens - 1,
                                  cycle_time_s(strategy, times, link, bytes_up, bytes_down))
    return (n_tokens - 1) / seconds


def predicted_crossover_rtt_ms(k: int, acceptance: Acceptance, times: HostTimes, link: LinkState,
                               bytes_up: float = 0.0, bytes_down: float = 0.0) -> float:
    """The RTT above which cloud-only decodes faster than fixed-K cloud-edge speculation."""
    return 1000.0 * crossover_rtt_s(acceptance, k, times.edge,
                                    transfer_s(link, "uplink", bytes_up),
                                    transfer_s(link, "downlink", bytes_down))
