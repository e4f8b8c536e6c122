"""Sim mode against the analytic model and the profile (issue: backbone figures).

- fixed K = 5, synthetic acceptance 0.7, no jitter, no loss: the measured
  tokens/s within 5 % of the analytic cycle time evaluated on the run's own
  measured drafting and verification with the modeled link (the host's load
  moves compute, which both sides then share; what is left is the link model
  and the testbed's overhead), and the tokens per cycle within 5 % of E[tau]
  at the measured acceptance (no timing at all);
- the edge's median cycle RTT within 0.5 ms of the profile's, and no cycle's
  network time below it (the link never delivers early);
- 5 % random loss: the P99 cycle time shows the RTO tail and the loss the edge
  saw is consistent with the configured rate.

The benchmark ``benchmarks/sim_accuracy.py`` prints the full grid, and the
error against the model with the pair's modeled compute times, on a quiet host.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from orchestrator.results import ResultsFolder
from orchestrator.run import RunSpec, run
from orchestrator.summary import read_jsonl
from shaping.link import RTO_MIN_S
from validation.sim_accuracy import loss_from_cycles, modeled_link_s, rate_check

pytestmark = pytest.mark.slow


def run_quietly(spec: RunSpec, root):
    return run(spec, root, Console(file=io.StringIO()))


@pytest.mark.parametrize("rtt_ms", [0, 10, 50, 100])
def test_fixed_k_rate_matches_the_analytic_model(tmp_path, rtt_ms):
    spec = RunSpec.load("accuracy", f"rtt{rtt_ms:03d}-bw100", "sim",
                        job_overrides={"max_new_tokens": 128, "max_queries": 4})
    folder, summary = run_quietly(spec, tmp_path)
    cycles = read_jsonl(folder / ResultsFolder.CYCLES)
    check = rate_check(summary, cycles, "fixed-k5", spec.profile.initial)
    assert check.cycles >= 150
    assert abs(check.stage_rate_error) <= 0.05, check
    assert abs(check.token_error) <= 0.05, check
    network_s = cycles["t_network"].to_numpy()
    assert (network_s >= modeled_link_s(cycles, spec.profile.initial) - 1e-4).all()
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
