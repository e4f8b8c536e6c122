"""A fair race on a time-varying link: the link's timeline starts again before every query,
so every query of every strategy meets the same link as a function of the time since it
started.  In sim through the real agents here; on the kernel link through the router VM in
``tests/test_fair_race_vm.py``."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from rich.console import Console

from orchestrator.config.loading import load_job
from orchestrator.config.run_spec import RunSpec
from orchestrator.lifecycle.run import run
from shaping.link import SimLink
from shaping.profile import ProfileFile, Schedule, resolve
from tests.test_sim_run import read_jsonl

FAST_MS, SLOW_MS, STEP_S = 10.0, 200.0, 0.4
TWO_STEPS = resolve(ProfileFile(rtt_ms=FAST_MS, schedule=Schedule(
    steps=[{"at_s": STEP_S, "rtt_ms": SLOW_MS}])), "two-steps")
# what a loaded 2-core host may add to a modeled RTT (the agents' wake-ups), never take away;
# far below the step, so each RTT still tells the two states apart
LATE_MS = 50.0


@pytest.mark.slow
def test_every_query_of_every_strategy_meets_the_same_timeline(tmp_path):
    """Each prompt goes to cloud-only first, to fixed-k3 after it: without a restart fixed-k
    would meet only the 200 ms tail of the timeline.  Each query records when its timeline
    started; every cycle's RTT is the profile's at the cycle's offset from there, the second
    query of a strategy starts in the first state again, and cloud-only's first token pays
    the first state's round trip (also after a query that ended in the slow state: the
    restart waits until no message of it is held)."""
    job = load_job("smoke", {"strategies": ["cloud-only", "fixed-k"], "k_values": [3],
                             "max_new_tokens": 30, "max_queries": 2, "warmup_tokens": 4})
    folder, _ = run(RunSpec.build(job, TWO_STEPS, "sim"), tmp_path, Console(file=io.StringIO()))
    queries = pd.DataFrame(read_jsonl(folder / "queries.jsonl")).set_index(["label", "query_id"])
    assert list(queries.index) == [("cloud-only", "1"), ("fixed-k3", "1"),
                                   ("cloud-only", "2"), ("fixed-k3", "2")]
    by_strategy = RunSpec.build(job.model_copy(update={"query_order": "by-strategy"}),
                                TWO_STEPS, "sim").requests()
    assert [(r.label, r.query_id) for r in by_strategy] == [
        ("cloud-only", "1"), ("cloud-only", "2"), ("fixed-k3", "1"), ("fixed-k3", "2")]
    # each timeline started right before its query was submitted
    assert queries["timeline_start_s"].between(-0.2, 0.0).all(), queries["timeline_start_s"]

    cloud_only = queries.loc["cloud-only"]
    network_ms = 1000.0 * (cloud_only["ttft_s"] - cloud_only["cloud_first_s"])
    assert network_ms.between(FAST_MS, FAST_MS + LATE_MS).all(), network_ms.tolist()

    cycles = pd.DataFrame(read_jsonl(folder / "cycles.jsonl"))
    cycles["offset_s"] = cycles["t_start"] - cycles["query_id"].map(
        queries.loc["fixed-k3", "timeline_start_s"])
    cycles["end_s"] = cycles["offset_s"] + cycles["t_cycle"]
    before, after = cycles["end_s"] < STEP_S, cycles["offset_s"] >= STEP_S
    straddling = cycles[~before & ~after]
    assert cycles.loc[before, "rtt_ms"].between(FAST_MS, FAST_MS + LATE_MS).all()
    assert cycles.loc[after, "rtt_ms"].between(SLOW_MS, SLOW_MS + LATE_MS).all()
    assert straddling["rtt_ms"].between(FAST_MS, SLOW_MS + LATE_MS).all()
    for query_id, own in cycles.groupby("query_id"):
        assert (before[own.index].sum() >= 3 and after[own.index].sum() >= 2
                and len(straddling.loc[straddling["query_id"] == query_id]) <= 1), own


def test_a_static_profile_has_no_timeline_to_restart():
    """Nothing to do, nothing done: the link's start stays where it was."""
    link = SimLink(resolve(ProfileFile(rtt_ms=FAST_MS), "static"), seed=0).create()
    started_at = link.started_at
    assert link.restart_timeline({}) is None and link.started_at == started_at
