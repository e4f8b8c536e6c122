"""Benchmark: draft-ahead (fixed K, blocks pipelined D deep) against the oracle fixed K.

For one model pair and RTT, sim mode, one run per strategy run, several side by side (the
synthetic pair's compute is modeled by sleeping, so runs side by side meet the same host
load and do not slow each other much):

- the oracle: the fastest fixed K in 1..15 without draft-ahead, as measured (picking the best
  of fifteen noisy figures flatters it, which only makes the ratios below harder);
- for each depth D: fixed K with draft-ahead D at the K the closed form picks for it
  (``nasd.analytic.pipelined_throughput`` on the pair's configured acceptance and latency,
  chosen before anything is measured) and at its two neighbours; the headline ratio is the
  model's K over the oracle, with two 95 % intervals (``validation.stats.rate_ratio_interval``):
  each run's queries resampled on their own, and paired (a prompt and repetition resampled
  together under both strategies: greedy decoding on the synthetic pair gives every run
  the same texts and the same acceptances along them, so what a prompt makes easy or hard
  for both cancels out); the best of the three beside it;
- the closed form's tok/s beside each measured one (the oracle's plain E[tau] / T_dist).

Pairs: ``synthetic`` (i.i.d. acceptance 0.7) and ``synthetic-a0.9`` (the same pair at
acceptance 0.9, a file written for the run).  Greedy decoding: every run decodes the same
texts, so all of them meet the same acceptances along them.

    .venv/bin/python benchmarks/draft_ahead.py --pair synthetic --rtt 100
        [--depths 1 2] [--queries 4] [--repetitions 2] [--tokens 128] [--side-by-side 11]
        [--runs ROOT]   # the figures again from the runs a former call left under ROOT
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.backends.synthetic import SyntheticPairConfig  # noqa: E402
from benchmarks.k_policies import FIXED_KS, rate, rates, run_cell  # noqa: E402
from nasd.analytic import (cycle_time_distributed_s, pipelined_throughput,  # noqa: E402
                           throughput_tokens_per_s)
from orchestrator.config.loading import load_model_pair  # noqa: E402
from validation.prediction import modeled_times  # noqa: E402
from validation.stats import rate_ratio_interval  # noqa: E402

HIGH_ACCEPTANCE = 0.9


def pair_file(name: str, root: Path) -> tuple[str, SyntheticPairConfig]:
    """The pair's ``--model-pair`` argument and its config: a shipped synthetic pair, or
    ``synthetic-a0.9``, the shipped ``synthetic`` at acceptance 0.9 (a file under ``root``)."""
    if name != f"synthetic-a{HIGH_ACCEPTANCE:g}":
        return name, load_model_pair(name)
    config = load_model_pair("synthetic").model_copy(update={
        "name": name, "acceptance": HIGH_ACCEPTANCE,
        "description": f"the synthetic pair at acceptance {HIGH_ACCEPTANCE}"})
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return str(path), SyntheticPairConfig.model_validate(config.model_dump())


def modeled(config: SyntheticPairConfig, rtt_s: float, k: int, depth: int,
            acceptance: float | None = None) -> float:
    """The closed form's tok/s of fixed ``k`` with draft-ahead ``depth`` (0: none), at the
    pair's acceptance or at ``acceptance``."""
    times = modeled_times(config).edge
    law = config.acceptance_law if acceptance is None else acceptance
    if depth == 0:
        return throughput_tokens_per_s(law, k, cycle_time_distributed_s(k, times, rtt_s))
    return pipelined_throughput(law, k, depth, times, rtt_s)


