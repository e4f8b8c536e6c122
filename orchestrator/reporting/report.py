"""The report of a results folder: CSVs, the terminal's key tables, plots, one HTML page.

``write_report`` writes ``leaderboard.csv`` (with ``lossy``, the speed rank
among lossless strategies, ``separated_from_next``, ``model_vs_measured`` and
every interval), ``reversal.csv`` and ``rank/all_rank.csv`` (Ianvs layout)
next to the cells, the figures of ``orchestrator.reporting.plots`` under ``plots/``,
and ``report.html``: one self-contained page (figures inlined as data URIs,
inline CSS, no script, no external address) that fits a 1280 px window
(text and intervals wrap; the full leaderboard is two tables) with the job,
what the intervals allow one to conclude, the key per-cell table, the
reversal RTTs, under device emulation the passes padded and overrun per cell,
under a budget guardrail its decision on every strategy run (also ``guardrail.csv``),
every figure, the figures skipped and why, the full leaderboard, and every
term defined (``orchestrator run`` calls it after its own summary).
``report_folder`` (``orchestrator report``, the end of a sweep) writes the same and
prints the key table, the reversal table, the device emulation table, the
guardrail's, their legend and the conclusions.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from rich.console import Console

from agents.backends.emulated import DeviceEmulation
from orchestrator.config.job import JobConfig, largest_k
from orchestrator.config.loading import parse
from orchestrator.config.run_spec import RunSpec
from orchestrator.reporting.analysis import (
    guardrail_decisions,
    incomplete_run,
    leaderboard,
    load_results,
    reversal,
    write_ianvs_rank,
)
from orchestrator.reporting.plots import PLOTS, bandwidth_label, write_plots
from orchestrator.reporting.run_summary import summarize_folder
from orchestrator.reporting.summary import (
    EMULATION_GLOSSARY,
    GLOSSARY,
    INTERVAL_RULE,
    SPECULATION_COLUMNS,
    SPEED_COLUMNS,
    emulation_conclusion,
    format_crossover,
    format_measured,
    format_number,
    formatted_frame,
    interval,
    model_miss,
    model_vs_measured,
    print_table,
    text_list,
    verdict_of,
)
from orchestrator.results import ResultsFolder, SweepFolder
from validation.stats import separated

PLOTS_FOLDER = "plots"
REPORT = "report.html"


def _clear_or_overlaps(verdict) -> str:
    """A separation verdict as the key table words it."""
    return {True: "clear", False: "overlaps"}.get(verdict_of(verdict), "no interval")


def _lead(fastest: pd.Series, runner_up: pd.Series | None) -> str:
    """The runner-up and whether the fastest's tokens/s interval clears it."""
    if runner_up is None:
        return "-"
    return f"{runner_up['label']}: {_clear_or_overlaps(fastest['separated_from_next'])}"


def _speed_up(fastest: pd.Series, cloud: pd.Series | None) -> str:
    """Fastest lossless over cloud-only, and whether their intervals are apart."""
    if cloud is None:
        return "-"
    ratio = format_number(fastest["tokens_per_s"] / cloud["tokens_per_s"], 2) + "x"
    if fastest["label"] == cloud["label"]:
        return ratio
    verdict = separated(interval(fastest, "tokens_per_s"), interval(cloud, "tokens_per_s"))
    return f"{ratio} {_clear_or_overlaps(verdict)}"


