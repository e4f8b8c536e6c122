import math

import numpy as np
import pytest

from nasd.analytic import (
    ComputeTimes,
    acceptance_from_counts,
    cloud_only_throughput,
    crossover_rtt_s,
    cycle_time_distributed_s,
    cycle_time_local_s,
    expected_tokens_per_cycle,
    optimal_k,
    throughput_tokens_per_s,
)

# Roughly a 1.5B draft and a 7B target on one GPU.
TIMES = ComputeTimes(draft_token_s=0.004, verify_base_s=0.020, verify_per_token_s=0.0005)
CYCLES = 20_000


def simulate_accepted_per_cycle(acceptance, k, cycles, rng):
    """Accepted drafts per cycle: the run of leading successes among k Bernoulli(a) tests."""
    tests = rng.random((cycles, k)) < acceptance
    return np.cumprod(tests, axis=1).sum(axis=1)


@pytest.mark.parametrize("acceptance, k", [(0.5, 1), (0.8, 5), (0.9, 10), (0.3, 3)])
def test_expected_tokens_matches_monte_carlo(acceptance, k):
    tokens = simulate_accepted_per_cycle(acceptance, k, CYCLES, np.random.default_rng(k)) + 1
    standard_error = tokens.std() / math.sqrt(CYCLES)
    assert abs(tokens.mean() - expected_tokens_per_cycle(acceptance, k)) < 4 * standard_error


def test_expected_tokens_matches_closed_form():
    acceptance, k = 0.7, 6
    closed_form = (1 - acceptance ** (k + 1)) / (1 - acceptance)
    assert expected_tokens_per_cycle(acceptance, k) == pytest.approx(closed_form)


def test_expected_tokens_limits():
    assert expected_tokens_per_cycle(0.0, 7) == 1.0
    assert expected_tokens_per_cycle(1.0, 7) == 8.0
    assert expected_tokens_per_cycle(0.6, 0) == 1.0
    assert expected_tokens_per_cycle(1 - 1e-12, 7) == pytest.approx(8.0)


def test_expected_tokens_rejects_bad_input():
    with pytest.raises(ValueError, match="acceptance"):
        expected_tokens_per_cycle(1.2, 3)
    with pytest.raises(ValueError, match="k"):
        expected_tokens_per_cycle(0.5, -1)


@pytest.mark.parametrize("acceptance, k", [(0.6, 3), (0.85, 8)])
def test_acceptance_mle_recovers_simulated_rate(acceptance, k):
    accepted = simulate_accepted_per_cycle(acceptance, k, CYCLES, np.random.default_rng(42))
    rejections = int(np.count_nonzero(accepted < k))
    estimate = acceptance_from_counts(int(accepted.sum()), rejections)
    assert estimate == pytest.approx(acceptance, rel=0.02)


def test_acceptance_mle_edge_cases():
    assert acceptance_from_counts(10, 0) == 1.0
    assert acceptance_from_counts(0, 4) == 0.0
    assert math.isnan(acceptance_from_counts(0, 0))
    with pytest.raises(ValueError, match="non-negative"):
        acceptance_from_counts(-1, 2)


def test_compute_times():
    assert TIMES.verify_time_s(4) == pytest.approx(0.020 + 0.0005 * 5)
    assert TIMES.decode_time_s() == pytest.approx(0.0205)
    with pytest.raises(ValueError, match="draft_token_s"):
        ComputeTimes(draft_token_s=-1.0, verify_base_s=0.02, verify_per_token_s=0.0)
    with pytest.raises(ValueError, match="positive"):
        ComputeTimes(draft_token_s=0.01, verify_base_s=0.0, verify_per_token_s=0.0)


def test_cycle_times():
    local = cycle_time_local_s(5, TIMES)
    assert local == pytest.approx(5 * 0.004 + 0.020 + 0.0005 * 6)
    assert cycle_time_distributed_s(5, TIMES, 0.050, 0.002, 0.001) == pytest.approx(local + 0.053)
    with pytest.raises(ValueError, match="rtt_s"):
        cycle_time_distributed_s(5, TIMES, -0.01)


def test_throughput():
    assert throughput_tokens_per_s(1.0, 3, 0.5) == pytest.approx(8.0)
    assert cloud_only_throughput(TIMES) == pytest.approx(1 / 0.0205)
    with pytest.raises(ValueError, match="cycle_time_s"):
        throughput_tokens_per_s(0.5, 3, 0.0)


