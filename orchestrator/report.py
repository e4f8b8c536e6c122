"""The report of a results folder: CSVs, the terminal's key tables, plots, one HTML page.

``report_folder`` writes ``leaderboard.csv``, ``reversal.csv`` and
``rank/all_rank.csv`` (Ianvs layout) next to the cells, the figures of
``orchestrator.plots`` under ``plots/``, and ``report.html``: one
self-contained page (figures inlined as data URIs, inline CSS, no script, no
external address) with the job, the key per-cell table, the full leaderboard,
the reversal RTTs, every figure, the figures skipped and why, and how to read
it all.  On the terminal it prints the key table and the reversal table.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from rich.console import Console
from rich.table import Table

from orchestrator.analysis import leaderboard, load_results, reversal, write_ianvs_rank
from orchestrator.plots import PLOTS, bandwidth_label, write_plots
from orchestrator.results import ResultsFolder
from orchestrator.summary import format_number
from orchestrator.sweep import SweepFolder

PLOTS_FOLDER = "plots"
REPORT = "report.html"


def key_frame(board: pd.DataFrame) -> pd.DataFrame:
    """One row per cell (formatted): the fastest strategy, cloud-only, the best fixed-K,
    the most accurate."""
    rows = []
    for cell, group in board.groupby("cell", sort=False):
        fastest = group.iloc[0]
        cloud = group.loc[group["strategy"] == "cloud-only", "tokens_per_s"]
        cloud_rate = cloud.iloc[0] if len(cloud) else np.nan
        fixed = group[group["strategy"].str.startswith("fixed-k")]
        accurate = group.sort_values("rank_accuracy").iloc[0]
        rows.append({
            "cell": cell, "fastest": fastest["strategy"],
            "tok/s": format_number(fastest["tokens_per_s"]),
            "model": format_number(fastest.get("predicted_tokens_per_s", np.nan)),
            "cloud-only tok/s": format_number(cloud_rate),
            "speed-up": format_number(fastest["tokens_per_s"] / cloud_rate, 2) + "x",
            "best fixed-K": fixed["strategy"].iloc[0] if len(fixed) else "-",
            "fixed-K tok/s": format_number(fixed["tokens_per_s"].iloc[0]) if len(fixed) else "-",
            "most accurate": accurate["strategy"] if pd.notna(accurate["accuracy"]) else "-",
            "accuracy": format_number(accurate["accuracy"], 2),
            "cloud ms/tok": format_number(fastest.get("cloud_ms_per_token", np.nan))})
    return pd.DataFrame(rows)


def reversal_frame(reversals: pd.DataFrame) -> pd.DataFrame:
    """The reversal RTTs per series (formatted)."""
    return pd.DataFrame({
        "bandwidth": reversals["bandwidth_mbps"].map(bandwidth_label),
        "jitter ms": reversals["jitter_ms"].map(lambda v: format_number(v, 0)),
        "loss %": reversals["loss_pct"].map(lambda v: format_number(v, 0)),
        "codec": reversals["codec"], "strategy": reversals["strategy"],
        "measured ms": reversals["measured_reversal_rtt_ms"].map(format_number),
        "predicted ms": reversals["predicted_reversal_rtt_ms"].map(format_number),
        "RTTs swept": reversals["rtts"], "note": reversals["note"]})


KEY_TITLE = "leaderboard (per cell; full table in leaderboard.csv)"
REVERSAL_TITLE = "performance reversal: RTT (ms) above which cloud-only decodes faster"
TEXT_COLUMNS = {"cell", "fastest", "best fixed-K", "most accurate", "bandwidth", "codec",
                "strategy", "RTTs swept", "note"}
LEGEND = ("tok/s: decoded tokens over decode time; model: the analytic prediction; "
          "speed-up: fastest over cloud-only; cloud ms/tok: the cloud's compute per "
          "output token of the fastest")


def rich_table(frame: pd.DataFrame, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in frame.columns:
        table.add_column(column, justify="left" if column in TEXT_COLUMNS else "right")
    for row in frame.itertuples(index=False):
        table.add_row(*map(str, row))
    return table


def run_config(board: pd.DataFrame) -> dict:
    """The resolved config of the first cell (job, model pair, prompts)."""
    return yaml.safe_load((Path(board["folder"].iloc[0]) / ResultsFolder.CONFIG).read_text())


def _values(series: pd.Series, unit: str = "") -> str:
    return ", ".join(f"{v:g}{unit}" for v in sorted(series.dropna().unique()))


def job_summary(path: Path, board: pd.DataFrame, config: dict) -> dict[str, str]:
    """What was run, as label -> text."""
    job, pair = config["job"], config["model_pair"]
    prompts = min(len(config["prompts"]), job["max_queries"] or len(config["prompts"]))
    cells = board["cell"].nunique()
    if (path / SweepFolder.PLAN).is_file():
        cells = f"{cells} of {len(SweepFolder(path).plan()[2])} finished"
    return {
        "job": f"{job['name']}: {job['description']}".strip().rstrip(":"),
        "mode": ", ".join(board["mode"].unique()),
        "model pair": f"{pair['name']} ({pair['backend']}): {pair['description']}".strip(),
        "prompts": f"{job['prompts']}, {prompts} prompts x "
                   f"{job['repetitions']} repetitions, up to {job['max_new_tokens']} new tokens, "
                   f"{job['decoding']} decoding, seed {job['seed']}",
        "strategies": ", ".join(job["strategies"]) + f" (fixed-k: K = "
                      f"{', '.join(map(str, job['k_values']))}; cloud-spec: K = "
                      f"{job['cloud_spec_k']})",
        "cells": str(cells),
        "RTT": _values(board["rtt_ms"], " ms"),
        "bandwidth": ", ".join(map(bandwidth_label, sorted(board["bandwidth_mbps"].unique()))),
        "jitter": _values(board["jitter_ms"], " ms"),
        "random loss": _values(board["loss_pct"], " %"),
        "codecs": ", ".join(board["codec"].unique()),
    }


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { padding: 0.2em 0.6em; border-bottom: 1px solid #e4e4e4; text-align: right;
         white-space: nowrap; }
th { background: #f3f3f3; position: sticky; top: 0; }
td:first-child, th:first-child { text-align: left; }
table.summary td { text-align: left; white-space: normal; }
.scroll { overflow: auto; max-height: 40em; border: 1px solid #ddd; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.95em; color: #444; margin-top: 0.3em; }
dt { font-weight: bold; margin-top: 0.5em; } dd { margin-left: 1.5em; }
"""

