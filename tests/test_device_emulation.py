"""Device emulation (agents/backends/emulated.py, nasd/latency/emulation.py): every forward
pass lasts its emulated device's time, recorded beside its real one; a pass already slower is
counted, not hidden; the agents, the analytic model and NASD see the emulated times."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from agents.backends import build_models
from agents.backends.base import TokenSequence
from agents.backends.emulated import DeviceEmulation, StageTally
from agents.backends.synthetic import SyntheticPairConfig
from agents.edge import QueryRequest
from agents.sampling import SamplingConfig
from nasd.latency.emulation import pass_seconds, pass_stage
from nasd.latency.stages import NAMED_SHAPES, shape_for_parameters
from orchestrator.config.job import JobConfig
from orchestrator.config.loading import load_device, load_profile
from orchestrator.config.run_spec import RunSpec
from orchestrator.reporting.run_summary import _host_times
from orchestrator.reporting.summary import emulation_columns, emulation_conclusion
from shaping.clock import now
from tests.inproc_agents import edge_and_cloud
from tests.loaded_host import late_allowance_ms

JETSON, H100 = load_device("jetson-orin-nano"), load_device("h100-sxm")
# the draft 4.1 ms a pass on the Jetson, the target 8.3 ms on the H100 (roofline bounds)
EMULATION = DeviceEmulation(edge_device=JETSON, cloud_device=H100,
                            draft_shape=NAMED_SHAPES["llama-160m"],
                            target_shape=NAMED_SHAPES["qwen2.5-14b"],
                            draft_shape_name="llama-160m", target_shape_name="qwen2.5-14b")
DRAFT_S = pass_seconds(JETSON, EMULATION.draft_shape, "bfloat16", 1, 16)
TARGET_S = pass_seconds(H100, EMULATION.target_shape, "bfloat16", 1, 16)


def synthetic(edge_ms: float, cloud_ms: float) -> SyntheticPairConfig:
    """The synthetic pair with every pass taking ``edge_ms`` on the edge, ``cloud_ms`` in the
    cloud (its real time, as emulation sees it)."""
    return SyntheticPairConfig.model_validate({"latency": {
        "edge_draft": {"base_ms": edge_ms, "per_token_ms": 0.0},
        "cloud_draft": {"base_ms": edge_ms, "per_token_ms": 0.0},
        "cloud_target": {"base_ms": cloud_ms, "per_token_ms": 0.0}}})


def request(strategy: str, k: int | None = None, tokens: int = 12) -> QueryRequest:
    return QueryRequest(strategy=strategy, label=strategy, k=k, query_id="q",
                        prompt="12 + 30 =", max_new_tokens=tokens)


def test_a_pass_lasts_the_time_its_bytes_or_flops_take_at_the_device_peaks():
    qwen_7b = shape_for_parameters(7e9)
    # untied: every weight but the input embedding is read once per step, at 2 bytes
    weights = 2 * (qwen_7b.parameters - qwen_7b.embedding_parameters)
    step = pass_seconds(H100, qwen_7b, "bfloat16", 1, 64)
    assert step == pytest.approx(weights / 3350e9, rel=0.01)
    assert pass_seconds(H100, qwen_7b, "bfloat16", 6, 64) == pytest.approx(step, rel=0.01)
    prefill = pass_seconds(H100, qwen_7b, "bfloat16", 4096, 0)     # past the ridge point
    assert prefill == pytest.approx(2 * 4096 * qwen_7b.parameters / 989.5e12, rel=0.1)
    assert pass_stage("draft", 0, False) == "edge_prefill"
    assert pass_stage("draft", 9, False) == "draft_token"
    assert pass_stage("target", 0, False) == "cloud_prefill"
    assert pass_stage("target", 9, True) == "verify"
    assert pass_stage("target", 9, False) == "decode"


def test_a_device_without_the_dtypes_peak_computes_at_float32s_and_says_so():
    """A device file that lists no bfloat16 peak is timed at its float32 peak (a CPU without
    bfloat16 instructions converts), and the emulation's line says so."""
    float32_only = JETSON.model_copy(update={"peak_tflops": {"float32": 1.0}})
    emulation = DeviceEmulation(edge_device=float32_only, cloud_device=H100,
                                draft_shape=NAMED_SHAPES["qwen2.5-0.5b"],
                                target_shape=EMULATION.target_shape,
                                draft_shape_name="qwen2.5-0.5b", target_shape_name="qwen2.5-14b")
    line = emulation.describe()
    assert "float32 peak: its file lists no bfloat16" in line
    assert line.count("float32 peak") == 1                     # the H100 lists its own
    prefill = pass_seconds(float32_only, emulation.draft_shape, "bfloat16", 512, 0)
    assert prefill > pass_seconds(JETSON, emulation.draft_shape, "bfloat16", 512, 0)
    assert "float32 peak" not in EMULATION.describe()
    # the verification it costs is the job's own largest K, not a fixed example
    from orchestrator.config.job import largest_k
    from orchestrator.config.loading import load_job
    assert "verifying 3 drafts" in EMULATION.describe(3)
    assert "verifying 1 draft " in EMULATION.describe(1)
    assert "verifying" not in EMULATION.describe(None)
    job = load_job("jetson-h100")
    assert largest_k(job.model_copy(update={"strategies": ["cloud-only", "edge-only"]})) is None
    assert largest_k(job.model_copy(update={"strategies": ["fixed-k"], "k_values": [3, 5]})) == 5
    assert largest_k(job.model_copy(update={"strategies": ["nasd", "fixed-k"], "k_values": [3],
                                            "nasd_k_max": 12})) == 12