@pytest.mark.parametrize("transmit_up_s, transmit_down_s", [(0.0, 0.0), (0.003, 0.001)])
def test_throughput_at_crossover_equals_cloud_only(transmit_up_s, transmit_down_s):
    acceptance, k = 0.8, 5
    rtt_s = crossover_rtt_s(acceptance, k, TIMES, transmit_up_s, transmit_down_s)
    assert rtt_s > 0
    cycle_s = cycle_time_distributed_s(k, TIMES, rtt_s, transmit_up_s, transmit_down_s)
    assert throughput_tokens_per_s(acceptance, k, cycle_s) == pytest.approx(
        cloud_only_throughput(TIMES)
    )
    slower_cycle_s = cycle_time_distributed_s(
        k, TIMES, rtt_s + 0.001, transmit_up_s, transmit_down_s
    )
    assert throughput_tokens_per_s(acceptance, k, slower_cycle_s) < cloud_only_throughput(TIMES)


def test_crossover_is_negative_when_speculation_never_pays():
    assert crossover_rtt_s(0.1, 5, TIMES) < 0


def test_optimal_k_is_the_argmax():
    acceptance, rtt_s = 0.8, 0.040
    best = optimal_k(acceptance, TIMES, rtt_s, k_max=20)
    throughputs = [
        throughput_tokens_per_s(acceptance, k, cycle_time_distributed_s(k, TIMES, rtt_s))
        for k in range(1, 21)
    ]
    assert best == 1 + int(np.argmax(throughputs))


def test_optimal_k_increases_with_rtt():
    rtts_s = np.linspace(0.0, 0.500, 101)
    depths = [optimal_k(0.8, TIMES, rtt_s) for rtt_s in rtts_s]
    assert all(earlier <= later for earlier, later in zip(depths, depths[1:]))
    assert depths[-1] > depths[0]


def test_optimal_k_pays_for_transmission():
    free = optimal_k(0.9, TIMES, 0.020)
    costly = optimal_k(0.9, TIMES, 0.020, transmit_s=lambda k: 0.010 * k)
    assert costly < free


def test_optimal_k_with_perfect_acceptance_and_free_drafts_is_k_max():
    free_drafts = ComputeTimes(draft_token_s=0.0, verify_base_s=0.02, verify_per_token_s=0.0)
    assert optimal_k(1.0, free_drafts, 0.1, k_max=12) == 12


def test_a_measured_decode_step_replaces_verify_of_zero_drafts():
    line_only = ComputeTimes(draft_token_s=0.001, verify_base_s=0.0035, verify_per_token_s=0.0005)
    staged = ComputeTimes(draft_token_s=0.001, verify_base_s=0.0035, verify_per_token_s=0.0005,
                          decode_s=0.0025)
    assert line_only.decode_time_s() == pytest.approx(0.004)
    assert cloud_only_throughput(staged) == pytest.approx(400.0)
    # the faster cloud-only step moves the reversal down by E[tau] * 1.5 ms
    shift = crossover_rtt_s(0.7, 3, line_only) - crossover_rtt_s(0.7, 3, staged)
    assert shift == pytest.approx(expected_tokens_per_cycle(0.7, 3) * 0.0015)
    with pytest.raises(ValueError, match="decode_s"):
        ComputeTimes(draft_token_s=0.001, verify_base_s=0.0, verify_per_token_s=0.0, decode_s=-1)


def test_measured_times_take_each_stage_from_its_own_records():
    import pandas as pd
    from validation.prediction import measured_times
    cycles = pd.DataFrame({"k": [3, 5, 5, 1], "t_draft": [0.003, 0.005, 0.005, 0.001],
                           "t_verify": [0.0055, 0.0065, 0.0065, 0.0045]})
    queries = pd.DataFrame({"strategy": ["cloud-only", "fixed-k"], "n_tokens": [11, 11],
                            "cloud_compute_s": [0.035, 0.02], "cloud_first_s": [0.01, 0.01]})
    times = measured_times(queries, cycles).edge
    assert times.draft_token_s == pytest.approx(0.001)
    assert (times.verify_base_s, times.verify_per_token_s) == pytest.approx((0.0035, 0.0005))
    assert times.decode_time_s() == pytest.approx(0.0025)     # cloud-only's 10 streamed steps
    no_cloud_only = measured_times(queries[queries["strategy"] != "cloud-only"], cycles).edge
    assert no_cloud_only.decode_time_s() == pytest.approx(0.004)
