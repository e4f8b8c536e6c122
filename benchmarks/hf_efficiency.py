"""Benchmark: real transformers models through the agents, at RTT 0.

Prints, from one invocation:
1. cloud-spec's speedup over cloud-only, measured, and the analytic
   prediction built from the run's own measurements (per-token acceptance,
   t_draft per token, t_verify(K), t_decode): their ratio;
2. verify time against context length: the KV-cached verify the agents use
   stays flat, a full recompute of the prefix (no cache) grows.

    .venv/bin/python benchmarks/hf_efficiency.py [--model-pair tiny-arith] [--queries 12]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.backends import build_models  # noqa: E402
from agents.backends.base import TokenSequence  # noqa: E402
from agents.sampling import SamplingConfig  # noqa: E402
from nasd.analytic import expected_tokens_per_cycle  # noqa: E402
from orchestrator.config.run_spec import RunSpec  # noqa: E402
from orchestrator.lifecycle.run import run  # noqa: E402
from orchestrator.reporting.summary import read_jsonl  # noqa: E402
from orchestrator.results import ResultsFolder  # noqa: E402
from validation.prediction import plain_step_s  # noqa: E402

K = 5


def speedup(args) -> None:
    spec = RunSpec.load("smoke", "rtt000-bw100", "sim", job_overrides={
        "model_pair": args.model_pair, "prompts": args.prompts, "max_queries": args.queries,
        "strategies": ["cloud-only", "cloud-spec", "fixed-k"], "k_values": [K],
        "cloud_spec_k": K, "max_new_tokens": args.tokens})
    folder, summary = run(spec, Path(tempfile.mkdtemp(prefix="edgespec-hf-")),
                          Console(file=io.StringIO()))
    rows = summary.set_index("label")
    queries = read_jsonl(folder / ResultsFolder.QUERIES)
    cycles = read_jsonl(folder / ResultsFolder.CYCLES)
    cloud_only = queries[(queries["strategy"] == "cloud-only") & (queries["n_tokens"] > 1)]
    t_decode = plain_step_s(queries, "cloud-only", "cloud")
    full = cycles[cycles["k"] == K]
    t_draft = full["t_draft"].mean() / K
    t_verify = full["t_verify"].mean()
    acceptance = rows.loc["cloud-spec", "per_token_acceptance"]
    predicted = expected_tokens_per_cycle(acceptance, K) * t_decode / (K * t_draft + t_verify)
    measured = rows.loc["cloud-spec", "tokens_per_s"] / rows.loc["cloud-only", "tokens_per_s"]
    print(f"model pair {args.model_pair}, RTT 0, K = {K}, {len(cloud_only)} queries per strategy")
    print(f"  measured: t_decode {1000 * t_decode:.2f} ms, t_draft {1000 * t_draft:.2f} ms/token, "
          f"t_verify({K}) {1000 * t_verify:.2f} ms, per-token acceptance {acceptance:.3f}")
    print(f"  tokens/s: cloud-only {rows.loc['cloud-only', 'tokens_per_s']:.1f}, "
          f"cloud-spec {rows.loc['cloud-spec', 'tokens_per_s']:.1f}, "
          f"fixed-k{K} {rows.loc[f'fixed-k{K}', 'tokens_per_s']:.1f}")
    print(f"  cloud-spec speedup over cloud-only: measured {measured:.3f}, predicted "
          f"{predicted:.3f}, ratio {measured / predicted:.3f} (goal >= 0.9, 0.95)")
    print(f"  lossless (greedy, vs cloud-only): cloud-spec {rows.loc['cloud-spec', 'lossless']:.2f}, "
          f"fixed-k{K} {rows.loc[f'fixed-k{K}', 'lossless']:.2f}")


def verify_time_against_length(args) -> None:
    from orchestrator.config.loading import load_model_pair
    models = build_models(load_model_pair(args.model_pair), "cloud")
    sampling = SamplingConfig()
    rng = np.random.default_rng(0)
    vocab = models.target.vocab_size
    sequence = TokenSequence(models.target, rng.integers(3, vocab, 16).tolist(), sampling)
    sequence.prefill()
    print(f"\nverify({K}) time against context length ({args.model_pair} target, median of 7)")
    print(f"{'context':>8} {'KV-cached ms':>13} {'recompute ms':>13}")
    for length in (32, 64, 128, 256, 384, 500):
        while len(sequence.tokens) < length:
            sequence.extend(rng.integers(3, vocab, 1).tolist())
            sequence.next_probs()
        cached, recomputed = [], []
        for _ in range(7):
            committed = len(sequence.tokens)
            last = sequence.tokens[-1]
            sequence.rewind(committed - 1)  # as in a cycle: the last committed token is pending
            sequence.extend([last, *rng.integers(3, vocab, K).tolist()])
            started = time.perf_counter()
            sequence.score_last(K)
            cached.append(time.perf_counter() - started)
            fresh = TokenSequence(models.target, sequence.tokens, sampling)
            started = time.perf_counter()
            fresh.model_session.forward(fresh.tokens, all_rows=True)
            recomputed.append(time.perf_counter() - started)
            sequence.rewind(committed)
        print(f"{length:8d} {1000 * np.median(cached):13.2f} {1000 * np.median(recomputed):13.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-pair", default="tiny-arith")
    parser.add_argument("--prompts", default="arith-free")
    parser.add_argument("--queries", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    speedup(args)
    verify_time_against_length(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
