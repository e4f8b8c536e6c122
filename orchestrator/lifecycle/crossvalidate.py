"""`orchestrator validate`: one job's cells in sim and in emulated (or vm) mode, compared.

Steps, all on the same machine, the agents native in every leg (in vm mode
the router VM is the link, booted once for the whole validation):

1. calibrate: a cell in the measured mode shaped only by the probe's netem
   floor (``validation.link_probe.BASELINE_FLOOR_MS`` each way, so its
   packets take the qdisc and timer path every other cell's take); the median
   cycle RTT there less the floor is the path's own round trip (the agents,
   ZeroMQ and the kernel path, and in vm mode the router), measured, never
   assumed (where the mode's kernel has no netem, an unshaped cell);
2. the measured leg: every cell, a sweep in that mode;
3. the sim leg: every cell with the calibrated round trip added to its RTT,
   so the link model stands for the path plus the profile, not the profile
   alone (its median: how far the path's P95 lies above it is reported with
   each tail miss it may explain);
4. ``validation.crossval.compare``: analytic vs sim and sim vs measured, per
   cell, strategy and metric; ``validation.csv`` and a table.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from nasd.policy import POLICY_NAMES
from orchestrator.config.job import JobConfig, plan
from orchestrator.config.loading import ConfigError
from orchestrator.config.run_spec import RunSpec
from orchestrator.lifecycle.sweep import grid_profile, sweep
from orchestrator.reporting.analysis import load_results
from orchestrator.reporting.summary import read_jsonl
from orchestrator.results import Cell, ResultsFolder, SweepFolder
from shaping.profile import with_extra_rtt
from shaping.qdisc.operations import shapes_with_netem
from shaping.router import RouterTopology
from shaping.topology import LinkTopology
from validation.crossval import ANALYTIC_VS_SIM, SIM_VS_MEASURED, compare, passed
from validation.link_probe import BASELINE_FLOOR_MS

COMPARISON = "validation.csv"
SPECULATING = (*POLICY_NAMES, "cloud-spec")    # the strategies whose queries have cycles
CALIBRATION = "calibration"


def calibrate(template: RunSpec, path: Path, console: Console) -> tuple[float, float]:
    """Median cycle RTT (ms) of the job's speculation on a link in its mode shaped only by
    the netem floor, less the floor (unshaped where the mode's kernel has no netem), and
    how far the P95 of those cycles lies above their median (the path's own tail)."""
    topology = RouterTopology if template.mode == "vm" else LinkTopology
    floor_rtt_ms = 2 * BASELINE_FLOOR_MS if shapes_with_netem(topology) else 0.0
    cell = Cell(grid_profile(floor_rtt_ms, None))
    folder = SweepFolder.create_at(path, template.job, template.mode, [cell])
    sweep(folder, template, [cell], console)
    cycles = read_jsonl(folder.cell_path(cell.name) / ResultsFolder.CYCLES)
    networked = cycles[cycles["strategy"].isin(POLICY_NAMES)]
    median, p95 = np.percentile((networked if len(networked) else cycles)["rtt_ms"].dropna(),
                                [50, 95])
    return float(median) - floor_rtt_ms, float(p95 - median)


def check_job_for_validation(job: JobConfig) -> None:
    """A job ``crossvalidate`` can run: one of its strategies has cycles, on which
    ``calibrate`` measures the path's round trip."""
    if not any(run.strategy in SPECULATING for run in plan(job)):
        raise ConfigError(f"job {job.name!r}: strategies: validate needs one with cycles "
                          f"({' or '.join(SPECULATING)}) to measure the path's round trip")


def crossvalidate(template: RunSpec, cells: list[Cell], root: Path,
                  console: Console) -> tuple[Path, pd.DataFrame]:
    """The job of ``template`` on ``cells`` in its measured mode and in sim (checked before:
    ``RunSpec.build``, ``check_job_for_validation``)."""
    job, mode = template.job, template.mode
    path = ResultsFolder.new_path(root, f"validate-{job.name}-{mode}")
    console.print(f"validation: {path}")
    overhead_ms, tail_ms = calibrate(template, path / CALIBRATION, console)
    console.print(f"path round trip of the {mode} link: {overhead_ms:.2f} ms (median cycle RTT "
                  f"less the netem floor; its P95 {tail_ms:.2f} ms above that); the sim leg "
                  "adds the median to every cell's RTT")
    sweep(SweepFolder.create_at(path / mode, job, mode, cells), template, cells, console)
    sim_cells = [Cell(with_extra_rtt(cell.profile, overhead_ms), cell.codec) for cell in cells]
    sweep(SweepFolder.create_at(path / "sim", job, "sim", sim_cells),
          replace(template, mode="sim"), sim_cells, console)
    comparison = compare(load_results(path / "sim"), load_results(path / mode), mode, tail_ms)
    comparison.to_csv(path / COMPARISON, index=False)
    (path / "calibration.json").write_text(json.dumps(
        {"mode": mode, "path_rtt_ms": overhead_ms, "path_rtt_p95_above_median_ms": tail_ms,
         "passed": passed(comparison)}, indent=1))
    print_comparison(comparison, overhead_ms, mode, console)
    return path, comparison


def _verdict_text(row: pd.Series) -> str:
    mark = {"pass": "ok", "miss": "MISS", "unresolved": "ok~",
            "reported": "(not judged)"}[row["verdict"]]
    return f"{100 * row['difference']:+.1f}% {mark}"


def print_comparison(comparison: pd.DataFrame, overhead_ms: float, mode: str,
                     console: Console) -> None:
    checks = [ANALYTIC_VS_SIM, *SIM_VS_MEASURED]
    table = Table(title=f"validation: sim vs {mode} vs the analytic model (difference, verdict)",
                  title_justify="left")
    table.add_column("cell")
    table.add_column("strategy")
    headers = {}
    for check in checks:
        header = f"{check.legs.format(mode=mode)}\n{check.metric} {check.label}"
        headers[(check.legs.format(mode=mode), check.metric)] = header
        table.add_column(header, justify="right")
    for (cell, label), rows in comparison.groupby(["cell", "label"], sort=False):
        by_check = {(row["legs"], row["metric"]): row for _, row in rows.iterrows()}
        table.add_row(cell, label, *[_verdict_text(by_check[key]) if key in by_check else "-"
                                        for key in headers])
    console.print(table)
    # one line per check that did not pass: its figures, then why (a miss's known cause, or
    # the sampling bound an unresolved difference lies within)
    for verdict, mark, why in (("miss", "miss", "; known cause: "), ("unresolved", "ok~", ", ")):
        for _, row in comparison[comparison["verdict"] == verdict].iterrows():
            console.print(f"{mark}: {row['cell']} {row['label']} {row['legs']} {row['metric']}: "
                          f"{row['reference']:.2f} -> {row['measured']:.2f} "
                          f"({100 * row['difference']:+.1f}%, tolerance {row['tolerance']})"
                          + (f"{why}{row['note']}" if row["note"] else ""), highlight=False)
    misses = comparison[comparison["verdict"] == "miss"]
    unresolved = comparison[comparison["verdict"] == "unresolved"]
    judged = comparison[comparison["verdict"] != "reported"]
    console.print(f"{len(judged) - len(misses) - len(unresolved)} of {len(judged)} checks pass"
                  + (f", {len(unresolved)} more differ by less than their legs' sampling error"
                     if len(unresolved) else "") + "; the sim leg ran "
                  f"with the measured path round trip ({overhead_ms:.2f} ms) added to each RTT"
                  + ("" if np.isfinite(overhead_ms) else " (none measured)"))
