"""The pure link model: exact timing where it is deterministic, real statistics elsewhere."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from shaping.link_model import (
    HEADER_BYTES,
    MAX_CONSECUTIVE_LOSSES,
    MSS_BYTES,
    RTO_MAX_S,
    RTO_MIN_S,
    DirectionLink,
    JitterSource,
    LossProcess,
    TokenBucket,
    default_burst_bytes,
    expected_loss_wait_s,
    packet_count,
    retransmission_timeout_s,
    serialization_delay_s,
    tcp_estimates,
    transfer_s,
    transmit_s,
    wire_bytes,
)
from shaping.profile import DirectionSpec, GilbertElliottLoss, LinkState, RandomLoss

SAMPLES = 20_000


def rng(seed: int = 1) -> np.random.Generator:
    return np.random.default_rng(seed)


def delays_ms(spec: DirectionSpec, n: int = SAMPLES, seed: int = 1) -> np.ndarray:
    source = JitterSource(spec, rng(seed))
    return np.array([source.sample_ms() for _ in range(n)])


def lag1_autocorrelation(x: np.ndarray) -> float:
    return float(np.corrcoef(x[:-1], x[1:])[0, 1])


def loss_sequence(spec, n: int, seed: int = 1) -> np.ndarray:
    process = LossProcess(spec, rng(seed))
    return np.array([process.lost() for _ in range(n)])


# --- closed forms ---------------------------------------------------------------------

def test_packetisation_counts_segments_and_headers():
    assert [packet_count(n) for n in (0, 1, MSS_BYTES, MSS_BYTES + 1, 10 * MSS_BYTES)] == [1, 1, 1, 2, 10]
    assert wire_bytes(0) == HEADER_BYTES
    assert wire_bytes(1_000_000) == 1_000_000 + 691 * HEADER_BYTES


def test_default_burst_is_two_frames_or_one_tick_of_rate():
    assert default_burst_bytes(1e6 / 8) == 2 * 1514
    assert default_burst_bytes(1e9 / 8) == 125_000


def test_rto_is_linux_formula():
    assert retransmission_timeout_s(0.05) == pytest.approx(0.25)
    assert retransmission_timeout_s(0.1, rttvar_s=0.1) == pytest.approx(0.5)
    assert retransmission_timeout_s(0.0) == RTO_MIN_S


# --- jitter -------------------------------------------------------------------------

def test_no_jitter_gives_the_exact_delay():
    link = DirectionLink(DirectionSpec(delay_ms=37.5), rng(), srtt_s=0.075)
    for t_send in (0.0, 0.1, 1.234567, 1e4 + 0.3):
        assert link.transit(t_send, 500).deliver_at_s == t_send + 37.5 / 1000.0
    big = link.transit(2e4, 1_000_000)
    assert big.deliver_at_s == 2e4 + 37.5 / 1000.0
    assert big.packets == 691 and big.lost_packets == 0


def test_uniform_jitter_is_netem_uniform():
    d = delays_ms(DirectionSpec(delay_ms=100, jitter_ms=20, jitter_distribution="uniform"))
    assert d.min() >= 80 and d.max() <= 120
    assert d.mean() == pytest.approx(100, abs=4 * 20 / math.sqrt(3 * SAMPLES))
    assert d.std() == pytest.approx(20 / math.sqrt(3), rel=0.02)
    assert stats.kstest((d - 80) / 40, "uniform").pvalue > 0.01


def test_normal_jitter_has_mean_delay_and_sigma_jitter():
    d = delays_ms(DirectionSpec(delay_ms=100, jitter_ms=20, jitter_distribution="normal"))
    assert d.mean() == pytest.approx(100, abs=4 * 20 / math.sqrt(SAMPLES))
    assert d.std() == pytest.approx(20, rel=0.03)
    assert abs(stats.skew(d)) < 0.1
    assert stats.kstest((d - 100) / 20, "norm").pvalue > 0.01


def test_jitter_is_clipped_at_zero_delay():
    d = delays_ms(DirectionSpec(delay_ms=5, jitter_ms=20, jitter_distribution="normal"))
    assert d.min() == 0.0
    assert np.mean(d == 0.0) == pytest.approx(stats.norm.cdf(-5 / 20), abs=0.02)


@pytest.mark.parametrize("distribution, left_end_sigmas", [("pareto", 0.62), ("paretonormal", 1.6)])
def test_pareto_jitter_has_a_heavy_right_tail(distribution, left_end_sigmas):
    n = 100_000     # the tail makes the sample sigma converge slowly
    d = delays_ms(DirectionSpec(delay_ms=100, jitter_ms=20, jitter_distribution=distribution), n=n)
    assert d.mean() == pytest.approx(100, abs=4 * 20 / math.sqrt(n))
    assert d.std() == pytest.approx(20, rel=0.08)
    assert stats.skew(d) > 2
    assert d.min() >= 100 - left_end_sigmas * 20
    assert np.mean(d > 100 + 3 * 20) > 5 * stats.norm.sf(3)   # far heavier than normal
    assert d.max() - 100 > 10 * (100 - d.min())


def test_correlation_raises_lag1_autocorrelation_like_netem():
    for distribution in ("uniform", "normal", "pareto"):
        base = dict(delay_ms=100, jitter_ms=20, jitter_distribution=distribution)
        independent = delays_ms(DirectionSpec(**base))
        correlated = delays_ms(DirectionSpec(**base, delay_correlation_pct=75))
        assert abs(lag1_autocorrelation(independent)) < 0.03
        assert lag1_autocorrelation(correlated) > 0.5
    # On the uniform the AR(1) is exact: autocorrelation rho, variance shrunk by (1-rho)/(1+rho).
    rho = 0.5
    d = delays_ms(DirectionSpec(delay_ms=100, jitter_ms=20, delay_correlation_pct=100 * rho))
    assert lag1_autocorrelation(d) == pytest.approx(rho, abs=0.03)
    assert d.std() == pytest.approx(20 / math.sqrt(3) * math.sqrt((1 - rho) / (1 + rho)), rel=0.03)


# --- loss ---------------------------------------------------------------------------

def test_bernoulli_loss_rate_is_within_binomial_interval():
    lost = loss_sequence(RandomLoss(pct=5), SAMPLES)
    assert stats.binomtest(int(lost.sum()), SAMPLES, 0.05).pvalue > 0.01
    assert not loss_sequence(RandomLoss(pct=0), 1000).any()


def burst_lengths(lost: np.ndarray) -> np.ndarray:
    edges = np.diff(np.concatenate([[0], lost.astype(int), [0]]))
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def test_gilbert_elliott_mean_loss_and_bursts():
    n = 100_000
    spec = GilbertElliottLoss(model="gilbert-elliott", p_good_to_bad_pct=2, r_bad_to_good_pct=25)
    lost = loss_sequence(spec, n)
    share = spec.mean_loss_pct / 100
    # Markov dependence inflates the variance of the mean by (1 + lambda) / (1 - lambda).
    lam = 1 - 0.02 - 0.25
    standard_error = math.sqrt(share * (1 - share) * (1 + lam) / (1 - lam) / n)
    assert lost.mean() == pytest.approx(share, abs=4 * standard_error)
    bursts = burst_lengths(lost)
    assert bursts.mean() == pytest.approx(1 / 0.25, rel=0.08)   # ~4 standard errors
    assert bursts.mean() > 3 * (1 / (1 - share))   # Bernoulli at the same rate: ~1.08


def test_gilbert_elliott_partial_losses_match_stationary_rate():
    n = 100_000
    spec = GilbertElliottLoss(model="gilbert-elliott", p_good_to_bad_pct=5, r_bad_to_good_pct=20,
                              loss_in_bad_pct=60, loss_in_good_pct=1)
    lost = loss_sequence(spec, n, seed=3)
    assert lost.mean() * 100 == pytest.approx(spec.mean_loss_pct, abs=0.8)   # 12.8 %


# --- token bucket -------------------------------------------------------------------

def test_megabyte_at_10_mbps_takes_its_serialization_time():
    spec = DirectionSpec(bandwidth_mbps=10)
    rate = spec.rate_bytes_per_s
    burst = default_burst_bytes(rate)
    delivery = DirectionLink(spec, rng(), srtt_s=0.01).transit(5.0, 1_000_000)
    elapsed = delivery.deliver_at_s - 5.0
    assert elapsed == pytest.approx((wire_bytes(1_000_000) - burst) / rate, rel=1e-9)
    assert elapsed == pytest.approx(0.8 - burst / rate, rel=0.05)    # 0.834 s with headers
    assert elapsed == pytest.approx(serialization_delay_s(wire_bytes(1_000_000), rate), rel=1e-9)


def test_back_to_back_small_messages_queue_and_spaced_ones_do_not():
    rate = 125_000.0   # 1 Mbps
    bucket = TokenBucket(rate, burst_bytes=3028)
    departures = [bucket.departure_s(0.0, 1066) for _ in range(10)]
    assert departures[:2] == [0.0, 0.0]
    assert np.all(np.diff(departures[1:]) > 0)
    assert departures[-1] == pytest.approx((10 * 1066 - 3028) / rate)
    later = departures[-1] + 1.0      # the bucket has refilled
    assert bucket.departure_s(later, 1066) == later


def test_serialization_delay_agrees_with_a_full_bucket():
    rate = 2_500_000.0
    for burst in (1514, 3028, 50_000):
        for nbytes in (100, 1514, 3028, 10_000, 1_000_000):
            bucket = TokenBucket(rate, burst)
            assert bucket.departure_s(3.0, nbytes) - 3.0 == pytest.approx(
                serialization_delay_s(nbytes, rate, burst), abs=1e-12)
    assert serialization_delay_s(10**9, math.inf) == 0.0
    assert TokenBucket(math.inf, 0).departure_s(1.5, 10**9) == 1.5


# --- retransmission -----------------------------------------------------------------

def test_loss_delays_delivery_by_rto_doubling_per_loss():
    delay_s, srtt_s = 0.02, 0.04
    rto = retransmission_timeout_s(srtt_s)
    assert rto >= 0.2
    link = DirectionLink(DirectionSpec(delay_ms=20, loss=RandomLoss(pct=30)), rng(), srtt_s)
    seen = set()
    for i in range(3000):
        t_send = 1000.0 * i              # far apart: no message waits for another
        delivery = link.transit(t_send, 200)
        k = delivery.lost_packets
        assert delivery.deliver_at_s - t_send == pytest.approx(delay_s + rto * (2**k - 1))
        seen.add(k)
    assert {0, 1, 2, 3} <= seen
    assert link.packets_lost / link.packets_sent == pytest.approx(0.30, abs=0.02)


@pytest.mark.parametrize(("pct", "payload"), [(2.0, 200), (10.0, 200), (5.0, 3 * MSS_BYTES)])
def test_the_mean_resend_wait_is_what_the_link_model_delivers(pct, payload):
    """The closed form the cycle-time models add for loss, against the model's own resends."""
    state = LinkState(uplink=DirectionSpec(delay_ms=25, loss=RandomLoss(pct=pct)),
                      downlink=DirectionSpec(delay_ms=25))
    rto = retransmission_timeout_s(*tcp_estimates(state))
    link = DirectionLink(state.uplink, rng(), *tcp_estimates(state))
    waits = np.array([link.transit(1000.0 * i, payload).deliver_at_s - 1000.0 * i - 0.025
                      for i in range(SAMPLES)])
    expected = expected_loss_wait_s(packet_count(payload), pct, rto)
    assert abs(waits.mean() - expected) < 3 * stats.sem(waits)
    assert transfer_s(state, "uplink", payload) == pytest.approx(
        transmit_s(state.uplink, payload) + expected)
    assert transfer_s(state, "downlink", payload) == transmit_s(state.downlink, payload)
    assert math.isinf(expected_loss_wait_s(1, 50.0, rto))