def emulated_sequence(real_ms: float):
    models = build_models(synthetic(real_ms, real_ms), "edge", EMULATION)
    sequence = TokenSequence(models.draft, [5, 6, 7], SamplingConfig())
    sequence.prefill()
    models.ledger.take()
    sequence.extend([8])
    return sequence, models.ledger


def test_a_pass_faster_for_real_lasts_its_emulated_time_and_is_recorded_both_ways():
    sequence, ledger = emulated_sequence(real_ms=0.2)
    started = now()
    sequence.next_probs()
    elapsed = now() - started
    (timing,) = ledger.take()
    emulated = pass_seconds(JETSON, EMULATION.draft_shape, "bfloat16", 1, 3)
    assert timing.stage == "draft_token" and timing.emulated_s == emulated
    assert 0.0002 <= timing.real_s < emulated
    assert timing.lasted_s >= emulated and elapsed >= emulated
    assert timing.waited_s == pytest.approx(timing.lasted_s - timing.real_s)


def test_a_pass_slower_for_real_is_not_padded_and_is_counted_with_its_overrun():
    sequence, ledger = emulated_sequence(real_ms=10.0)
    started = now()
    sequence.next_probs()
    elapsed = now() - started
    (timing,) = ledger.take()
    assert timing.real_s >= 0.010 > timing.emulated_s
    assert timing.lasted_s == pytest.approx(timing.real_s, abs=0.001)   # not padded on top
    assert elapsed < timing.real_s + 0.004
    tally = StageTally()
    tally.add([timing])
    totals = tally.as_dict()["draft_token"]
    assert (totals["passes"], totals["padded"], totals["overruns"]) == (1, 0, 1)
    assert totals["worst_overrun_s"] == pytest.approx(timing.real_s - timing.emulated_s)


