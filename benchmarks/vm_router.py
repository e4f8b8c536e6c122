"""Benchmark: what the vm mode's router VM delivers, against the goals of issue 10.

Three parts (default: all), each printing its table and writing JSON (and a
plot) under ``--out``; the host's load average is printed with every figure
(the VM's timers feel a busy host):

1. ``probes``: the link probe through the router for 10 ms, 50 ms + 10 ms
   normal jitter, 50 ms + 10 ms pareto jitter, 100 ms + 1 % loss,
   10 Mbit/s and 1 Mbit/s: median RTT error after the baseline (goal
   <= 1 ms), jitter sigma against the link math (goal within 10 %), the loss
   interval (must contain the configured rate), goodput (goal within 3 %).
2. ``compute``: the job in sim mode and in vm mode back to back, ``--pairs``
   times: per strategy, cloud compute per output token and draft time per
   token, vm over sim (goal 1.00 +- 0.10): the agents run natively in both; pooled
   sums, each pair's ratio, and the median query's ratio with its interval.
3. ``schedule``: the ``oscillating`` profile through the router: each
   applied change (planned offset, sent, acknowledged by the guest kernel;
   goal within 20 ms), the same changes as UDP echo probes every 5 ms see
   them, and a run's cycle RTTs against the schedule (``schedule.png``).

    .venv/bin/python benchmarks/vm_router.py [probes|compute|schedule ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.config.loading import load_profile  # noqa: E402
from orchestrator.config.run_spec import RunSpec  # noqa: E402
from orchestrator.lifecycle import vm  # noqa: E402
from orchestrator.lifecycle.launch import Deployment, make_link  # noqa: E402
from orchestrator.lifecycle.run import query_timeout_s, run  # noqa: E402
from orchestrator.reporting.summary import read_jsonl  # noqa: E402
from orchestrator.results import ResultsFolder  # noqa: E402
from shaping.clock import now  # noqa: E402
from shaping.link import EmulatedLink  # noqa: E402
from validation.link_probe import KernelPaths, ProbePlan, measure_packets, probe_link  # noqa: E402
from validation.stats import median_ratio_interval  # noqa: E402

PROBE_PROFILES = {            # what the issue names -> a shipped profile (and an override)
    "10 ms": ("rtt010-bw100", {}),
    "50 ms + 10 ms normal": ("rtt050-bw010-j10", {}),
    "50 ms + 10 ms pareto": ("rtt050-bw010-j10", {"jitter_distribution": "pareto"}),
    "100 ms + 1 % loss": ("rtt100-bw010-l1", {}),
    "10 Mbit/s": ("rtt010-bw010", {}),
    "1 Mbit/s": ("rtt010-bw001", {}),
}


def load() -> str:
    return "load %.2f" % os.getloadavg()[0]


def _row(report, direction: str, metric: str):
    return next((row for row in report.rows if row.direction == direction
                 and row.metric == metric), None)


def probes(out: Path, packets: int) -> None:
    print(f"\n== probes through the router ({packets} packets at 10 ms, 2 s goodput) ==")
    print(f"{'profile':24s} {'RTT p50 err ms':>14s} {'sigma up/down (std) vs expected':>34s} "
          f"{'loss % up/down [95 % CI]':>38s} {'goodput Mbit/s up/down vs expected':>36s}  load")
    found = {}
    for label, (name, override) in PROBE_PROFILES.items():
        profile = load_profile(name, override or None)
        with EmulatedLink(profile, topology=vm.current_router()).create(shape=False) as link:
            report = probe_link(link, "vm", ProbePlan(packets=packets))
        found[label] = report.to_dict()
        rtt = _row(report, "round trip", "RTT p50")
        sig = [_row(report, d, "jitter sigma") for d in ("uplink", "downlink")]
        loss = [_row(report, d, "loss") for d in ("uplink", "downlink")]
        good = [_row(report, d, "goodput") for d in ("uplink", "downlink")]
        sigma = " / ".join(f"{r.measured:.2f}({r.note.split('std ')[1].split(' ms')[0]})"
                           for r in sig) + f" vs {sig[0].expected:.2f}/{sig[1].expected:.2f}"
        losses = " / ".join(f"{r.measured:.2f} {r.note.split(', ', 1)[1].split('CI ')[1][:-2]}"
                            for r in loss)
        goodput = " / ".join(f"{r.measured:.2f}" for r in good) + (
            f" vs {good[0].expected:.2f}" if good[0].expected else " (unshaped)")
        print(f"{label:24s} {rtt.error:+14.3f} {sigma:>34s} {losses:>38s} {goodput:>36s}  "
              f"{load()}", flush=True)
        print(f"{'':24s} baseline RTT {sum(report.baseline_owd_ms.values()):.3f} ms, "
              f"{report.baseline_goodput_mbps:.0f} Mbit/s; verdicts "
              f"{'all ok' if report.passed else [f'{r.direction} {r.metric}' for r in report.rows if r.ok is False]}")
    (out / "probes.json").write_text(json.dumps(found, indent=1, default=float))


def query_seconds(folders: list[Path]) -> pd.DataFrame:
    """One row per query of ``folders``: its strategy run's label, the seconds its draft took
    and the tokens it drafted (edge-only: its decode seconds and tokens after the first),
    the cloud's compute seconds and the tokens it output."""
    rows = []
    for folder in folders:
        queries = read_jsonl(folder / ResultsFolder.QUERIES)
        cycles = read_jsonl(folder / ResultsFolder.CYCLES)
        drafted = (cycles.groupby(["label", "query_id", "repetition"])[["t_draft", "k"]].sum()
                   if not cycles.empty else pd.DataFrame(columns=["t_draft", "k"]))
        for query in queries.itertuples():
            key = (query.label, query.query_id, query.repetition)
            if key in drafted.index:
                draft_s, drafts = drafted.loc[key, "t_draft"], drafted.loc[key, "k"]
            elif query.label == "edge-only":
                draft_s, drafts = query.decode_s, max(query.n_tokens - 1, 0)
            else:
                draft_s, drafts = 0.0, 0
            rows.append({"label": query.label, "draft_s": draft_s, "drafts": drafts,
                         "cloud_s": query.cloud_compute_s, "tokens": query.n_tokens})
    return pd.DataFrame(rows)


