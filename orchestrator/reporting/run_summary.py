"""A finished run's summary: the measured per-strategy rows (``reporting.summary``) with the
analytic prediction beside each rate (``validation.prediction``), from the run folder alone.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from agents.backends.synthetic import SyntheticPairConfig
from nasd.analytic import Acceptance
from nasd.estimator import Calibration, Line
from nasd.table import build_table
from orchestrator.config.job import StrategyRun, plan
from orchestrator.config.run_spec import RunSpec
from orchestrator.reporting.summary import mark_queries, read_jsonl, structured, summarize
from orchestrator.results import ResultsFolder
from shaping.link_model import transfer_s
from shaping.profile import LinkState, with_rtt
from validation.prediction import (
    HostTimes,
    measured_acceptance,
    measured_times,
    modeled_times,
    predicted_crossover_rtt_ms,
    predicted_tokens_per_s,
    speculation_cycles,
)


NO_QUERIES = ["label", "strategy", "k", "queries"]   # the summary of a run that finished none


def _records(folder: Path, spec: RunSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    queries = read_jsonl(folder / ResultsFolder.QUERIES)
    cycles = read_jsonl(folder / ResultsFolder.CYCLES)
    queries = mark_queries(queries, {prompt.id: prompt.kind for prompt in spec.prompts},
                           greedy=spec.job.decoding == "greedy")
    return queries, cycles


def _host_times(spec: RunSpec, queries: pd.DataFrame, cycles: pd.DataFrame) -> HostTimes | None:
    """The stage times the run's records measured, for every pair: a synthetic pair's
    configured times leave out the agents' own work per cycle and per streamed token (about
    1 ms of a 30 ms cloud-only step here), which is the run's, not the link's.  A synthetic
    run without speculation cycles falls back to its configured times (what the pair
    promises: ``validation.sim_fidelity`` judges the sim against those)."""
    measured = measured_times(queries, cycles)
    if measured is None and isinstance(spec.model_pair, SyntheticPairConfig):
        return modeled_times(spec.model_pair)
    return measured


def summarize_folder(folder: Path, spec: RunSpec) -> pd.DataFrame:
    """``summary.csv`` of the run in ``folder``, from what it holds: also of a run cut short,
    whose rows then say ``complete`` False (every row: the run did not finish every query
    it planned, ``queries_planned`` per strategy run)."""
    queries, cycles = _records(folder, spec)
    planned = Counter(request.label for request in spec.requests())
    summary = summarize(queries, cycles) if len(queries) else pd.DataFrame(columns=NO_QUERIES)
    summary["queries_planned"] = [planned[label] for label in summary["label"]]
    summary["complete"] = len(queries) >= sum(planned.values())
    runs = {run.label: run for run in plan(spec.job)}
    times = _host_times(spec, queries, cycles) if len(queries) else None
    if times is not None:
        link = spec.profile.initial
        summary["predicted_tokens_per_s"] = [
            _prediction(runs[row["label"]], row, spec, cycles, times, link)
            for _, row in summary.iterrows()]
        summary["crossover_rtt_ms"] = [_crossover(runs[row["label"]], row, spec, cycles, times)
                                       for _, row in summary.iterrows()]
    summary.to_csv(folder / ResultsFolder.SUMMARY, index=False)
    return summary


@dataclass(frozen=True)
class FinishedRun:
    """A finished run folder, read once: what its predictions at other RTTs are made from."""

    spec: RunSpec
    cycles: pd.DataFrame
    times: HostTimes | None
    summary: pd.DataFrame      # summary.csv by label
    runs: dict[str, StrategyRun]

    @classmethod
    def load(cls, folder: Path) -> "FinishedRun":
        spec = RunSpec.from_folder(folder)
        queries, cycles = _records(folder, spec)
        summary = structured(pd.read_csv(folder / ResultsFolder.SUMMARY)).set_index(
            "label", drop=False)
        return cls(spec, cycles, _host_times(spec, queries, cycles), summary,
                   {run.label: run for run in plan(spec.job)})

    def _row(self, label: str) -> pd.Series | None:
        return None if self.times is None or label not in self.summary.index \
            else self.summary.loc[label]

    def predicted_curve(self, label: str, rtts_ms: Sequence[float]) -> np.ndarray:
        """The analytic tokens/s of strategy ``label``, had the link's RTT been each of
        ``rtts_ms`` (same rates, acceptance, compute times and bytes per cycle)."""
        row = self._row(label)
        if row is None:
            return np.full(len(rtts_ms), np.nan)
        base = self.spec.profile.initial
        return np.array([_prediction(self.runs[label], row, self.spec, self.cycles, self.times,
                                     with_rtt(base, rtt)) for rtt in rtts_ms])

    def planned_k(self, label: str, rtts_ms: Sequence[float]) -> np.ndarray:
        """The K the closed form chooses for strategy ``label`` at each of ``rtts_ms``
        (``nasd.table``, on the run's acceptance, compute times and bytes per cycle and its
        link's bandwidth; 0 where cloud-only decodes faster); NaN without a model, or without
        an acceptance to plan on (a run whose every cycle was a stretch)."""
        row = self._row(label)
        own, _ = _speculated(_own_cycles(label, self.cycles))
        acceptance = None if row is None else _acceptance(row, self.spec, own)
        if acceptance is None or np.isnan(np.atleast_1d(acceptance)).any():
            return np.full(len(rtts_ms), np.nan)
        link = self.spec.profile.initial
        up, down = _cycle_bytes(row)
        transfer = transfer_s(link, "uplink", up) + transfer_s(link, "downlink", down)
        calibration = Calibration(acceptance, self.times.edge,
                                  bytes_up=Line(up), bytes_down=Line(down),
                                  seconds_per_byte=transfer / (up + down) if up + down else 0.0)
        table = build_table(calibration, sorted(set(rtts_ms)), self.spec.job.nasd_k_min,
                            self.spec.job.nasd_k_max)
        return np.array([table.row_at(rtt).k for rtt in rtts_ms], dtype=float)


def _acceptance(row: pd.Series, spec: RunSpec, own_cycles: pd.DataFrame) -> Acceptance:
    """The run's measured acceptance: by position from the strategy's own cycles where it has
    them, else the synthetic pair's configured law, else the pooled per-token rate."""
    by_position = measured_acceptance(own_cycles)
    if by_position is not None:
        return by_position
    if isinstance(spec.model_pair, SyntheticPairConfig):
        return spec.model_pair.acceptance_law
    measured = row.get("per_token_acceptance")
    return measured if pd.notna(measured) else float("nan")


def _cycle_bytes(row: pd.Series) -> tuple[float, float]:
    up, down = row.get("bytes_up_per_cycle"), row.get("bytes_down_per_cycle")
    return (up if pd.notna(up) else 0.0), (down if pd.notna(down) else 0.0)


def _prediction(run: StrategyRun, row: pd.Series, spec: RunSpec, cycles: pd.DataFrame,
                times: HostTimes, link: LinkState) -> float:
    own = _own_cycles(run.label, cycles)
    speculated, answer_ends = _speculated(own)
    ks = speculated["k"].tolist() if len(own) else [run.k]
    stretched = own.drop(speculated.index.union(answer_ends.index))
    stretched = stretched[stretched["served_by"] != "dropped"] if "served_by" in stretched \
        else stretched
    return predicted_tokens_per_s(run.strategy, ks, _acceptance(row, spec, speculated), times,
                                  link, *_cycle_bytes(row),
                                  stretches=list(zip(stretched.get("served_by", []),
                                                     stretched.get("tokens", []),
                                                     stretched.get("cycle", []))),
                                  draft_ahead=run.draft_ahead,
                                  answer_ends=list(zip(answer_ends.get("k", []),
                                                       answer_ends.get("tokens", []))))


def _own_cycles(label: str, cycles: pd.DataFrame) -> pd.DataFrame:
    return cycles[cycles["label"] == label] if not cycles.empty else cycles


def _speculated(cycles: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The speculation cycles of ``cycles``: those whose block the draft did not end with its
    EOS (what the acceptance and E[tau] describe), and those it did (the answer's end;
    folders from before ``draft_eos`` have none)."""
    speculated = speculation_cycles(cycles)
    if "draft_eos" not in speculated:
        return speculated, speculated.iloc[:0]
    ends = speculated["draft_eos"].fillna(False).astype(bool)
    return speculated[~ends], speculated[ends]


def _crossover(run: StrategyRun, row: pd.Series, spec: RunSpec, cycles: pd.DataFrame,
               times: HostTimes) -> float:
    if run.strategy != "fixed-k":
        return float("nan")
    speculated, _ = _speculated(_own_cycles(run.label, cycles))
    return predicted_crossover_rtt_ms(run.k, _acceptance(row, spec, speculated), times,
                                      spec.profile.initial, *_cycle_bytes(row))
