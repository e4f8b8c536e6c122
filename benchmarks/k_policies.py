"""Benchmark: NASD against fixed K, on stable links and on links that drift.

``stable``: for each model pair and RTT, sim mode.  The synthetic pair's compute is modeled
by sleeping, so its strategy runs go side by side, one run each, several at once (each its own
agents).  The shipped pair computes, so fixed K 1..15, nasd and cloud-only race in one run
whose queries are interleaved (each prompt to every strategy before the next: a host whose
speed drifts slows each alike), and nasd-cal and nasd-cutoff (options of their own) run
after it, one at a time:

- the oracle: the fixed K in 1..15 a user would pick without hindsight (the best on one
  half of the prompts, measured on the other half, both ways: ``held_out_oracle``), and the
  best of the fifteen figures in hindsight for reference (flattered by its own noise);
- nasd learning online, and nasd-cal seeded by the pair's ``orchestrator calibrate`` on this
  host: tokens/s and the ratio to the held-out oracle on the same queries, with a paired 95 %
  interval (goal >= 0.99); nasd's share of tokens served in stretches handed to the cloud
  (K = 0), and cloud-only's tokens/s beside it;
- nasd with the edge-only cutoff: the share of its tokens the draft served alone, against the
  reversal RTT the analytic model gives (cutoff goal: only past the reversal).

``drift``: the shipped ``oscillating`` profile and seeded random walks of the RTT around a
centre (the pair's reversal by default; a trace written for the run, ``random_walk_profile``),
long answers on the synthetic pair so each query meets the timeline (which restarts with every
query): nasd, nasd-cal, bandit and hf-heuristic against fixed K in {1, 3, 5, 10, 15}, each
adaptive one's ratio to the best fixed K (goal >= 1.15), and nasd's to the best static choice
(the best fixed K or cloud-only, whichever is faster on that link), beside the closed form's
clairvoyant bound on both.  The rates are time-matched (``time_matched``): per query, the
tokens each strategy held by the instant the first one finished, on the same link timeline;
the whole queries' rates are printed beside them.

``tail``: nasd's RTT estimate (EWMA or the median of the last second's samples) and its
objective (mean tokens/s, or the 95th percentile of a query's decode time) on jittery links
below the synthetic pair's reversal RTT (34 ms), where K is what decides (past it nasd hands
stretches to the cloud): the shipped ``5g`` profile and a heavy-tailed 20 ms link written for
the run. Each
variant's tokens/s and the 50th and 95th percentiles of its queries' decode times (with a
bootstrap 95 % interval), beside the fixed K that does best on each.

    .venv/bin/python benchmarks/k_policies.py stable [--pairs synthetic tiny-arith]
        [--rtts 0 10 25 50 100 200 500] [--queries 16] [--repetitions 1] [--tokens 64]
    .venv/bin/python benchmarks/k_policies.py drift [--tokens 700] [--queries 2] [--walk-seeds 1 2 3]
        [--walk-centres-ms 35]
    .venv/bin/python benchmarks/k_policies.py tail [--queries 10] [--repetitions 4]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nasd.analytic import cloud_only_throughput, distributed_throughputs  # noqa: E402
from orchestrator.config.loading import load_model_pair, load_profile  # noqa: E402
from orchestrator.reporting.summary import read_jsonl  # noqa: E402
from validation.prediction import modeled_times  # noqa: E402
from orchestrator.results import ResultsFolder  # noqa: E402
from validation.stats import percentile_interval, rate_ratio_interval  # noqa: E402

FIXED_KS = tuple(range(1, 16))
DRIFT_KS = (1, 3, 5, 10, 15)
SIDE_BY_SIDE = {"synthetic": 9, "tiny-arith": 1}   # a pair that computes: one at a time


def run_cell(out: Path, link: list[str], pair: str, args, extra: list[str]) -> Path:
    """One sim run of one strategy run on the link ``link`` (profile flags); its folder."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "orchestrator.cli", "run", "--mode", "sim", *link,
               "--job", "default", "--model-pair", pair, "--queries", str(args.queries),
               "--repetitions", str(args.repetitions), "--max-new-tokens", str(args.tokens),
               "--results", str(out), *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{out}: {done.stderr.strip()[-400:]}")
    (folder,) = out.iterdir()
    return folder


