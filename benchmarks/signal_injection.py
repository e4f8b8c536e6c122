"""Benchmark: SIGINT and SIGTERM at random points of real runs (issue 14, item 5).

Starts ``python -m orchestrator.cli run`` (the smoke job) in emulated mode with
a rate-only profile (tbf on a veth: no ``sch_netem`` needed) and in sim mode,
alternating, and sends each run one signal, SIGINT or SIGTERM (drawn), after a
delay drawn uniformly from zero to the length of an uninterrupted run of that
mode (measured first), until ``--runs`` runs got their signal while still
running (a run that ended before its signal is listed as ``late`` and not
counted).  Per run it checks:

- ignored: the exit status is neither 128 + the signal (the orchestrator's
  own) nor death by the signal's default action (a shell reads that as 128 +
  the signal too: before the handlers are in, in the first ~30 ms of the
  interpreter, or once the command is done and they are released);
- traceback: stderr holds one, or an exit with 128 + the signal lacks the one
  ``interrupted`` line;
- leaks: what the run made and left after it exited: namespaces and owner
  files of its prefixes (an owner file names the run's pid; a new namespace of
  the scheme with no owner at all counts too), agent processes, the agents'
  socket folder;
- finished queries lost: queries the edge agent logged as finished at least
  ``GRACE_S`` before the signal that ``queries.jsonl`` lacks.

Where the signal landed (``phase``) comes from what the run had made by then:
``start`` (nothing yet: imports, the config), ``host`` (its first owner file:
the host check and the namespaces), ``agents`` (their logs), ``queries``
(a finished query).  Something leaked is removed with ``orchestrator cleanup``
before the next run.

    .venv/bin/python benchmarks/signal_injection.py [--runs 50] [--seed 0] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shaping.topology import OWNER_DIR  # noqa: E402

NETNS_DIR = Path("/run/netns")
SCHEME = re.compile(r"(es[0-9a-f]{8})-(edge|cloud|probe)")
FINISHED_QUERY = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) edge INFO query (\S+)/(\S+)/(\d+):", re.M)
GRACE_S = 0.5          # a query finished this long before the signal must be on disk
POLL_S = 0.002
MODES = {"emulated": "rtt000-bw010", "sim": "rtt000-bw010"}


def command(mode: str, results: Path) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", "run", "--mode", mode,
            "--profile", MODES[mode], "--job", "smoke", "--results", str(results)]


def owner_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def listdir(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()


@dataclass
class Watched:
    """What one run made, as seen every ``POLL_S`` while it ran."""

    pid: int
    results: Path
    namespaces_before: set[str]
    prefixes: set[str] = field(default_factory=set)      # owner files naming the run's pid
    new_namespaces: set[str] = field(default_factory=set)
    first: dict[str, float] = field(default_factory=dict)  # phase -> monotonic time

    def poll(self) -> None:
        now = time.monotonic()
        for name in listdir(OWNER_DIR):
            prefix = name.removesuffix(".owner")
            if prefix not in self.prefixes and owner_pid(OWNER_DIR / name) == self.pid:
                self.prefixes.add(prefix)
                self.first.setdefault("host", now)
        self.new_namespaces |= {name for name in listdir(NETNS_DIR) - self.namespaces_before
                                if SCHEME.fullmatch(name)}
        if any(self.results.glob("*/edge.log")):
            self.first.setdefault("agents", now)
        if any(path.stat().st_size for path in self.results.glob("*/queries.jsonl")):
            self.first.setdefault("queries", now)

    def phase(self, at: float) -> str:
        passed = [(t, name) for name, t in self.first.items() if t <= at]
        return max(passed)[1] if passed else "start"

    def leaks(self) -> list[str]:
        left = []
        namespaces = listdir(NETNS_DIR)
        for name in sorted(self.new_namespaces & namespaces):
            prefix = SCHEME.fullmatch(name)[1]
            owner = owner_pid(OWNER_DIR / f"{prefix}.owner")
            if prefix in self.prefixes or owner is None:
                left.append(f"namespace {name}" + ("" if owner else " (no owner file)"))
        left += [f"owner file {prefix}" for prefix in sorted(self.prefixes)
                 if (OWNER_DIR / f"{prefix}.owner").exists()]
        agents = subprocess.run(["pgrep", "-f", f"agents[.](edge|cloud) --settings {self.results}"],
                                capture_output=True, text=True).stdout.split()
        left += [f"agent pid {pid}" for pid in agents]
        for settings in self.results.glob("*/*.settings.json"):
            address = json.loads(settings.read_text())["control_address"]
            folder = Path(address.removeprefix("ipc://")).parent
            if folder.exists():
                left.append(f"socket folder {folder}")
        return sorted(set(left))


def finished_queries(results: Path) -> tuple[dict[tuple, float], set[tuple]]:
    """(query -> wall time the edge logged it finished, queries in queries.jsonl)."""
    logged, saved = {}, set()
    today = datetime.date.today()
    for log in results.glob("*/edge.log"):
        for stamp, label, query_id, repetition in FINISHED_QUERY.findall(log.read_text()):
            clock = datetime.datetime.combine(today, datetime.time.fromisoformat(stamp))
            logged[(label, query_id, int(repetition))] = clock.timestamp()
    for path in results.glob("*/queries.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            saved.add((record["label"], str(record["query_id"]), int(record["repetition"])))
    return logged, saved


@dataclass
class Outcome:
    mode: str
    signum: int
    delay_s: float
    phase: str = ""
    exit_code: int | None = None
    late: bool = False              # the run had ended before the signal went out
    traceback: bool = False
    leaks: list[str] = field(default_factory=list)
    lost: list[tuple] = field(default_factory=list)
    kept: int = 0
    exit_after_s: float = 0.0

    @property
    def by_default_action(self) -> bool:
        return self.exit_code == -self.signum

    @property
    def ignored(self) -> bool:
        return not self.late and self.exit_code not in (128 + self.signum, -self.signum)

    def line(self) -> str:
        verdict = ("late" if self.late else "IGNORED" if self.ignored else
                   "default" if self.by_default_action else "ok")
        notes = (["traceback"] if self.traceback else []) + self.leaks + \
            [f"lost {'/'.join(map(str, q))}" for q in self.lost]
        return (f"{self.mode:8s} {signal.Signals(self.signum).name:7s} {self.delay_s:6.2f} s "
                f"{self.phase:8s} exit {self.exit_code!s:>4s} in {self.exit_after_s:4.2f} s "
                f"kept {self.kept:2d}  {verdict:7s} {'; '.join(notes)}")


def run_once(mode: str, signum: int | None, delay_s: float, scratch: Path) -> tuple[Outcome, float]:
    """One run, signalled after ``delay_s`` (never, for None); its outcome and length."""
    results = scratch / "results"
    shutil.rmtree(results, ignore_errors=True)
    results.mkdir(parents=True)
    outcome = Outcome(mode, signum or 0, delay_s)
    started = time.monotonic()
    child = subprocess.Popen(command(mode, results), cwd=scratch, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    watched = Watched(child.pid, results, listdir(NETNS_DIR))
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.append(child.stderr.read()), daemon=True)
    reader.start()
    sent_at = sent_wall = None
    while child.poll() is None:
        watched.poll()
        if signum is not None and sent_at is None and time.monotonic() - started >= delay_s:
            sent_at, sent_wall = time.monotonic(), time.time()
            outcome.phase = watched.phase(sent_at)
            child.send_signal(signum)
        time.sleep(POLL_S)
    ended = time.monotonic()
    reader.join()
    outcome.exit_code = child.returncode
    outcome.late = signum is not None and sent_at is None
    outcome.exit_after_s = ended - sent_at if sent_at is not None else 0.0
    text = "".join(stderr)
    outcome.traceback = "Traceback" in text or (
        outcome.exit_code == 128 + outcome.signum and "interrupted" not in text)
    outcome.leaks = watched.leaks()
    logged, saved = finished_queries(results)
    outcome.kept = len(saved)
    if sent_wall is not None:
        outcome.lost = sorted(q for q, at in logged.items()
                              if at <= sent_wall - GRACE_S and q not in saved)
    if outcome.leaks:
        subprocess.run([sys.executable, "-m", "orchestrator.cli", "cleanup"], cwd=ROOT,
                       capture_output=True)
    if signum is None and child.returncode != 0:
        raise SystemExit(f"the uninterrupted {mode} run failed: {text[-2000:]}")
    return outcome, ended - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="Also write the report here.")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the emulated runs need root")
    draw = random.Random(args.seed)
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    with tempfile.TemporaryDirectory(prefix="signal-injection-") as folder:
        scratch = Path(folder)
        length = {mode: run_once(mode, None, 0.0, scratch)[1] for mode in MODES}
        say(f"signal injection: {args.runs} runs, seed {args.seed}, load "
            f"{os.getloadavg()[0]:.2f}; uninterrupted run: " +
            ", ".join(f"{mode} {seconds:.2f} s" for mode, seconds in length.items()))
        say(f"{'mode':8s} {'signal':7s} {'after':>8s} {'phase':8s} {'exit':>9s} "
            f"{'exited':>10s} {'kept':>7s}  verdict")
        outcomes = []
        while sum(not o.late for o in outcomes) < args.runs:
            mode = list(MODES)[len(outcomes) % len(MODES)]
            signum = draw.choice([signal.SIGINT, signal.SIGTERM])
            outcome, _ = run_once(mode, signum, draw.uniform(0.0, length[mode]), scratch)
            outcomes.append(outcome)
            say(outcome.line())
    sent = [o for o in outcomes if not o.late]
    say()
    say(f"signalled while running: {len(sent)} " + ", ".join(
        f"{mode} {sum(o.mode == mode for o in sent)}" for mode in MODES) +
        f" ({len(outcomes) - len(sent)} more ended before their signal: not counted)")
    for phase in ("start", "host", "agents", "queries"):
        say(f"  phase {phase:8s} {sum(o.phase == phase for o in sent):3d}")
    say(f"ignored (exit status neither 128 + signal nor the signal's default action): "
        f"{sum(o.ignored for o in sent)}")
    say(f"ended by the signal's default action (start-up or shutdown window): "
        f"{sum(o.by_default_action for o in sent)}")
    say(f"traceback or no 'interrupted' line: {sum(o.traceback for o in sent)}")
    say(f"runs leaving something behind: {sum(bool(o.leaks) for o in outcomes)}")
    say(f"finished queries lost: {sum(len(o.lost) for o in outcomes)} "
        f"(queries kept over all runs: {sum(o.kept for o in outcomes)})")
    exits = sorted(o.exit_after_s for o in sent)
    if exits:
        say(f"signal to exit: median {exits[len(exits) // 2]:.2f} s, max {exits[-1]:.2f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
