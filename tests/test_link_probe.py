"""Link probes: the expectation math, the verdicts, and a real probe of the sim link.

Kernel probes (netem: this host's, or the router VM's) are in ``tests/test_emulated.py``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from orchestrator.config.loading import load_profile
from shaping.profile import DirectionSpec, LinkState, RandomLoss
from validation.link_probe import (
    PacketSamples,
    ProbePlan,
    _middle_rate_mbps,
    evaluate,
    expected_echo_delays_ms,
    floor_state,
    payload_rate_mbps,
    probe_sim,
)

PLAN = ProbePlan(packets=200)


def state(**direction) -> LinkState:
    spec = DirectionSpec(**direction)
    return LinkState(uplink=spec, downlink=spec)


def test_expected_delays_without_jitter_are_the_delay():
    delays = expected_echo_delays_ms(state(delay_ms=20), PLAN, repetitions=2)
    assert np.allclose(delays["uplink"], 20) and np.allclose(delays["round trip"], 40)


def test_in_order_release_narrows_jitter_and_reordering_allowed_does_not():
    in_order = expected_echo_delays_ms(state(delay_ms=50, jitter_ms=10,
                                             jitter_distribution="normal"), PLAN)
    reordering = expected_echo_delays_ms(state(delay_ms=50, jitter_ms=10,
                                               jitter_distribution="normal",
                                               allow_reordering=True), PLAN)
    assert np.std(reordering["uplink"]) == pytest.approx(10, rel=0.05)
    # a packet never overtakes the one before it: shorter draws wait, so the median rises
    assert np.median(in_order["uplink"]) > 50.5 and np.std(in_order["uplink"]) < 9.5
    # the echo leaves when the probe arrives: the downlink sees bunched sends, held back more
    assert np.median(in_order["downlink"]) > np.median(in_order["uplink"])


def test_payload_rate_is_the_tcp_share_of_a_full_frame():
    assert payload_rate_mbps(DirectionSpec(bandwidth_mbps=10)) == pytest.approx(10 * 1448 / 1514)
    assert payload_rate_mbps(DirectionSpec()) is None


def test_middle_rate_skips_the_burst_and_the_drain():
    arrivals = [(0.0, 50_000)] + [(0.01 * i, 1250) for i in range(1, 1001)]   # 1 Mbit/s after a burst
    assert _middle_rate_mbps(arrivals) == pytest.approx(1.0, rel=0.01)
    assert math.isnan(_middle_rate_mbps([(0.0, 1)]))


def test_middle_rate_ignores_a_stalled_sender():
    """A 100 ms stall of the sending host (TCG in CI moved a least-squares slope by 5 %)."""
    packet_s = 1448 / (10e6 / 8)
    times = np.cumsum([packet_s + (0.1 if i == 600 else 0.0) for i in range(1300)])
    assert _middle_rate_mbps([(t, 1448) for t in times]) == pytest.approx(10.0, rel=0.002)


def _samples(owd_up, owd_down, sent, received_up, received_down) -> PacketSamples:
    samples = PacketSamples(sent=sent)
    samples.owd_ms = {"uplink": list(owd_up), "downlink": list(owd_down)}
    samples.received = {"uplink": received_up, "downlink": received_down}
    samples.rtt_ms = [u + d for u, d in zip(owd_up, owd_down)]
    return samples


def test_verdicts_subtract_the_baseline_and_catch_a_wrong_delay():
    link = state(delay_ms=20, bandwidth_mbps=10)
    baseline = _samples([0.3] * 100, [0.3] * 100, 100, 100, 100)
    good = _samples([20.3] * 200, [20.3] * 200, 200, 200, 200)
    report = evaluate("emulated", "x", link, PLAN, baseline, good,
                      {"uplink": 9.5, "downlink": 9.6}, baseline_goodput_mbps=1000.0)
    assert report.passed, [row for row in report.rows if row.ok is False]
    p50 = next(row for row in report.rows if row.metric == "one-way delay p50")
    assert p50.error == pytest.approx(0.0, abs=1e-9) and "0.300" in p50.note
    slow = _samples([25.3] * 200, [20.3] * 200, 200, 200, 200)
    report = evaluate("emulated", "x", link, PLAN, baseline, slow,
                      {"uplink": 9.5, "downlink": 9.6}, baseline_goodput_mbps=1000.0)
    assert [row.metric for row in report.rows if row.ok is False] == ["one-way delay p50",
                                                                       "RTT p50"]


def test_loss_verdict_is_the_binomial_interval_and_rates_need_headroom():
    link = LinkState(uplink=DirectionSpec(delay_ms=10, bandwidth_mbps=100,
                                          loss=RandomLoss(pct=5)),
                     downlink=DirectionSpec(delay_ms=10, bandwidth_mbps=100))
    baseline = _samples([0.1] * 100, [0.1] * 100, 100, 100, 100)
    no_loss_seen = _samples([10.1] * 400, [10.1] * 400, 400, 400, 400)
    report = evaluate("vm", "x", link, PLAN, baseline, no_loss_seen,
                      {"uplink": 80.0, "downlink": 80.0}, baseline_goodput_mbps=265.0)
    rows = {(row.direction, row.metric): row for row in report.rows}
    assert rows[("uplink", "loss")].ok is False        # 0/400 cannot be a 5 % link
    assert rows[("downlink", "loss")].ok is True
    assert rows[("downlink", "goodput")].ok is None    # 265 unshaped is too close to 100
    assert "265" in rows[("downlink", "goodput")].note


def test_a_floor_comes_off_each_one_way_delay_and_twice_off_each_round_trip():
    samples = _samples([1.5, 2.0], [1.0, 3.0], 2, 2, 2)
    samples.rtt_ms = [2.5, 5.0]
    less = samples.less(0.5)
    assert less.owd_ms == {"uplink": [1.0, 1.5], "downlink": [0.5, 2.5]}
    assert less.rtt_ms == [1.5, 4.0] and less.sent == 2
    assert samples.owd_ms["uplink"] == [1.5, 2.0]          # the measured samples stay as they were
    assert floor_state(0.5).uplink == floor_state(0.5).downlink == DirectionSpec(delay_ms=0.5)


@pytest.mark.slow
def test_probe_of_the_sim_link_meets_its_own_math():
    """The sim link holds real loopback datagrams and TCP chunks as the profile says."""
    report = probe_sim(load_profile("rtt050-bw010-j10"), ProbePlan(packets=150, goodput_s=1.0))
    assert report.passed, [row for row in report.rows if row.ok is False]
    assert all(value < 1.0 for value in report.baseline_owd_ms.values())


def test_probe_cli_writes_json_and_says_the_mode(tmp_path):
    """From a folder outside the checkout, into the default results folder there."""
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "probe", "--mode", "sim",
                           "--profile", "rtt010-bw010", "--packets", "50", "--goodput-s", "0.5"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mode: sim (asked for with --mode sim)" in done.stdout
    saved = json.loads(next(tmp_path.glob("results/probe-*-rtt010-bw010-sim.json")).read_text())
    assert saved["passed"] is True and saved["plan"]["packets"] == 50
    assert {row["metric"] for row in saved["rows"]} >= {"one-way delay p50", "jitter sigma",
                                                        "loss", "reordered", "goodput"}