HOW_TO_READ = {
    "tok/s": "decoded tokens over decode time, (n_tokens - 1) / (t_last - t_first) per "
             "query and summed over queries for the cell's figure: prefill and the first "
             "token are excluded (they are in TTFT).",
    "model": "the analytic model's prediction for the same strategy in the same cell: "
             "E[tokens per cycle] over (K drafts + verify + transfer of the cycle's bytes + "
             "RTT), with the cell's measured acceptance and compute times.",
    "speed-up": "the fastest strategy's tok/s over cloud-only's in the same cell; edge-only "
                "is fastest where it runs but is lossy (the draft's output, see accuracy).",
    "reversal RTT": "the RTT above which cloud-only decodes faster than fixed-K, "
                    "interpolated between the swept RTTs (measured) or from the model "
                    "(predicted; negative: slower than cloud-only even at zero RTT).",
    "TTFT, e2e": "query submitted to first output token, and to last, on the edge (ms, s); "
                 "P50/P95/P99 are over queries and repetitions.",
    "bytes per token": "data-plane payload bytes per output token, edge to cloud (up) and "
                       "cloud to edge (down).",
    "cloud ms/tok": "the cloud's compute seconds per output token: the cloud's cost.",
    "accuracy, lossless": "share of answers that are right, where the prompts have answers; "
                          "share of outputs identical to cloud-only's (greedy decoding).",
    "ranks, bandwidth": "rank 1 is best within a cell, ties share the better rank; "
                        "bandwidth inf means the link was not rate-limited (unshaped).",
}


