"""The folders results live in, written as things happen: where a result row is written.

A run's folder (``ResultsFolder``): ``config.yaml`` (everything the run resolved) is
written first; each finished query appends one line to ``queries.jsonl`` and its cycles
to ``cycles.jsonl``, flushed at once, so a crash loses nothing finished; ``summary.csv``
comes last.  A sweep's folder (``SweepFolder``): ``sweep.yaml`` (the resolved job, the mode
and the cell names, written first), one run folder per cell under ``cells/``, and
``cells.jsonl``, to which a cell is appended only once its summary is on disk.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from orchestrator.config.job import JobConfig
from orchestrator.config.loading import ConfigError, parse
from orchestrator.config.run_spec import RESOLVED_FILE
from shaping.profile import NetworkProfile


def _json_safe(record: dict) -> dict:
    return {key: (None if isinstance(value, float) and math.isnan(value) else value)
            for key, value in record.items()}


class ResultsFolder:
    QUERIES = "queries.jsonl"
    CYCLES = "cycles.jsonl"
    SUMMARY = "summary.csv"
    CONFIG = RESOLVED_FILE

    def __init__(self, path: Path) -> None:
        self.path = path
        self._queries = open(path / self.QUERIES, "a")
        self._cycles = open(path / self.CYCLES, "a")

    @staticmethod
    def new_path(root: Path, label: str) -> Path:
        """A new, empty folder under ``root`` named by the time and ``label``; absolute, since
        the agents that write into it do not run in the user's working folder."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        safe = re.sub(r"[^A-Za-z0-9_.@-]+", "-", label)
        root = root.resolve()
        path = root / f"{stamp}-{safe}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = root / f"{stamp}-{safe}-{suffix}"
        path.mkdir(parents=True)
        return path

    @classmethod
    def create(cls, root: Path, label: str) -> "ResultsFolder":
        return cls(cls.new_path(root, label))

    def write_config(self, resolved: dict) -> None:
        (self.path / self.CONFIG).write_text(yaml.safe_dump(resolved, sort_keys=False))

    def append(self, query: dict, cycles: list[dict]) -> None:
        for cycle in cycles:
            self._cycles.write(json.dumps(_json_safe(cycle)) + "\n")
        self._cycles.flush()
        self._queries.write(json.dumps(_json_safe(query)) + "\n")
        self._queries.flush()

    def close(self) -> None:
        self._queries.close()
        self._cycles.close()


@dataclass(frozen=True)
class Cell:
    """One network condition (and codec) of a sweep; named ``<profile>@<codec>`` when the
    sweep names codecs, else ``<profile>``."""

    profile: NetworkProfile
    codec: str | None = None          # None: the job's

    @property
    def name(self) -> str:
        return self.profile.name + (f"@{self.codec}" if self.codec else "")


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
        job = parse(JobConfig, data["job"], str(self.path / self.PLAN))
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