def key_frame(board: pd.DataFrame) -> pd.DataFrame:
    """One row per cell (formatted): the fastest lossless strategy with its interval, whether
    it clears the runner-up, the model beside it, cloud-only and the speed-up, the lossy
    strategies (shown, never ranked), the most accurate.  Costs (cloud compute, bytes) are in
    the full leaderboard."""
    rows = []
    for cell, group in board.groupby("cell", sort=False):
        ranked = group.dropna(subset=["rank_tokens_per_s"])
        cloud = group[group["strategy"] == "cloud-only"]
        cloud = cloud.iloc[0] if len(cloud) else None
        lossy = group[group["lossy"].astype(bool)]
        accurate = group.sort_values("rank_accuracy", kind="stable").iloc[0]
        row = {"cell": cell}
        if len(ranked):
            fastest = ranked.iloc[0]
            row.update({
                "fastest lossless": fastest["label"],
                "tok/s": format_measured(fastest, "tokens_per_s"),
                "runner-up": _lead(fastest, ranked.iloc[1] if len(ranked) > 1 else None),
                "model": " ".join(filter(None, [
                    format_number(fastest.get("predicted_tokens_per_s", np.nan)),
                    model_vs_measured(fastest)])),
                "cloud-only": format_number(cloud["tokens_per_s"]) if cloud is not None else "-",
                "speed-up": _speed_up(fastest, cloud)})
        row["lossy (unranked)"] = ", ".join(f"{r['label']} {format_number(r['tokens_per_s'])}"
                                           for _, r in lossy.iterrows()) or "-"
        row["most accurate"] = (f"{accurate['label']} {format_number(accurate['accuracy'], 2)}"
                                if pd.notna(accurate["accuracy"]) else "-")
        rows.append(row)
    return pd.DataFrame(rows).fillna("-")


def reversal_frame(reversals: pd.DataFrame) -> pd.DataFrame:
    """The reversal RTTs per series (formatted); a negative prediction reads ``never``."""
    conclusive = reversals.get("measured_reversal_conclusive",
                               pd.Series(None, index=reversals.index, dtype=object))
    return pd.DataFrame({
        "bandwidth": reversals["bandwidth_mbps"].map(bandwidth_label),
        "jitter ms": reversals["jitter_ms"].map(lambda v: format_number(v, 0)),
        "loss %": reversals["loss_pct"].map(lambda v: format_number(v, 0)),
        "codec": reversals["codec"], "strategy": reversals["label"],
        "measured ms": reversals["measured_reversal_rtt_ms"].map(format_number),
        "conclusive": conclusive.map(lambda value: {True: "yes", False: "no: overlap"}.get(
            verdict_of(value), "-")),
        "predicted ms": reversals["predicted_reversal_rtt_ms"].map(format_crossover),
        "RTTs swept": reversals["rtts"], "note": reversals["note"]})