def run_side_by_side(root: Path, link: list[str], pair: str, args,
                     runs: dict[str, list[str]]) -> dict[str, Path]:
    with ThreadPoolExecutor(max_workers=SIDE_BY_SIDE.get(pair, 2)) as pool:
        futures = {label: pool.submit(run_cell, root / label, link, pair, args, extra)
                   for label, extra in runs.items()}
        return {label: future.result() for label, future in futures.items()}


def race(root: Path, link: list[str], pair: str, args, ks, strategies,
         apart: dict[str, list[str]]) -> dict[str, pd.DataFrame]:
    """Each strategy run's queries, by label: fixed K for each of ``ks``, each of
    ``strategies`` with the job's options, and ``apart``'s runs (label: their flags).  Side
    by side, one run each, for a pair whose compute is modeled; for one that computes, the
    first two as one run with its queries interleaved, then ``apart``'s one after another.
    Each frame carries the folder of its run (``attrs["folder"]``)."""
    together = {**fixed_runs(ks), **{name: ["--strategy", name] for name in strategies}}
    shared = None
    if SIDE_BY_SIDE.get(pair, 2) > 1:
        folders = run_side_by_side(root, link, pair, args, {**together, **apart})
    else:
        flags = [*(f for name in ("fixed-k", *strategies) for f in ("--strategy", name)),
                 *(f for k in ks for f in ("--k", str(k)))]
        shared = run_cell(root / "together", link, pair, args, flags)
        folders = {**dict.fromkeys(together, shared),
                   **{label: run_cell(root / label, link, pair, args, extra)
                      for label, extra in apart.items()}}
    measured = {}
    for label, folder in folders.items():
        queries = rates(folder)    # a run of its own: all its queries (an apart label is ours)
        measured[label] = queries[queries["label"] == label] if folder == shared else queries
        measured[label].attrs["folder"] = folder
    return measured


def fixed_runs(ks) -> dict[str, list[str]]:
    return {f"fixed-k{k}": ["--strategy", "fixed-k", "--k", str(k)] for k in ks}


def rates(folder: Path) -> pd.DataFrame:
    queries = read_jsonl(folder / ResultsFolder.QUERIES)
    return queries.assign(decoded=(queries["n_tokens"] - 1).clip(lower=0))


def rate(queries: pd.DataFrame) -> float:
    return queries["decoded"].sum() / queries["decode_s"].sum()


def over(a: pd.DataFrame, b: pd.DataFrame) -> str:
    """a's rate over b's, with its 95 % interval."""
    low, high = rate_ratio_interval(a["decoded"], a["decode_s"], b["decoded"], b["decode_s"])
    return f"{rate(a) / rate(b):.3f} [{low:.3f}, {high:.3f}]"


def best_fixed(measured: dict[str, pd.DataFrame]) -> str:
    fixed = {label: rate(q) for label, q in measured.items() if label.startswith("fixed-k")}
    return max(fixed, key=fixed.get)


def held_out_oracle(measured: dict[str, pd.DataFrame]) -> tuple[str, pd.DataFrame]:
    """The fixed K a user would have picked without hindsight: the prompts split in two halves
    (alternate query ids), the best K on each half measured on the other, the two held-out
    halves together.  The best of fifteen noisy figures on the same queries (``best_fixed``)
    is flattered by its own noise where several K lie within a few percent of each other;
    this one is not.  Returns the K picked on each half and the held-out queries."""
    ids = sorted(next(iter(measured.values()))["query_id"].unique())
    halves = [set(ids[0::2]), set(ids[1::2])]
    fixed = {label: q for label, q in measured.items() if label.startswith("fixed-k")}
    picked, held_out = [], []
    for chosen_on, measured_on in (halves, halves[::-1]):
        best = best_fixed({label: q[q["query_id"].isin(chosen_on)] for label, q in fixed.items()})
        picked.append(best)
        held_out.append(fixed[best][fixed[best]["query_id"].isin(measured_on)])
    return "/".join(picked), pd.concat(held_out)