def ms_per_token(seconds: pd.DataFrame) -> pd.DataFrame:
    """Cloud compute ms per output token and draft ms per drafted token of each row of
    ``query_seconds`` (or of its sums); NaN where a row has none."""
    with np.errstate(divide="ignore", invalid="ignore"):
        cloud = 1000 * seconds["cloud_s"] / seconds["tokens"]
        draft = 1000 * seconds["draft_s"] / seconds["drafts"]
    return pd.DataFrame({"cloud_ms_per_token": cloud.where(cloud > 0),
                         "draft_ms_per_token": draft.where(seconds["drafts"] > 0)})


def per_token(folders: list[Path]) -> pd.DataFrame:
    """Per strategy, pooled over ``folders``: cloud compute ms per output token, draft ms per
    drafted token (edge-only: its decode time per token)."""
    sums = query_seconds(folders).groupby("label")[["draft_s", "drafts", "cloud_s",
                                                   "tokens"]].sum()
    return ms_per_token(sums.astype(float))


def per_query(folders: list[Path]) -> pd.DataFrame:
    """``ms_per_token`` of every query of ``folders``, with its strategy run's label."""
    seconds = query_seconds(folders)
    return ms_per_token(seconds.astype({"draft_s": float, "drafts": float, "cloud_s": float,
                                        "tokens": float})).assign(label=seconds["label"])


def median_ratios(top: list[Path], bottom: list[Path]) -> pd.DataFrame:
    """Per strategy, the median query's cloud and draft ms per token in the runs ``top`` and
    in the runs ``bottom`` and their ratio with a 95 % interval (``median_ratio_interval``)."""
    found = [per_query(runs) for runs in (top, bottom)]
    rows = {}
    for label in sorted(set(found[1]["label"])):
        row = {}
        for column in ("cloud_ms_per_token", "draft_ms_per_token"):
            vm_ms, sim_ms = (runs.loc[runs["label"] == label, column].dropna()
                             for runs in found)
            if vm_ms.empty or sim_ms.empty:
                continue
            low, high = median_ratio_interval(vm_ms, sim_ms)
            row[column] = (f"{vm_ms.median():.3f} / {sim_ms.median():.3f} = "
                           f"{vm_ms.median() / sim_ms.median():.3f} [{low:.3f}, {high:.3f}]")
        rows[label] = row
    return pd.DataFrame(rows).T.fillna("-")


