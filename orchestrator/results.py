"""The results folder of one run, written as things happen.

``config.yaml`` (everything the run resolved) is written first; each finished
query appends one line to ``queries.jsonl`` and its cycles to
``cycles.jsonl``, flushed at once, so a crash loses nothing finished.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import yaml


def _json_safe(record: dict) -> dict:
    return {key: (None if isinstance(value, float) and math.isnan(value) else value)
            for key, value in record.items()}


class ResultsFolder:
    QUERIES = "queries.jsonl"
    CYCLES = "cycles.jsonl"
    SUMMARY = "summary.csv"
    CONFIG = "config.yaml"

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
