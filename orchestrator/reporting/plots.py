"""The report's figures: one PNG per question, drawn from the results table.

Each ``plot_*`` function takes the table ``analysis.load_results`` returns
(one row per cell and strategy) and a PNG path, draws one figure with
matplotlib's object API (``Figure``, saved through the Agg canvas: no pyplot,
no display, no global state) and writes it; it raises ``Skipped`` with the
reason when the folder's data cannot support the figure (one RTT, no jitter
layers, no codec sweep...).  ``PLOTS`` lists them with the sentence the
report page shows under each; ``write_plots`` draws them all into a folder.
Every measured point carries a bar spanning its 95 % interval (the
``<column>_low`` / ``<column>_high`` of the summary), and lossy strategies
are marked as such in the legends.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter, MaxNLocator, NullLocator

from orchestrator.reporting.analysis import BEST_FIXED_K, reversal
from orchestrator.reporting.run_summary import FinishedRun
from orchestrator.reporting.summary import read_jsonl, verdict_of
from orchestrator.results import ResultsFolder

DPI = 100
MARKERS = "osD^vPX*<>ph"
MODEL_POINTS = 400
LINESTYLES = ["-", "--", ":", "-."]


class Skipped(Exception):
    """The data cannot support this figure; the message says why."""


# ---- shared pieces ------------------------------------------------------------------------


def default_codec(results: pd.DataFrame) -> str:
    """The payload codec most cells use (the first of those tied)."""
    return results.drop_duplicates("cell")["codec"].value_counts(sort=True).index[0]


def baseline_cells(results: pd.DataFrame) -> pd.DataFrame:
    """Static cells without jitter or loss, with the default codec: the RTT x bandwidth grid."""
    return results[results["static"] & (results["jitter_ms"] == 0) & (results["loss_pct"] == 0)
                   & (results["codec"] == default_codec(results))]


def bandwidth_label(mbps: float) -> str:
    return f"{mbps:g} Mbps" if np.isfinite(mbps) else "unshaped"


def strategy_styles(results: pd.DataFrame) -> dict[str, dict]:
    """Colour and marker per strategy, the same in every figure (order of first appearance)."""
    return {label: {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)]}
            for i, label in enumerate(results["label"].unique())}


def _figure(rows: int, cols: int, width: float, height: float, **shared):
    fig = Figure(figsize=(width * cols + 2.0, height * rows + 0.8), dpi=DPI, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False, **shared)


def _ticks_at(axis, values) -> None:
    """Ticks at exactly the swept values, labelled plainly."""
    values = sorted(set(values))
    axis.set_ticks(values, [f"{v:g}" for v in values])
    axis.set_minor_locator(NullLocator())


def _rtt_axis(ax, rtts: pd.Series) -> None:
    """RTT axis ticked at the swept RTTs; symmetric-log (linear below the smallest non-zero
    RTT) when they span decades."""
    positive = rtts[rtts > 0]
    if len(positive) and positive.max() / positive.min() >= 10:
        ax.set_xscale("symlog", linthresh=positive.min(), linscale=0.5)
    _ticks_at(ax.xaxis, rtts)
    ax.set_xlabel("RTT (ms)")


def _log_if_decades(ax, values) -> None:
    """A log y axis with plain numbers when ``values`` span a decade or more."""
    positive = np.asarray(values, dtype=float)
    positive = positive[np.isfinite(positive) & (positive > 0)]
    if len(positive) and positive.max() / positive.min() >= 10:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(LogFormatter())
        ax.yaxis.set_minor_formatter(LogFormatter(minor_thresholds=(1.5, 0.5)))


def _strategy_handles(styles: dict[str, dict], labels, lossy=()) -> list[Line2D]:
    """One legend entry per strategy; lossy ones (output not the target's) say so."""
    return [Line2D([], [], label=label + (" (lossy)" if label in lossy else ""), **styles[label])
            for label in labels]


def lossy_strategies(results: pd.DataFrame) -> set[str]:
    return set(results.loc[results["lossy"].astype(bool), "label"]) if "lossy" in results \
        else set()


def interval_errors(rows: pd.DataFrame, column: str, scale: float = 1.0) -> np.ndarray:
    """errorbar's ``yerr`` for ``column``: a (2, n) array of the distances from each value
    down to its interval's low bound and up to its high bound (0 where there is none)."""
    bounds = rows.reindex(columns=[column, f"{column}_low", f"{column}_high"]).to_numpy(float)
    value, low, high = (scale * bounds).T
    return np.nan_to_num(np.clip([value - low, high - value], 0.0, None))


INTERVAL_HANDLE_LABEL = "bars: 95 % interval\n(queries x repetitions)"


def _interval_handle() -> Line2D:
    return Line2D([], [], color="grey", marker="|", markersize=12, linestyle="none",
                  label=INTERVAL_HANDLE_LABEL)


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=DPI)


