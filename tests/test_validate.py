"""Cross-validation: the comparison's verdicts, and `orchestrator validate` end to end
on this host's kernel (a rate-only cell runs emulated with tbf, no netem needed)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from validation.crossval import LOSS_CAUSE, compare, passed
from tests.conftest import ROOT


def _leg(tokens_per_s: float, ttft_p95: float, rtt_p50: float, jitter: float = 0.0,
         loss: float = 0.0, predicted: float = np.nan) -> pd.DataFrame:
    return pd.DataFrame([{"cell": "c", "label": "fixed-k5", "strategy": "fixed-k",
                          "jitter_ms": jitter,
                          "loss_pct": loss, "tokens_per_s": tokens_per_s,
                          "tokens_per_s_p50": tokens_per_s, "ttft_ms_p50": 100.0,
                          "ttft_ms_p95": ttft_p95, "rtt_ms_p50": rtt_p50, "rtt_ms_p95": rtt_p50,
                          "predicted_tokens_per_s": predicted}])


def _verdicts(comparison: pd.DataFrame) -> dict:
    return {(row.legs, row.metric): row.verdict for row in comparison.itertuples()}


def test_each_metric_is_judged_against_its_own_tolerance():
    sim = _leg(100.0, 200.0, 50.0, predicted=102.9)
    verdicts = _verdicts(compare(sim, _leg(95.5, 219.0, 54.9), "vm"))
    assert verdicts[("analytic vs sim", "tokens_per_s")] == "pass"      # 2.8 % < 3 %
    assert verdicts[("sim vs vm", "tokens_per_s")] == "pass"            # 4.5 % < 5 %
    assert verdicts[("sim vs vm", "ttft_ms_p95")] == "pass"             # 9.5 % < 10 %
    assert verdicts[("sim vs vm", "rtt_ms_p50")] == "pass"              # 9.8 % < 10 %
    missed = compare(_leg(100.0, 200.0, 50.0, predicted=103.5), _leg(94.0, 221.0, 56.0), "vm")
    verdicts = _verdicts(missed)
    assert verdicts.pop(("sim vs vm", "ttft_ms_p50")) == "pass"          # equal in both legs
    assert set(verdicts.values()) == {"miss"} and not passed(missed)


def test_an_rtt_near_zero_is_judged_by_the_absolute_floor():
    verdicts = _verdicts(compare(_leg(100.0, 200.0, 0.8), _leg(100.0, 200.0, 1.7), "emulated"))
    assert verdicts[("sim vs emulated", "rtt_ms_p50")] == "pass"        # 0.9 ms < 1 ms


def test_the_closed_form_is_not_judged_on_lossy_cells_and_misses_name_the_cause():
    comparison = compare(_leg(100.0, 200.0, 50.0, loss=1.0, predicted=130.0),
                         _leg(80.0, 200.0, 50.0, loss=1.0), "vm")
    analytic = comparison[comparison["legs"] == "analytic vs sim"].iloc[0]
    assert analytic["verdict"] == "reported"
    throughput = comparison[(comparison["legs"] == "sim vs vm")
                            & (comparison["metric"] == "tokens_per_s")].iloc[0]
    assert throughput["verdict"] == "miss" and throughput["note"] == LOSS_CAUSE


def test_a_difference_the_legs_own_sampling_cannot_resolve_is_not_a_miss():
    """TTFT P50 16 % apart, each leg's interval +-12 ms: sqrt(12^2 + 12^2) = 17 ms > 16 ms; the
    same difference with +-4 ms intervals is a miss, and the analytic leg gets no allowance."""
    def leg(ttft_p50: float, half: float, **fields) -> pd.DataFrame:
        frame = _leg(100.0, 200.0, 50.0, jitter=10.0, **fields)
        return frame.assign(ttft_ms_p50=ttft_p50, ttft_ms_p50_low=ttft_p50 - half,
                            ttft_ms_p50_high=ttft_p50 + half)
    wide = compare(leg(100.0, 12.0), leg(116.0, 12.0), "vm")
    row = wide[wide["metric"] == "ttft_ms_p50"].iloc[0]
    assert row["verdict"] == "unresolved" and "sampling error" in row["note"] and passed(wide)
    narrow = compare(leg(100.0, 4.0), leg(116.0, 4.0), "vm")
    assert narrow[narrow["metric"] == "ttft_ms_p50"].iloc[0]["verdict"] == "miss"
    assert not passed(narrow)
    static = _leg(100.0, 200.0, 50.0, predicted=105.0).assign(tokens_per_s_low=80.0,
                                                              tokens_per_s_high=120.0)
    analytic = compare(static, static, "vm")
    assert analytic[analytic["legs"] == "analytic vs sim"].iloc[0]["verdict"] == "miss"


@pytest.mark.usefixtures("netns_ok")
def test_validate_runs_both_legs_and_exits_by_its_verdicts(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("name: tiny\nmodel_pair: synthetic\nprompts: default\nmax_queries: 3\n"
                   "strategies: [cloud-only, fixed-k]\nk_values: [5]\nmax_new_tokens: 16\n"
                   "network: {grids: [{rtt_ms: [0], bandwidth_mbps: [1]}]}\n")
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "validate", "--job",
                           str(job), "--results", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert "mode: emulated (auto: root, and this rate-only profile needs tbf" in done.stdout
    folder = next(tmp_path.glob("*-validate-tiny-emulated"))
    comparison = pd.read_csv(folder / "validation.csv")
    calibration = json.loads((folder / "calibration.json").read_text())
    assert done.returncode == (0 if calibration["passed"] else 1), done.stdout + done.stderr
    assert calibration["passed"] == (not (comparison["verdict"] == "miss").any())
    assert 0 < calibration["path_rtt_ms"] < 20
    assert calibration["path_rtt_p95_above_median_ms"] >= 0
    assert set(comparison["label"]) == {"cloud-only", "fixed-k5"}
    assert {"analytic vs sim", "sim vs emulated"} == set(comparison["legs"])
    for leg in ("sim", "emulated", "calibration"):
        assert (folder / leg / "cells.jsonl").read_text().count("\n") == 1
    # the sim leg stood for the path: its link had the measured round trip added
    sim_config = next((folder / "sim" / "cells").iterdir()) / "config.yaml"
    assert f"delay_ms: {calibration['path_rtt_ms'] / 2}" in sim_config.read_text()
    assert "rtt000-bw001" in done.stdout and "checks pass" in done.stdout


def test_a_vm_miss_of_the_rtt_tail_names_the_routers_timers():
    # the agents run natively in vm mode too: a miss of the closed form has no VM excuse
    comparison = compare(_leg(90.0, 200.0, 50.0, predicted=100.0), _leg(90.0, 200.0, 50.0), "vm")
    analytic = comparison[comparison["legs"] == "analytic vs sim"].iloc[0]
    assert analytic["verdict"] == "miss" and analytic["note"] == ""
    tail = compare(_leg(90.0, 200.0, 50.0), _leg(90.0, 200.0, 60.0), "vm", path_tail_ms=6.9)
    note = tail[tail["metric"] == "rtt_ms_p95"].iloc[0]["note"]
    assert "timer" in note and "its P95 lay 6.9 ms above its median" in note
    # on a lossy cell the tail holds both the router's timers and the RTOs
    lossy = compare(_leg(90.0, 200.0, 50.0, loss=1.0), _leg(90.0, 200.0, 60.0, loss=1.0), "vm")
    note = lossy[lossy["metric"] == "rtt_ms_p95"].iloc[0]["note"]
    assert "loss recovery" in note and "timer" in note