def _cpu_s(router) -> float:
    """CPU seconds the router VM's qemu has used so far."""
    fields = Path(f"/proc/{router.router.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def compute(out: Path, job: str, profile: str, pairs: int, repetitions: int | None) -> None:
    print(f"\n== compute: job {job!r} on {profile}, sim and vm back to back, {pairs} pair(s) "
          "in alternating order ==")
    root = out / "compute"
    folders: dict[str, list[Path]] = {"sim": [], "vm": []}
    ratios = []
    for pair in range(pairs):
        for mode in ("sim", "vm") if pair % 2 == 0 else ("vm", "sim"):
            started, before, router_cpu = time.monotonic(), load(), _cpu_s(vm.current_router())
            spec = RunSpec.load(job, profile, mode, job_overrides={"repetitions": repetitions})
            folder, _ = run(spec, root, Console(file=io.StringIO()))
            folders[mode].append(folder)
            wall = time.monotonic() - started
            print(f"pair {pair + 1} {mode:3s}: {wall:6.1f} s, {before} -> {load()}; the router VM "
                  f"used {_cpu_s(vm.current_router()) - router_cpu:.1f} s of CPU", flush=True)
        ratios.append(per_token(folders["vm"][-1:]) / per_token(folders["sim"][-1:]))
        print(f"pair {pair + 1}, vm/sim:\n" + ratios[-1].round(3).to_string())
    tables = {mode: per_token(found) for mode, found in folders.items()}
    pooled = pd.concat({"sim": tables["sim"], "vm": tables["vm"],
                        "vm/sim": tables["vm"] / tables["sim"]}, axis=1)
    print("pooled over every pair:\n" + pooled.round(3).to_string())
    # the host's speed drifts between runs; a pair's ratio cancels what both runs share
    by_pair = pd.concat(ratios, keys=range(len(ratios))).groupby(level=1)
    print("vm/sim, median of the pairs' ratios [lowest, highest]:\n" + pd.DataFrame(
        {column: [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in zip(
            by_pair[column].median(), by_pair[column].min(), by_pair[column].max())]
         for column in ("cloud_ms_per_token", "draft_ms_per_token")},
        index=by_pair.median().index).to_string())
    # a stalled query (the host, not the router) moves a sum; the median query it does not
    print("the median query, vm / sim [95 %], every pair's queries together:\n"
          + median_ratios(folders["vm"], folders["sim"]).to_string())
    if pairs > 1:   # the same figure between runs of one mode: what the host alone moves
        print("A/A control, sim runs of the even pairs / of the odd pairs:\n" + median_ratios(
            folders["sim"][0::2], folders["sim"][1::2]).to_string())
    pooled.to_csv(out / "compute_ratios.csv")


def schedule(out: Path, seconds: float) -> None:
    profile = load_profile("oscillating")
    print(f"\n== schedule: {profile.name}, {seconds:.0f} s ==")
    packets = _packets_through(profile, seconds)
    cycles, link_stats = _run_cycles(profile, seconds, out)
    for title, changes in (("link alone, UDP echoes every 5 ms", packets["changes"]),
                           ("during a fixed-k5 run", link_stats["timeline"]["changes"])):
        print(f"{title}: each change, ms after its planned offset (sent; acknowledged by the "
              "guest kernel; first echo with the new RTT, for increases)")
        for change in changes:
            seen = change.get("first_new_rtt_sent_s")
            print(f"  at {change['at_s']:5.1f} s: sent +{1000 * (change['sent_s'] - change['at_s']):6.2f}"
                  f", applied +{1000 * (change['applied_s'] - change['at_s']):6.2f}"
                  + (f", echo +{1000 * (seen - change['at_s']):6.2f}" if seen is not None else ""))
    print(f"({load()})")
    _plot(profile, packets, cycles, link_stats, out / "schedule.png")
    (out / "schedule.json").write_text(json.dumps(
        {"link_only": packets, "run_changes": link_stats["timeline"]["changes"],
         "run_cycles": cycles.to_dict("list")}, indent=1, default=float))
    print(f"plot: {out / 'schedule.png'}")


def _packets_through(profile, seconds: float, interval_s: float = 0.005) -> dict:
    """UDP echoes every ``interval_s`` through the shaped router: each one's send offset
    and RTT, the changes as applied, and for each change that raises the RTT the send offset
    of the first echo back with the new RTT (the applied time, to ``interval_s``; where the
    RTT falls, netem's in-order release holds new packets behind the old ones)."""
    with EmulatedLink(profile, topology=vm.current_router()).create() as link:
        samples = measure_packets(KernelPaths(link.topology), int(seconds / interval_s),
                                  interval_s, 64, 1.0)
        changes = link.counters()["timeline"]["changes"]
        offsets = np.array(samples.rtt_sent_at) - link.started_at
    rtts = np.array(samples.rtt_ms)
    for change in changes:
        before = profile.state_at(change["at_s"] - 0.01).rtt_ms
        after = profile.state_at(change["at_s"]).rtt_ms
        new = np.nonzero((offsets > change["at_s"] - 0.5)
                         & (np.abs(rtts - after) < np.abs(rtts - before)))[0]
        change["first_new_rtt_sent_s"] = (float(offsets[new].min()) if after > before
                                          and len(new) else None)
    return {"offsets_s": offsets.tolist(), "rtt_ms": rtts.tolist(), "changes": changes}


def _run_cycles(profile, seconds: float, out: Path):
    """A fixed-k5 run (synthetic pair, long answers) through the schedule: each cycle's
    offset from the link's start (the host's query call plus the edge's t_start: one
    monotonic clock) and RTT."""
    spec = RunSpec.load("smoke", "oscillating", "vm", job_overrides={
        "strategies": ["fixed-k"], "k_values": [5], "max_new_tokens": 300, "max_queries": 1,
        "repetitions": 50})
    results = ResultsFolder.create(out / "schedule-run", "oscillating-vm")
    deployment = Deployment(results.path, spec.model_pair,
                            make_link("vm", spec.profile, spec.job.seed),
                            spec.job.receive_timeout_s, security=spec.job.data_plane_security)
    results.write_config(spec.resolved(deployment.security))
    rows = []
    with deployment:
        started_at = deployment.link.started_at
        for request in spec.requests():
            called = now()
            if called - started_at > seconds:
                break
            reply = deployment.edge.call("query", query_timeout_s(spec.job),
                                         request=request.model_dump(mode="json"))
            results.append(reply["query"], reply["cycles"])
            rows += [{"offset_s": called - started_at + cycle["t_start"],
                      "rtt_ms": cycle["rtt_ms"]} for cycle in reply["cycles"]]
        stats = deployment.write_link_stats()
    results.close()
    return pd.DataFrame(rows), stats


def _plot(profile, packets: dict, cycles: pd.DataFrame, link_stats: dict, path: Path) -> None:
    fig = Figure(figsize=(11, 4.5))
    ax = fig.subplots()
    horizon = max(packets["offsets_s"][-1], cycles["offset_s"].max() if len(cycles) else 0)
    grid = np.arange(0, horizon, 0.001)
    ax.step(grid, [profile.state_at(t).rtt_ms for t in grid], where="post", color="black",
            lw=1.2, label="schedule (profile RTT)")
    ax.plot(packets["offsets_s"], packets["rtt_ms"], ".", ms=1.5, color="tab:gray",
            label="UDP echo RTT every 5 ms (link only)")
    if len(cycles):
        ax.plot(cycles["offset_s"], cycles["rtt_ms"], ".", ms=3, color="tab:blue",
                label="cycle RTT of a fixed-k5 run")
    for change in link_stats["timeline"]["changes"]:
        ax.axvline(change["applied_s"], color="tab:red", lw=0.5, alpha=0.6)
    ax.set_xlabel("seconds since the link was shaped")
    ax.set_ylabel("RTT (ms)")
    ax.set_yscale("log")
    ax.set_title("oscillating profile through the router VM: RTT against the schedule "
                 "(red: applied changes)")
    ax.legend(loc="upper right", fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", metavar="{probes,compute,schedule}",
                        help="what to measure [all three]")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--packets", type=int, default=300, help="probes: echoes [300]")
    parser.add_argument("--job", default="default", help="compute: the job [default]")
    parser.add_argument("--profile", default="4g", help="compute: the profile [4g]")
    parser.add_argument("--pairs", type=int, default=2, help="compute: sim/vm pairs [2]")
    parser.add_argument("--repetitions", type=int, help="compute: [the job's]")
    parser.add_argument("--seconds", type=float, default=22.0, help="schedule: how long [22]")
    args = parser.parse_args()
    # argparse (3.11) refuses an empty or default list against choices: checked here
    parts = ("probes", "compute", "schedule")
    if set(args.parts) - set(parts):
        parser.error(f"parts: choose from {', '.join(parts)}")
    args.parts = args.parts or list(parts)
    out = args.out or Path(tempfile.mkdtemp(prefix="edgespec-bench-vm-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"out: {out}; {load()}")
    with vm.shared_router() as router:
        router.wait_ready()
        print(f"router: {router.router.accel}, guest clock source {router.guest['clocksource']}")
        if "probes" in args.parts:
            probes(out, args.packets)
        if "compute" in args.parts:
            compute(out, args.job, args.profile, args.pairs, args.repetitions)
        if "schedule" in args.parts:
            schedule(out, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