def paired_over(a: pd.DataFrame, b: pd.DataFrame) -> str:
    """a's rate over b's on the same queries (each prompt and repetition one unit), with its
    95 % interval: greedy decoding meets the same text under every strategy, so what the
    prompts share cancels out of the ratio."""
    keys = ["query_id", "repetition"]
    a, b = a.sort_values(keys), b.sort_values(keys)
    if a[keys].values.tolist() != b[keys].values.tolist():
        return over(a, b)
    low, high = rate_ratio_interval(a["decoded"], a["decode_s"], b["decoded"], b["decode_s"],
                                    paired=True)
    return f"{rate(a) / rate(b):.3f} [{low:.3f}, {high:.3f}]"


def calibrated(root: Path, pair: str) -> Path:
    """``orchestrator calibrate`` of the pair on this host (the default job's prompts, no
    link), alone before any run: the file nasd-cal starts from."""
    out = root / pair / "calibration"
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "calibrate", "--job",
                           "default", "--model-pair", pair, "--out", str(out)],
                          capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"calibrate {pair}: {done.stderr.strip()[-400:]}")
    return out / "calibration.yaml"


def stable(args) -> None:
    root = Path(tempfile.mkdtemp(prefix="edgespec-nasd-stable-"))
    print("pair, RTT: the oracle, tok/s: the fixed K best on each half of the prompts, measured "
          "on the other half (held out), and, for reference, the best fixed K in hindsight; nasd "
          "learning online and nasd-cal seeded by `orchestrator calibrate`, tok/s and their "
          "ratio to the held-out oracle on the same queries [95 %, paired]; nasd's share of "
          "tokens handed to the cloud; cloud-only, and nasd over it [95 %, paired]; with the "
          "edge-only cutoff: its share of tokens served by the draft alone, its tok/s, and the "
          "model's reversal RTT (past it every K loses to cloud-only)")
    for pair in args.pairs:
        calibration = calibrated(root, pair)
        apart = {"nasd-cal": ["--strategy", "nasd", "--nasd-calibration", str(calibration)],
                 "nasd-cutoff": ["--strategy", "nasd", "--nasd-edge-only-cutoff"]}
        for rtt_ms in args.rtts:
            started = time.monotonic()
            link = ["--profile", "rtt000-bw100", "--rtt-ms", f"{rtt_ms:g}"]
            measured = race(root / pair / f"rtt{rtt_ms:g}", link, pair, args, FIXED_KS,
                            ("nasd", "cloud-only"), apart)
            picked, oracle = held_out_oracle(measured)
            hindsight = best_fixed(measured)
            nasd, seeded, cutoff = measured["nasd"], measured["nasd-cal"], measured["nasd-cutoff"]
            reversal = max(crossover_ms(measured[label].attrs["folder"], label)
                           for label in fixed_runs(FIXED_KS))
            print(f"{pair:>10} {rtt_ms:4g} ms: oracle {picked:>19} {rate(oracle):6.1f} (hindsight "
                  f"{hindsight} {rate(measured[hindsight]):.1f})  nasd {rate(nasd):6.1f} "
                  f"{paired_over(nasd, oracle)}  nasd-cal {rate(seeded):6.1f} "
                  f"{paired_over(seeded, oracle)}  hand-off "
                  f"{handed_off(nasd):.2f}  cloud-only "
                  f"{rate(measured['cloud-only']):6.1f} (nasd over it "
                  f"{paired_over(nasd, measured['cloud-only'])})  cutoff "
                  f"{cutoff['cutoff_tokens'].sum() / cutoff['n_tokens'].sum():.2f} at "
                  f"{rate(cutoff):6.1f} (model reversal {reversal:.0f} ms)  "
                  f"[{time.monotonic() - started:.0f} s]", flush=True)
    print(f"runs under {root}")


def crossover_ms(folder: Path, label: str) -> float:
    """The model's crossover RTT of strategy run ``label`` in the run in ``folder``."""
    summary = pd.read_csv(folder / ResultsFolder.SUMMARY)
    return float(summary.loc[summary["label"] == label, "crossover_rtt_ms"].iloc[0])


WALK_CENTRE_MS = 35.0   # about the synthetic pair's reversal RTT (34 ms)


