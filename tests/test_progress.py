"""Progress where stdout is not a terminal: a plain line at a steady interval."""

from __future__ import annotations

import io
import time

from rich.console import Console

from orchestrator.progress import PlainProgress, work_progress


def test_a_log_gets_a_status_line_at_each_interval_even_within_one_long_step():
    log = Console(file=io.StringIO(), width=200)
    with work_progress(log) as progress:
        assert isinstance(progress, PlainProgress)
    with PlainProgress(log, interval_s=0.05) as progress:
        cells = progress.add_task("cell rtt010", total=5, completed=2, unit="cells")
        progress.add_task("fixed-k5 q3", total=70, completed=13, unit="queries")
        time.sleep(0.3)                      # one long step: lines keep coming
        progress.advance(cells)
    lines = log.file.getvalue().splitlines()
    assert len(lines) >= 3
    assert lines[0].startswith("progress 0m00s: cells 2/5 (cell rtt010); queries 13/70 (fixed-k5 q3)")
    assert "cells 3/5" in lines[-1] or "cells 2/5" in lines[-1]


def test_a_terminal_gets_live_bars_instead():
    terminal = Console(file=io.StringIO(), force_terminal=True)
    assert not isinstance(work_progress(terminal), PlainProgress)
