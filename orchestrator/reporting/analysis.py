"""From a results folder (a sweep or one run) to answers: leaderboard, reversal RTT.

- ``load_results``: every finished cell's summary, one row per (cell,
  strategy run: its ``label`` and structured ``strategy``, ``k``), with the
  cell's link (RTT, bandwidth, jitter, loss) and codec.
- ``leaderboard``: per cell, the lossless strategies ranked by tokens/s (lossy
  ones, such as edge-only, flagged and never ranked for speed) with whether
  each one's interval clears the next one's, and every strategy ranked by
  accuracy (1 is best; ties share the better rank), cloud compute per output
  token beside the latency figures.
- ``reversal``: per series of cells that differ only in RTT, the RTT where
  each fixed-K (and the best fixed-K at each RTT) falls below cloud-only,
  measured and as the analytic model predicts it, and whether the measured
  verdict rests on intervals that do not overlap.
- ``ianvs_rank``: the leaderboard in Ianvs' ``rank/all_rank.csv`` layout.
- ``guardrail_decisions``: under a budget guardrail, its decision on every strategy run
  of every cell (skipped or run, predicted against the budget, measured beside it).

Pure pandas over the files the runs wrote; no plotting, no printing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from nasd.policy import ADAPTIVE
from orchestrator.config.job import JobConfig
from orchestrator.config.loading import ConfigError
from orchestrator.reporting.summary import interval, is_lossy, speed_ranks, structured
from orchestrator.results import ResultsFolder, SweepFolder
from validation.stats import separated

CELL_COLUMNS = ["cell", "rtt_ms", "bandwidth_mbps", "jitter_ms", "loss_pct", "codec"]
SERIES_COLUMNS = ["bandwidth_mbps", "jitter_ms", "loss_pct", "codec"]
BEST_FIXED_K = "best fixed-K"   # the label of reversal's row for the fastest fixed K at each RTT
ADAPTIVE_POLICIES = tuple(ADAPTIVE)   # nasd, hf-heuristic, bandit: K chosen per cycle


def cell_folders(path: Path) -> list[tuple[str, Path]]:
    """(cell name, run folder) of every finished cell that ran (not those the guardrail
    skipped whole): a sweep's in order, or the run itself."""
    if (path / SweepFolder.PLAN).is_file():
        folder = SweepFolder(path)
        _, _, names = folder.plan()
        ran = set(folder.ran())
        return [(name, folder.cell_path(name)) for name in names if name in ran]
    if (path / ResultsFolder.SUMMARY).is_file():
        return [(path.name, path)]
    raise ConfigError(f"{path}: neither a sweep folder ({SweepFolder.PLAN}) nor a run folder "
                      f"({ResultsFolder.SUMMARY} or {ResultsFolder.CONFIG})")


def guardrail_decisions(path: Path) -> pd.DataFrame:
    """One row per strategy run a sweep's budget guardrail decided on (``cells.jsonl``'s
    ``guardrail``: ``orchestrator.config.guardrail.RunVerdict.record``), with its cell and
    whether the cell was skipped whole, cells in the sweep's order; empty for an unguarded
    sweep or a run folder."""
    if not (path / SweepFolder.PLAN).is_file():
        return pd.DataFrame()
    folder = SweepFolder(path)
    finished = folder.finished()
    decisions = pd.DataFrame([{"cell": name, "profile": finished[name]["profile"],
                               "codec": finished[name]["codec"],
                               "cell_skipped": bool(finished[name].get("skipped")), **decision}
                              for name in folder.plan()[2] if name in finished
                              for decision in finished[name].get("guardrail", [])])
    return decisions.astype({"k": "Int64"}) if "k" in decisions else decisions  # none: NaN


def incomplete_run(results: pd.DataFrame) -> str | None:
    """What to say of ``load_results`` of a run cut short (its summary: ``complete`` False),
    or None for a finished run or a sweep (which lists finished cells only)."""
    if results.empty or results["complete"].astype(bool).all():
        return None
    return (f"an incomplete run: {int(results['queries'].sum())} queries finished before it "
            f"stopped (summary.csv: complete False); what follows covers those")


def cell_link(config: dict) -> dict:
    """The cell columns from a run's resolved config (the uplink stands for a symmetric link)."""
    uplink = config["profile"]["initial"]["uplink"]
    downlink = config["profile"]["initial"]["downlink"]
    loss = uplink["loss"]
    return {"profile": config["profile"]["name"],
            "rtt_ms": uplink["delay_ms"] + downlink["delay_ms"],
            "bandwidth_mbps": uplink["bandwidth_mbps"] if uplink["bandwidth_mbps"] else np.inf,
            "jitter_ms": uplink["jitter_ms"],
            "loss_pct": loss.get("pct", np.nan) if loss["model"] == "random" else np.nan,
            "codec": JobConfig.model_validate(config["job"]).resolved_codec,
            "mode": config["mode"], "static": not config["profile"]["timeline"]}


