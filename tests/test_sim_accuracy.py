"""Sim mode against the analytic model and the profile (issue: backbone figures).

- fixed K = 5, synthetic acceptance 0.7, no jitter, no loss: measured tokens/s
  within 5 % of the analytic prediction at the measured per-token acceptance;
- the edge's median cycle RTT within 0.5 ms of the profile's;
- 5 % random loss: the P99 cycle time shows the RTO tail and the loss the edge
  saw is consistent with the configured rate.

The benchmark ``benchmarks/sim_accuracy.py`` prints the full grid.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from orchestrator.results import ResultsFolder
from orchestrator.run import RunSpec, run
from orchestrator.summary import read_jsonl
from shaping.link import RTO_MIN_S
from validation.sim_accuracy import loss_from_cycles, rate_check

pytestmark = pytest.mark.slow


def run_quietly(spec: RunSpec, root):
    return run(spec, root, Console(file=io.StringIO()))


@pytest.mark.parametrize("rtt_ms", [0, 10, 50, 100])
def test_fixed_k_rate_matches_the_analytic_model(tmp_path, rtt_ms):
    spec = RunSpec.load("accuracy", f"rtt{rtt_ms:03d}-bw100", "sim",
                        job_overrides={"max_new_tokens": 128, "max_queries": 4})
    _, summary = run_quietly(spec, tmp_path)
    check = rate_check(summary, "fixed-k5", spec.profile.initial)
    assert check.cycles >= 150
    assert abs(check.rate_error) <= 0.05, check
    if rtt_ms > 0:
        assert abs(check.rtt_error_ms) <= 0.5, check


def test_random_loss_shows_the_rto_tail(tmp_path):
    spec = RunSpec.load("accuracy", "rtt050-bw010-l5", "sim",
                        job_overrides={"max_new_tokens": 96, "max_queries": 4})
    folder, summary = run_quietly(spec, tmp_path)
    cycles = read_jsonl(folder / ResultsFolder.CYCLES)
    row = summary.set_index("strategy").loc["fixed-k5"]
    assert row["cycle_ms_p50"] < 50 + 60          # most cycles see no loss
    assert row["cycle_ms_p99"] > row["cycle_ms_p50"] + 1000 * RTO_MIN_S  # a retransmission
    loss = loss_from_cycles(cycles, spec.profile.initial)
    assert loss.cycles_with_retransmission > 0
    assert loss.interval[0] <= 0.05 <= loss.interval[1], loss
