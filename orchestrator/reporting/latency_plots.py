"""The latency model's figures: predicted against measured per stage, and the transfer
error against the number of calibration samples.

Drawn with matplotlib's object API (``Figure`` through the Agg canvas: no pyplot, no global
state), from what ``nasd.latency.models.evaluate`` and ``nasd.latency.transfer.
curve_summary`` return.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

DPI = 100
MODEL_STYLE = {"roofline": ("o", "tab:blue"), "linear": ("s", "tab:orange"),
               "forest": ("^", "tab:green")}
METHOD_STYLE = {"none": ("k", ":"), "A": ("tab:blue", "-"), "B": ("tab:orange", "--"),
                "C": ("tab:green", "-.")}


def plot_predicted_vs_measured(predictions: dict[str, pd.DataFrame], report: dict,
                               path: Path, title: str = "") -> Path:
    """One panel per stage: each model's held-out prediction against the measured median
    (log-log), the roofline bound beneath, the diagonal and its +-5 % band; the last panel:
    each model's MAPE per stage beside the noise floor of the measurements."""
    stages = list(predictions)
    figure = Figure(figsize=(15, 9), dpi=DPI, layout="constrained")
    panels = figure.subplots(2, 3).ravel()
    for axes, stage in zip(panels, stages):
        rows = predictions[stage]
        measured = rows["seconds"].to_numpy() * 1e3
        for name, (marker, colour) in MODEL_STYLE.items():
            mape = report[stage]["models"][name]["mape_pct"]
            axes.scatter(measured, rows[name] * 1e3, s=9, marker=marker, color=colour,
                         alpha=0.55, label=f"{name} ({mape:.1f} %)")
        axes.scatter(measured, rows["bound"] * 1e3, s=6, marker=".", color="grey",
                     label="roofline bound")
        low, high = measured.min() / 1.5, measured.max() * 1.5
        line = np.geomspace(low, high, 50)
        axes.plot(line, line, color="black", linewidth=0.8)
        axes.fill_between(line, line * 0.95, line * 1.05, color="black", alpha=0.08)
        axes.set(xscale="log", yscale="log", xlim=(low, high), title=stage,
                 xlabel="measured (ms, median of repeats)", ylabel="predicted (ms)")
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.legend(fontsize=7, loc="upper left")
    summary = panels[len(stages)]
    width = 0.2
    x = np.arange(len(stages))
    for offset, (name, (_, colour)) in enumerate(MODEL_STYLE.items()):
        summary.bar(x + (offset - 1.5) * width, [report[s]["models"][name]["mape_pct"]
                                                 for s in stages], width, color=colour,
                    label=name)
    floors = [report[s].get("noise_floor_mape_pct") or 0.0 for s in stages]
    summary.bar(x + 1.5 * width, floors, width, color="grey", label="noise floor")
    summary.axhline(5.0, color="red", linewidth=0.8, linestyle=":", label="goal 5 %")
    summary.set_xticks(x, [s.replace("_", "\n") for s in stages], fontsize=8)
    summary.set(ylabel="held-out MAPE (%)", title="MAPE per stage")
    summary.legend(fontsize=7)
    for extra in panels[len(stages) + 1:]:
        extra.set_axis_off()
    if title:
        figure.suptitle(title)
    figure.savefig(path)
    return path