def load_results(path: Path) -> pd.DataFrame:
    """One row per (cell, strategy): the cell's link columns, then its summary's."""
    frames = []
    for name, folder in cell_folders(path):
        # one block per column as read: consolidated before columns are added to it
        summary = structured(pd.read_csv(folder / ResultsFolder.SUMMARY)).copy()
        if "lossy" not in summary:          # written before lossy strategies were flagged
            summary["lossy"] = [is_lossy(row["strategy"], row.get("lossless", np.nan))
                                for _, row in summary.iterrows()]
        if "complete" not in summary:       # written before a cut-short run was summarized
            summary["complete"] = True
        config = yaml.safe_load((folder / ResultsFolder.CONFIG).read_text())
        link = cell_link(config)
        frames.append(summary.assign(cell=name, folder=str(folder), **link))
    if not frames:
        return pd.DataFrame(columns=CELL_COLUMNS + ["label", "strategy"])
    table = pd.concat(frames, ignore_index=True)
    first = CELL_COLUMNS + ["profile", "mode", "static", "folder"]
    return table[first + [c for c in table.columns if c not in first]]


def leaderboard(results: pd.DataFrame) -> pd.DataFrame:
    """``results`` with per-cell speed ranks of the lossless strategies (``speed_ranks``) and
    accuracy ranks of all; per cell the ranked ones fastest first, then the lossy ones."""
    ranked = results.reset_index(drop=True)
    ranked = ranked.join(pd.concat([speed_ranks(cell)
                                    for _, cell in ranked.groupby("cell", sort=False)]))
    ranked["rank_accuracy"] = ranked.groupby("cell", sort=False)["accuracy"].rank(
        ascending=False, method="min")
    order = {cell: i for i, cell in enumerate(ranked["cell"].unique())}
    ranked = ranked.assign(_cell=ranked["cell"].map(order), _rate=-ranked["tokens_per_s"])
    ranked = ranked.sort_values(["_cell", "rank_tokens_per_s", "_rate"], na_position="last",
                                kind="stable")
    return ranked.drop(columns=["_cell", "_rate"]).reset_index(drop=True)


def _first_crossing(rtts: np.ndarray, gap: np.ndarray) -> tuple[float, str, list[float]]:
    """Where ``gap`` (speculation's seconds per token minus cloud-only's) turns positive,
    why there is no such RTT, and the RTTs the verdict rests on (the two around the
    crossing, or every RTT when there is none).

    Seconds per token grow linearly with the RTT under the model, so a
    linear interpolation between the grid's RTTs is exact where it holds.
    """
    if np.all(gap > 0):
        return np.nan, f"slower than cloud-only at every RTT (from {rtts[0]:g} ms)", list(rtts)
    for i in range(1, len(rtts)):
        if gap[i - 1] <= 0 < gap[i]:
            share = -gap[i - 1] / (gap[i] - gap[i - 1])
            return (float(rtts[i - 1] + share * (rtts[i] - rtts[i - 1])), "",
                    [rtts[i - 1], rtts[i]])
    return (np.nan, f"faster than cloud-only up to the largest RTT ({rtts[-1]:g} ms)",
            list(rtts))


def _rates_by_rtt(rows: pd.DataFrame) -> pd.DataFrame:
    """Measured tokens/s and its interval bounds per RTT (the mean where cells repeat one)."""
    columns = ["tokens_per_s", "tokens_per_s_low", "tokens_per_s_high"]
    return rows.reindex(columns=["rtt_ms"] + columns).groupby("rtt_ms")[columns].mean()


def _settled(speculation: pd.DataFrame, cloud: pd.DataFrame,
             rtts: list[float]) -> tuple[bool | None, list[float]]:
    """Whether speculation's and cloud-only's tokens/s intervals are apart at every one of
    ``rtts`` (None where an interval is missing), and the RTTs where they overlap."""
    verdicts = {rtt: separated(interval(speculation.loc[rtt], "tokens_per_s"),
                               interval(cloud.loc[rtt], "tokens_per_s")) for rtt in rtts}
    overlapping = [rtt for rtt, apart in verdicts.items() if apart is False]
    if overlapping:
        return False, overlapping
    return (None if None in verdicts.values() else True), []


REVERSAL_COLUMNS = [*SERIES_COLUMNS, "label", "strategy", "k", "rtts",
                    "measured_reversal_rtt_ms", "measured_reversal_conclusive",
                    "predicted_reversal_rtt_ms", "note"]


