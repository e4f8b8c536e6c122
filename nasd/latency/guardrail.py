"""The budget guardrail: accept a configuration only when its predicted latency, with a
prediction interval, fits a budget.

Owns the interval (``StageInterval``: split-conformal, from the ratios measured / predicted
of samples the model never saw: the quantiles at the finite-sample level ceil((n + 1) q) / n,
so the interval covers a new sample with the stated probability whatever the error's
distribution), a candidate's seconds per token (``per_token``: a speculative cycle's
K drafted tokens, its verification, the round trip and the bytes' transfer over the
committed tokens E[tau] of ``nasd.analytic``; cloud-spec's cycle on one node; or cloud-only
decoding's step; over E[tau] for endless answers, or over the cycles of answers of given
lengths), which strategies it can predict (``unpredictable`` says why not), a
candidate's interval (``per_token_spread``: every stage, the link and the acceptance at
their ends at once), the decision (``decide``: accept when the interval's upper end fits the
budget, reject when its lower end breaks it, otherwise measure), whether a decision held
once the candidate was measured (``verdict_held``), how fast a host runs at the moment
against a model and how far it strayed (``host_speed``), and its evaluation on held-out
samples (``guardrail_analysis``).  ``orchestrator sweep`` skips the strategy runs it rejects
(``orchestrator.config.guardrail``).

Candidates are (held-out configuration, strategy, RTT): fixed-K speculation at the
configuration's K, and cloud-only decoding, on each RTT, at a fixed acceptance; their
"true" latency comes from the measured stage times, the predicted one from the held-out
predictions, the network part being the same analytic term in both (this is a guardrail on
the compute model).  A budget fraction f sets the budget at the f-quantile of the
candidates' true latencies (f of them fit it).  Rates: violations = accepted candidates that
break the budget, over the accepted; false rejects = rejected candidates that fit, over those
that fit; ``measure`` = the share left to measuring.  Without the guardrail the point
prediction alone decides (accept when it fits).

Pure: no I/O, no clocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nasd.analytic import (
    ComputeTimes,
    cycle_time_distributed_s,
    cycle_time_local_s,
    expected_tokens_per_cycle,
    query_decode_time_s,
)

FRACTIONS = (0.5, 0.7, 0.85, 1.0)
COVERAGE = 0.9          # the intervals' stated probability of covering a new sample
UNCERTAIN = ("draft_token", "verify", "decode")   # the stages a candidate's latency uses
PREDICTED = ("fixed-k", "cloud-spec", "cloud-only")   # the strategies ``per_token`` models
VERDICTS = ("accept", "reject", "measure")


@dataclass(frozen=True)
class StageInterval:
    """Multiplicative prediction interval: [low * predicted, high * predicted]."""

    low: float
    high: float
    coverage: float
    n: int


def conformal_interval(measured, predicted, coverage: float = COVERAGE) -> StageInterval:
    """Split-conformal interval from held-out ratios measured / predicted (two-sided, equal
    tails).  Between the l-th and u-th of n ratios a new one falls with probability
    (u - l) / (n + 1): with too few samples for ``coverage`` (n < 19 for 90 %) the interval
    is the least and largest ratio, and its ``coverage`` says what that covers."""
    ratios = np.sort(np.asarray(measured, dtype=float) / np.asarray(predicted, dtype=float))
    n = len(ratios)
    if n < 2:
        raise ValueError("a conformal interval needs at least two held-out samples")
    tail = (1 - coverage) / 2
    upper_rank = min(n, math.ceil((n + 1) * (1 - tail)))
    lower_rank = max(1, math.floor((n + 1) * tail))
    covered = (upper_rank - lower_rank) / (n + 1)
    return StageInterval(float(ratios[lower_rank - 1]), float(ratios[upper_rank - 1]),
                         coverage if covered >= coverage else covered, n)


def per_token(strategy: str, k: int, draft_token_s: float, verify_s: float, decode_s: float,
              rtt_s: float, transfer_s: float, acceptance: float,
              answer_tokens: Sequence[int] = ()) -> float:
    """Seconds per committed token: fixed-K speculation (cycles over the tokens they commit),
    cloud-spec (the same cycle on one node: no round trip, no transfer) or cloud-only
    decoding (its step; the stream's one round trip is amortized away).  Without
    ``answer_tokens`` a cycle over E[tau] (endless answers); with them (each answer's
    tokens, its first included) the tokens after each answer's first over the expected time
    of its cycles, each drafting only what still fits (``query_decode_time_s``: the last
    cycles of a short answer commit fewer tokens), as a run's tokens/s counts them."""
    if strategy == "cloud-only":
        return float(decode_s)
    times = ComputeTimes(draft_token_s, verify_s, 0.0)
    if strategy == "cloud-spec":
        def cycle(depth):
            return cycle_time_local_s(depth, times)
    elif strategy == "fixed-k":
        def cycle(depth):
            return cycle_time_distributed_s(depth, times, rtt_s, transfer_s)
    else:
        raise ValueError(f"unknown strategy {strategy!r}: one of {', '.join(PREDICTED)}")
    after_first = [tokens - 1 for tokens in answer_tokens if tokens > 1]
    if not after_first:
        return cycle(k) / expected_tokens_per_cycle(acceptance, k)
    return sum(query_decode_time_s(acceptance, k, tokens, cycle)
               for tokens in after_first) / sum(after_first)


def unpredictable(strategy: str, draft_ahead: int = 0) -> str | None:
    """Why ``per_token`` cannot predict a strategy run (None: it can)."""
    if strategy in PREDICTED:
        return ("draft-ahead pipelines blocks; the model has one block per round trip"
                if draft_ahead else None)
    if strategy == "edge-only":
        return "the latency model has no stage of the draft decoding on its own"
    return f"{strategy} chooses K per cycle; the model predicts one K"


@dataclass(frozen=True)
class Spread:
    """A quantity's least, central and largest value (the high end may be infinite)."""

    low: float
    point: float
    high: float


def answer_ratios(measured_s: Sequence[Sequence[float]],
                  predicted_s: Sequence[Sequence[float]]) -> np.ndarray:
    """How fast a host served each answer against a model: the answer's steps just timed
    there in total over what the model predicts for them in total (a total, since what a
    run is judged by, ms per token, counts its stalls).  Answers without steps are left
    out."""
    ratios = [float(np.sum(measured) / np.sum(predicted))
              for measured, predicted in zip(measured_s, predicted_s) if len(measured)]
    if not ratios:
        raise ValueError("a host's speed needs at least one timed step")
    return np.asarray(ratios)


def host_speed(measured_s: Sequence[Sequence[float]],
               predicted_s: Sequence[Sequence[float]]) -> Spread:
    """How fast a host runs now against a model's times, from answers just timed there
    (``orchestrator sweep`` serves its pair cloud-only for a few answers before judging,
    then learns from each cell's): the least, median and most of ``answer_ratios``.  The
    median is what the model's times must be multiplied by (the time scale): one answer
    slowed by a passing neighbour says little about the next cell.  A shared or virtual
    host's speed drifts by tens of percent over hours, and every stage moves with it (a
    sample's draft and verify times were 0.93 correlated over a campaign's rounds), so one
    factor scales them all.  The least and most say how far the speed strayed between
    answers: the stages' intervals were measured with the host's drift taken out
    (``orchestrator latency measure``'s speed reference), so a prediction of a run to come
    widens by as much to allow for it."""
    ratios = answer_ratios(measured_s, predicted_s)
    return Spread(float(ratios.min()), float(np.median(ratios)), float(ratios.max()))


def per_token_spread(strategy: str, k: int, stages: dict[str, Spread],
                     intervals: dict[str, StageInterval], rtt_s: Spread, transfer_s: Spread,
                     acceptance: Spread, answer_tokens: Sequence[int] = ()) -> Spread:
    """A candidate's seconds per token with its prediction interval.  ``stages``: each
    uncertain stage's predicted seconds at the least, central and largest work (context) the
    candidate meets; the low end takes them times their interval's lower end with the least
    RTT and transfer and the highest acceptance, the high end the opposite, the point the
    predictions as they are: every term at its end at once (the stages err together;
    conservative, as in ``guardrail_analysis``)."""
    def at(end: str, scale: str | None, accepted: float) -> float:
        seconds = [getattr(stages[stage], end) * (getattr(intervals[stage], scale) if scale
                                                   else 1.0) for stage in UNCERTAIN]
        return per_token(strategy, k, *seconds, getattr(rtt_s, end), getattr(transfer_s, end),
                         accepted, answer_tokens)
    return Spread(at("low", "low", acceptance.high), at("point", None, acceptance.point),
                  at("high", "high", acceptance.low))


def decide(low, high, point, budget, guarded: bool = True) -> np.ndarray:
    """``accept`` / ``reject`` / ``measure`` for each candidate; unguarded: the point
    prediction alone, accept or reject."""
    low, high, point = (np.asarray(v, dtype=float) for v in (low, high, point))
    if not guarded:
        return np.where(point <= budget, "accept", "reject")
    return np.where(high <= budget, "accept", np.where(low > budget, "reject", "measure"))


def verdict_held(verdict: str, measured_s: float, budget_s: float) -> bool | None:
    """Whether a decision held once its candidate was measured (seconds per token): an
    accept when the measured fits the budget, a reject when it breaks it; a measure claims
    nothing (None), nor does a candidate without a measurement (NaN)."""
    if verdict == "measure" or not math.isfinite(measured_s):
        return None
    return bool(measured_s <= budget_s) == (verdict == "accept")


def rates(decisions: np.ndarray, true: np.ndarray, budget: float) -> dict:
    fits = true <= budget
    accepted, rejected = decisions == "accept", decisions == "reject"
    return {"violation_rate": float(np.sum(accepted & ~fits) / max(1, np.sum(accepted))),
            "false_reject_rate": float(np.sum(rejected & fits) / max(1, np.sum(fits))),
            "false_accept_rate": float(np.sum(accepted & ~fits) / max(1, np.sum(~fits))),
            "accepted": int(accepted.sum()), "rejected": int(rejected.sum()),
            "measured": int(np.sum(decisions == "measure")), "fit": int(fits.sum()),
            "candidates": len(true)}


def candidates(heldout: dict[str, pd.DataFrame], table: pd.DataFrame, model: str,
               rtts_s=(0.0, 0.01, 0.05, 0.1), bandwidth_bps: float = 100e6) -> pd.DataFrame:
    """Every held-out sample x strategy x RTT, with its K, its bytes' transfer time, and each
    uncertain stage's measured (``<stage>_true``) and predicted (``<stage>_pred``) seconds.
    ``heldout``: per stage, the held-out predictions of ``nasd.latency.models.held_out``
    (columns sample, seconds, ``model``)."""
    by_sample = table.set_index("sample")
    frame = pd.DataFrame({
        "k": by_sample["k"],
        "transfer_s": (by_sample["bytes_up"] + by_sample["bytes_down"]) * 8 / bandwidth_bps,
        **{f"{stage}_true": heldout[stage].set_index("sample")["seconds"] for stage in UNCERTAIN},
        **{f"{stage}_pred": heldout[stage].set_index("sample")[model] for stage in UNCERTAIN},
    }).dropna()
    rows = [{"sample": sample, "strategy": strategy, "rtt_s": rtt, **row}
            for sample, row in frame.iterrows() for rtt in rtts_s
            for strategy in ("fixed-k", "cloud-only")]
    return pd.DataFrame(rows)


def latencies(frame: pd.DataFrame, kind: str, acceptance: float,
              scale: dict[str, float] | None = None) -> np.ndarray:
    """Each candidate's seconds per token from its ``kind`` (true or pred) stage times, each
    stage multiplied by ``scale`` (an interval's end) when given."""
    scale = scale or {stage: 1.0 for stage in UNCERTAIN}
    return np.array([per_token(row.strategy, int(row.k),
                               getattr(row, f"draft_token_{kind}") * scale["draft_token"],
                               getattr(row, f"verify_{kind}") * scale["verify"],
                               getattr(row, f"decode_{kind}") * scale["decode"],
                               row.rtt_s, row.transfer_s, acceptance)
                     for row in frame.itertuples()])


def guardrail_analysis(heldout: dict[str, pd.DataFrame], table: pd.DataFrame,
                       model: str = "roofline", coverage: float = COVERAGE,
                       fractions=FRACTIONS, acceptance: float = 0.7, seed: int = 0,
                       rtts_s=(0.0, 0.01, 0.05, 0.1)) -> dict:
    """The intervals calibrated on half of the held-out samples, the guardrail judged on the
    other half: per budget fraction, the rates with and without it."""
    samples = np.array(sorted(set.intersection(*(set(heldout[stage]["sample"])
                                                 for stage in UNCERTAIN))))
    rng = np.random.default_rng(seed)
    calibrate = set(rng.choice(samples, size=len(samples) // 2, replace=False).tolist())
    intervals = {}
    for stage in UNCERTAIN:
        rows = heldout[stage][heldout[stage]["sample"].isin(calibrate)]
        intervals[stage] = conformal_interval(rows["seconds"], rows[model], coverage)
    judged = {stage: rows[~rows["sample"].isin(calibrate)] for stage, rows in heldout.items()}
    frame = candidates(judged, table, model, rtts_s)
    true, point = (latencies(frame, kind, acceptance) for kind in ("true", "pred"))
    # every stage at its interval's end at once: the stages err together (conservative)
    low, high = (latencies(frame, "pred", acceptance,
                           {stage: getattr(intervals[stage], end) for stage in UNCERTAIN})
                 for end in ("low", "high"))
    results = []
    for fraction in fractions:
        budget = float(np.quantile(true, fraction))
        results.append({"fraction": fraction, "budget_s_per_token": budget,
                        "guarded": rates(decide(low, high, point, budget), true, budget),
                        "unguarded": rates(decide(low, high, point, budget, guarded=False),
                                           true, budget)})
    return {"model": model, "coverage": min(i.coverage for i in intervals.values()),
            "acceptance": acceptance,
            "rtts_ms": [1000 * r for r in rtts_s],
            "intervals": {stage: vars(i) for stage, i in intervals.items()},
            "calibration_samples": len(calibrate),
            "judged_samples": int(frame["sample"].nunique()),
            "candidates": len(frame),
            "budget": "the f-quantile of the judged candidates' measured seconds per token",
            "fractions": results}