def _needs_rtts(cells: pd.DataFrame, what: str) -> None:
    if cells["rtt_ms"].nunique() < 2:
        rtts = ", ".join(f"{r:g} ms" for r in sorted(cells["rtt_ms"].unique())) or "none"
        raise Skipped(f"{what} needs static cells at two or more RTTs without jitter or loss "
                      f"(such RTTs here: {rtts})")


def _bandwidth_panels(cells: pd.DataFrame, width: float = 4.6, height: float = 4.0):
    """A figure with one panel per bandwidth (unshaped last): (fig, [(ax, bandwidth, cells)])."""
    bandwidths = sorted(cells["bandwidth_mbps"].unique())
    fig, axes = _figure(1, len(bandwidths), width, height, sharey=True)
    panels = [(ax, bw, cells[cells["bandwidth_mbps"] == bw]) for ax, bw in zip(axes[0], bandwidths)]
    for ax, bw, panel in panels:
        ax.set_title(bandwidth_label(bw))
        _rtt_axis(ax, panel["rtt_ms"])
        ax.grid(True, which="major", alpha=0.3)
    return fig, panels


# ---- the figures --------------------------------------------------------------------------


def _mark_reversal(ax, row: pd.Series) -> None:
    """A dotted line at the measured reversal RTT, or the reason there is none."""
    rtt = row["measured_reversal_rtt_ms"]
    if np.isfinite(rtt):
        shaky = verdict_of(row.get("measured_reversal_conclusive")) is False
        ax.axvline(rtt, color="black", linestyle=":", lw=1.5)
        ax.annotate(f"reversal {rtt:.0f} ms" + (" (intervals overlap)" if shaky else ""),
                    (rtt, 0.5), xycoords=("data", "axes fraction"),
                    xytext=(-2, 0), textcoords="offset points", rotation=90, ha="right",
                    va="center", fontsize=8)
    else:
        reason = textwrap.fill(f"no measured reversal of the best fixed-K: {row['note']}", 60)
        ax.text(0.02, 0.02, reason, transform=ax.transAxes, fontsize=7, va="bottom",
                in_layout=False)


def plot_tokens_per_s_vs_rtt(results: pd.DataFrame, path: Path) -> None:
    """Measured tokens/s per strategy (markers) and the analytic model (lines) vs RTT."""
    cells = baseline_cells(results)
    _needs_rtts(cells, "tokens/s vs RTT")
    styles, codec = strategy_styles(results), default_codec(results)
    reversals = reversal(cells)
    best = (reversals[reversals["label"] == BEST_FIXED_K].set_index("bandwidth_mbps")
            if len(reversals) else pd.DataFrame())
    fig, panels = _bandwidth_panels(cells)
    for ax, bw, panel in panels:
        reference = panel.sort_values("rtt_ms", kind="stable").iloc[0]
        model = FinishedRun.load(Path(reference["folder"]))
        grid = np.linspace(0, panel["rtt_ms"].max(), MODEL_POINTS)
        for label, rows in panel.groupby("label", sort=False):
            rows = rows.sort_values("rtt_ms")
            style = styles[label]
            ax.errorbar(rows["rtt_ms"], rows["tokens_per_s"],
                        yerr=interval_errors(rows, "tokens_per_s"), linestyle="none",
                        markersize=7, capsize=3, **style)
            ax.plot(grid, model.predicted_curve(label, grid),
                    color=style["color"], lw=1.3)
        ax.set_title(f"{bandwidth_label(bw)} (model fitted on {reference['cell']})",
                     fontsize=9)
        ax.set_xlim(left=0)
        if bw in best.index:
            _mark_reversal(ax, best.loc[bw])
    first = panels[0][0]
    _log_if_decades(first, cells["tokens_per_s"])
    first.set_ylabel("decode tokens/s (excl. prefill)")
    handles = _strategy_handles(styles, cells["label"].unique(), lossy_strategies(cells)) + [
        Line2D([], [], color="grey", marker="o", linestyle="none", label="measured"),
        _interval_handle(), Line2D([], [], color="grey", label="analytic model"),
        Line2D([], [], color="black", linestyle=":", label="measured reversal\n(best fixed-K)")]
    fig.legend(handles=handles, loc="outside right center", fontsize=9)
    fig.suptitle(f"Decode throughput vs RTT (codec {codec}, no jitter, no loss)")
    _save(fig, path)


