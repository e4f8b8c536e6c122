"""Benchmark: analytic vs sim tokens/s for every fixed K in 1..15, per-position acceptance.

For each pair (the i.i.d. synthetic pair, the synthetic pair whose acceptance
falls with the position in the block, the shipped tiny pair) and each RTT off
the shipped grid (37, 150, 333 ms; 100 Mbit/s, no jitter or loss), one sim run
of fixed K = 1..15, one run at a time (``--workers`` runs several side by side,
but the agents' precise waits spin, so a 2-core host then slows every cycle and
the measured rates fall below the model).  Per K:

- ``tok/s``: measured decode rate;
- ``pos %``: the run summary's prediction (the cycles' own K, the acceptance by
  position measured in that cell) against it: the goal is within 3 %;
- ``iid %``: the same at the pooled i.i.d. rate (the model before per-position);
- ``law %`` (synthetic): a priori, at the configured law, with the last cycles
  of each query drafting fewer tokens (``query_decode_time_s``); ``steady %``:
  the same law at E[tau] / T(K), ignoring that cap; ``±2se %``: what sampling
  alone moves a cell's measured tokens per cycle by (two standard errors, from
  the law and the cell's cycle count), so the a-priori columns are judged by it;
- tiny pair: its acceptance by position is measured (pooled over every cell of
  the pair), printed, and used for ``law %``; its stage times are measured.

    .venv/bin/python benchmarks/per_position.py [--tokens 48] [--queries 2]
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.backends.synthetic import SyntheticPairConfig  # noqa: E402
from nasd.analytic import (accepted_distribution, expected_tokens_per_cycle,  # noqa: E402
                           throughput_tokens_per_s)
from orchestrator.config.loading import load_job, load_model_pair, load_profile  # noqa: E402
from orchestrator.config.run_spec import RunSpec  # noqa: E402
from orchestrator.lifecycle.run import run  # noqa: E402
from orchestrator.reporting.summary import read_jsonl  # noqa: E402
from orchestrator.results import ResultsFolder  # noqa: E402
from validation.prediction import (cycle_time_s, measured_acceptance,  # noqa: E402
                                   measured_times, modeled_times, predicted_query_tokens_per_s,
                                   predicted_tokens_per_s)
from validation.stats import relative_error  # noqa: E402

RTTS_MS = (37, 150, 333)
KS = list(range(1, 16))
PAIRS = {"synthetic": "default", "synthetic-falling": "default", "tiny-arith": "arith-free"}


def run_cell(pair: str, prompts: str, rtt_ms: int, tokens: int, queries: int) -> str:
    job = load_job("accuracy", {"model_pair": pair, "prompts": prompts, "k_values": KS,
                                "max_new_tokens": tokens, "max_queries": queries})
    spec = RunSpec.build(job, load_profile("rtt000-bw100", {"rtt_ms": rtt_ms}), "sim")
    folder, _ = run(spec, Path(tempfile.mkdtemp(prefix="edgespec-perpos-")),
                    Console(file=io.StringIO()))
    return str(folder)


def tokens_se(law, k: int, cycles: int) -> float:
    """Standard error of the mean tokens per cycle over ``cycles`` cycles of K under ``law``."""
    tokens = np.arange(1, k + 2)
    distribution = accepted_distribution(law, k)
    mean = distribution @ tokens
    return math.sqrt(max(distribution @ tokens ** 2 - mean ** 2, 0.0) / max(cycles, 1)) / mean


def table(pair_name: str, folders: dict[int, Path]) -> list[float]:
    pair = load_model_pair(pair_name)
    data = {rtt: (read_jsonl(folder / ResultsFolder.QUERIES),
                  read_jsonl(folder / ResultsFolder.CYCLES),
                  pd.read_csv(folder / ResultsFolder.SUMMARY).set_index("label"))
            for rtt, folder in folders.items()}
    synthetic = isinstance(pair, SyntheticPairConfig)
    if synthetic:
        law = pair.acceptance_law
    else:   # measured, over every cell of the pair
        law = measured_acceptance(pd.concat([cycles for _, cycles, _ in data.values()]))
    print(f"\n{pair_name}: acceptance by position "
          f"{'configured' if synthetic else 'measured'}: "
          f"{np.round(np.atleast_1d(law), 3).tolist()}")
    print(f"{'RTT':>4} {'K':>3} {'tok/s':>7} {'pos %':>6} {'iid %':>6} {'law %':>6} "
          f"{'steady %':>8} {'±2se %':>6} {'tau':>5} {'E[tau]':>6} {'cycles':>6}")
    errors = []
    for rtt, (queries, cycles, summary) in data.items():
        times = modeled_times(pair) if synthetic else measured_times(queries, cycles)
        link = load_profile("rtt000-bw100", {"rtt_ms": rtt}).initial
        for k in KS:
            label = f"fixed-k{k}"
            row, own = summary.loc[label], cycles[cycles["label"] == label]
            measured = float(row["tokens_per_s"])
            by_bytes = (float(row["bytes_up_per_cycle"]), float(row["bytes_down_per_cycle"]))
            model = float(row["predicted_tokens_per_s"])
            iid = predicted_tokens_per_s("fixed-k", own["k"].tolist(),
                                         float(row["per_token_acceptance"]), times, link,
                                         *by_bytes)
            own_queries = queries[queries["label"] == label]
            if synthetic:   # no EOS: every query decodes its whole budget
                a_priori = predicted_query_tokens_per_s("fixed-k", k, int(own_queries["n_tokens"]
                                                                          .iloc[0]),
                                                        law, times, link, *by_bytes)
            else:           # EOS ends answers early: the cycles' own K, the pair's law
                a_priori = predicted_tokens_per_s("fixed-k", own["k"].tolist(), law, times,
                                                  link, *by_bytes)
            steady = throughput_tokens_per_s(law, k, cycle_time_s("fixed-k", times, link,
                                                                  *by_bytes)(k))
            full = own[own["k"] == k]
            errors.append(relative_error(measured, model))
            print(f"{rtt:>4} {k:>3} {measured:7.2f} "
                  f"{100 * relative_error(measured, model):+6.2f} "
                  f"{100 * relative_error(measured, iid):+6.2f} "
                  f"{100 * relative_error(measured, a_priori):+6.2f} "
                  f"{100 * relative_error(measured, steady):+8.2f} "
                  f"{200 * tokens_se(law, k, len(own)):6.2f} "
                  f"{full['tokens'].mean():5.2f} {expected_tokens_per_cycle(law, k):6.2f} "
                  f"{len(own):>6}")
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=48, help="new tokens per query")
    parser.add_argument("--queries", type=int, default=2, help="queries per K and cell")
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--workers", type=int, default=1, help="runs side by side")
    args = parser.parse_args()
    cells = [(pair, rtt) for pair in args.pairs for rtt in RTTS_MS]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {cell: pool.submit(run_cell, cell[0], PAIRS[cell[0]], cell[1], args.tokens,
                                     args.queries) for cell in cells}
        folders = {cell: Path(future.result()) for cell, future in futures.items()}
    print(f"fixed K = 1..15, {args.queries} queries of up to {args.tokens} tokens per K, "
          "sim, 100 Mbit/s; errors: (measured - predicted) / predicted")
    worst = []
    for pair in args.pairs:
        worst += table(pair, {rtt: folders[(pair, rtt)] for rtt in RTTS_MS})
    print(f"\nworst |pos %| over every cell: {100 * max(map(abs, worst)):.2f} %; "
          f"cells within 3 %: {sum(abs(e) <= 0.03 for e in worst)}/{len(worst)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