def over(a: pd.DataFrame, b: pd.DataFrame) -> str:
    """a's rate over b's, with its 95 % interval, each run's queries resampled alone, and
    paired (by prompt and repetition)."""
    a, b = (q.sort_values(["query_id", "repetition"]) for q in (a, b))
    assert (a["query_id"].tolist(), a["repetition"].tolist()) == \
        (b["query_id"].tolist(), b["repetition"].tolist())
    alone, paired = (rate_ratio_interval(a["decoded"], a["decode_s"], b["decoded"],
                                         b["decode_s"], paired=pairing)
                     for pairing in (False, True))
    return (f"{rate(a) / rate(b):.3f} [{alone[0]:.3f}, {alone[1]:.3f}] paired "
            f"[{paired[0]:.3f}, {paired[1]:.3f}]")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="synthetic",
                        help=f"synthetic, synthetic-falling or synthetic-a{HIGH_ACCEPTANCE:g}")
    parser.add_argument("--rtt", type=float, default=100.0, help="RTT in ms")
    parser.add_argument("--depths", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per query")
    parser.add_argument("--side-by-side", type=int, default=11)
    parser.add_argument("--runs", type=Path, help="report on the runs a former call with the "
                        "same arguments left under this folder instead of running them")
    args = parser.parse_args()

    root = args.runs or Path(tempfile.mkdtemp(prefix="edgespec-draft-ahead-"))
    pair, config = pair_file(args.pair, root)
    rtt_s = args.rtt / 1000.0
    runs = {f"fixed-k{k}": ["--strategy", "fixed-k", "--k", str(k)] for k in FIXED_KS}
    chosen = {}
    for depth in args.depths:
        best = max(FIXED_KS, key=lambda k: modeled(config, rtt_s, k, depth))
        chosen[depth] = best
        for k in (best - 1, best, best + 1):
            if k in FIXED_KS:
                runs[f"fixed-k{k}+ahead{depth}"] = ["--strategy", "fixed-k", "--k", str(k),
                                                    "--draft-ahead", str(depth)]
    started = time.monotonic()
    link = ["--profile", "rtt000-bw100", "--rtt-ms", f"{args.rtt:g}"]
    if args.runs:
        measured = {label: rates(next((root / label).iterdir())) for label in runs}
    else:
        with ThreadPoolExecutor(max_workers=args.side_by_side) as pool:
            futures = {label: pool.submit(run_cell, root / label, link, pair, args, extra)
                       for label, extra in runs.items()}
            measured = {label: rates(future.result()) for label, future in futures.items()}
    fixed = {f"fixed-k{k}": measured[f"fixed-k{k}"] for k in FIXED_KS}
    oracle = max(fixed, key=lambda label: rate(fixed[label]))
    oracle_k = int(oracle.removeprefix("fixed-k"))
    model_oracle = max(FIXED_KS, key=lambda k: modeled(config, rtt_s, k, 0))
    print(f"{args.pair} (acceptance {config.acceptance_law}) at {args.rtt:g} ms, "
          f"{args.queries} queries x {args.repetitions} repetitions x {args.tokens} tokens "
          f"per run [{time.monotonic() - started:.0f} s]")
    print(f"  oracle {oracle:>9}: {rate(fixed[oracle]):6.2f} tok/s (model "
          f"{modeled(config, rtt_s, oracle_k, 0):6.2f}; the model's best plain K is "
          f"{model_oracle}, {modeled(config, rtt_s, model_oracle, 0):.2f})")
    every = pd.concat(measured.values())
    measured_a = every["accepted"].sum() / (every["accepted"].sum() + every["rejections"].sum())
    print(f"  per-token acceptance measured over every run: {measured_a:.3f}")
    print("  fixed K, measured tok/s: " + "  ".join(
        f"{k}: {rate(fixed[f'fixed-k{k}']):.1f}" for k in FIXED_KS))
    for depth in args.depths:
        ahead = {label: q for label, q in measured.items() if label.endswith(f"+ahead{depth}")}
        for label, queries in ahead.items():
            k = int(label.removeprefix("fixed-k").split("+")[0])
            mark = "  <- the model's K" if k == chosen[depth] else ""
            print(f"  {label:>17}: {rate(queries):6.2f} tok/s (model "
                  f"{modeled(config, rtt_s, k, depth):6.2f})  over the oracle "
                  f"{over(queries, fixed[oracle])}  blocks kept/dropped ahead "
                  f"{queries['ahead_blocks_kept'].sum()}/{queries['ahead_blocks_dropped'].sum()}"
                  f"{mark}", flush=True)
        best = max(ahead, key=lambda label: rate(ahead[label]))
        model_ratio, at_measured = (
            modeled(config, rtt_s, chosen[depth], depth, a)
            / max(modeled(config, rtt_s, k, 0, a) for k in FIXED_KS) for a in (None, measured_a))
        print(f"  D = {depth}: the model's K ({chosen[depth]}) over the oracle "
              f"{over(measured[f'fixed-k{chosen[depth]}+ahead{depth}'], fixed[oracle])}; best "
              f"measured {best} {over(ahead[best], fixed[oracle])}; model ratio "
              f"{model_ratio:.3f} (at the measured acceptance: {at_measured:.3f})")
    print(f"  runs under {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