def test_the_agents_record_real_and_emulated_times_per_cycle_and_per_query():
    with edge_and_cloud(synthetic(0.2, 0.5), emulation=EMULATION) as (edge, _):
        record, cycles = edge.run_query(request("fixed-k", k=3))
        streamed, _ = edge.run_query(request("cloud-only"))
    for cycle in cycles:    # (the last may draft none: the budget leaves one token)
        assert cycle.t_draft >= cycle.k * DRAFT_S and cycle.t_draft_real <= cycle.t_draft
        assert cycle.t_verify >= TARGET_S and 0 < cycle.t_verify_real <= cycle.t_verify
    stages = record.emulated_stages
    assert list(stages) == ["edge_prefill", "draft_token", "cloud_prefill", "verify"]
    assert stages["draft_token"]["passes"] == sum(c.k for c in cycles)
    assert stages["verify"]["passes"] == len(cycles)
    for totals in stages.values():      # a pass overruns only if this host stalls it
        assert totals["padded"] + totals["overruns"] == totals["passes"]
        assert totals["lasted_s"] >= max(totals["emulated_s"], totals["real_s"])
        assert totals["overruns"] or totals["emulated_s"] > totals["real_s"]
    assert stages["verify"]["emulated_s"] == pytest.approx(len(cycles) * TARGET_S, rel=0.01)
    assert streamed.emulated_stages["decode"]["passes"] == streamed.n_tokens - 1
    assert streamed.cloud_compute_s >= streamed.n_tokens * TARGET_S
    with edge_and_cloud(synthetic(0.2, 0.5)) as (edge, _):    # no emulation: nothing extra
        plain, plain_cycles = edge.run_query(request("fixed-k", k=3))
    assert plain.emulated_stages is None and plain_cycles[0].t_verify_real is None


def test_overruns_reach_the_summary_and_its_conclusion():
    # the cloud's passes take 15 ms for real, above the emulated H100's 8.3
    with edge_and_cloud(synthetic(0.2, 15.0), emulation=EMULATION) as (edge, _):
        record, _ = edge.run_query(request("fixed-k", k=3, tokens=6))
    row = emulation_columns(pd.Series([record.emulated_stages]))
    verified = record.emulated_stages["verify"]["passes"] + 1    # the cloud's prefill too
    assert row["overrun_passes"] >= verified
    assert row["worst_overrun_ms"] > 15.0 - 1000 * TARGET_S - 1.0
    assert row["worst_overrun_stage"] in ("cloud_prefill", "verify")
    assert row["verify_real_ms"] > row["verify_emulated_ms"] == pytest.approx(1000 * TARGET_S,
                                                                              rel=0.01)
    sentence = emulation_conclusion(pd.DataFrame([{**row, "label": "fixed-k3"}]))
    # every verified pass overran; a pass this host stalled may have too (the row's count)
    overran = re.search(r"(\d+) overran", sentence)
    assert overran and int(overran.group(1)) == row["overrun_passes"] and "fixed-k3" in sentence


def late_by_load(seconds: float) -> float:
    """The latest a pass emulated to take ``seconds`` may be seen on a loaded host."""
    return seconds + late_allowance_ms(1000.0 * seconds) / 1000.0


def test_the_analytic_model_and_nasd_see_the_emulated_times():
    with edge_and_cloud(synthetic(0.2, 0.5), emulation=EMULATION) as (edge, _):
        nasd = request("nasd", tokens=40)
        record, cycles = edge.run_query(nasd)
        learned = edge.policy(nasd).estimator.calibration().times
    # the emulated times (and this host's overheads around the passes, late as a loaded
    # host makes them: a CI loop run saw 6.6 ms for 4.1), not the 0.2 ms ones
    assert DRAFT_S <= learned.draft_token_s < late_by_load(DRAFT_S)
    assert TARGET_S <= learned.verify_time_s(3) < late_by_load(TARGET_S)
    emulated = JobConfig(edge_device="jetson-orin-nano", cloud_device="h100-sxm",
                         edge_model_shape="llama-68m", cloud_model_shape="qwen2.5-14b")
    spec = RunSpec(emulated, load_profile("lan"), synthetic(0.2, 0.5), [], "sim")
    queries = pd.DataFrame([record.as_dict()])
    times = _host_times(spec, queries, pd.DataFrame([c.as_dict() for c in cycles]))
    # the records' times, not the synthetic profile's 0.2 ms
    assert DRAFT_S <= times.edge.draft_token_s < late_by_load(DRAFT_S)
