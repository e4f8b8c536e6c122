"""Cross-validation: the same cells in sim and in emulated (or vm) mode, and the analytic model.

``compare`` takes two leaderboards (``orchestrator.reporting.analysis.load_results``
of each leg: one row per cell and strategy) and returns one row per cell,
strategy and metric with both values, the relative difference, the
tolerance and the verdict.  Pure pandas, no I/O.

Legs and tolerances (relative):

- analytic vs sim, tokens/s: 3 %, judged only on cells without jitter or
  loss (the closed form has no jitter, and loss only as its mean resend wait,
  which a cell's few losses sample too thinly to judge);
- sim vs emulated: tokens/s (aggregate and per-query P50) 5 %; TTFT P50 and
  P95 10 %; cycle RTT P50 and P95 10 % or 1 ms, whichever is larger (a
  relative bound alone would judge sub-millisecond noise at RTT 0).

A difference beyond its tolerance that the two legs' own sampling cannot tell from zero
(it lies within the 95 % intervals of both legs' figures combined, sqrt(h_sim^2 + h_other^2)
of half-widths h, where the leaderboard has intervals: tokens/s, TTFT and cycle RTT
percentiles) is
not a miss but ``unresolved``: a median of 16 queries on a jittered link has a standard error
near its 10 % tolerance, and only more queries can judge it.  The analytic leg has no such
allowance: its prediction takes the cell's own acceptance and stage times, so the spread of
the queries is not its error.

A miss with a known cause carries it in its note: on a cell with loss, the
link model's TCP has no tail-loss probe, no congestion window and no loss on
ACKs; a P95 over few queries of a jittered link is itself noisy; and in vm
mode the router VM's timer wake-ups spread the path's round trip, of which
the sim leg adds only the median (the note says how far the path's own P95
lay above it, where validate measured that; on a lossy cell both causes are
named: the tail holds both).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Check:
    legs: str                 # "analytic vs sim" or "sim vs <mode>"
    metric: str               # a summary column
    tolerance: float          # relative
    floor: float = 0.0        # absolute, in the metric's unit: the bound is the larger
    static_only: bool = False  # judged only without jitter and loss

    def bound(self, reference: float) -> float:
        return max(self.tolerance * abs(reference), self.floor)

    def sampling_bound(self, *legs: pd.Series) -> float:
        """The 95 % bound of the difference between the legs' figures from their intervals
        (NaN where a leg has none)."""
        halves = [(leg.get(f"{self.metric}_high", np.nan) - leg.get(f"{self.metric}_low", np.nan))
                  / 2.0 for leg in legs]
        return float(np.sqrt(np.sum(np.square(halves))))

    @property
    def label(self) -> str:
        return f"±{self.tolerance:.0%}" + (f" (≥{self.floor:g})" if self.floor else "")


SIM_VS_MEASURED = (
    Check("sim vs {mode}", "tokens_per_s", 0.05),
    Check("sim vs {mode}", "tokens_per_s_p50", 0.05),
    Check("sim vs {mode}", "ttft_ms_p50", 0.10),
    Check("sim vs {mode}", "ttft_ms_p95", 0.10),
    Check("sim vs {mode}", "rtt_ms_p50", 0.10, floor=1.0),
    Check("sim vs {mode}", "rtt_ms_p95", 0.10, floor=1.0),
)
ANALYTIC_VS_SIM = Check("analytic vs sim", "tokens_per_s", 0.03, static_only=True)

LOSS_CAUSE = ("the link model's TCP simplifies loss recovery (RTO only: no tail-loss probe, "
              "no congestion window, no ACK loss)")
JITTER_CAUSE = "a tail percentile over few queries of a jittered link is itself noisy"
SAMPLING_NOTE = "within the legs' sampling error (±{bound:.3g}, 95 %): more queries would judge it"
VM_TIMER_CAUSE = ("the router VM's timer wake-ups spread the path's own round trip; the sim "
                  "leg adds only its median")
PATH_TAIL_NOTE = " (on the path alone, its P95 lay {tail:.1f} ms above its median)"


def _known_cause(row: pd.Series, check: Check, mode: str, path_tail_ms: float) -> str:
    causes = []
    if mode == "vm" and check.metric.startswith("rtt_ms_p9"):
        causes.append(VM_TIMER_CAUSE + ("" if np.isnan(path_tail_ms)
                                        else PATH_TAIL_NOTE.format(tail=path_tail_ms)))
    if row["loss_pct"] > 0:
        causes.insert(0, LOSS_CAUSE)
    elif row["jitter_ms"] > 0 and check.metric.endswith(("p95", "p99")):
        causes.append(JITTER_CAUSE)
    return "; or ".join(causes)


def _row(cell: pd.Series, check: Check, mode: str, reference: float, measured: float,
         judged: bool, sampling: float = np.nan, path_tail_ms: float = np.nan) -> dict:
    """One check's row; ``sampling``: the bound the legs' own sampling puts on the
    difference (NaN: none known); ``path_tail_ms``: how far the measured path's own P95
    lies above its median (NaN: not measured)."""
    difference = (measured - reference) / reference if reference else np.nan
    within = bool(abs(measured - reference) <= check.bound(reference))
    verdict = "pass" if within else "miss"
    note = ""
    if not judged:
        verdict, note = "reported", ("jitter or loss: the closed form has no jitter, and takes "
                                     "loss as its mean resend wait, which a cell's few losses "
                                     "sample too thinly to judge")
    elif not within and abs(measured - reference) <= sampling:
        verdict, note = "unresolved", SAMPLING_NOTE.format(bound=sampling)
    elif not within:
        note = _known_cause(cell, check, mode, path_tail_ms)
    return {"cell": cell["cell"], "label": cell["label"], "strategy": cell["strategy"],
            "legs": check.legs.format(mode=mode), "metric": check.metric,
            "reference": reference, "measured": measured, "difference": difference,
            "tolerance": check.label, "verdict": verdict, "note": note}


def compare(sim: pd.DataFrame, measured: pd.DataFrame, mode: str,
            path_tail_ms: float = np.nan) -> pd.DataFrame:
    """Every check of every (cell, strategy) the two legs share; see the module docstring.
    ``path_tail_ms``: how far the calibrated path's P95 lay above its median."""
    keyed = measured.set_index(["cell", "label"])
    rows = []
    for _, cell in sim.iterrows():
        static = cell["jitter_ms"] == 0 and cell["loss_pct"] == 0
        predicted = cell.get("predicted_tokens_per_s", np.nan)
        if np.isfinite(predicted):
            rows.append(_row(cell, ANALYTIC_VS_SIM, mode, predicted, cell["tokens_per_s"],
                             judged=static or not ANALYTIC_VS_SIM.static_only))
        if (cell["cell"], cell["label"]) not in keyed.index:
            continue
        other = keyed.loc[(cell["cell"], cell["label"])]
        for check in SIM_VS_MEASURED:
            if check.metric in cell and pd.notna(cell[check.metric]):
                rows.append(_row(cell, check, mode, cell[check.metric], other[check.metric],
                                 judged=True, sampling=check.sampling_bound(cell, other),
                                 path_tail_ms=path_tail_ms))
    return pd.DataFrame(rows)


def passed(comparison: pd.DataFrame) -> bool:
    return not (comparison["verdict"] == "miss").any()