def reversal(results: pd.DataFrame) -> pd.DataFrame:
    """Measured and predicted reversal RTT per series and fixed-K (and ``best fixed-K``), and
    the measured one of each adaptive K policy (nasd, which hands stretches to the cloud past
    the reversal, should show none).

    A series is the static cells that share bandwidth, jitter, loss and codec
    and span at least two RTTs; each needs cloud-only and fixed-K rows.  The
    measured verdict (a reversal RTT, or none in the range) is ``conclusive``
    when at the RTTs it rests on (the two around the crossing, or every RTT
    without one) fixed-K's and cloud-only's tokens/s intervals do not overlap;
    None where intervals are missing.
    """
    rows = []
    static = results[results["static"]] if "static" in results else results
    for key, series in static.groupby(SERIES_COLUMNS, sort=False, dropna=False):
        if series["rtt_ms"].nunique() < 2:
            continue
        cloud = _rates_by_rtt(series[series["strategy"] == "cloud-only"])
        fixed = series[series["strategy"] == "fixed-k"]
        if cloud.empty or fixed.empty:
            continue
        per_label = {label: group for label, group in fixed.groupby("label", sort=False)}
        best = fixed.loc[fixed.groupby("rtt_ms")["tokens_per_s"].idxmax()]
        per_label[BEST_FIXED_K] = best
        adaptive = series[series["strategy"].isin(ADAPTIVE_POLICIES)]
        per_label.update({label: group for label, group in adaptive.groupby("label", sort=False)})
        swept = sorted(series["rtt_ms"].unique())
        for label, group in per_label.items():
            rate = _rates_by_rtt(group)
            rtts = np.array(sorted(set(rate.index) & set(cloud.index)))
            missing = [rtt for rtt in swept if rtt not in rtts]
            unrun = ("not run beside cloud-only at " + ", ".join(f"{rtt:g}" for rtt in missing)
                     + " ms of the series' RTTs (a budget guardrail skips what it rejects)"
                     if missing else "")
            predicted = (group["crossover_rtt_ms"].median() if "crossover_rtt_ms" in group
                         else np.nan)
            if len(rtts) < 2:             # said, not dropped: one RTT shows no crossing
                measured, conclusive = np.nan, None
                notes = [f"no reversal measurable: {unrun}"]
            else:
                gap = (1.0 / rate.loc[rtts, "tokens_per_s"].to_numpy()
                       - 1.0 / cloud.loc[rtts, "tokens_per_s"].to_numpy())
                measured, note, basis = _first_crossing(rtts, gap)
                conclusive, overlapping = _settled(rate, cloud, basis)
                notes = [note, unrun]
                if overlapping:
                    notes.append("too wide to conclude: the tokens/s intervals of it and "
                                 "cloud-only overlap at "
                                 + ", ".join(f"{rtt:g}" for rtt in overlapping) + " ms")
                if predicted < 0:
                    notes.append("the model predicts it never pays (a negative reversal RTT)")
            strategy = group["strategy"].iloc[0]
            rows.append({**dict(zip(SERIES_COLUMNS, key)), "label": label, "strategy": strategy,
                         "k": group["k"].iloc[0] if label != BEST_FIXED_K else None,
                         "rtts": " ".join(f"{r:g}" for r in rtts),
                         "measured_reversal_rtt_ms": measured,
                         "measured_reversal_conclusive": conclusive,
                         "predicted_reversal_rtt_ms": predicted,
                         "note": "; ".join(filter(None, notes))})
    return pd.DataFrame(rows, columns=REVERSAL_COLUMNS)   # a single RTT: the header alone


IANVS_METRICS = {"tokens_per_s": "throughput", "tokens_per_s_low": "throughput_low",
                 "tokens_per_s_high": "throughput_high", "ttft_ms_p50": "ttft_ms_p50",
                 "ttft_ms_p95": "ttft_ms_p95", "e2e_s_p50": "e2e_latency_s_p50",
                 "acceptance": "acceptance_rate", "accuracy": "accuracy",
                 "cloud_ms_per_token": "cloud_ms_per_token",
                 "bytes_up_per_token": "bytes_up_per_token"}


def ianvs_rank(board: pd.DataFrame, model_pair: str) -> pd.DataFrame:
    """Ianvs' rank table: ``rank algorithm <metrics> paradigm <modules> <hyperparameters>
    time url``, written space-separated with ``rank`` as the index label.

    Ianvs ranks one benchmark; here each network cell is one, so ``rank`` is
    the position by throughput among the cell's lossless strategies (``nan``
    for lossy ones, which ``lossy`` flags), and the cell's link is among the
    hyperparameters.
    """
    table = pd.DataFrame({"rank": board["rank_tokens_per_s"].astype("Int64"),
                          "algorithm": board["label"]})
    for column, metric in IANVS_METRICS.items():
        table[metric] = board[column] if column in board else np.nan
    table["paradigm"] = "jointinference"
    table["edgemodel"], table["cloudmodel"] = f"{model_pair}:draft", f"{model_pair}:target"
    for column in ("cell", "rtt_ms", "bandwidth_mbps", "jitter_ms", "loss_pct", "codec", "k",
                   "lossy"):
        table[column] = board[column]
    table["time"] = pd.Timestamp.now().strftime("%Y-%m-%d %H:%M:%S").replace(" ", "T")
    table["url"] = board["folder"]
    return table.set_index("rank")


def write_ianvs_rank(board: pd.DataFrame, model_pair: str, folder: Path) -> Path:
    """``folder/rank/all_rank.csv`` as Ianvs writes it (space-separated, no empty fields)."""
    target = folder / "rank" / "all_rank.csv"
    target.parent.mkdir(exist_ok=True)
    ianvs_rank(board, model_pair).to_csv(target, sep=" ", na_rep="nan", encoding="utf-8")
    return target
