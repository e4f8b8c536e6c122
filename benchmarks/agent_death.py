"""Benchmark: how soon a run says that an agent died (issue 14, item 6; goal <= 2 s).

Starts ``python -m orchestrator.cli run`` (the smoke job, fixed-k, 2 queries of
``--tokens`` tokens) ``--tries`` times per agent and mode (sim, and emulated with
a rate-only profile when root), and ``kill -9``s the edge or the cloud agent a
random 0-0.5 s after the first query is on disk (mid-way through the second).
Per try: seconds from the kill to the ``error:`` line on stderr (the figure
the goal is about) and to the orchestrator's exit, whether that line names the
agent and its exit code, and whether the finished query is kept.

    .venv/bin/python benchmarks/agent_death.py [--tries 5] [--tokens 60] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MODES = {"sim": "lan", "emulated": "rtt000-bw010"}


def one_try(mode: str, agent: str, tokens: int, delay_s: float, scratch: Path) -> dict:
    results = Path(tempfile.mkdtemp(dir=scratch))
    child = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "run", "--mode", mode, "--profile", MODES[mode],
         "--job", "smoke", "--strategy", "fixed-k", "--max-new-tokens", str(tokens),
         "--queries", "2", "--results", str(results)],
        cwd=scratch, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend(
        (time.monotonic(), line) for line in child.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not any(path.stat().st_size for path in results.glob("*/queries.jsonl")):
        if time.monotonic() > deadline or child.poll() is not None:
            raise SystemExit(f"{mode}: no query finished: {''.join(l for _, l in lines)}")
        time.sleep(0.01)
    time.sleep(delay_s)
    found = subprocess.run(["pgrep", "-f", f"agents[.]{agent} --settings {results}"],
                           capture_output=True, text=True).stdout.split()
    os.kill(int(found[0]), signal.SIGKILL)
    killed = time.monotonic()
    child.wait(timeout=120)
    exited = time.monotonic()
    reader.join(timeout=10)
    error = next(((at, line.strip()) for at, line in lines if line.startswith("error:")),
                 (None, ""))
    queries = sum(len(path.read_text().splitlines()) for path in results.glob("*/queries.jsonl"))
    return {"mode": mode, "agent": agent, "exit_code": child.returncode,
            "to_error_s": None if error[0] is None else error[0] - killed,
            "to_exit_s": exited - killed, "line": error[1],
            "named": error[1].startswith(f"error: the {agent} agent died (killed by SIGKILL, "
                                         "exit code -9)"),
            "kept": queries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=5, help="per agent and mode")
    parser.add_argument("--tokens", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="Also write the report here.")
    args = parser.parse_args()
    draw = random.Random(args.seed)
    modes = list(MODES) if os.geteuid() == 0 else ["sim"]
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    say(f"kill -9 of an agent mid-query: {args.tries} tries per agent and mode, load "
        f"{os.getloadavg()[0]:.2f}")
    say(f"{'mode':8s} {'agent':5s} {'to error':>9s} {'to exit':>8s} {'exit':>4s} {'kept':>4s}  "
        "names it")
    found = []
    with tempfile.TemporaryDirectory(prefix="agent-death-") as folder:
        for mode in modes:
            for agent in ("edge", "cloud"):
                for _ in range(args.tries):
                    row = one_try(mode, agent, args.tokens, draw.uniform(0.0, 0.5), Path(folder))
                    found.append(row)
                    to_error = "-" if row["to_error_s"] is None else f"{row['to_error_s']:.2f} s"
                    named = "yes" if row["named"] else "NO"
                    say(f"{mode:8s} {agent:5s} {to_error:>9s} {row['to_exit_s']:6.2f} s "
                        f"{row['exit_code']:4d} {row['kept']:4d}  {named}")
    say()
    say(f"example: {found[0]['line']}")
    for mode in modes:
        for agent in ("edge", "cloud"):
            times = [row["to_error_s"] for row in found if row["mode"] == mode
                     and row["agent"] == agent and row["to_error_s"] is not None]
            tries = [row for row in found if row["mode"] == mode and row["agent"] == agent]
            say(f"{mode:8s} {agent:5s} kill -> error line: "
                f"median {statistics.median(times):.2f} s, "
                f"max {max(times):.2f} s over {len(times)} of {len(tries)} tries (goal <= 2 s); "
                f"named {sum(row['named'] for row in tries)}/{len(tries)}, finished query kept "
                f"{sum(row['kept'] >= 1 for row in tries)}/{len(tries)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
