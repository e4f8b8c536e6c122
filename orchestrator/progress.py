"""Progress of long work (queries of a run, cells of a sweep), on a terminal and in a log.

On a terminal: rich's live bars, removed when the work is done.  Anywhere
else (output to a file, a CI log, the VM's serial console), a live bar shows
nothing at all, so a 10-minute run would print nothing for 10 minutes;
there ``PlainProgress`` prints one line per ``LINE_INTERVAL_S`` instead:
the elapsed time and each task's count and current description.  Tasks name
what they count with a ``unit`` field: ``add_task(text, total=n, unit="queries")``.
"""

from __future__ import annotations

import threading
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

LINE_INTERVAL_S = 10.0


def work_progress(console: Console) -> Progress:
    """Live bars on a terminal, else a plain line every ``LINE_INTERVAL_S``."""
    if console.is_terminal:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=True)
    return PlainProgress(console)


class PlainProgress(Progress):
    """A ``Progress`` that draws nothing live and prints a status line at a steady interval
    (from a thread of its own, so a long single step still gets its lines)."""

    def __init__(self, console: Console, interval_s: float = LINE_INTERVAL_S) -> None:
        super().__init__(console=console, disable=True)
        self.interval_s = interval_s
        self._started = time.monotonic()
        self._done = threading.Event()
        self._printer = threading.Thread(target=self._print_lines, name="progress-lines",
                                         daemon=True)

    def start(self) -> None:
        super().start()
        self._started = time.monotonic()
        self._printer.start()

    def stop(self) -> None:
        self._done.set()
        if self._printer.is_alive():
            self._printer.join()
        super().stop()

    def line(self) -> str:
        """``progress 1m20s: cells 2/5 (cell rtt040-bw010); queries 13/70 (fixed-k5 q3)``."""
        elapsed = int(time.monotonic() - self._started)
        parts = [f"{task.fields.get('unit', 'done')} {task.completed:g}/{task.total:g} "
                 f"({task.description})" for task in self.tasks if task.visible]
        return f"progress {elapsed // 60}m{elapsed % 60:02d}s: " + "; ".join(parts)

    def _print_lines(self) -> None:
        while not self._done.wait(self.interval_s):
            self.console.print(self.line(), highlight=False, soft_wrap=True)