def plot_ttft(results: pd.DataFrame, path: Path) -> None:
    """TTFT P50 (filled, solid) and P95 (hollow, dashed) per strategy vs RTT, each with its
    95 % interval."""
    cells = baseline_cells(results)
    _needs_rtts(cells, "TTFT vs RTT")
    styles = strategy_styles(results)
    fig, panels = _bandwidth_panels(cells)
    for ax, _, panel in panels:
        for label, rows in panel.groupby("label", sort=False):
            rows = rows.sort_values("rtt_ms")
            for column, line, fill in (("ttft_ms_p50", "-", "full"), ("ttft_ms_p95", "--", "none")):
                ax.errorbar(rows["rtt_ms"], rows[column], yerr=interval_errors(rows, column),
                            capsize=3, lw=1, markersize=6, linestyle=line, fillstyle=fill,
                            **styles[label])
    first = panels[0][0]
    _log_if_decades(first, cells[["ttft_ms_p50", "ttft_ms_p95"]].to_numpy().ravel())
    first.set_ylabel("TTFT (ms)")
    handles = _strategy_handles(styles, cells["label"].unique(), lossy_strategies(cells)) + [
        Line2D([], [], color="grey", marker="o", label="P50"),
        Line2D([], [], color="grey", marker="o", linestyle="--", fillstyle="none", label="P95"),
        _interval_handle()]
    fig.legend(handles=handles, loc="outside right center", fontsize=9)
    fig.suptitle(f"Time to first token vs RTT (codec {default_codec(results)}, "
                 "no jitter, no loss)")
    _save(fig, path)


LAYERS = {"jitter_ms": ("loss_pct", "jitter (ms), no loss"),
          "loss_pct": ("jitter_ms", "random loss (%), no jitter")}


def impairment_layers(results: pd.DataFrame) -> list[tuple[tuple[float, float], pd.DataFrame]]:
    """((RTT, bandwidth), static cells there with the default codec) wherever jitter or
    loss takes two or more values with the other at zero."""
    cells = results[results["static"] & (results["codec"] == default_codec(results))]
    return [(key, group) for key, group in cells.groupby(["rtt_ms", "bandwidth_mbps"])
            if any(group.loc[group[other] == 0, dim].nunique() > 1
                   for dim, (other, _) in LAYERS.items())]


def plot_tail_latency(results: pd.DataFrame, path: Path) -> None:
    """P95 and P99 end-to-end latency per query vs jitter and vs loss, per RTT."""
    layers = impairment_layers(results)
    if not layers:
        raise Skipped("no jitter or loss layers: needs static cells at one RTT that differ "
                      "only in jitter or only in random loss")
    dims = [dim for dim, (other, _) in LAYERS.items()
            if any(g.loc[g[other] == 0, dim].nunique() > 1 for _, g in layers)]
    styles = strategy_styles(results)
    fig, axes = _figure(len(layers), len(dims), 4.6, 3.2)
    for row_axes, ((rtt, bw), group) in zip(axes, layers):
        for ax, dim in zip(row_axes, dims):
            other, xlabel = LAYERS[dim]
            cells = group[group[other] == 0]
            ax.set_title(f"RTT {rtt:g} ms, {bandwidth_label(bw)}", fontsize=10)
            ax.set_xlabel(xlabel)
            _ticks_at(ax.xaxis, cells[dim])
            ax.set_ylabel("e2e latency per query (ms)")
            if cells[dim].nunique() < 2:
                ax.text(0.5, 0.5, f"no {dim.split('_')[0]} layers here", ha="center",
                        transform=ax.transAxes)
                continue
            for label, rows in cells.groupby("label", sort=False):
                rows = rows.sort_values(dim)
                for column, line, fill in (("e2e_s_p95", "-", "full"), ("e2e_s_p99", "--", "none")):
                    ax.errorbar(rows[dim], 1000 * rows[column],
                                yerr=interval_errors(rows, column, 1000.0), capsize=3,
                                linestyle=line, fillstyle=fill, **styles[label])
            _log_if_decades(ax, cells[["e2e_s_p95", "e2e_s_p99"]].to_numpy().ravel())
            ax.grid(True, alpha=0.3)
    handles = _strategy_handles(styles, results["label"].unique(),
                                lossy_strategies(results)) + [
        Line2D([], [], color="grey", marker="o", label="P95"),
        Line2D([], [], color="grey", marker="o", linestyle="--", fillstyle="none", label="P99"),
        _interval_handle()]
    fig.legend(handles=handles, loc="outside right center", fontsize=9)
    fig.suptitle(f"Tail latency under jitter and loss (codec {default_codec(results)})")
    _save(fig, path)


