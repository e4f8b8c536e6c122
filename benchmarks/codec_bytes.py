"""Benchmark: bytes per speculation cycle for every payload codec.

Computed by encoding real ``draft`` and ``verdict`` messages with the
project's own codecs and protocol (ZMTP framing included), for a vocabulary
width of your choice: by default the shipped pair's and Qwen2.5's 151936.
Up: the draft message with K ids; down: the verdict, and for ``q-scalar``
also the verdict that carries the target row after a rejection (dense, and
sparse when the target's distribution is truncated by top-k/top-p).

With ``--measure PAIR`` it also runs fixed-K through the agents for every
codec (sampling; greedy for ``ids``) and prints the bytes each cycle really
carried, with the run's acceptance.

    .venv/bin/python benchmarks/codec_bytes.py [--k 5] [--vocab 151936 ...] [--measure tiny-arith]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.codecs import CODEC_NAMES  # noqa: E402
from agents.payload_bytes import cycle_bytes  # noqa: E402
from orchestrator.config.run_spec import RunSpec  # noqa: E402
from orchestrator.lifecycle.run import run  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--vocab", type=int, nargs="+", default=[1024, 151936])
    parser.add_argument("--measure", metavar="PAIR", help="also measure runs of this model pair")
    parser.add_argument("--prompts", default="arith", help="prompt set for --measure")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"K = {args.k}; bytes on the wire per message (ZMTP frames included)")
    print(f"{'vocab':>8} {'codec':>9} {'up':>10} {'down':>6} {'down after rejection':>21} "
          f"{'(target top-k 50)':>18}")
    for vocab in args.vocab:
        for name in CODEC_NAMES:
            sizes = cycle_bytes(name, args.k, vocab, rng)
            rejected, sparse = sizes.get("down_rejected", ""), sizes.get("down_rejected_top50", "")
            print(f"{vocab:8d} {name:>9} {sizes['up']:10d} {sizes['down']:6d} {rejected:>21} "
                  f"{sparse:>18}")
    if args.measure:
        measure(args.measure, args.k, args.prompts)
    return 0


def measure(pair: str, k: int, prompts: str) -> None:
    from rich.console import Console
    print(f"\nmeasured on {pair}, fixed-k{k}, RTT 0 (mean bytes per cycle)")
    print(f"{'codec':>9} {'decoding':>9} {'up':>9} {'down':>9} {'acceptance':>11}")
    root = Path(tempfile.mkdtemp(prefix="edgespec-codecs-"))
    for name in CODEC_NAMES:
        decoding = "greedy" if name == "ids" else "sampling"
        spec = RunSpec.load("smoke", "rtt000-bw100", "sim", job_overrides={
            "model_pair": pair, "prompts": prompts, "strategies": ["fixed-k"], "k_values": [k],
            "decoding": decoding, "codec": name, "max_queries": 6, "max_new_tokens": 48})
        _, summary = run(spec, root, Console(file=io.StringIO()))
        row = summary.iloc[0]
        print(f"{name:>9} {decoding:>9} {row['bytes_up_per_cycle']:9.0f} "
              f"{row['bytes_down_per_cycle']:9.0f} {row['per_token_acceptance']:11.3f}")


if __name__ == "__main__":
    sys.exit(main())
