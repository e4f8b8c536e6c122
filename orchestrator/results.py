"""The folders results live in, written as things happen: where a result row is written.

A run's folder (``ResultsFolder``): ``config.yaml`` (everything the run resolved) is
written first; each finished query appends one line to ``queries.jsonl`` and its cycles
to ``cycles.jsonl``, flushed at once, so a crash loses nothing finished; ``summary.csv``
comes last (also after an interrupted run, marked incomplete).  A sweep's folder
(``SweepFolder``): ``sweep.yaml`` (the resolved job, the mode and the cell names, written
first), one run folder per cell under ``cells/``, and ``cells.jsonl``, to which a cell is
appended only once its summary is on disk, or, under a budget guardrail, once the guardrail
skipped every strategy run of it (``skipped``: no folder); a guarded sweep's line holds the
guardrail's decision on each run (``guardrail``).

A folder is created atomically under a name of its own, however many runs start at
once (``ResultsFolder.new_path``).  Every JSONL line is written whole or not at all
(``append_record``: one write each, a short write on a full disk cut back off), and a
reader skips a last line cut short anyway (``read_records``: a folder of an older version
or another writer) with a warning.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import yaml

from orchestrator.config.job import JobConfig
from orchestrator.config.loading import ConfigError, parse
from orchestrator.config.run_spec import RESOLVED_FILE
from shaping.profile import NetworkProfile


log = logging.getLogger(__name__)

MAX_LABEL_CHARS = 100     # of a folder's name: the label part (file names stop at 255 bytes)


def _json_safe(record: dict) -> dict:
    return {key: (None if isinstance(value, float) and math.isnan(value) else value)
            for key, value in record.items()}


def open_records(path: Path) -> BinaryIO:
    """``path`` for ``append_record``: appending, unbuffered (each write is one write call)."""
    return open(path, "ab", buffering=0)


def append_record(file: BinaryIO, record: dict) -> None:
    """``record`` as one JSON line at the end of ``file`` (``open_records``), written whole by
    one write call; a short write (a full disk) is cut back off the file and raised as the
    ``OSError`` it is, so no reader meets half a line written here."""
    line = (json.dumps(_json_safe(record)) + "\n").encode()
    try:
        written = file.write(line)
    except OSError as error:
        raise OSError(error.errno, error.strerror, file.name) from None
    if written != len(line):
        file.truncate(file.seek(0, os.SEEK_END) - written)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), file.name)


def read_records(path: Path) -> list[dict]:
    """The records of a JSONL file of ``append_record``'s (none if it is missing).  A last
    line cut short (its writer died mid-line) is left out with a warning; a bad line
    before it is a ``ConfigError``."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(lines):          # the last line, without its newline
                log.warning("%s: line %d is cut short (its writer stopped mid-line); "
                            "left out", path, number)
                break
            raise ConfigError(f"{path}:{number}: not a JSON record") from None
    return records


class ResultsFolder:
    QUERIES = "queries.jsonl"
    CYCLES = "cycles.jsonl"
    SUMMARY = "summary.csv"
    CONFIG = RESOLVED_FILE

    def __init__(self, path: Path) -> None:
        self.path = path
        self._queries = open_records(path / self.QUERIES)
        self._cycles = open_records(path / self.CYCLES)

    @staticmethod
    def new_path(root: Path, label: str) -> Path:
        """A new, empty folder under ``root`` named by the time and ``label``; absolute, since
        the agents that write into it do not run in the user's working folder.  Created
        atomically: a name another process took first gets a suffix.  A root that cannot
        hold it (under a file, read-only, not allowed) is a ``ConfigError``."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        safe = re.sub(r"[^A-Za-z0-9_.@-]+", "-", label)[:MAX_LABEL_CHARS]
        root = root.resolve()
        try:
            root.mkdir(parents=True, exist_ok=True)
            for suffix in range(1, 10_000):
                path = root / (f"{stamp}-{safe}" + (f"-{suffix}" if suffix > 1 else ""))
                try:
                    path.mkdir()
                    return path
                except FileExistsError:
                    continue
        except OSError as error:
            raise ConfigError(f"{root}: cannot create a results folder there: "
                              f"{error.strerror}") from None
        raise ConfigError(f"{root}: 10,000 results folders named {stamp}-{safe} already")

    @classmethod
    def create(cls, root: Path, label: str) -> "ResultsFolder":
        return cls(cls.new_path(root, label))

    def write_config(self, resolved: dict) -> None:
        (self.path / self.CONFIG).write_text(yaml.safe_dump(resolved, sort_keys=False))

    def append(self, query: dict, cycles: list[dict]) -> None:
        """A finished query: its cycles first, so a query on disk has all of its cycles."""
        for cycle in cycles:
            append_record(self._cycles, cycle)
        append_record(self._queries, query)

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
        """Every cell done with, run or skipped: its line in ``cells.jsonl``."""
        return {record["cell"]: record for record in read_records(self.path / self.DONE)}

    def ran(self) -> list[str]:
        """The cells that ran (have a run folder), in the order they finished."""
        return [name for name, record in self.finished().items() if not record.get("skipped")]

    def mark_finished(self, cell: Cell, wall_s: float, guardrail: list[dict] | None = None,
                      skipped: bool = False) -> None:
        """``cell`` done with: run (its summary on disk), or ``skipped`` by the guardrail;
        ``guardrail``: its decision on each strategy run (``RunVerdict.record``)."""
        record = {"cell": cell.name, "profile": cell.profile.name, "codec": cell.codec,
                  "wall_s": round(wall_s, 3), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  **({"skipped": True} if skipped else {}),
                  **({"guardrail": guardrail} if guardrail is not None else {})}
        with open_records(self.path / self.DONE) as done:
            append_record(done, record)
