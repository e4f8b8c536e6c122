"""Benchmark: hostile peers against the cloud of a live run (issue 14).

A legitimate run (``orchestrator run --mode sim``, fixed K = 5 and cloud-only on the
synthetic pair) goes on while, from this process:

- a fuzzer aims N structure-aware hostile messages at each typed part of each message type
  (``tests.hostile_messages.TARGETS``: header keys, schema fields, sampling fields, arrays'
  names, dtypes, shapes, frame lengths and contents, raw header bytes) from peers of its own,
  each message after the valid ``open`` it needs and followed by closes and a probe whose
  answer says the cloud has handled it all;
- a forger sends ``close`` for every session name the run will use
  (``label/query_id/repetition``, all guessable) as fast as the cloud answers.

It prints the hostile messages per type, what the cloud counted (its control plane's
``stats``: refusals by kind, internal errors, peers released), cloud crashes (goal 0), the
cloud's resident memory before, at its peak and after the fuzz (goal: bounded), the forged
closes sent and refused, and the legitimate run's correctness: every query finished, fixed
K's output equal to cloud-only's (lossless) and to a reference run without attackers
(greedy on the synthetic pair decodes the same texts), with both runs' tokens/s.

    .venv/bin/python benchmarks/hostile_peers.py [--per-target 25] [--repetitions 6]
        [--queries 4] [--tokens 64] [--profile lan]
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import zmq
from hypothesis import HealthCheck, Phase, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.control import ControlClient  # noqa: E402
from agents.protocol import Channel, Message, ReceiveTimeout  # noqa: E402
from tests.hostile_messages import TARGETS, HostileMessage, hostile_messages  # noqa: E402

STRATEGIES = ["--strategy", "fixed-k", "--k", "5", "--strategy", "cloud-only"]
VOCAB = 1024    # the synthetic pair's


def start_run(results: Path, args) -> subprocess.Popen:
    """The legitimate run, its output to ``results``/run.txt."""
    results.mkdir(parents=True)
    with open(results / "run.txt", "w") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "run", "--mode", "sim", "--profile",
             args.profile, "--job", "smoke", *STRATEGIES, "--queries", str(args.queries),
             "--repetitions", str(args.repetitions), "--max-new-tokens", str(args.tokens),
             "--results", str(results)], cwd=Path(__file__).resolve().parent.parent,
            stdout=output, stderr=subprocess.STDOUT)


def serving_cloud(results: Path, timeout_s: float = 300.0) -> tuple[Path, dict, int]:
    """The live run's folder, its cloud's settings and pid, once a first query is done."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for settings in results.glob("*/cloud.settings.json"):   # the run's own folder
            queries = settings.parent / "queries.jsonl"
            pids = subprocess.run(["pgrep", "-f", f"agents.cloud --settings {settings}"],
                                  capture_output=True, text=True).stdout.split()
            if pids and queries.exists() and queries.stat().st_size:
                return settings.parent, json.loads(settings.read_text()), int(pids[0])
        time.sleep(0.1)
    raise SystemExit(f"no query of the run under {results} finished in {timeout_s:.0f} s")


def rss_kib(pid: int) -> int | None:
    """The process's resident memory in KiB; None once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except FileNotFoundError:
        return None
    return next((int(line.split()[1]) for line in lines if line.startswith("VmRSS:")), None)


class Watch:
    """A run, watched: its cloud's resident memory when its first query was done, at its
    peak while ``busy`` (a thread: the attackers, or the rest of the run) lasted, and when
    last seen then; its queries once it ends."""

    def __init__(self, results: Path, args) -> None:
        self.run = start_run(results, args)
        self.folder, self.cloud, self.pid = serving_cloud(results)
        self.rss_before = self.rss_peak = self.rss_after = rss_kib(self.pid)

    def during(self, busy: threading.Thread) -> float:
        """Seconds ``busy`` took (``live_after``: whether the cloud still ran then)."""
        started = time.monotonic()
        busy.start()
        while busy.is_alive():
            rss = rss_kib(self.pid)
            if rss is not None:
                self.rss_peak, self.rss_after = max(self.rss_peak, rss), rss
            busy.join(0.25)
        self.live_after = rss_kib(self.pid) is not None
        return time.monotonic() - started

    def finished(self) -> list[dict]:
        if self.run.wait(timeout=3600) != 0:
            raise SystemExit(f"the run failed ({self.run.returncode}):\n"
                             + (self.folder.parent / "run.txt").read_text())
        return [json.loads(line)
                for line in (self.folder / "queries.jsonl").read_text().splitlines()]

    def rss(self) -> str:
        return (f"when its first query was done {self.rss_before / 1024:.1f} MiB, peak "
                f"{self.rss_peak / 1024:.1f} MiB, last {self.rss_after / 1024:.1f} MiB")


class Fuzzer:
    """Sends the hostile messages, one target after another, each target from a new peer."""

    def __init__(self, context: zmq.Context, address: str, per_target: int) -> None:
        self.context, self.address, self.per_target = context, address, per_target
        self.sent: Counter[str] = Counter()       # hostile messages by the type built as
        self.helpers = 0                          # valid opens, closes and probes around them
        self.unanswered = 0
        self.probes = itertools.count()

    def run(self) -> None:
        for target in TARGETS:
            socket = self.context.socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            socket.connect(self.address)
            peer = Channel(socket, receive_timeout_s=10.0)

            @settings(max_examples=self.per_target, deadline=None, database=None,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @given(message=hostile_messages(target, VOCAB, f"fuzz/{'.'.join(target)}"))
            def send(message: HostileMessage) -> None:
                self.send(peer, message)

            send()
            socket.close(linger=0)

    def send(self, peer: Channel, message: HostileMessage) -> None:
        probe = f"probe/{next(self.probes)}"
        if message.before:
            peer.socket.send_multipart(message.before)
            self.helpers += 1
        peer.socket.send_multipart(message.frames)
        self.sent[message.kind] += 1
        for session in (*message.sessions, probe):
            peer.send(Message("close", session))
            self.helpers += 1
        while True:
            try:
                reply, _, _ = peer.recv()
            except ReceiveTimeout:
                self.unanswered += 1
                return
            if reply.session == probe:
                return


class Forger:
    """Closes the run's sessions, by their guessable names, from a peer of its own."""

    def __init__(self, context: zmq.Context, address: str, names: list[str]) -> None:
        self.context, self.address, self.names = context, address, names
        self.sent = self.refused = 0
        self.stop = threading.Event()

    def run(self) -> None:
        socket = self.context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(self.address)
        peer = Channel(socket, receive_timeout_s=5.0)
        for name in itertools.cycle(self.names):
            if self.stop.is_set():
                break
            peer.send(Message("close", name))
            self.sent += 1
            try:
                reply, _, _ = peer.recv()
            except ReceiveTimeout:
                continue
            self.refused += reply.type == "error" and "no open session" in reply.fields["error"]
        socket.close(linger=0)


