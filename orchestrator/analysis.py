"""From a results folder (a sweep or one run) to answers: leaderboard, reversal RTT.

- ``load_results``: every finished cell's summary, one row per (cell,
  strategy), with the cell's link (RTT, bandwidth, jitter, loss) and codec.
- ``leaderboard``: per cell, strategies ranked by tokens/s and by accuracy
  (1 is best; ties share the better rank), cloud compute per output token
  beside the latency figures.
- ``reversal``: per series of cells that differ only in RTT, the RTT where
  each fixed-K (and the best fixed-K at each RTT) falls below cloud-only,
  measured and as the analytic model predicts it.
- ``ianvs_rank``: the leaderboard in Ianvs' ``rank/all_rank.csv`` layout.

Pure pandas over the files the runs wrote; no plotting, no printing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from orchestrator.configs import ConfigError
from orchestrator.job import JobConfig
from orchestrator.results import ResultsFolder
from orchestrator.sweep import SweepFolder

CELL_COLUMNS = ["cell", "rtt_ms", "bandwidth_mbps", "jitter_ms", "loss_pct", "codec"]
SERIES_COLUMNS = ["bandwidth_mbps", "jitter_ms", "loss_pct", "codec"]


def cell_folders(path: Path) -> list[tuple[str, Path]]:
    """(cell name, run folder) of every finished cell: a sweep's in order, or the run itself."""
    if (path / SweepFolder.PLAN).is_file():
        folder = SweepFolder(path)
        _, _, names = folder.plan()
        finished = folder.finished()
        return [(name, folder.cell_path(name)) for name in names if name in finished]
    if (path / ResultsFolder.SUMMARY).is_file():
        return [(path.name, path)]
    raise ConfigError(f"{path}: neither a sweep folder ({SweepFolder.PLAN}) nor a finished run "
                      f"folder ({ResultsFolder.SUMMARY})")


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
        summary = pd.read_csv(folder / ResultsFolder.SUMMARY)
        config = yaml.safe_load((folder / ResultsFolder.CONFIG).read_text())
        link = cell_link(config)
        frames.append(summary.assign(cell=name, folder=str(folder), **link))
    if not frames:
        return pd.DataFrame(columns=CELL_COLUMNS + ["strategy"])
    table = pd.concat(frames, ignore_index=True)
    first = CELL_COLUMNS + ["profile", "mode", "static", "folder"]
    return table[first + [c for c in table.columns if c not in first]]


def leaderboard(results: pd.DataFrame) -> pd.DataFrame:
    """``results`` with per-cell ranks by tokens/s and by accuracy, fastest first."""
    ranked = results.copy()
    by_cell = ranked.groupby("cell", sort=False)
    ranked["rank_tokens_per_s"] = by_cell["tokens_per_s"].rank(ascending=False, method="min")
    ranked["rank_accuracy"] = by_cell["accuracy"].rank(ascending=False, method="min")
    order = {cell: i for i, cell in enumerate(ranked["cell"].unique())}
    ranked = ranked.sort_values(["cell", "rank_tokens_per_s"],
                                key=lambda c: c.map(order) if c.name == "cell" else c)
    return ranked.reset_index(drop=True)


def _first_crossing(rtts: np.ndarray, gap: np.ndarray) -> tuple[float, str]:
    """Where ``gap`` (speculation's seconds per token minus cloud-only's) turns positive.

    Seconds per token grow linearly with the RTT under the model, so a
    linear interpolation between the grid's RTTs is exact where it holds.
    """
    if np.all(gap > 0):
        return np.nan, f"slower than cloud-only at every RTT (from {rtts[0]:g} ms)"
    for i in range(1, len(rtts)):
        if gap[i - 1] <= 0 < gap[i]:
            share = -gap[i - 1] / (gap[i] - gap[i - 1])
            return float(rtts[i - 1] + share * (rtts[i] - rtts[i - 1])), ""
    return np.nan, f"faster than cloud-only up to the largest RTT ({rtts[-1]:g} ms)"


def reversal(results: pd.DataFrame) -> pd.DataFrame:
    """Measured and predicted reversal RTT per series and fixed-K (and ``best fixed-K``).

    A series is the static cells that share bandwidth, jitter, loss and codec
    and span at least two RTTs; each needs cloud-only and fixed-K rows.
    """
    rows = []
    static = results[results["static"]] if "static" in results else results
    for key, series in static.groupby(SERIES_COLUMNS, sort=False, dropna=False):
        if series["rtt_ms"].nunique() < 2:
            continue
        cloud = series[series["strategy"] == "cloud-only"].groupby("rtt_ms")["tokens_per_s"].mean()
        fixed = series[series["strategy"].str.startswith("fixed-k")]
        if cloud.empty or fixed.empty:
            continue
        per_label = {label: group for label, group in fixed.groupby("strategy", sort=False)}
        best = fixed.loc[fixed.groupby("rtt_ms")["tokens_per_s"].idxmax()]
        per_label["best fixed-K"] = best
        for label, group in per_label.items():
            rate = group.groupby("rtt_ms")["tokens_per_s"].mean()
            rtts = np.array(sorted(set(rate.index) & set(cloud.index)))
            if len(rtts) < 2:
                continue
            gap = 1.0 / rate.loc[rtts].to_numpy() - 1.0 / cloud.loc[rtts].to_numpy()
            measured, note = _first_crossing(rtts, gap)
            predicted = (group["crossover_rtt_ms"].median() if "crossover_rtt_ms" in group
                         else np.nan)
            if predicted < 0:
                note = "; ".join(filter(None, [note, "the model predicts it never pays (a "
                                               "negative reversal RTT)"]))
            rows.append({**dict(zip(SERIES_COLUMNS, key)), "strategy": label,
                         "rtts": " ".join(f"{r:g}" for r in rtts),
                         "measured_reversal_rtt_ms": measured,
                         "predicted_reversal_rtt_ms": predicted, "note": note})
    return pd.DataFrame(rows)


IANVS_METRICS = {"tokens_per_s": "throughput", "ttft_ms_p50": "ttft_ms_p50",
                 "ttft_ms_p95": "ttft_ms_p95", "e2e_s_p50": "e2e_latency_s_p50",
                 "acceptance": "acceptance_rate", "accuracy": "accuracy",
                 "cloud_ms_per_token": "cloud_ms_per_token",
                 "bytes_up_per_token": "bytes_up_per_token"}


def ianvs_rank(board: pd.DataFrame, model_pair: str) -> pd.DataFrame:
    """Ianvs' rank table: ``rank algorithm <metrics> paradigm <modules> <hyperparameters>
    time url``, written space-separated with ``rank`` as the index label.

    Ianvs ranks one benchmark; here each network cell is one, so ``rank`` is
    the position by throughput within the cell, and the cell's link is among
    the hyperparameters.
    """
    table = pd.DataFrame({"rank": board["rank_tokens_per_s"].astype("Int64"),
                          "algorithm": board["strategy"]})
    for column, metric in IANVS_METRICS.items():
        table[metric] = board[column] if column in board else np.nan
    table["paradigm"] = "jointinference"
    table["edgemodel"], table["cloudmodel"] = f"{model_pair}:draft", f"{model_pair}:target"
    for column in ("cell", "rtt_ms", "bandwidth_mbps", "jitter_ms", "loss_pct", "codec", "k"):
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