def test_consecutive_losses_are_capped():
    link = DirectionLink(DirectionSpec(loss=RandomLoss(pct=100)), rng(), srtt_s=0.1)
    delivery = link.transit(0.0, 100)
    rto = retransmission_timeout_s(0.1)
    expected = sum(min(rto * 2**k, RTO_MAX_S) for k in range(MAX_CONSECUTIVE_LOSSES))
    assert delivery.lost_packets == MAX_CONSECUTIVE_LOSSES
    assert delivery.deliver_at_s == pytest.approx(expected)
    assert (link.packets_sent, link.packets_lost) == (MAX_CONSECUTIVE_LOSSES + 1, MAX_CONSECUTIVE_LOSSES)


# --- ordering and determinism -------------------------------------------------------

def test_delivery_stays_in_order_under_heavy_jitter():
    spec = DirectionSpec(delay_ms=50, jitter_ms=40, jitter_distribution="normal",
                         allow_reordering=True, loss=RandomLoss(pct=2))
    link = DirectionLink(spec, rng(), srtt_s=0.1)
    sends = np.arange(5000) * 0.001
    deliveries = [link.transit(t, 3000) for t in sends]
    times = np.array([d.deliver_at_s for d in deliveries])
    assert np.all(np.diff(times) >= 0)
    assert np.all(times >= sends)
    # The raw per-packet delays would have reordered most neighbours: order comes from TCP.
    raw = delays_ms(spec, n=5000) / 1000 + sends
    assert np.mean(np.diff(raw) < 0) > 0.4


