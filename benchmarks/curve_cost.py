"""Benchmark: what ZeroMQ CURVE costs the data plane per speculation cycle (issue 14).

Side by side in one run, plain and CURVE (keys made for the run and applied as the agents
apply them: ``agents.security``):

- the round trip of a real ``draft`` and its ``verdict`` over TCP loopback, between this
  process (a DEALER with the project's ``Channel``, the edge's end) and an echo cloud in a
  process of its own (a ROUTER ``Channel`` that decodes and checks each draft, as the cloud
  does, and answers with a verdict), for the sizes of several codecs (default: ids K = 5,
  q-scalar K = 5, one full16 row of a 151936 vocabulary).  Rounds go in blocks that
  alternate between plain and CURVE, so a varying host load hits both alike.  Printed per
  codec: the bytes up and down, median and p95 round trip of each in microseconds, and what
  CURVE adds per cycle: the median over pairs of neighbouring blocks of the difference of
  their medians (so a load that drifts slower than a block cancels), with its 95 % interval
  (bootstrap over the pairs);
- with ``--sim-runs N``, N whole sim runs each way (``orchestrator run --mode sim``: fixed
  K = 5 on the synthetic pair, on a 0 ms link), alternating: the median cycle time of each
  with its 95 % interval, and their difference.

The host's load average is printed before and after: on a shared host the tails move.

    .venv/bin/python benchmarks/curve_cost.py [--rounds 10000] [--block 100]
        [--codec ids:5 q-scalar:5 full16:1] [--vocab 151936] [--sim-runs 0]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import zmq
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.payload_bytes import VERDICT, draft_message, message_bytes  # noqa: E402
from agents.protocol import Channel, Message  # noqa: E402
from agents.security import Security, create_run_keys, secure_data_socket  # noqa: E402
from orchestrator.config.run_spec import RunSpec  # noqa: E402
from orchestrator.lifecycle.run import run  # noqa: E402
from shaping.link import LOOPBACK, free_tcp_port  # noqa: E402
from validation.stats import percentile_interval  # noqa: E402

SECURITIES: tuple[Security, ...] = ("plain", "curve")
TIMEOUT_S = 60.0     # an echo cloud that hears nothing this long ends (its edge is gone)


def echo_cloud(address: str, keys: Path | None) -> None:
    """Answer every ``draft`` with a ``verdict`` until a ``close`` (a process of its own)."""
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    authenticator = secure_data_socket(socket, "cloud", keys) if keys else None
    channel = Channel(socket, TIMEOUT_S)
    socket.bind(address)
    try:
        while True:
            message, peer, _ = channel.recv()
            if message.type == "close":
                return
            channel.send(Message("verdict", message.session, message.seq, VERDICT), peer)
    finally:
        socket.close(linger=0)
        if authenticator is not None:
            authenticator.stop()
        context.term()


class Edge:
    """This process's end of one data plane, against an echo cloud of its own."""

    def __init__(self, context: zmq.Context, keys: Path | None) -> None:
        address = f"tcp://{LOOPBACK}:{free_tcp_port()}"
        self.cloud = multiprocessing.get_context("spawn").Process(
            target=echo_cloud, args=(address, keys), daemon=True)
        self.cloud.start()
        socket = context.socket(zmq.DEALER)
        if keys:
            secure_data_socket(socket, "edge", keys)
        self.channel = Channel(socket, TIMEOUT_S)
        socket.connect(address)

    def round_trips_us(self, draft: Message, rounds: int) -> list[float]:
        """``rounds`` round trips of ``draft`` and its verdict, in microseconds."""
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            self.channel.send(draft)
            self.channel.recv()
            times.append((time.perf_counter() - started) * 1e6)
        return times

    def close(self) -> None:
        self.channel.send(Message("close", "bench"))
        self.cloud.join(TIMEOUT_S)
        self.channel.socket.close(linger=0)
        if self.cloud.is_alive():
            self.cloud.kill()


