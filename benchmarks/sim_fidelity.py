"""Benchmark: how exactly does sim mode reproduce the analytic model?

Prints, side by side from one invocation:
1. fixed K = 5, synthetic acceptance 0.7, no jitter or loss, RTT 0..500 ms:
   measured tokens/s against the analytic prediction (at the measured
   per-token acceptance) and the edge-measured median RTT against the profile;
2. the testbed's overhead per cycle at RTT 0;
3. 5 % random loss: cycle-time percentiles (the RTO tail) and the loss rate
   the edge saw, with its 95 % interval.

    .venv/bin/python benchmarks/sim_fidelity.py [--tokens 160] [--queries 4]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.config.run_spec import RunSpec  # noqa: E402
from orchestrator.lifecycle.run import run  # noqa: E402
from orchestrator.reporting.summary import read_jsonl  # noqa: E402
from orchestrator.results import ResultsFolder  # noqa: E402
from validation.sim_fidelity import loss_from_cycles, overhead_per_cycle_ms, rate_check  # noqa: E402
from validation.stats import percentiles  # noqa: E402

RTTS_MS = (0, 10, 25, 50, 100, 200, 500)


def run_quietly(spec: RunSpec, root: Path):
    return run(spec, root, Console(file=io.StringIO()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=160, help="new tokens per query")
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--loss-queries", type=int, default=6)
    args = parser.parse_args()
    overrides = {"max_new_tokens": args.tokens, "max_queries": args.queries}
    root = Path(tempfile.mkdtemp(prefix="edgespec-bench-"))

    print("fixed-k5, acceptance 0.7, 100 Mbps, no jitter, no loss")
    print("model: the pair's modeled compute (goal within 5 %); stages: the run's measured "
          "compute, modeled link; tau: tokens per cycle against E[tau]")
    print("overhead: cycle wall time - modeled compute - modeled link time (goal <= 0.3 ms)")
    print(f"{'RTT ms':>7} {'RTT p50 ms':>11} {'err ms':>7} {'tok/s':>8} {'model':>8} "
          f"{'err %':>6} {'stages %':>8} {'tau %':>6} {'cycles':>6} {'overhead p50 ms':>16} "
          f"{'p95 ms':>7}")
    for rtt in RTTS_MS:
        spec = RunSpec.load("accuracy", f"rtt{rtt:03d}-bw100", "sim", job_overrides=overrides)
        folder, summary = run_quietly(spec, root)
        cycles = read_jsonl(folder / ResultsFolder.CYCLES)
        check = rate_check(summary, cycles, "fixed-k5", spec.profile.initial)
        overhead = percentiles(overhead_per_cycle_ms(cycles, spec.model_pair, spec.profile.initial))
        print(f"{rtt:7d} {check.rtt_measured_p50_ms:11.3f} {check.rtt_error_ms:7.3f} "
              f"{check.tokens_per_s:8.2f} {check.predicted_tokens_per_s:8.2f} "
              f"{100 * check.rate_error:6.2f} {100 * check.stage_rate_error:8.2f} "
              f"{100 * check.token_error:6.2f} {check.cycles:6d} {overhead['p50']:16.3f} "
              f"{overhead['p95']:7.3f}")

    spec = RunSpec.load("accuracy", "rtt050-bw010-l5", "sim",
                        job_overrides={**overrides, "max_queries": args.loss_queries})
    folder, _ = run_quietly(spec, root)
    cycles = read_jsonl(folder / ResultsFolder.CYCLES)
    cycle_ms = percentiles(cycles["t_cycle"] * 1000.0)
    loss = loss_from_cycles(cycles, spec.profile.initial)
    print(f"\n5% random loss, RTT 50 ms, 10 Mbps, {loss.cycles} cycles: cycle p50 "
          f"{cycle_ms['p50']:.1f} ms, p95 {cycle_ms['p95']:.1f} ms, p99 {cycle_ms['p99']:.1f} ms")
    print(f"loss seen by the edge: {100 * loss.per_message_loss:.2f}% per message, 95% interval "
          f"[{100 * loss.interval[0]:.2f}%, {100 * loss.interval[1]:.2f}%] "
          f"({loss.cycles_with_retransmission} cycles with a retransmission)")
    print(f"\nrun folders under {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
