"""Showing and saving link probe reports (``validation.link_probe``): a terminal table and JSON."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from validation.link_probe import ProbeReport

VERDICTS = {True: "[green]ok[/]", False: "[red]MISS[/]", None: "-"}


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}"


def print_probe_report(report: ProbeReport, console: Console) -> None:
    table = Table(title=f"link probe: {report.profile} ({report.mode})", title_justify="left")
    for column in ("direction", "metric", "unit", "expected", "measured", "error", "tolerance",
                   "verdict", "note"):
        table.add_column(column, justify="right" if column in ("expected", "measured", "error")
                         else "left")
    for row in report.rows:
        error = "-" if row.error is None else f"{row.error:+.3f}"
        table.add_row(row.direction, row.metric, row.unit, _number(row.expected),
                      _number(row.measured), error, row.tolerance, VERDICTS[row.ok], row.note)
    console.print(table)
    baseline = ", ".join(f"{d} {v:.3f} ms (sigma {report.baseline_sigma_ms.get(d, 0):.3f})"
                         for d, v in report.baseline_owd_ms.items())
    console.print(f"baseline (the unshaped path's own one-way delay): {baseline}, "
                  f"{report.baseline_goodput_mbps:.0f} Mbit/s; delay errors are after "
                  "subtracting it"
                  + (f"; qdiscs: {report.layouts}" if report.layouts else ""))
    console.print("all checks passed" if report.passed else "[red]some checks missed[/]")


def save_probe_report(report: ProbeReport, results_root: Path) -> Path:
    results_root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = results_root / f"probe-{stamp}-{report.profile.replace('/', '_')}-{report.mode}.json"
    path.write_text(json.dumps(report.to_dict(), indent=2))
    return path