def run_link(seed: int) -> list:
    spec = DirectionSpec(delay_ms=30, jitter_ms=10, jitter_distribution="paretonormal",
                         delay_correlation_pct=25, bandwidth_mbps=20,
                         loss=GilbertElliottLoss(model="gilbert-elliott", p_good_to_bad_pct=3,
                                                 r_bad_to_good_pct=30))
    link = DirectionLink(spec, rng(seed), srtt_s=0.06)
    return [link.transit(0.01 * i, 100 + 37 * i) for i in range(500)]


def test_same_seed_gives_identical_deliveries():
    assert run_link(11) == run_link(11)
    assert run_link(11) != run_link(12)


# --- schedule changes ---------------------------------------------------------------

def test_update_changes_delay_and_keeps_the_queue():
    spec = DirectionSpec(delay_ms=10, bandwidth_mbps=8)      # 1 MB/s
    link = DirectionLink(spec, rng(), srtt_s=0.02)
    assert link.transit(0.0, 100).deliver_at_s == 0.01
    backlog = link.transit(1.0, 1_000_000)                   # drains until ~2.04 s
    link.update(spec.model_copy(update={"delay_ms": 50}), srtt_s=0.1)
    queued = link.transit(1.5, 100)
    assert queued.deliver_at_s == pytest.approx(backlog.deliver_at_s - 0.01 + 0.05 + 166 / 1e6)
    assert link.transit(10.0, 100).deliver_at_s == pytest.approx(10.05)


def test_update_keeps_the_jitter_correlation_state():
    spec = DirectionSpec(delay_ms=100, jitter_ms=20, jitter_distribution="normal",
                         delay_correlation_pct=90)
    steady, updated = JitterSource(spec, rng(5)), JitterSource(spec, rng(5))
    for _ in range(100):
        assert steady.sample_ms() == updated.sample_ms()
    updated.update(spec.model_copy(update={"delay_ms": 150}))
    for _ in range(100):
        assert updated.sample_ms() == pytest.approx(steady.sample_ms() + 50)


def test_update_keeps_the_loss_chain_state():
    entering_bad = GilbertElliottLoss(model="gilbert-elliott", p_good_to_bad_pct=100,
                                      r_bad_to_good_pct=1)
    no_new_bursts = entering_bad.model_copy(update={"p_good_to_bad_pct": 0.0})
    process = LossProcess(entering_bad, rng())
    process.lost()                       # good -> bad
    process.update(no_new_bursts)
    assert sum(process.lost() for _ in range(20)) >= 15   # still inside the burst
    assert not any(LossProcess(no_new_bursts, rng()).lost() for _ in range(1000))