def _table_html(frame: pd.DataFrame, **options) -> str:
    return frame.to_html(index=False, border=0, na_rep="-", **options)


def leaderboard_html(board: pd.DataFrame) -> str:
    """The whole leaderboard, ranks beside the strategy, without the run folders."""
    ranks = ["rank_tokens_per_s", "rank_accuracy"]
    rest = [c for c in board.columns if c not in ranks + ["cell", "strategy", "folder", "mode"]]
    return _table_html(board[["cell", "strategy"] + ranks + rest],
                       float_format=lambda v: f"{v:.4g}")


def _figure_html(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure id="{html.escape(path.stem)}"><img alt="{html.escape(path.name)}" '
            f'src="data:image/png;base64,{data}"><figcaption><b>{html.escape(path.name)}</b>: '
            f"{html.escape(caption)}</figcaption></figure>")


def html_page(path: Path, board: pd.DataFrame, reversals: pd.DataFrame, config: dict,
              written: list[Path], skipped: dict[str, str]) -> str:
    captions = {plot.name: plot.caption for plot in PLOTS}
    summary = pd.DataFrame(job_summary(path, board, config).items())
    parts = [
        f"<h1>Cloud-edge speculative decoding: {html.escape(path.name)}</h1>",
        _table_html(summary, header=False, classes="summary"),
        f"<h2>Per cell</h2><p>{html.escape(LEGEND)}.</p>",
        f'<div class="scroll">{_table_html(key_frame(board))}</div>',
        "<h2>Performance reversal</h2>",
        (_table_html(reversal_frame(reversals)) if len(reversals) else
         "<p>No series of static cells spans two RTTs with cloud-only and fixed-K: "
         "no reversal to compute.</p>"),
        "<h2>Figures</h2>",
        *(_figure_html(figure, captions[figure.name]) for figure in written),
    ]
    if skipped:
        parts += ["<h3>Skipped figures</h3><ul>",
                  *(f"<li><b>{html.escape(name)}</b>: {html.escape(why)}</li>"
                    for name, why in skipped.items()), "</ul>"]
    parts += ["<h2>Full leaderboard</h2><p>Every strategy of every cell, fastest first "
              "within a cell (also in leaderboard.csv).</p>",
              f'<div class="scroll">{leaderboard_html(board)}</div>',
              "<h2>How to read this page</h2><dl>",
              *(f"<dt>{html.escape(term)}</dt><dd>{html.escape(text)}</dd>"
                for term, text in HOW_TO_READ.items()), "</dl>"]
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(path.name)}: report</title><style>{CSS}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


def report_folder(path: Path, console: Console) -> Path:
    """Analyse ``path`` (a sweep or a run folder), write the files, print the key tables."""
    results = load_results(path)
    if results.empty:
        console.print(f"{path}: no finished cell yet")
        return path
    board = leaderboard(results)
    reversals = reversal(board)
    config = run_config(board)
    board.to_csv(path / "leaderboard.csv", index=False)
    reversals.to_csv(path / "reversal.csv", index=False)
    write_ianvs_rank(board, config["job"]["model_pair"], path)
    console.print(rich_table(key_frame(board), KEY_TITLE))
    if not reversals.empty:
        console.print(rich_table(reversal_frame(reversals), REVERSAL_TITLE))
    console.print(LEGEND)
    written, skipped = write_plots(results, path / PLOTS_FOLDER)
    (path / REPORT).write_text(html_page(path, board, reversals, config, written, skipped))
    for name, why in skipped.items():
        console.print(f"plot {name} skipped: {why}")
    console.print(f"report: {path / REPORT} (figures: {len(written)} under {PLOTS_FOLDER}/, "
                  f"{len(skipped)} skipped)")
    return path