def codec_sweep(results: pd.DataFrame) -> tuple[float, pd.DataFrame]:
    """The RTT where most codecs (then most bandwidths) were swept without jitter or loss,
    and its static cells' rows."""
    cells = results[results["static"] & (results["jitter_ms"] == 0) & (results["loss_pct"] == 0)]
    counts = cells.groupby("rtt_ms").agg(codecs=("codec", "nunique"),
                                         bandwidths=("bandwidth_mbps", "nunique"))
    counts = counts.sort_values(["codecs", "bandwidths"], ascending=False, kind="stable")
    if counts.empty or counts["codecs"].iloc[0] < 2:
        raise Skipped("no codec sweep: no RTT was run with two or more payload codecs")
    rtt = counts.index[0]
    return rtt, cells[cells["rtt_ms"] == rtt]


def bandwidth_positions(bandwidths) -> dict[float, float]:
    """Log-axis position per bandwidth: itself, unshaped one decade past the fastest shaped."""
    finite = [b for b in bandwidths if np.isfinite(b)]
    unshaped = 10 * max(finite) if finite else 1.0
    return {b: (b if np.isfinite(b) else unshaped) for b in sorted(bandwidths)}


def plot_bytes_per_token_codec(results: pd.DataFrame, path: Path) -> None:
    """Bytes up and down per output token and tokens/s per codec vs bandwidth (fixed-K)."""
    rtt, cells = codec_sweep(results)
    fixed = cells[cells["strategy"] == "fixed-k"]
    if fixed.empty:
        raise Skipped(f"the codec sweep at RTT {rtt:g} ms has no fixed-K strategy")
    codecs, ks = list(fixed["codec"].unique()), list(fixed["label"].unique())
    colour = {codec: f"C{i % 10}" for i, codec in enumerate(codecs)}
    shape = {label: {"marker": MARKERS[i % len(MARKERS)], "linestyle": LINESTYLES[i % 4]}
             for i, label in enumerate(ks)}
    positions = bandwidth_positions(cells["bandwidth_mbps"].unique())
    panels = [("bytes_up_per_token", "bytes up per output token"),
              ("bytes_down_per_token", "bytes down per output token"),
              ("tokens_per_s", "decode tokens/s (excl. prefill)")]
    fig, axes = _figure(1, len(panels), 4.2, 4.0, sharex=True)
    cloud = cells[cells["strategy"] == "cloud-only"]
    cloud_rate = cloud.groupby("bandwidth_mbps")["tokens_per_s"].mean()
    axes[0][-1].plot(cloud_rate.index.map(positions), cloud_rate, color="black", lw=2, alpha=0.5)
    for ax, (column, ylabel) in zip(axes[0], panels):
        for (codec, label), rows in fixed.groupby(["codec", "label"], sort=False):
            rows = rows.sort_values("bandwidth_mbps")
            ax.errorbar(rows["bandwidth_mbps"].map(positions), rows[column],
                        yerr=interval_errors(rows, column), capsize=3, color=colour[codec],
                        **shape[label])
        ax.set_xscale("log")
        ax.set_xticks(list(positions.values()), [bandwidth_label(b) for b in positions])
        ax.minorticks_off()
        ax.set_xlabel("bandwidth (each way)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        _log_if_decades(ax, ax.dataLim.intervaly)
        if ax.get_yscale() == "linear":
            ax.set_ylim(0, ax.get_ylim()[1] * 1.05)
    handles = [Line2D([], [], color=colour[codec], lw=3, label=f"codec {codec}")
               for codec in codecs]
    handles += [Line2D([], [], color="grey", label=label, **shape[label]) for label in ks]
    handles += [Line2D([], [], color="black", lw=2, alpha=0.5, label="cloud-only\n(tokens/s)"),
                _interval_handle()]
    fig.legend(handles=handles, loc="outside right center", fontsize=9)
    fig.suptitle(f"Payload codecs at RTT {rtt:g} ms, no jitter, no loss: bytes per token "
                 "and throughput")
    _save(fig, path)


def k_cell(results: pd.DataFrame) -> pd.Series:
    """The cell whose K trace is shown: the first with a changing profile, else the first."""
    cells = results.drop_duplicates("cell")
    changing = cells[~cells["static"]]
    return (changing if len(changing) else cells).iloc[0]


def plot_k_per_cycle(results: pd.DataFrame, path: Path) -> None:
    """K drafted and tokens accepted per cycle, with the cycle's RTT, per speculating strategy."""
    cell = k_cell(results)
    cycles = read_jsonl(Path(cell["folder"]) / ResultsFolder.CYCLES)
    if cycles.empty:
        raise Skipped(f"cell {cell['cell']} recorded no speculation cycles")
    styles = strategy_styles(results)
    strategies = list(cycles["label"].unique())
    fig, axes = _figure(len(strategies), 1, 9.0, 2.0, sharex=True)
    for (ax,), label in zip(axes, strategies):
        own = cycles[cycles["label"] == label]
        number = np.arange(1, len(own) + 1)
        rtt_axis = ax.twinx()
        rtt_axis.plot(number, own["rtt_ms"], color="grey", lw=0.8, alpha=0.7)
        if own.get("nasd_rtt_estimate_ms", pd.Series(dtype=float)).notna().any():
            rtt_axis.plot(number, own["nasd_rtt_estimate_ms"], color="black", lw=0.8,
                          linestyle="--")
        rtt_axis.set_ylabel("RTT (ms)", color="grey")
        ax.step(number, own["k"], where="mid", color=styles[label]["color"], lw=1.5)
        ax.plot(number, own["accepted"], ".", color="black", markersize=3)
        ax.set_zorder(rtt_axis.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.set_ylabel(f"{label}\ntokens")
        ax.set_ylim(-0.5, own["k"].max() + 0.5)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    axes[-1][0].set_xlabel("cycle number (run order, queries back to back)")
    handles = [Line2D([], [], color=styles[label]["color"], lw=1.5, label=f"{label}: K drafted")
               for label in strategies]
    handles += [Line2D([], [], color="black", marker=".", linestyle="none", label="accepted"),
                Line2D([], [], color="grey", lw=0.8, label="RTT (right axis)")]
    if cycles.get("nasd_rtt_estimate_ms", pd.Series(dtype=float)).notna().any():
        handles.append(Line2D([], [], color="black", lw=0.8, linestyle="--",
                              label="RTT estimate K was\nchosen on (nasd)"))
    fig.legend(handles=handles, loc="outside right center", fontsize=9)
    fig.suptitle(f"Draft length K per cycle in cell {cell['cell']}"
                 + ("" if cell["static"] else " (changing profile)"))
    _save(fig, path)


def plot_k_vs_rtt(results: pd.DataFrame, path: Path) -> None:
    """Each adaptive policy's K per cycle (0: a stretch served without drafts) against the
    RTT estimate it was chosen on, beside the K the closed form chooses at each RTT."""
    cell = k_cell(results)
    cycles = read_jsonl(Path(cell["folder"]) / ResultsFolder.CYCLES)
    chosen = cycles[cycles["nasd_rtt_estimate_ms"].notna()] \
        if "nasd_rtt_estimate_ms" in cycles else cycles.iloc[:0]
    if chosen.empty:
        raise Skipped(f"cell {cell['cell']} has no cycles of a policy that estimates the RTT "
                      "(nasd)")
    styles = strategy_styles(results)
    fig, ((ax,),) = _figure(1, 1, 7.5, 4.0)
    grid = np.linspace(0.0, chosen["nasd_rtt_estimate_ms"].max() * 1.05, MODEL_POINTS)
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(chosen))
    model = FinishedRun.load(Path(cell["folder"]))
    chosen = chosen.assign(jitter=jitter)
    cut_off = chosen.get("served_by", pd.Series("", index=chosen.index)) == "edge"
    for label, own in chosen.groupby("label", sort=False):
        color = styles[label]["color"]
        for marker, part in ((".", own[~cut_off[own.index]]), ("x", own[cut_off[own.index]])):
            ax.plot(part["nasd_rtt_estimate_ms"], part["policy_k"] + part["jitter"], marker,
                    color=color, markersize=3 if marker == "." else 4, alpha=0.5)
        ax.step(grid, model.planned_k(label, grid), where="post", color=color,
                lw=1.5)
    ax.set_xlabel("RTT estimate the K was chosen on (ms)")
    ax.set_ylabel("K (0: stretch without drafts)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    handles = []
    for label in chosen["label"].unique():
        color = styles[label]["color"]
        handles += [Line2D([], [], color=color, marker=".", linestyle="none",
                           label=f"{label}: chosen per cycle"),
                    Line2D([], [], color=color, lw=1.5,
                           label=f"{label}: the closed form's K\non this run's measurements")]
    if cut_off.any():
        handles.append(Line2D([], [], color="black", marker="x", linestyle="none",
                              label="K = 0 served by the\ndraft alone (cutoff)"))
    fig.legend(handles=handles, loc="outside right center", fontsize=9)
    fig.suptitle(f"K against RTT in cell {cell['cell']}")
    _save(fig, path)


@dataclass(frozen=True)
class Plot:
    name: str
    draw: Callable[[pd.DataFrame, Path], None]
    caption: str


PLOTS = [
    Plot("tokens_per_s_vs_rtt.png", plot_tokens_per_s_vs_rtt,
         "Decode tokens/s per strategy against RTT, one panel per bandwidth: markers are "
         "measured, with bars spanning their 95 % interval over queries and repetitions; lines "
         "the analytic model's prediction; the dotted line the measured RTT above which the "
         "best fixed-K falls behind cloud-only. A line through a bar agrees with the "
         "measurement; one that misses the bar does not."),
    Plot("ttft.png", plot_ttft,
         "Time to first token per strategy against RTT, one panel per bandwidth: the median "
         "(filled, solid) and the 95th percentile (hollow, dashed) over queries, each with a "
         "bar spanning its 95 % interval."),
    Plot("tail_latency_jitter_loss.png", plot_tail_latency,
         "95th (solid) and 99th (dashed) percentile of the end-to-end latency per query as "
         "jitter (without loss) or random loss (without jitter) is added at one RTT, with bars "
         "spanning their 95 % intervals (which cannot reach past the slowest query measured)."),
    Plot("bytes_per_token_codec.png", plot_bytes_per_token_codec,
         "What each draft payload codec costs on the wire (bytes per output token, each "
         "direction) and what it yields (tokens/s) against bandwidth, for every fixed-K, with "
         "bars spanning the 95 % intervals."),
    Plot("k_per_cycle.png", plot_k_per_cycle,
         "The draft length K of every speculation cycle in run order, with the tokens the "
         "cloud accepted and the RTT the edge measured for that cycle (and, for nasd, the RTT "
         "estimate its K was chosen on, dashed)."),
    Plot("k_vs_rtt.png", plot_k_vs_rtt,
         "The K nasd chose in every cycle (dots; 0 for a stretch it served without drafts, "
         "handed to the cloud or, with the cutoff, to the draft alone) against the RTT "
         "estimate it chose it on (crosses: stretches the draft served alone), and the K the "
         "closed form picks at each RTT on the run's measured acceptance, stage times and "
         "bytes (line; 0 where cloud-only is faster): the RTT -> K table `orchestrator "
         "calibrate` would write from this run, not a table the run loaded."),
]


def write_plots(results: pd.DataFrame, folder: Path) -> tuple[list[Path], dict[str, str]]:
    """Every figure of ``PLOTS`` into ``folder``: (paths written, {file name: why skipped})."""
    folder.mkdir(parents=True, exist_ok=True)
    written, skipped = [], {}
    for plot in PLOTS:
        try:
            plot.draw(results, folder / plot.name)
        except Skipped as why:
            skipped[plot.name] = str(why)
        else:
            written.append(folder / plot.name)
    return written, skipped
