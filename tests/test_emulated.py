"""The kernel-shaped modes end to end: agents in namespaces, the data plane on a shaped link.

On this host (no ``sch_netem``) a rate-only profile runs natively with tbf
on a veth.  The tests that need netem take the ``netem_mode`` fixture: this
host's kernel where it has netem, else the router VM the session shares (the
vm mode: the same namespaces and native agents, shaped inside the VM).
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from pyroute2 import netns
from rich.console import Console

from orchestrator.config.loading import load_profile
from orchestrator.config.run_spec import RunSpec
from orchestrator.lifecycle import vm
from orchestrator.lifecycle.launch import kernel_topology
from orchestrator.lifecycle.run import run
from orchestrator.reporting.summary import read_jsonl
from shaping.link import EmulatedLink
from shaping.topology import DEFAULT_PREFIX_PATTERN
from shaping.link_model import transmit_s
from tests.loaded_host import late_allowance_ms
from tests.netns_helpers import made_by_the_suite, snapshot
from validation.link_probe import (KernelPaths, ProbePlan, bulk_bytes, measure_goodput,
                                   probe_link)
from validation.stats import binomial_interval

ROOT = Path(__file__).resolve().parent.parent
# The profiles issue 4 names: 10 ms; 50 ms + 10 ms normal jitter; 100 ms + 1 % loss; 10 and 1 Mbps.
PROBE_PLAN = ProbePlan(packets=200, goodput_s=1.5)
NETEM_PROFILES = ["rtt010-bw100", "rtt050-bw010-j10", "rtt100-bw010-l1", "rtt010-bw010",
                  "rtt010-bw001"]


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=200)


def our_leftovers() -> list[str]:
    """Namespaces and veths of the tool's scheme that this suite made: a run's leftovers (the
    namespaces of the router VM the session shares, if it is up, excepted)."""
    pattern = re.compile(DEFAULT_PREFIX_PATTERN + r"-(edge|cloud|e|c)")
    router = vm.current_router()
    shared = {router.edge_ns, router.cloud_ns} if router is not None else set()
    namespaces, veths, _ = snapshot()
    return made_by_the_suite(name for name in namespaces + veths
                             if pattern.fullmatch(name) and name not in shared)


def emulated_run(profile: str, tmp_path: Path, mode: str = "emulated", **job):
    spec = RunSpec.load("smoke", profile, mode, job_overrides=job)
    folder, summary = run(spec, tmp_path, quiet_console())
    return spec, folder, summary


def capped(row) -> bool:
    """A goodput the rate caps: never above it, and starved by a loaded host at most to
    0.75 of it (the probe's +-5 % verdict is the benchmarks' figure)."""
    return row.metric == "goodput" and 0.75 * row.expected < row.measured < 1.05 * row.expected


def goodput_measured_again(row, link: EmulatedLink, tries: int = 2):
    """A goodput row under ``capped``'s floor, measured again through the same shaped link up
    to ``tries`` times, the best transfer kept: a router VM whose qemu a loaded host starved
    carried 7.1 and 6.7 of 9.6 Mbit/s in one transfer (fresh-clone suite, 2 cores), while a
    bucket shaping to the wrong rate misses again on every try."""
    if row.metric != "goodput" or row.expected is None or capped(row):
        return row
    spec = getattr(link.profile.state_at(0.0), row.direction)
    best = row.measured
    for _ in range(tries):
        best = max(best, measure_goodput(KernelPaths(link.topology), row.direction,
                                         bulk_bytes(spec, PROBE_PLAN),
                                         max_seconds=2 * PROBE_PLAN.goodput_s))
        if best > 0.75 * row.expected:
            break
    return dataclasses.replace(row, measured=best, error=best - row.expected,
                               note=f"first transfer {row.measured:.2f} Mbit/s, best of the tries kept")


def load_proof(row) -> bool:
    """A delay or jitter row, judged for what a loaded host cannot fake: a median delay is
    never early and late by at most ``late_allowance_ms`` (after the baseline); a jitter sigma is
    within max(2 ms, 30 %) of the law's.  A TCG router on a busy 2-core host moves both by
    a millisecond or two (a 1 Mbit/s cell missed the probe's own bounds twice beside a second
    suite); the tight bounds are the probe's verdicts and the figures of
    ``benchmarks/vm_router.py probes``."""
    if row.metric in ("one-way delay p50", "RTT p50"):
        return -1.0 - 0.05 * row.expected <= row.error <= late_allowance_ms(row.expected)
    if row.metric == "jitter sigma":
        return abs(row.measured - row.expected) <= max(2.0, 0.3 * row.expected)
    return False


def loss_plausible(row) -> bool:
    lost, trials = (int(n) for n in row.note.split(",")[0].split("/"))
    low, high = binomial_interval(lost, trials, confidence=0.999)
    return low * 100 <= row.expected <= high * 100


# On any root host: tbf only ------------------------------------------------------------------

def test_emulated_run_with_tbf_only_crosses_the_veth(netns_ok, tmp_path):
    """Rate-only profile: runs on kernels without netem; the bytes cross the shaped veth."""
    spec, folder, summary = emulated_run("rtt000-bw010", tmp_path,
                                         strategies=["fixed-k"], k_values=[5])
    stats = json.loads((folder / "link_stats.json").read_text())
    for direction in ("uplink", "downlink"):
        assert stats[direction]["layout"] in ("tbf", "netem+tbf")
        assert stats[direction]["packets"] > 10
        assert stats[direction]["tcp"]["segments_out"] > 10
    cycles = read_jsonl(folder / "cycles.jsonl")
    queries = read_jsonl(folder / "queries.jsonl")
    assert len(queries) == 2 and len(cycles) > 2
    up_bytes = cycles["bytes_up"].sum()
    # the qdisc saw at least the ZeroMQ bytes the edge sent (plus TCP/IP headers and ACKs)
    assert stats["uplink"]["bytes"] > up_bytes
    assert our_leftovers() == [], "the run left its namespaces or veth behind"


def test_probe_of_native_tbf_meets_the_rate(netns_ok):
    """The kernel probe on this host: a rate-only profile is shaped by tbf alone, to a rate
    that caps the goodput (``capped``: 8.3 of 9.6 Mbit/s measured with a second suite and a
    vm run beside it)."""
    with EmulatedLink(load_profile("rtt000-bw010")).create(shape=False) as link:
        report = probe_link(link, "emulated", PROBE_PLAN)
    assert report.layouts == {"edge": "tbf", "cloud": "tbf"}
    goodput = [row for row in report.rows if row.metric == "goodput"]
    assert len(goodput) == 2 and all(capped(row) for row in goodput), goodput
    assert [row for row in report.rows if row.ok is False and not capped(row)] == []
    assert our_leftovers() == []


def start_long_run(tmp_path: Path) -> subprocess.Popen:
    """An emulated run (rate-only profile: no netem needed) that is mid-query when this returns."""
    child = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "run", "--mode", "emulated", "--profile",
         "rtt000-bw010", "--job", "smoke", "--max-new-tokens", "400", "--results", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(tmp_path.glob("*/cycles.jsonl")):
        time.sleep(0.2)
    time.sleep(1.0)
    return child


def test_sigterm_mid_run_tears_everything_down(netns_ok, tmp_path):
    """SIGTERM while the agents run in their namespaces: exit 143 and nothing left."""
    before = set(our_leftovers())
    child = start_long_run(tmp_path)
    assert set(our_leftovers()) - before, "the run never built its namespaces"
    child.terminate()
    output = child.communicate(timeout=30)[0].decode(errors="replace")
    assert child.returncode == 143, output[-2000:]
    assert set(our_leftovers()) == before, output[-2000:]


def test_cleanup_removes_what_kill_9_left_and_nothing_else(netns_ok, tmp_path):
    """kill -9: the agents die with the orchestrator; `orchestrator cleanup` removes the rest."""
    before = set(our_leftovers())
    bystander = "esx" + secrets.token_hex(3)      # close to, but not of, the scheme es<8 hex>
    netns.create(f"{bystander}-edge")
    try:
        child = start_long_run(tmp_path)
        left = set(our_leftovers()) - before
        assert left, "the run never built its namespaces"
        child.kill()
        child.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and running_agents_of(tmp_path):
            time.sleep(0.1)
        assert not running_agents_of(tmp_path), "agents outlived a kill -9 of the orchestrator"
        assert set(our_leftovers()) - before == left        # the namespaces are still there
        listed = orchestrator_cli("cleanup", "--dry-run")
        assert all(f"would remove namespace {name}" in listed for name in left if
                   name.endswith(("-edge", "-cloud")))
        assert set(our_leftovers()) - before == left
        removed = orchestrator_cli("cleanup")
        assert all(f"removed namespace {name}" in removed for name in left if
                   name.endswith(("-edge", "-cloud")))
        assert set(our_leftovers()) == before
        assert f"{bystander}-edge" in netns.listnetns()     # never touched
    finally:
        netns.remove(f"{bystander}-edge")


def running_agents_of(folder: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-af", f"agents[.](edge|cloud) --settings {folder}"],
                           capture_output=True, text=True)
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


def orchestrator_cli(*argv: str) -> str:
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_doctor_names_every_capability_and_the_mode():
    out = orchestrator_cli("doctor")
    for name in ("root", "netns", "veth", "sch_netem", "sch_tbf", "qemu", "vm kernel", "kvm",
                 "cpus", "torch"):
        assert re.search(rf"^(ok|--)\s+{name}\s", out, re.M), out
    assert re.search(r"^mode: (emulated|vm|sim) \(auto: ", out, re.M), out


# Kernel netem: this host's, or the router VM's ------------------------------------------------

@pytest.mark.parametrize("profile_name", NETEM_PROFILES)
def test_probe_kernel_netem_against_the_link_math(profile_name, netem_mode, record_property):
    profile = load_profile(profile_name)
    with EmulatedLink(profile, topology=kernel_topology(netem_mode)).create(shape=False) as link:
        report = probe_link(link, netem_mode, PROBE_PLAN)
        report.rows = [goodput_measured_again(row, link) for row in report.rows]
    for row in report.rows:
        record_property(f"{row.direction} {row.metric}", [row.measured, row.error, row.ok])
    assert report.layouts == {"edge": "netem+tbf", "cloud": "netem+tbf"}
    # Loss: the report's 95 % interval misses 1 run in 20 by design; the test asks 99.9 %.
    misses = [row for row in report.rows if row.ok is False and not capped(row)
              and not load_proof(row) and not (row.metric == "loss" and loss_plausible(row))]
    assert not misses, misses
    assert our_leftovers() == []


@pytest.fixture(scope="module")
def agent_overhead_ms(tmp_path_factory, netem_mode) -> float:
    """The median cycle RTT of fixed-k5 on an unshaped link: the agents' and host's own share,
    measured, never assumed."""
    spec, folder, summary = emulated_run("rtt000-bw100", tmp_path_factory.mktemp("baseline"),
                                         netem_mode, strategies=["fixed-k"], k_values=[5])
    cycles = read_jsonl(folder / "cycles.jsonl")
    return float(cycles["rtt_ms"].median())


@pytest.mark.parametrize("profile_name", NETEM_PROFILES)
def test_emulated_run_sees_the_profiles_rtt(profile_name, tmp_path, netem_mode, agent_overhead_ms,
                                             record_property):
    """A full run over kernel netem: the edge's RTT is the profile's plus transmit plus overhead."""
    spec, folder, summary = emulated_run(profile_name, tmp_path, netem_mode, max_queries=1)
    stats = json.loads((folder / "link_stats.json").read_text())
    assert stats["uplink"]["layout"] == "netem+tbf" == stats["downlink"]["layout"]
    assert stats["baseline"]["packets"] > 0 and stats["baseline"]["goodput_mbps"] > 0
    if netem_mode == "vm":          # the router: where it ran, its NICs' offloads off
        assert stats["router"]["accel"] in ("tcg", "kvm")
        assert not any(any(nic["offloads"].values())
                       for nic in stats["router"]["interfaces"].values())
    cycles = read_jsonl(folder / "cycles.jsonl")
    fixed = cycles[cycles["label"] == "fixed-k5"]
    state = spec.profile.initial
    expected_ms = state.rtt_ms + 1000 * (
        transmit_s(state.uplink, fixed["bytes_up"].median())
        + transmit_s(state.downlink, fixed["bytes_down"].median()))
    measured_ms = float(fixed["rtt_ms"].median())
    record_property("rtt_ms", {"expected": expected_ms, "measured_p50": measured_ms,
                               "agent_overhead": agent_overhead_ms,
                               "baseline_rtt": stats["baseline"]["rtt_ms"]})
    # The netem delay really acts: never below the profile.  Above it: the agents' overhead
    # measured on the unshaped link, plus what the host adds when the agents wait idle for a
    # delayed message.
    jitter = state.uplink.jitter_ms + state.downlink.jitter_ms
    loss = state.uplink.loss_pct + state.downlink.loss_pct
    assert measured_ms >= expected_ms - 1.0 - 2 * jitter, (measured_ms, expected_ms)
    slack = max(10.0, 0.15 * expected_ms) + 2 * jitter + (250.0 if loss else 0.0)
    assert measured_ms - agent_overhead_ms - expected_ms <= slack, (
        measured_ms, agent_overhead_ms, expected_ms)
    row = summary.set_index("label").loc["fixed-k5"]
    assert len(read_jsonl(folder / "queries.jsonl")) == 4      # every strategy, one query
    assert pd.notna(row["tokens_per_s_p50"]) if "tokens_per_s_p50" in row else True
    assert our_leftovers() == []