def _listed(items: list[str], most: int = 8) -> str:
    """``a, b, c`` (at most ``most``, then how many more)."""
    shown = ", ".join(items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def board_conclusions(board: pd.DataFrame, reversals: pd.DataFrame) -> list[str]:
    """What the intervals allow over all cells: whether each cell's fastest lossless strategy
    clears its runner-up, which strategies are lossy, where the model lies against the
    measured interval, and which measured reversals rest on overlapping intervals."""
    cells = board["cell"].nunique()
    ranked = board.dropna(subset=["rank_tokens_per_s"])      # fastest first within a cell
    leaders = ranked.groupby("cell", sort=False)["label"].agg(lambda names: " vs ".join(
        names.iloc[:2]))
    firsts = ranked.drop_duplicates("cell")
    verdicts = firsts["separated_from_next"].map(verdict_of)
    close = [f"{row['cell']} ({leaders[row['cell']]})"
             for (_, row), verdict in zip(firsts.iterrows(), verdicts) if verdict is False]
    unknown = sum(verdict is None for verdict in verdicts)
    lines = [f"the fastest lossless strategy clears its runner-up in "
             f"{sum(verdict is True for verdict in verdicts)} of {cells} cells"
             + (f"; too close to call in {_listed(close)}" if close else "")
             + (f"; no interval (or no runner-up) to tell in {unknown}" if unknown else "")]
    lossy = sorted(board.loc[board["lossy"].astype(bool), "label"].unique())
    if lossy:
        lines.append(f"lossy, shown but never ranked for speed: {', '.join(lossy)}")
    model = board.apply(model_vs_measured, axis=1) if len(board) else pd.Series(dtype=object)
    judged = model.dropna()
    if len(judged):
        outside = [f"{row['cell']} {model_miss(row)}"
                   for (_, row), verdict in zip(board.iterrows(), model)
                   if verdict in ("above", "below")]
        lines.append(f"the model's tok/s lies inside the measured interval for "
                     f"{(judged == 'inside').sum()} of {len(judged)} measured points"
                     + (f"; outside for {_listed(outside)}" if outside else ""))
    if len(reversals) and "measured_reversal_conclusive" in reversals:
        conclusive = reversals["measured_reversal_conclusive"].map(verdict_of)
        shaky = [f"{row.label} ({bandwidth_label(row.bandwidth_mbps)}, {row.codec})"
                 for row, verdict in zip(reversals.itertuples(), conclusive) if verdict is False]
        lines.append(f"measured reversal verdicts resting on intervals that do not overlap: "
                     f"{sum(verdict is True for verdict in conclusive)} of {len(reversals)}"
                     + (f"; too wide to conclude for {_listed(shaky)}" if shaky else ""))
    emulation = emulation_conclusion(board)
    return lines + ([emulation] if emulation else [])


def emulation_frame(board: pd.DataFrame) -> pd.DataFrame:
    """Device emulation per cell (formatted): passes, the share padded, how late a pass woke
    on average, those that overran the emulated time and the worst (ms, stage, strategy)."""
    rows = []
    for cell, group in board[board["emulated_passes"].notna()].groupby("cell", sort=False):
        passes, overran = group["emulated_passes"].sum(), int(group["overrun_passes"].sum())
        worst = group.loc[group["worst_overrun_ms"].idxmax()]
        late = (group["late_ms_per_pass"] * group["emulated_passes"]).sum() / passes
        rows.append({"cell": cell, "passes": f"{passes:.0f}",
                     "padded": format_number(group["padded_passes"].sum() / passes, 3),
                     "late ms": format_number(late, 2),
                     "overran": str(overran), "worst overrun": (
                         f"{worst['worst_overrun_ms']:.2f} ms ({worst['worst_overrun_stage']}, "
                         f"{worst['label']})" if overran else "-")})
    return pd.DataFrame(rows)


def _held(value) -> str:
    return {True: "yes", False: "NO"}.get(verdict_of(value), "-")


def guardrail_frame(decisions: pd.DataFrame) -> pd.DataFrame:
    """The guardrail's decision on each strategy run (formatted): its verdict (a rejected
    run was skipped), the predicted ms per token with its interval, the budget, what the run
    measured, whether that kept the budget and whether the verdict held, and why."""
    def ms(row, column: str) -> str:
        return format_number(row.get(column), 2)
    return pd.DataFrame([{
        "cell": row["cell"], "strategy": row["label"],
        "verdict": "reject: skipped" if row["verdict"] == "reject" else row["verdict"],
        "predicted ms": (f"{ms(row, 'predicted_ms')} [{ms(row, 'predicted_low_ms')}, "
                         f"{ms(row, 'predicted_high_ms')}]"
                         if pd.notna(row.get("predicted_ms")) else "-"),
        "budget ms": format_number(row["budget_ms_per_token"], 2),
        "measured ms": ms(row, "measured_ms"),
        "inside": _held(row.get("inside_predicted")),
        "in budget": _held(row.get("within_budget")),
        "held": _held(row.get("verdict_held")), "why": row["why"]}
        for _, row in decisions.iterrows()])


def guardrail_conclusion(decisions: pd.DataFrame) -> str:
    """One sentence: what the guardrail skipped, and how its verdicts fared where measured."""
    whole = skipped_whole(decisions)
    ran = decisions[decisions["ran"].astype(bool)]
    budget = ", ".join(f"{value:g}" for value in decisions["budget_ms_per_token"].unique())
    parts = [f"the budget guardrail ({budget} ms per token) skipped "
             f"{int((decisions['verdict'] == 'reject').sum())} of {len(decisions)} strategy "
             f"runs ({whole} cell{'' if whole == 1 else 's'} whole)"]
    for verdict, what in (("accept", "accepted"), ("measure", "left to measuring")):
        rows = ran[ran["verdict"] == verdict]
        if len(rows):
            kept = int(rows["within_budget"].map(verdict_of).eq(True).sum())
            parts.append(f"of the {len(rows)} run{'s' * (len(rows) != 1)} it {what}, "
                         f"{kept} kept the budget")
    judged = ran["inside_predicted"].map(verdict_of).dropna() if "inside_predicted" in ran \
        else pd.Series(dtype=bool)
    if len(judged):
        parts.append(f"{int(judged.eq(True).sum())} of {len(judged)} measured inside their "
                     "predicted interval")
    if "time_scale" in decisions:
        scales = decisions["time_scale"].dropna()
        trips = decisions.get("round_trip_ms", pd.Series(dtype=float)).dropna()
        if scales.eq(1.0).all() and trips.eq(0.0).all():
            parts.append("fitted times as they are (no probe run)")
        else:
            parts.append(f"fitted times x{_span(scales)} (the probe run before the sweep, "
                         "then each cell's cloud-only tokens) and "
                         f"{_span(trips)} ms of the agents' own round trip per cycle")
    return "; ".join(parts)


def _span(values: pd.Series) -> str:
    """``0.74`` or ``0.74-0.98``: the least and most of ``values``, to two decimals."""
    low, high = (f"{value:.2f}" for value in (values.min(), values.max()))
    return low if low == high else f"{low}-{high}"


GUARDRAIL_TITLE = ("budget guardrail: ms per committed token, predicted against the budget "
                   "(guardrail.csv)")
GUARDRAIL_LEGEND = {
    "verdict": "accept: even the interval's high end fits the budget; reject: even its low "
               "end breaks it, so the run was skipped (never run); measure: in between, or "
               "a strategy the latency model does not predict: run",
    "predicted ms": "ms per committed token from the fitted stages, the link's RTT and the "
                    "codec's bytes (scaled, and the agents' own round trip added, from a "
                    "probe run before the sweep unless --no-guardrail-probe), [low, high]: "
                    "every stage at its split-conformal interval's end, the least and most "
                    "context, RTT and acceptance at once",
    "measured ms": "what the run measured: 1000 / tok/s",
    "inside": "whether the measured ms per token lay inside the predicted [low, high]",
    "in budget": "whether the measured ms per token fit the budget",
    "held": "whether the verdict held: an accepted run in budget, or NO; - for measure (no "
            "claim) and for skipped runs (not measured)",
}
KEY_TITLE = "leaderboard (per cell; full table in leaderboard.csv)"
EMULATION_TITLE = "device emulation: passes padded to the emulated devices' times, per cell"
EMULATION_LEGEND = {
    "passes": EMULATION_GLOSSARY["passes"], "padded": EMULATION_GLOSSARY["padded"],
    "late ms": EMULATION_GLOSSARY["late ms"],
    "overran": "passes whose real time was already above the emulated one (not padded: the "
               "emulated device would have been faster)",
    "worst overrun": "the largest of those excesses, its stage and strategy "
                     "(leaderboard.csv has each stage's real and emulated ms per pass)",
}
REVERSAL_TITLE = "performance reversal: RTT (ms) above which cloud-only decodes faster"
TEXT_COLUMNS = {"cell", "fastest lossless", "runner-up", "lossy (unranked)", "most accurate",
                "bandwidth", "codec", "strategy", "RTTs swept", "note", "conclusive",
                "worst overrun"}
KEY_LEGEND = {
    "cell": "one network condition of the sweep (profile or grid point; @codec where the "
            "sweep compares payload codecs), or the run",
    "fastest lossless": "the strategy with the most tok/s among those whose output is the "
                        "target model's",
    "tok/s": GLOSSARY["tok/s"] + "; [low, high]: its 95 % interval",
    "runner-up": "the second fastest lossless strategy; clear: the two tok/s intervals do "
                 "not overlap; overlaps: too close to call",
    "model": "the analytic model's tok/s for the fastest, and whether it lies inside, above "
             "or below the measured interval",
    "cloud-only": "cloud-only's tok/s (its interval is in the full leaderboard)",
    "speed-up": "fastest lossless over cloud-only; clear or overlaps as for the runner-up",
    "lossy (unranked)": "strategies whose output is not the target model's, with their tok/s: "
                       "never ranked for speed",
    "most accurate": "the strategy with the largest share of right answers, and that share; "
                     "- where the prompts have no answers",
}
REVERSAL_LEGEND = {
    "measured ms": "the RTT where fixed-K's seconds per token cross cloud-only's, "
                   "interpolated linearly between the swept RTTs; - where they do not cross "
                   "in the range (the note says which side)",
    "conclusive": "whether the measured verdict rests on tok/s intervals of fixed-K and "
                  "cloud-only that do not overlap at the RTTs around the crossing (every RTT "
                  "without one); no: too wide to conclude",
    "predicted ms": "the model's reversal RTT; never: slower than cloud-only even at zero RTT "
                    "(reversal.csv keeps the negative number)",
    "RTTs swept": "the RTTs of the series' cells (same bandwidth, jitter, loss and codec)",
}


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
        whole = skipped_whole(guardrail_decisions(path))
        cells = (f"{cells + whole} of {len(SweepFolder(path).plan()[2])} finished"
                 + (f": {cells} run, {whole} skipped whole by the budget guardrail"
                    if whole else ""))
    incomplete = incomplete_run(board)
    return {
        **({"incomplete": incomplete} if incomplete else {}),
        "job": f"{job['name']}: {job['description']}".strip().rstrip(":"),
        "mode": ", ".join(board["mode"].unique()),
        "model pair": f"{pair['name']} ({pair['backend']}): {pair['description']}".strip(),
        "prompts": f"{job['prompts']}, {prompts} prompts x "
                   f"{job['repetitions']} repetitions, up to {job['max_new_tokens']} new tokens, "
                   f"{job['decoding']} decoding, seed {job['seed']}",
        "strategies": ", ".join(job["strategies"]) + _strategy_ks(job),
        "cells": str(cells),
        "RTT": _values(board["rtt_ms"], " ms"),
        "bandwidth": ", ".join(map(bandwidth_label, sorted(board["bandwidth_mbps"].unique()))),
        "jitter": _values(board["jitter_ms"], " ms"),
        "random loss": _values(board["loss_pct"], " %"),
        "codecs": ", ".join(board["codec"].unique()),
        **({"budget guardrail": (
            f"{job['latency_budget_ms_per_token']:g} ms per committed token, stages fitted in "
            f"{job['guardrail_path']}, acceptance {job['guardrail_acceptance'][0]:g}-"
            f"{job['guardrail_acceptance'][1]:g}"
            + ("" if job.get("guardrail_probe", True) else ", fitted times as they are"))}
           if job.get("guardrail_path") else {}),
        **({"device emulation": DeviceEmulation.model_validate(config["emulation"]).describe(
            largest_k(parse(JobConfig, job, "config.yaml")))}
           if config.get("emulation") else {}),
    }


def skipped_whole(decisions: pd.DataFrame) -> int:
    """The cells the budget guardrail skipped whole (``guardrail_decisions``)."""
    return (0 if decisions.empty
            else decisions.loc[decisions["cell_skipped"].astype(bool), "cell"].nunique())


CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1240px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; max-width: 100%; }
th, td { padding: 0.2em 0.5em; border-bottom: 1px solid #e4e4e4; text-align: right;
         vertical-align: top; }