def random_walk_profile(folder: Path, seed: int = 7, centre_ms: float = WALK_CENTRE_MS) -> Path:
    """A profile whose RTT drifts around ``centre_ms`` (by default across the synthetic pair's
    reversal): log RTT a mean-reverting random walk (Ornstein-Uhlenbeck, 10 % back toward the
    centre and a 0.35 normal step every 0.5 s: stationary spread about x2.2 either way),
    within 5 and 400 ms, for 60 s (the trace beside it).  A walk that stays below the
    reversal asks little of an adaptive K (every fixed K near the best is within a few
    percent), and one above it little of an adaptive controller over cloud-only."""
    rng = np.random.default_rng(seed)
    centre = np.log(centre_ms)
    log_rtt, lines = centre, []
    for step in range(120):
        lines.append(f"{0.5 * step:g} {np.exp(log_rtt):.1f}")
        log_rtt = float(np.clip(log_rtt + 0.1 * (centre - log_rtt) + rng.normal(0.0, 0.35),
                                np.log(5.0), np.log(400.0)))
    (folder / "random-walk.trace").write_text("\n".join(lines) + "\n")
    profile = folder / "random-walk.yaml"
    profile.write_text(f"description: RTT random walk around {centre_ms:g} ms, 5-400 ms, a "
                       f"step every 0.5 s\nrtt_ms: {centre_ms:g}\nbandwidth_mbps: 100\n"
                       "trace: random-walk.trace\n")
    return profile


def time_above_ms(trace: Path, threshold_ms: float, span_s: float) -> float:
    """The share of the trace's first ``span_s`` seconds with its RTT above ``threshold_ms``."""
    points = np.loadtxt(trace)
    starts, rtts = points[:, 0], points[:, 1]
    ends = np.append(starts[1:], np.inf)
    overlap = np.clip(np.minimum(ends, span_s) - starts, 0.0, None)
    return float(overlap[rtts > threshold_ms].sum() / span_s)


def clairvoyant_bound(profile: str, span_s: float, fixed_ks, pair: str = "synthetic",
                      step_s: float = 0.01) -> tuple[float, float, float]:
    """By the closed form on the pair's configured stage times, over the profile's first
    ``span_s`` seconds (time-averaged tokens/s): a controller that knows the RTT at every
    instant and switches for free (the best K's speculation or the cloud's own decoding,
    whichever is faster), the best of ``fixed_ks`` held throughout, and the best static
    choice (that K, or cloud-only throughout).  What any causal controller could gain over
    a static choice on this link is below the ratios."""
    config = load_model_pair(pair)
    times, link = modeled_times(config).edge, load_profile(profile)
    rtts_s = [link.state_at(t).rtt_ms / 1000.0 for t in np.arange(0.0, span_s, step_s)]
    depths = range(1, 16)
    rates = np.array([distributed_throughputs(config.acceptance, times, rtt_s, depths)
                      for rtt_s in rtts_s])
    cloud = cloud_only_throughput(times)
    adaptive = np.maximum(rates.max(axis=1), cloud).mean()
    fixed = max(rates[:, k - 1].mean() for k in fixed_ks)
    return float(adaptive), float(fixed), float(max(fixed, cloud))


ADAPTIVE = ("nasd", "nasd-cal", "bandit", "hf-heuristic")