def measure_round_trips(codecs: list[tuple[str, int]], vocab: int, rounds: int,
                        block: int) -> list[dict]:
    """Per codec, the round trips of each security (microseconds, one line per block), in
    alternating blocks of ``block``."""
    rng = np.random.default_rng(0)
    context = zmq.Context()
    folder = Path(tempfile.mkdtemp(prefix="edgespec-curve-cost-"))
    edges = {"plain": Edge(context, None), "curve": Edge(context, create_run_keys(folder / "k"))}
    rows = []
    try:
        for codec, k in codecs:
            draft, _ = draft_message(codec, k, vocab, rng)
            for edge in edges.values():
                edge.round_trips_us(draft, 10)                   # connected, caches warm
            times = {security: [] for security in SECURITIES}
            for _ in range(max(rounds // block, 1)):
                for security, edge in edges.items():
                    times[security].append(edge.round_trips_us(draft, block))
            rows.append({"codec": codec, "k": k, "up": message_bytes(draft),
                         "down": message_bytes(Message("verdict", "edge/q1/0", 7, VERDICT)),
                         **{security: np.array(times[security]) for security in SECURITIES}})
    finally:
        for edge in edges.values():
            edge.close()
        context.term()
        shutil.rmtree(folder)
    return rows


def sim_cycle_times_ms(runs: int) -> dict[Security, np.ndarray]:
    """The cycle times of ``runs`` sim runs of each security (fixed K = 5, synthetic pair, 0 ms
    link), the securities alternating."""
    root = Path(tempfile.mkdtemp(prefix="edgespec-curve-runs-"))
    cycles = {security: [] for security in SECURITIES}
    try:
        for _ in range(runs):
            for security in SECURITIES:
                spec = RunSpec.load("smoke", "rtt000-bw100", "sim", job_overrides={
                    "strategies": ["fixed-k"], "k_values": [5], "max_new_tokens": 64,
                    "data_plane_security": security})
                folder, _ = run(spec, root, Console(file=io.StringIO()))
                cycles[security].append(
                    pd.read_json(folder / "cycles.jsonl", lines=True)["t_cycle"] * 1e3)
    finally:
        shutil.rmtree(root)
    return {security: np.concatenate(times) for security, times in cycles.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10000, help="round trips per codec and "
                        "security")
    parser.add_argument("--block", type=int, default=100, help="round trips of one security "
                        "before the other's")
    parser.add_argument("--codec", nargs="+", default=["ids:5", "q-scalar:5", "full16:1"],
                        help="CODEC:K, the draft messages measured")
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--sim-runs", type=int, default=0, help="whole sim runs each way")
    args = parser.parse_args()
    codecs = [(name, int(k)) for name, k in (spec.split(":") for spec in args.codec)]
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"draft/verdict round trips over TCP loopback, {args.rounds} per codec and security "
          f"in alternating blocks of {args.block}; vocabulary {args.vocab}; microseconds")
    print(f"{'codec':>9} {'K':>3} {'up B':>8} {'down B':>6} {'plain p50':>10} {'p95':>6} "
          f"{'curve p50':>10} {'p95':>6}   added per cycle [95 % interval]")
    for row in measure_round_trips(codecs, args.vocab, args.rounds, args.block):
        plain, curve = row["plain"], row["curve"]
        added = np.median(curve, axis=1) - np.median(plain, axis=1)
        low, high = percentile_interval(added, 50)
        print(f"{row['codec']:>9} {row['k']:3d} {row['up']:8d} {row['down']:6d} "
              f"{np.median(plain):10.0f} {np.percentile(plain, 95):6.0f} "
              f"{np.median(curve):10.0f} {np.percentile(curve, 95):6.0f}   "
              f"{np.median(added):5.0f} [{low:.0f}, {high:.0f}]")
    if args.sim_runs:
        print(f"\nsim runs (fixed-k5, synthetic pair, rtt000-bw100), {args.sim_runs} each way, "
              "alternating; cycle time in ms")
        cycles = sim_cycle_times_ms(args.sim_runs)
        for security, times in cycles.items():
            low, high = percentile_interval(times, 50)
            print(f"{security:>6}: {len(times)} cycles, median {np.median(times):.2f} "
                  f"[{low:.2f}, {high:.2f}]")
        print(f" added: {1e3 * (np.median(cycles['curve']) - np.median(cycles['plain'])):.0f} "
              "us per cycle")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