def tokens_per_s(queries: list[dict]) -> float:
    return sum(q["n_tokens"] for q in queries) / sum(q["e2e_s"] for q in queries)


def outputs(queries: list[dict]) -> dict[tuple, list[int]]:
    return {(q["label"], q["query_id"], q["repetition"]): q["output_ids"] for q in queries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-target", type=int, default=25)
    parser.add_argument("--repetitions", type=int, default=6)
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--profile", default="lan")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hostile-peers-"))
    print(f"legitimate run: {args.queries} queries x {args.repetitions} repetitions x "
          f"fixed-k5 and cloud-only, {args.tokens} tokens, synthetic pair, sim, {args.profile}")

    quiet = Watch(root / "reference", args)
    quiet.during(threading.Thread(target=quiet.run.wait))
    reference = quiet.finished()

    attacked_run = Watch(root / "attacked", args)
    context = zmq.Context()
    control = ControlClient(context, attacked_run.cloud["control_address"])
    address = attacked_run.cloud["data_address"]
    names = [f"{label}/{query}/{repetition}" for label in ("fixed-k5", "cloud-only")
             for query in range(1, args.queries + 1) for repetition in range(args.repetitions)]
    fuzzer, forger = Fuzzer(context, address, args.per_target), Forger(context, address, names)
    counts_before = control.call("stats", 10.0)["agent"]["counts"]
    forging = threading.Thread(target=forger.run)
    forging.start()
    fuzz_s = attacked_run.during(threading.Thread(target=fuzzer.run))
    counts = control.call("stats", 10.0)["agent"]["counts"]
    forger.stop.set()
    forging.join()
    attacked = attacked_run.finished()
    control.close()
    context.term()
    log = (attacked_run.folder / "cloud.log").read_text()

    print(f"\nhostile messages sent during the run, by type (every typed part of each, "
          f"{args.per_target} per part; {len(TARGETS)} parts), in {fuzz_s:.1f} s:")
    for kind, count in sorted(fuzzer.sent.items()):
        print(f"  {kind:9s} {count:6d}")
    print(f"  {'all':9s} {sum(fuzzer.sent.values()):6d}   (+ {fuzzer.helpers} valid opens, "
          f"closes and probes around them; {fuzzer.unanswered} probes unanswered)")
    print(f"  the run's cloud was still serving when the fuzz ended: {attacked_run.live_after}")
    delta = {key: counts.get(key, 0) - counts_before.get(key, 0) for key in counts}
    print(f"cloud's counts over the fuzz: {json.dumps(delta, sort_keys=True)}")
    print(f"cloud crashes: {int('stopped by the orchestrator' not in log)} (alive through "
          f"the fuzz, stopped by the orchestrator at the run's end); internal errors: "
          f"{delta.get('internal_errors', 0)}")
    print(f"cloud RSS, attacked run: {attacked_run.rss()}")
    print(f"cloud RSS, reference run: {quiet.rss()}")
    print(f"forged closes of the run's sessions: {forger.sent} sent, {forger.refused} refused")
    by_key, expected = outputs(attacked), outputs(reference)
    lossless = all(ids == by_key[("cloud-only", q, r)] for (label, q, r), ids in by_key.items()
                   if label == "fixed-k5")
    print(f"legitimate run: {len(attacked)} of {len(reference)} queries finished; outputs equal "
          f"to the reference run's: {by_key == expected}; fixed-k5 equal to cloud-only: "
          f"{lossless}")
    for label in ("fixed-k5", "cloud-only"):
        mine = [q for q in attacked if q["label"] == label]
        theirs = [q for q in reference if q["label"] == label]
        print(f"  {label:10s} {tokens_per_s(mine):6.1f} tok/s attacked, "
              f"{tokens_per_s(theirs):6.1f} unattacked")
    print(f"run folders: {root}")


if __name__ == "__main__":
    main()