def drift(args) -> None:
    root = Path(tempfile.mkdtemp(prefix="edgespec-nasd-drift-"))
    calibration = calibrated(root, "synthetic")
    runs = {**fixed_runs(DRIFT_KS), "cloud-only": ["--strategy", "cloud-only"],
            **{name: ["--strategy", name] for name in ("nasd", "bandit", "hf-heuristic")},
            "nasd-cal": ["--strategy", "nasd", "--nasd-calibration", str(calibration)]}
    walks = {f"random-walk-{centre:g}ms-{seed}": (seed, centre)
             for centre in args.walk_centres_ms for seed in args.walk_seeds}
    print("profile: each strategy's tok/s, time-matched (per query, the tokens held by the "
          "instant the first strategy finished, on the same link timeline), then over whole "
          "queries; each adaptive one over the best fixed K, nasd over the best static choice "
          "(a fixed K or cloud-only) [95 %], time-matched; nasd-cal starts from "
          "`orchestrator calibrate`")
    walked: dict[float, dict[str, list[pd.DataFrame]]] = {
        centre: {label: [] for label in runs} for centre in args.walk_centres_ms}
    for name in ("oscillating", *walks):
        profile = name
        if name in walks:
            (root / name).mkdir(parents=True)
            profile = str(random_walk_profile(root / name, *walks[name]))
        started = time.monotonic()
        folders = run_side_by_side(root / name, ["--profile", profile], "synthetic", args, runs)
        whole = {label: rates(folder) for label, folder in folders.items()}
        measured = time_matched(whole)
        print(f"{name}: " + "  ".join(f"{label} {rate(q):.1f}" for label, q in measured.items())
              + f"  [{time.monotonic() - started:.0f} s]")
        print("    whole queries: " + "  ".join(f"{label} {rate(q):.1f}"
                                                for label, q in whole.items()))
        span = float(measured["nasd"]["decode_s"].mean())
        adaptive, fixed, static = clairvoyant_bound(profile, span, DRIFT_KS)
        print(f"    closed form over the window ({span:.0f} s of the timeline): a clairvoyant "
              f"controller {adaptive:.1f} tok/s, the best fixed K {fixed:.1f}, the best static "
              f"choice {static:.1f}: at most {adaptive / fixed:.3f}x and {adaptive / static:.3f}x "
              "to gain")
        if name in walks:
            best = best_fixed(measured)
            reversal = pd.read_csv(folders[best] / "summary.csv")["crossover_rtt_ms"].max()
            above = time_above_ms(root / name / "random-walk.trace", reversal, span)
            print(f"    RTT above the reversal ({reversal:.0f} ms) {above:.0%} of that time")
            for label, queries in measured.items():
                walked[walks[name][1]][label].append(queries)
        report_drift(measured)
    for centre, frames in walked.items():
        if len(args.walk_seeds) > 1:
            pooled = {label: pd.concat(parts) for label, parts in frames.items()}
            print(f"the {len(args.walk_seeds)} walks around {centre:g} ms pooled: " + "  ".join(
                f"{label} {rate(q):.1f}" for label, q in pooled.items()))
            report_drift(pooled)
    print(f"runs under {root}")


