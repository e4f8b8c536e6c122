"""Sweeps: one job over many network cells, written cell by cell, resumable.

A job's ``network`` section expands (``expand``) into cells: each named
profile and each point of each grid, crossed with the codecs to compare.  Each
cell runs into its own run folder inside the sweep's folder
(``orchestrator.results.SweepFolder``) and is marked finished only once its
summary is on disk.  Resuming skips every finished cell and reruns a cell that
was cut off, from scratch.  The job, its model pair and prompts are checked once,
before the sweep's folder exists (the ``RunSpec`` template each cell runs).
"""

from __future__ import annotations

import itertools
import shutil
import time
from dataclasses import replace

from rich.console import Console

from orchestrator.config.job import JobConfig, NetworkGrid
from orchestrator.config.loading import ConfigError, load_profile
from orchestrator.config.run_spec import RunSpec
from orchestrator.lifecycle.run import execute
from orchestrator.progress import work_progress
from orchestrator.results import Cell, ResultsFolder, SweepFolder
from shaping.profile import NetworkProfile, ProfileFile, resolve


def _number(value: float) -> str:
    return f"{int(value):03d}" if float(value).is_integer() else f"{value:g}".replace(".", "p")


def grid_profile(rtt_ms: float, bandwidth_mbps: float | None, jitter_ms: float = 0.0,
                 loss_pct: float = 0.0, jitter_distribution: str = "normal") -> NetworkProfile:
    """A symmetric link, named like the shipped grid files (``rtt050-bw010-j10``)."""
    name = f"rtt{_number(rtt_ms)}" + (f"-bw{_number(bandwidth_mbps)}" if bandwidth_mbps else "")
    name += (f"-j{jitter_ms:g}" if jitter_ms else "") + (f"-l{loss_pct:g}" if loss_pct else "")
    fields = {"rtt_ms": rtt_ms, "bandwidth_mbps": bandwidth_mbps, "loss_pct": loss_pct}
    if jitter_ms:
        fields.update(jitter_ms=jitter_ms, jitter_distribution=jitter_distribution)
    return resolve(ProfileFile.model_validate(fields), name=name.replace(".", "p"))


def grid_profiles(grid: NetworkGrid) -> list[NetworkProfile]:
    return [grid_profile(rtt, bandwidth, jitter, loss, grid.jitter_distribution)
            for rtt, bandwidth, jitter, loss in itertools.product(
                grid.rtt_ms, grid.bandwidth_mbps, grid.jitter_ms, grid.loss_pct)]


def expand(job: JobConfig) -> list[Cell]:
    """Every cell of the job's network section, in order, each once."""
    if job.network is None:
        raise ConfigError(f"job {job.name!r} has no network section: a sweep needs "
                          "`network: {profiles: [...]}` or `network: {grids: [...]}`")
    default_codecs = job.network.codecs or [None]
    points = [(load_profile(name), default_codecs) for name in job.network.profiles]
    points += [(profile, grid.codecs or default_codecs)
               for grid in job.network.grids for profile in grid_profiles(grid)]
    cells, seen = [], set()
    for profile, codecs in points:
        for codec in codecs:
            cell = Cell(profile, codec)
            if cell.name not in seen:
                seen.add(cell.name)
                cells.append(cell)
    return cells


def sweep(folder: SweepFolder, template: RunSpec, cells: list[Cell],
          console: Console) -> list[str]:
    """Run every cell not yet finished; the names of the cells run now.  ``template``: the
    job's run as checked before the sweep began (``RunSpec.build`` on any cell's profile):
    each cell runs it on its own profile and codec."""
    finished = folder.finished()
    todo = [cell for cell in cells if cell.name not in finished]
    if finished:
        console.print(f"resuming: {len(finished)} of {len(cells)} cells already finished")
    ran = []
    with work_progress(console) as progress:
        overall = progress.add_task("cells", total=len(cells), completed=len(finished),
                                    unit="cells")
        for cell in todo:
            progress.update(overall, description=f"cell {cell.name}")
            path = folder.cell_path(cell.name)
            if path.exists():          # cut off last time: nothing in it counts
                shutil.rmtree(path)
            path.mkdir(parents=True)
            started = time.perf_counter()
            execute(cell_spec(template, cell), ResultsFolder(path), progress)
            folder.mark_finished(cell, time.perf_counter() - started)
            ran.append(cell.name)
            progress.advance(overall)
            console.print(f"cell {cell.name}: done in {time.perf_counter() - started:.1f} s")
    return ran


def cell_spec(template: RunSpec, cell: Cell) -> RunSpec:
    """``template`` on ``cell``'s profile, with its codec (checked with the job's network
    section: ``JobConfig``)."""
    job = template.job.model_copy(update={"codec": cell.codec}) if cell.codec else template.job
    return replace(template, job=job, profile=cell.profile)