th { background: #f3f3f3; position: sticky; top: 0; }
td { white-space: nowrap; }
td.text, th.text { text-align: left; }
td.text { white-space: normal; min-width: 6em; }
td.note { white-space: normal; min-width: 16em; text-align: left; }
.ci { color: #666; font-size: 0.92em; white-space: nowrap; }
td.measured { white-space: normal; min-width: 5.5em; }
table.summary td { text-align: left; white-space: normal; }
ul.conclusions li { margin: 0.3em 0; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.95em; color: #444; margin-top: 0.3em; }
dl.legend dt { font-weight: bold; margin-top: 0.4em; } dl.legend dd { margin-left: 1.5em; }
p.legend { font-size: 0.9em; color: #444; }
"""

REPORT_TERMS = {
    "speed-up": "the fastest lossless strategy's tok/s over cloud-only's in the same cell.",
    "reversal RTT": "the RTT above which cloud-only decodes faster than fixed-K, "
                    "interpolated between the swept RTTs (measured) or from the model "
                    "(predicted; never: slower than cloud-only even at zero RTT; reversal.csv "
                    "keeps the negative number).",
    "bytes per token": "data-plane payload bytes per output token, edge to cloud (up) and "
                       "cloud to edge (down).",
    "ranks, bandwidth": "rank 1 is best within a cell, ties share the better rank; rank_accuracy "
                        "ranks every strategy, lossy ones included; bandwidth inf (unshaped) "
                        "means the link was not rate-limited.",
    "leaderboard.csv": "every summary column per cell and strategy, each interval as "
                       "<column>_low and <column>_high, lossy, rank_tokens_per_s (empty for "
                       "lossy strategies), separated_from_next, model_vs_measured, "
                       "rank_accuracy.",
}
HOW_TO_READ = {**GLOSSARY, **REPORT_TERMS}

MEASURED = re.compile(r"^(\S+) \[(\S+), (\S+)\]$")


def _cell_html(text, column: str, text_columns) -> str:
    """One table cell: a measured figure with its interval set below it in grey."""
    value = str(text)
    found = MEASURED.match(value)
    if found:
        number, low, high = map(html.escape, found.groups())
        return (f'<td class="measured">{number} <span class="ci">[{low},&nbsp;{high}]'
                f"</span></td>")
    kind = "note" if column == "note" else "text" if column in text_columns else ""
    return f'<td class="{kind}">{html.escape(value)}</td>' if kind else \
        f"<td>{html.escape(value)}</td>"


def table_html(frame: pd.DataFrame, text_columns=TEXT_COLUMNS, header: bool = True,
               classes: str = "") -> str:
    """``frame`` (already formatted) as an HTML table that wraps text and intervals."""
    head = ("<thead><tr>" + "".join(
        f'<th class="{"text" if column in text_columns else ""}">{html.escape(str(column))}</th>'
        for column in frame.columns) + "</tr></thead>") if header else ""
    body = "".join("<tr>" + "".join(_cell_html(value, column, text_columns)
                                    for column, value in zip(frame.columns, row)) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f'<table class="{classes}">{head}<tbody>{body}</tbody></table>'


def leaderboard_frames(board: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The whole leaderboard as two formatted tables that fit a page: speed and latency;
    speculation, cost and quality (every column also in leaderboard.csv)."""
    first = ("cell", "strategy")
    return (formatted_frame(board, SPEED_COLUMNS, first),
            formatted_frame(board, SPECULATION_COLUMNS, first))


def _legend_html(terms: dict[str, str]) -> str:
    return ('<p class="legend">' + "; ".join(
        f"<b>{html.escape(term)}</b>: {html.escape(text)}" for term, text in terms.items())
        + ".</p>")


def _figure_html(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure id="{html.escape(path.stem)}"><img alt="{html.escape(path.name)}" '
            f'src="data:image/png;base64,{data}"><figcaption><b>{html.escape(path.name)}</b>: '
            f"{html.escape(caption)}</figcaption></figure>")


def html_page(path: Path, board: pd.DataFrame, reversals: pd.DataFrame, config: dict,
              written: list[Path], skipped: dict[str, str],
              decisions: pd.DataFrame | None = None) -> str:
    decisions = decisions if decisions is not None else pd.DataFrame()
    captions = {plot.name: plot.caption for plot in PLOTS}
    summary = pd.DataFrame(job_summary(path, board, config).items())
    speed, speculation = leaderboard_frames(board)
    parts = [
        f"<h1>Cloud-edge speculative decoding: {html.escape(path.name)}</h1>",
        table_html(summary, header=False, classes="summary"),
        "<h2>What the intervals allow</h2>",
        f"<p>Rule: {html.escape(INTERVAL_RULE)}. Intervals are 95 % bootstrap intervals over "
        "queries and repetitions.</p>",
        '<ul class="conclusions">',
        *(f"<li>{html.escape(line)}.</li>" for line in board_conclusions(board, reversals)),
        "</ul>",
        "<h2>Per cell</h2>", table_html(key_frame(board)), _legend_html(KEY_LEGEND),
        "<h2>Performance reversal</h2>",
        (table_html(reversal_frame(reversals)) + _legend_html(REVERSAL_LEGEND)
         if len(reversals) else
         "<p>No series of static cells spans two RTTs with cloud-only and fixed-K: "
         "no reversal to compute.</p>"),
        *(["<h2>Device emulation</h2>", table_html(emulation_frame(board)),
            _legend_html(EMULATION_LEGEND)] if "emulated_passes" in board else []),
        *(["<h2>Budget guardrail</h2>",
           f"<p>{html.escape(guardrail_conclusion(decisions))}.</p>",
           table_html(guardrail_frame(decisions), TEXT_COLUMNS | {"verdict", "why"}),
           _legend_html(GUARDRAIL_LEGEND)] if len(decisions) else []),
        "<h2>Figures</h2>",
        *(_figure_html(figure, captions[figure.name]) for figure in written),
    ]
    if skipped:
        parts += ["<h3>Skipped figures</h3><ul>",
                  *(f"<li><b>{html.escape(name)}</b>: {html.escape(why)}</li>"
                    for name, why in skipped.items()), "</ul>"]
    parts += ["<h2>Full leaderboard</h2><p>Every strategy of every cell, lossless ones fastest "
              "first within a cell, then the lossy ones; every column (and more) is in "
              "leaderboard.csv.</p>",
              "<h3>Speed and latency</h3>", table_html(speed),
              "<h3>Speculation, cost and quality</h3>", table_html(speculation),
              '<h2>How to read this page</h2><dl class="legend">',
              *(f"<dt>{html.escape(term)}</dt><dd>{html.escape(text)}</dd>"
                for term, text in HOW_TO_READ.items()), "</dl>"]
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(path.name)}: report</title><style>{CSS}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


@dataclass(frozen=True)
class WrittenReport:
    """What ``write_report`` made of a folder: the leaderboard and reversal tables, the
    plots written and skipped (with why), the guardrail's decisions (empty for an unguarded
    folder), and what to say of a run cut short (or None)."""

    board: pd.DataFrame
    reversals: pd.DataFrame
    written: list
    skipped: dict[str, str]
    decisions: pd.DataFrame
    incomplete: str | None

    def line(self, path: Path) -> str:
        return (f"report: {path / REPORT} (figures: {len(self.written)} under {PLOTS_FOLDER}/, "
                f"{len(self.skipped)} skipped)")


def write_report(path: Path) -> WrittenReport | None:
    """Analyse ``path`` (a sweep or a run folder) and write ``leaderboard.csv``,
    ``reversal.csv``, the rank file, ``guardrail.csv`` (under a budget guardrail), the plots
    and ``report.html``; None when no query finished.  A run folder killed before its
    summary (``kill -9``) gets its summary first."""
    if not (path / SweepFolder.PLAN).is_file() and not (path / ResultsFolder.SUMMARY).is_file() \
            and (path / ResultsFolder.CONFIG).is_file():
        summarize_folder(path, RunSpec.from_folder(path))
    results = load_results(path)
    decisions = guardrail_decisions(path)
    if len(decisions):
        decisions.to_csv(path / "guardrail.csv", index=False)
    if results.empty:
        return None
    board = leaderboard(results)
    board["model_vs_measured"] = board.apply(model_vs_measured, axis=1)
    reversals = reversal(board)
    config = run_config(board)
    board.to_csv(path / "leaderboard.csv", index=False)
    reversals.to_csv(path / "reversal.csv", index=False)
    write_ianvs_rank(board, config["job"]["model_pair"], path)
    written, skipped = write_plots(results, path / PLOTS_FOLDER)
    (path / REPORT).write_text(html_page(path, board, reversals, config, written, skipped,
                                         decisions))
    return WrittenReport(board, reversals, written, skipped, decisions,
                         incomplete_run(results))


def print_guardrail(decisions: pd.DataFrame, console: Console) -> None:
    """The guardrail's table, its legend and its conclusion (nothing for an unguarded
    sweep)."""
    if decisions.empty:
        return
    print_table(console, guardrail_frame(decisions), GUARDRAIL_TITLE,
                TEXT_COLUMNS | {"verdict", "why"})
    console.print(text_list("guardrail columns", GUARDRAIL_LEGEND.items()))
    console.print(f"- {guardrail_conclusion(decisions)}.", highlight=False)


def report_folder(path: Path, console: Console) -> Path:
    """``write_report``, then print the key tables and what was written.  A run folder cut
    short is reported for what finished, and said to be incomplete."""
    report = write_report(path)
    if report is None:
        decisions = guardrail_decisions(path)
        is_run = (path / ResultsFolder.SUMMARY).is_file()
        print_guardrail(decisions, console)
        console.print(f"{path}: " + ("an incomplete run: no query finished" if is_run
                                     else "no cell ran" if len(decisions)
                                     else "no finished cell yet"))
        return path
    board, reversals = report.board, report.reversals
    if report.incomplete:
        console.print(f"{path}: {report.incomplete}", highlight=False)
    print_table(console, key_frame(board), KEY_TITLE, TEXT_COLUMNS)
    terms = dict(KEY_LEGEND)
    if not reversals.empty:
        print_table(console, reversal_frame(reversals), REVERSAL_TITLE, TEXT_COLUMNS)
        terms.update(REVERSAL_LEGEND)
    if "emulated_passes" in board:
        print_table(console, emulation_frame(board), EMULATION_TITLE, TEXT_COLUMNS)
        terms.update(EMULATION_LEGEND)
    console.print(text_list("columns (every term: report.html, How to read this page)",
                            terms.items()))
    print_guardrail(report.decisions, console)
    console.print(text_list("what the intervals allow",
                            [("-", line + ".") for line in board_conclusions(board, reversals)]))
    for name, why in report.skipped.items():
        console.print(f"plot {name} skipped: {why}", highlight=False)
    console.print(report.line(path), highlight=False)
    return path


def _strategy_ks(job: dict) -> str:
    """The K of the job's strategies that have one (fixed-k's, cloud-spec's), as run."""
    ks = [f"{name}: K = {value}" for name, value in (
        ("fixed-k", ", ".join(map(str, job["k_values"]))), ("cloud-spec", job["cloud_spec_k"]))
        if name in job["strategies"]]
    return f" ({'; '.join(ks)})" if ks else ""