def plot_transfer(summary: pd.DataFrame, path: Path, title: str = "") -> Path:
    """MAPE and the 95th percentile of the absolute error against N, for every method (the
    mean over draws; ``none`` as a flat line), over all stages' rows."""
    rows = summary[summary["stage"] == "all"]
    ns = sorted(n for n in rows["n"].unique() if n > 0)
    figure = Figure(figsize=(10, 4.2), dpi=DPI, layout="constrained")
    panels = figure.subplots(1, 2)
    for axes, column, label in ((panels[0], "mape_pct", "MAPE (%)"),
                                (panels[1], "p95_abs_s", "P95 absolute error (ms)")):
        scale = 1e3 if column == "p95_abs_s" else 1.0
        for method, (colour, style) in METHOD_STYLE.items():
            own = rows[rows["method"] == method].sort_values("n")
            if own.empty:
                continue
            if method == "none":     # a line across: drawn even where no N could be filled
                axes.axhline(own[column].iloc[0] * scale, color=colour, linestyle=style,
                             label="none (source as is)")
            else:
                axes.plot(own["n"], own[column] * scale, color=colour, linestyle=style,
                          marker="o", label=method)
        if column == "mape_pct":
            axes.scatter([10, 50], [10.0, 5.0], marker="_", s=300, color="red",
                         label="goal (10 % at N = 10, 5 % at N = 50)")
            axes.set_ylim(bottom=0)
        axes.set(xlabel="target samples used to recalibrate (N)", ylabel=label, xticks=ns)
        axes.legend(fontsize=8)
    figure.suptitle(title or "recalibration error on held-out target samples "
                    "(red: the goals)")
    figure.savefig(path)
    return path


def plot_transfer_by_stage(summary: pd.DataFrame, path: Path) -> Path:
    """MAPE against N per stage, one panel each."""
    stages = [s for s in summary["stage"].unique() if s != "all"]
    ns = sorted(n for n in summary["n"].unique() if n > 0)
    figure = Figure(figsize=(3.6 * len(stages), 3.6), dpi=DPI, layout="constrained")
    for axes, stage in zip(figure.subplots(1, len(stages), squeeze=False)[0], stages):
        rows = summary[summary["stage"] == stage]
        for method, (colour, style) in METHOD_STYLE.items():
            own = rows[rows["method"] == method].sort_values("n")
            if own.empty:
                continue
            if method == "none":
                axes.axhline(own["mape_pct"].iloc[0], color=colour, linestyle=style,
                             label=method)
            else:
                axes.plot(ns, own["mape_pct"].tolist(), color=colour, linestyle=style,
                          marker="o", label=method)
        axes.set(title=stage, xlabel="N", ylabel="MAPE (%)", xticks=ns)
        axes.set_ylim(bottom=0)
        axes.legend(fontsize=7)
    figure.savefig(path)
    return path


def plot_guardrail(analysis: dict, path: Path) -> Path:
    """Left: the violation rate (accepted candidates that break the budget) against the
    budget fraction, with and without the guardrail, and the share left to measuring.
    Right: false rejects against false accepts, one point per fraction and policy."""
    rows = analysis["fractions"]
    fractions = [row["fraction"] for row in rows]
    figure = Figure(figsize=(10, 4.2), dpi=DPI, layout="constrained")
    left, right = figure.subplots(1, 2)
    for policy, colour in (("guarded", "tab:green"), ("unguarded", "tab:red")):
        left.plot(fractions, [100 * row[policy]["violation_rate"] for row in rows], marker="o",
                  color=colour, label=f"violations, {policy}")
        right.plot([100 * row[policy]["false_accept_rate"] for row in rows],
                   [100 * row[policy]["false_reject_rate"] for row in rows], marker="o",
                   color=colour, label=policy)
        for row in rows:
            right.annotate(f"{row['fraction']:g}", (100 * row[policy]["false_accept_rate"],
                                                    100 * row[policy]["false_reject_rate"]),
                           fontsize=7, textcoords="offset points", xytext=(4, 4))
    left.plot(fractions, [100 * row["guarded"]["measured"] / row["guarded"]["candidates"]
                          for row in rows], color="grey", linestyle="--",
              label="left to measuring, guarded")
    left.axhline(2.0, color="black", linewidth=0.7, linestyle=":")
    left.set(xlabel="budget fraction (the budget f of the candidates meet)", ylabel="%",
             xticks=fractions, title="violation rate vs budget")
    right.set(xlabel="false accepts (% of candidates over budget)",
              ylabel="false rejects (% of candidates within budget)",
              title="false reject vs false accept")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    figure.suptitle(f"guardrail on {analysis['model']} predictions, "
                    f"{analysis['coverage']:.0%} conformal intervals")
    figure.savefig(path)
    return path