def time_matched(measured: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Each strategy run's queries cut to one window per query (prompt and repetition): the
    tokens the edge held by the instant the first strategy finished that query, counted on the
    link's timeline (which restarts with every query; ``token_times_s`` less
    ``timeline_start_s``), as ``decoded``, over that window, as ``decode_s``.  Over whole
    queries, a faster strategy finishes sooner and so meets less of the timeline (on
    ``oscillating``, less of the 10 ms phase its 20 s end with): two rates would come from
    different stretches of the link."""
    keys = ["query_id", "repetition"]

    def on_timeline(queries: pd.DataFrame) -> list[np.ndarray]:
        return [np.asarray(times) - (0.0 if pd.isna(start) else start)
                for times, start in zip(queries["token_times_s"], queries["timeline_start_s"])]

    ends = pd.concat([queries[keys].assign(end=[held[-1] for held in on_timeline(queries)])
                      for queries in measured.values()]).groupby(keys)["end"].min()
    matched = {}
    for label, queries in measured.items():
        window = ends.loc[list(zip(queries["query_id"], queries["repetition"]))].to_numpy()
        held = [int(np.sum(times <= end)) for times, end in zip(on_timeline(queries), window)]
        matched[label] = queries.assign(decoded=held, decode_s=window)
    return matched


def report_drift(measured: dict[str, pd.DataFrame]) -> None:
    """Each adaptive strategy over the best fixed K, and nasd's two over the best static
    choice (the best fixed K or cloud-only)."""
    best = best_fixed(measured)
    static = best if rate(measured[best]) >= rate(measured["cloud-only"]) else "cloud-only"
    for adaptive in ADAPTIVE:
        print(f"    {adaptive} / {best}: {over(measured[adaptive], measured[best])}", end="")
        if adaptive.startswith("nasd") and static != best:
            print(f"   / {static}: {over(measured[adaptive], measured[static])}", end="")
        print(flush=True)


NASD_VARIANTS = {
    "nasd": [],
    "nasd-p50-rtt": ["--nasd-rtt-estimate", "p50"],
    "nasd-p95-objective": ["--nasd-objective", "p95"],
    "nasd-p50-rtt-p95-objective": ["--nasd-rtt-estimate", "p50", "--nasd-objective", "p95"],
}


def heavy_tailed_profile(folder: Path) -> Path:
    profile = folder / "heavy-tailed.yaml"
    profile.write_text("description: 20 ms with 15 ms of Pareto jitter and 0.5 % loss\n"
                       "rtt_ms: 20\njitter_ms: 15\njitter_distribution: pareto\n"
                       "loss_pct: 0.5\nbandwidth_mbps: 20\n")
    return profile


def decode_percentile(queries: pd.DataFrame, q: float) -> str:
    low, high = percentile_interval(queries["decode_s"], q)
    return f"{np.percentile(queries['decode_s'], q):.3f} s [{low:.3f}, {high:.3f}]"


def tail(args) -> None:
    root = Path(tempfile.mkdtemp(prefix="edgespec-nasd-tail-"))
    runs = {**fixed_runs(FIXED_KS),
            **{label: ["--strategy", "nasd", *flags] for label, flags in NASD_VARIANTS.items()}}
    print("profile, strategy: tok/s; a query's decode time p50 and p95 [95 %]; the fixed K "
          "with the best tok/s and the one with the lowest p95")
    for name, profile in (("5g", "5g"), ("heavy-tailed", str(heavy_tailed_profile(root)))):
        started = time.monotonic()
        folders = run_side_by_side(root / name, ["--profile", profile], "synthetic", args, runs)
        measured = {label: rates(folder) for label, folder in folders.items()}
        fastest = best_fixed(measured)
        steadiest = min((label for label in measured if label.startswith("fixed-k")),
                        key=lambda label: np.percentile(measured[label]["decode_s"], 95))
        for label in (*NASD_VARIANTS, fastest, steadiest):
            queries = measured[label]
            print(f"{name:>12} {label:>26}: {rate(queries):6.1f} tok/s  p50 "
                  f"{decode_percentile(queries, 50)}  p95 {decode_percentile(queries, 95)}",
                  flush=True)
        print(f"{name:>12} [{time.monotonic() - started:.0f} s]")
    print(f"runs under {root}")


def handed_off(queries: pd.DataFrame) -> float:
    return queries["handoff_tokens"].sum() / queries["n_tokens"].sum()


def sized(parser: argparse.ArgumentParser, queries: int, repetitions: int,
          tokens: int) -> argparse.ArgumentParser:
    """A command's run size: prompts, repetitions of each, new tokens per query."""
    parser.add_argument("--queries", type=int, default=queries)
    parser.add_argument("--repetitions", type=int, default=repetitions)
    parser.add_argument("--tokens", type=int, default=tokens, help="new tokens per query")
    return parser


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    stable_parser = sized(commands.add_parser("stable", help="NASD against the oracle fixed K"),
                          queries=16, repetitions=1, tokens=64)
    stable_parser.add_argument("--pairs", nargs="+", default=["synthetic", "tiny-arith"])
    stable_parser.add_argument("--rtts", nargs="+", type=float,
                               default=[0, 10, 25, 50, 100, 200, 500])
    drift_parser = sized(commands.add_parser("drift", help="adaptive K on drifting links"),
                         queries=2, repetitions=1, tokens=700)
    drift_parser.add_argument("--walk-seeds", type=int, nargs="+", default=[1, 2, 3],
                              help="one random walk of the RTT per seed and centre")
    drift_parser.add_argument("--walk-centres-ms", type=float, nargs="+",
                              default=[WALK_CENTRE_MS],
                              help="the RTT each walk reverts to (default: about the synthetic "
                                   "pair's reversal)")
    sized(commands.add_parser("tail", help="nasd's RTT estimates and objectives"),
          queries=10, repetitions=4, tokens=64)
    args = parser.parse_args()
    {"stable": stable, "drift": drift, "tail": tail}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
