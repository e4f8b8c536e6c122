"""Sweeps: one job over many network cells, written cell by cell, resumable.

A job's ``network`` section expands (``expand``) into cells: each named
profile and each point of each grid, crossed with the codecs to compare.  A
sweep folder holds ``sweep.yaml`` (the resolved job, the mode and the cell
names, written first), one run folder per cell under ``cells/`` (the same
files as ``orchestrator run`` writes), and ``cells.jsonl``, to which a cell
is appended only once its summary is on disk.  Resuming skips every cell in
``cells.jsonl`` and reruns a cell that was cut off, from scratch.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console

from orchestrator.configs import ConfigError, load_model_pair, load_profile, validate
from orchestrator.datasets import load_dataset
from orchestrator.job import JobConfig, NetworkGrid
from orchestrator.results import ResultsFolder
from orchestrator.progress import work_progress
from orchestrator.run import RunSpec, execute
from shaping.profile import NetworkProfile, ProfileFile, resolve


@dataclass(frozen=True)
class Cell:
    """One network condition (and codec) of a sweep; named ``<profile>@<codec>`` when the
    sweep names codecs, else ``<profile>``."""

    profile: NetworkProfile
    codec: str | None = None          # None: the job's

    @property
    def name(self) -> str:
        return self.profile.name + (f"@{self.codec}" if self.codec else "")


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


class SweepFolder:
    """The files of one sweep on disk (see the module docstring)."""

    PLAN = "sweep.yaml"
    DONE = "cells.jsonl"
    CELLS = "cells"

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, root: Path, job: JobConfig, mode: str, cells: list[Cell]) -> "SweepFolder":
        return cls.create_at(ResultsFolder.new_path(root, f"sweep-{job.name}-{mode}"), job, mode,
                             cells)

    @classmethod
    def create_at(cls, path: Path, job: JobConfig, mode: str, cells: list[Cell]) -> "SweepFolder":
        folder = cls(path)
        (path / cls.CELLS).mkdir(parents=True)
        plan = {"mode": mode, "job": job.model_dump(mode="json"),
                "cells": [cell.name for cell in cells]}
        (path / cls.PLAN).write_text(yaml.safe_dump(plan, sort_keys=False))
        return folder

    @classmethod
    def open(cls, path: Path) -> "SweepFolder":
        if not (path / cls.PLAN).is_file():
            raise ConfigError(f"{path}: not a sweep folder (no {cls.PLAN})")
        return cls(path)

    def plan(self) -> tuple[JobConfig, str, list[str]]:
        data = yaml.safe_load((self.path / self.PLAN).read_text())
        job = validate(JobConfig, data["job"], str(self.path / self.PLAN))
        return job, data["mode"], list(data["cells"])

    def cell_path(self, cell_name: str) -> Path:
        return self.path / self.CELLS / cell_name

    def finished(self) -> dict[str, dict]:
        done = self.path / self.DONE
        if not done.exists():
            return {}
        records = [json.loads(line) for line in done.read_text().splitlines() if line.strip()]
        return {record["cell"]: record for record in records}

    def mark_finished(self, cell: Cell, wall_s: float) -> None:
        record = {"cell": cell.name, "profile": cell.profile.name, "codec": cell.codec,
                  "wall_s": round(wall_s, 3), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        with open(self.path / self.DONE, "a") as done:
            done.write(json.dumps(record) + "\n")
            done.flush()


def sweep(folder: SweepFolder, job: JobConfig, mode: str, cells: list[Cell],
          console: Console) -> list[str]:
    """Run every cell not yet finished; the names of the cells run now."""
    finished = folder.finished()
    todo = [cell for cell in cells if cell.name not in finished]
    if finished:
        console.print(f"resuming: {len(finished)} of {len(cells)} cells already finished")
    model_pair = load_model_pair(job.model_pair)
    prompts = load_dataset(job.prompts)
    RunSpec.build(job, cells[0].profile, mode, model_pair, prompts)     # bad input fails here
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
            cell_job = job.model_copy(update={"codec": cell.codec}) if cell.codec else job
            spec = RunSpec.build(cell_job, cell.profile, mode, model_pair, prompts)
            started = time.perf_counter()
            execute(spec, ResultsFolder(path), progress)
            folder.mark_finished(cell, time.perf_counter() - started)
            ran.append(cell.name)
            progress.advance(overall)
            console.print(f"cell {cell.name}: done in {time.perf_counter() - started:.1f} s")
    return ran
