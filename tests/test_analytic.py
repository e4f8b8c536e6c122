import math
from dataclasses import replace

import numpy as np
import pytest

from nasd.analytic import (
    ComputeTimes,
    acceptance_by_position_from_counts,
    acceptance_from_counts,
    acceptance_survival,
    accepted_distribution,
    cloud_only_throughput,
    crossover_rtt_s,
    cycle_time_distributed_s,
    cycle_time_local_s,
    decode_time_quantiles_s,
    distributed_throughputs,
    expected_tokens_per_cycle,
    optimal_k,
    pipelined_notice_times,
    pipelined_throughput,
    pipelined_tokens_per_epoch,
    position_counts,
    position_rates,
    query_decode_time_s,
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
    # a cycle's drafting pays its per-cycle part once, whatever K
    based = replace(TIMES, draft_base_s=0.0015)
    assert based.draft_time_s(np.array([1, 5])) == pytest.approx([0.0055, 0.0215])
    assert cycle_time_local_s(5, based) == pytest.approx(local + 0.0015)
    with pytest.raises(ValueError, match="draft_base_s"):
        replace(TIMES, draft_base_s=-0.001)


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
    # the stream as the cloud sent it, its serving loop between two tokens included
    timed = queries.assign(cloud_stream_s=[0.027, 0.0])
    assert measured_times(timed, cycles).edge.decode_time_s() == pytest.approx(0.0027)
    no_cloud_only = measured_times(queries[queries["strategy"] != "cloud-only"], cycles).edge
    assert no_cloud_only.decode_time_s() == pytest.approx(0.004)


def test_the_drafts_line_in_k_is_fitted_only_where_two_k_were_drafted_often():
    """The shipped pair on a CPU drafts at 1.5 ms a cycle plus 1.0 ms a token: the mean per
    drafted token (what a fixed K's own cycles give) is 2.5 ms at K = 1 and 1.3 ms at K = 5."""
    import pandas as pd
    from validation.prediction import LINE_MIN_CYCLES, draft_line
    rng = np.random.default_rng(0)
    k = pd.Series(np.repeat([1, 2, 3, 5], LINE_MIN_CYCLES))
    t_draft = 0.0015 + 0.001 * k + rng.normal(0.0, 1e-4, len(k))
    line = draft_line(k, t_draft)
    assert (line.intercept, line.slope) == pytest.approx((0.0015, 0.001), abs=1e-4)
    # one K drafted often, its last cycles shorter: the mean per token at that K
    capped = pd.Series([5] * 30 + [3, 2, 1])
    line = draft_line(capped, 0.0015 + 0.001 * capped)
    assert line.intercept == 0 and line.slope == pytest.approx((33 * 0.0015 + 0.156) / 156)


# --------------------------------------------------------------------------- acceptance by position

FALLING = (0.95, 0.85, 0.7, 0.55, 0.4, 0.3)


@pytest.mark.parametrize("acceptance", [0.0, 0.35, 0.7, 1.0])
def test_a_constant_profile_is_the_iid_process(acceptance):
    for k in (0, 1, 4, 12):
        iid = expected_tokens_per_cycle(acceptance, k)
        assert expected_tokens_per_cycle([acceptance] * k or [acceptance], k) == pytest.approx(iid)
        assert expected_tokens_per_cycle([acceptance], k) == pytest.approx(iid)  # last value on
        assert iid == pytest.approx(sum(acceptance ** j for j in range(k + 1)))
        law = accepted_distribution(acceptance, k)
        assert law.sum() == pytest.approx(1.0)
        assert law @ (np.arange(k + 1) + 1) == pytest.approx(iid)


def test_positions_past_the_profile_take_its_last_value():
    assert position_rates(FALLING, 9).tolist() == list(FALLING) + [0.3] * 3
    assert position_rates(FALLING, 2).tolist() == [0.95, 0.85]
    assert acceptance_survival((0.5, 1.0), 3).tolist() == [1.0, 0.5, 0.5, 0.5]
    with pytest.raises(ValueError):
        position_rates((0.5, 1.2), 2)
    with pytest.raises(ValueError):
        position_rates((), 2)


@pytest.mark.parametrize("k", [1, 3, 6, 10])
def test_expected_tokens_of_a_falling_profile_matches_monte_carlo(k):
    rng = np.random.default_rng(k)
    tests = rng.random((CYCLES, k)) < position_rates(FALLING, k)
    accepted = np.cumprod(tests, axis=1).sum(axis=1)
    tokens = accepted + 1
    assert abs(tokens.mean() - expected_tokens_per_cycle(FALLING, k)) \
        < 4 * tokens.std() / math.sqrt(CYCLES)
    # the law of the accepted count, and the estimate by position recovers the profile
    observed = np.bincount(accepted, minlength=k + 1) / CYCLES
    assert np.abs(observed - accepted_distribution(FALLING, k)).max() < 0.015
    reached, kept = position_counts(np.full(CYCLES, k), accepted)
    assert reached[0] == CYCLES and np.all(np.diff(reached) <= 0)
    estimate = acceptance_by_position_from_counts(reached, kept, prior_weight=0.0)
    truth = position_rates(FALLING, k)
    assert np.all(np.abs(np.array(estimate) - truth) < 4 * np.sqrt(truth * (1 - truth) / reached))
    # a falling profile commits fewer tokens than the i.i.d. rate of its first draft
    assert (expected_tokens_per_cycle(FALLING, k) < expected_tokens_per_cycle(FALLING[0], k)) \
        == (k > 1)


def test_position_counts_and_the_pooled_rate_agree():
    drafted, accepted = [3, 3, 5, 2, 4], [3, 0, 2, 1, 4]
    reached, kept = position_counts(drafted, accepted)
    assert reached.tolist() == [5, 4, 3, 1, 0]     # position i tested: drafted >= i, i-1 kept
    assert kept.tolist() == [4, 3, 2, 1, 0]
    rejections = sum(a < d for d, a in zip(drafted, accepted))
    assert kept.sum() / reached.sum() == acceptance_from_counts(sum(accepted), rejections)
    assert acceptance_by_position_from_counts(reached, kept, prior_weight=0.0) \
        == (0.8, 0.75, 2 / 3, 1.0)                 # position 5 never tested
    # shrinkage pulls each position toward the pooled rate, the less the more it was seen
    shrunk = acceptance_by_position_from_counts(reached, kept, pooled=0.5, prior_weight=4.0)
    assert shrunk == pytest.approx(((4 + 2) / 9, (3 + 2) / 8, (2 + 2) / 7, (1 + 2) / 5))
    assert acceptance_by_position_from_counts([0.0], [0.0]) == ()


def test_empirical_bayes_pools_an_iid_pair_and_keeps_a_falling_one():
    rng = np.random.default_rng(3)
    for profile, pooled_out in ((0.7, True), (FALLING, False)):
        tests = rng.random((3000, 6)) < position_rates(profile, 6)
        counts = position_counts(np.full(3000, 6), np.cumprod(tests, axis=1).sum(axis=1))
        estimate = np.array(acceptance_by_position_from_counts(*counts))
        if pooled_out:
            assert np.ptp(estimate) < 0.02
        else:
            assert np.abs(estimate - FALLING).max() < 0.04


@pytest.mark.parametrize("acceptance", [0.7, FALLING])
def test_a_long_query_decodes_at_the_steady_state_rate(acceptance):
    cycle_s = lambda k: cycle_time_distributed_s(k, TIMES, 0.05)  # noqa: E731
    for k in (1, 5, 15):
        steady = throughput_tokens_per_s(acceptance, k, cycle_s(k))
        long_rate = 8000 / query_decode_time_s(acceptance, k, 8000, cycle_s)
        assert long_rate == pytest.approx(steady, rel=0.005)
    # one token left: one cycle of no drafts; k = 0 is plain decoding through the verifier
    assert query_decode_time_s(acceptance, 5, 1, cycle_s) == pytest.approx(cycle_s(0))
    assert query_decode_time_s(acceptance, 0, 7, cycle_s) == pytest.approx(7 * cycle_s(0))


def test_the_finite_horizon_matches_a_simulated_budget():
    """Monte Carlo of the edge's loop: k = min(K, remaining - 1), falling profile."""
    rng, k, budget, runs = np.random.default_rng(8), 6, 25, 4000
    cycle_s = lambda d: 0.01 + d * 0.001  # noqa: E731
    totals = []
    for _ in range(runs):
        remaining, seconds = budget, 0.0
        while remaining > 0:
            depth = min(k, remaining - 1)
            tests = rng.random(depth) < position_rates(FALLING, depth)
            remaining -= int(np.cumprod(tests).sum()) + 1
            seconds += cycle_s(depth)
        totals.append(seconds)
    expected = query_decode_time_s(FALLING, k, budget, cycle_s)
    assert abs(np.mean(totals) - expected) < 4 * np.std(totals) / math.sqrt(runs)


def simulated_decode_times(acceptance, k, tokens, rtt_s, rtt_sd_s, queries, rng):
    """Seconds to commit ``tokens`` tokens in each of ``queries`` simulated queries, the
    edge's loop (k = min(K, remaining - 1)), each cycle's RTT gamma-distributed."""
    remaining, seconds = np.full(queries, tokens), np.zeros(queries)
    shape = (rtt_s / rtt_sd_s) ** 2
    while (active := remaining > 0).any():
        depth = np.clip(remaining - 1, 0, k)
        tests = rng.random((queries, k)) < acceptance
        kept = np.minimum(np.cumprod(tests, axis=1).sum(axis=1), depth)
        rtt = rng.gamma(shape, rtt_s / shape, queries)
        cycle = np.array([cycle_time_local_s(int(d), TIMES) for d in depth]) + rtt
        seconds += np.where(active, cycle, 0.0)
        remaining -= np.where(active, kept + 1, 0)
    return seconds


@pytest.mark.parametrize("k, rtt_sd_s, quantile", [(3, 0.02, 0.95), (10, 0.005, 0.95),
                                                    (5, 0.03, 0.5)])
def test_the_tail_objective_matches_simulated_queries(k, rtt_sd_s, quantile):
    """The renewal CLT's percentile of a query's decode time against the edge's loop."""
    times = simulated_decode_times(0.7, k, 64, 0.05, rtt_sd_s, 4000, np.random.default_rng(k))
    predicted = decode_time_quantiles_s(0.7, TIMES, 0.05, rtt_sd_s ** 2, [k], 64, quantile)[0]
    assert predicted == pytest.approx(np.quantile(times, quantile), rel=0.04)


def test_the_tail_objectives_median_is_the_mean_objective():
    depths = range(1, 16)
    medians = decode_time_quantiles_s(FALLING, TIMES, 0.08, 0.01 ** 2, depths, 200, 0.5)
    assert medians == pytest.approx(200 / distributed_throughputs(FALLING, TIMES, 0.08, depths))


def test_the_tail_prefers_steadier_cycles_and_jitter_pushes_back_to_longer_ones():
    """At the 95th percentile, fewer drafts (tau less variable) than the mean's K; the RTT's
    own spread favours fewer, longer cycles (fewer round trips to draw)."""
    depths = range(1, 16)
    mean_k = depths[int(np.argmax(distributed_throughputs(0.7, TIMES, 0.2, depths)))]
    tail_k = {sd: depths[int(np.argmin(decode_time_quantiles_s(0.7, TIMES, 0.2, sd ** 2, depths,
                                                               64, 0.95)))]
              for sd in (0.0, 0.2)}
    assert tail_k[0.0] < mean_k
    assert tail_k[0.0] < tail_k[0.2] <= mean_k
    with pytest.raises(ValueError, match="quantile"):
        decode_time_quantiles_s(0.7, TIMES, 0.2, 0.0, depths, 64, 1.0)


# ---- draft-ahead: pipelined blocks -------------------------------------------------------

@pytest.mark.parametrize("k", [1, 3, 8])
def test_an_iid_epoch_commits_one_over_one_minus_a_whatever_k(k):
    assert pipelined_tokens_per_epoch(0.7, k) == pytest.approx(1 / 0.3)
    assert pipelined_tokens_per_epoch(1.0, k) == math.inf


def test_an_epoch_of_a_falling_profile_matches_monte_carlo():
    """Blocks of k drafts, each drafted from position 1 of the profile, until the first
    rejection: its accepted drafts and the correction."""
    profile, k, epochs = (0.9, 0.8, 0.6), 3, 20_000
    rng = np.random.default_rng(3)
    rates = np.array(profile)
    tokens = np.zeros(epochs)
    for epoch in range(epochs):
        while True:
            accepted = int(np.cumprod(rng.random(k) < rates).sum())
            tokens[epoch] += accepted
            if accepted < k:
                tokens[epoch] += 1
                break
    error = tokens.std() / math.sqrt(epochs)
    assert abs(tokens.mean() - pipelined_tokens_per_epoch(profile, k)) < 4 * error


def test_pipelined_throughput_at_depth_zero_is_the_plain_cycle():
    for k in (1, 4, 9):
        plain = throughput_tokens_per_s(0.7, k, cycle_time_distributed_s(k, TIMES, 0.1, 0.001))
        assert pipelined_throughput(0.7, k, 0, TIMES, 0.1, 0.001) == plain


@pytest.mark.parametrize("k, depth, rtt_s", [(3, 1, 0.1), (5, 2, 0.2), (2, 3, 0.3)])
def test_while_the_window_does_not_cover_a_round_trip_verdicts_come_a_period_apart(k, depth,
                                                                                  rtt_s):
    d, c = k * TIMES.draft_token_s, TIMES.verify_time_s(k)
    period, spacing = d + c + rtt_s, max(d, c)
    assert (depth + 1) * spacing <= period
    held = pipelined_notice_times(d, c, rtt_s, depth, 5 * (depth + 1))
    expected = [period + (j % (depth + 1)) * spacing + (j // (depth + 1)) * period
                for j in range(len(held))]
    assert held == pytest.approx(expected)


def test_a_deep_window_streams_at_the_slower_of_drafting_and_verifying():
    d, c = 0.012, 0.031
    held = pipelined_notice_times(d, c, 0.05, 20, 60)
    assert np.diff(held[25:]) == pytest.approx(np.full(34, c))
    held = pipelined_notice_times(0.05, c, 0.05, 20, 60)   # drafting is the slower
    assert np.diff(held) == pytest.approx(np.full(59, 0.05))


@pytest.mark.parametrize("acceptance, k, depth", [(0.7, 3, 1), (0.9, 2, 2), (0.97, 1, 4)])
def test_pipelined_throughput_matches_simulated_epochs(acceptance, k, depth):
    """Epochs drawn block by block (each kept whole with probability a^k), each lasting until
    the edge holds its last verdict: tokens over time, against the closed form and its
    periodic tail."""
    rtt_s = 0.1
    held = pipelined_notice_times(k * TIMES.draft_token_s, TIMES.verify_time_s(k), rtt_s, depth,
                                  2000)
    rng = np.random.default_rng(k)
    most = int(np.ceil(np.log(1e-7) / np.log(acceptance ** k)))   # blocks an epoch may reach
    tests = rng.random((20_000, most * k)) < acceptance            # the epochs' drafts in order
    accepted = np.cumprod(tests, axis=1).sum(axis=1)               # before the first rejection
    blocks = accepted // k                                         # kept whole
    tokens, seconds = (accepted + 1).sum(), held[blocks].sum()
    assert tokens / seconds == pytest.approx(
        pipelined_throughput(acceptance, k, depth, TIMES, rtt_s), rel=0.02)


def test_draft_ahead_gains_most_where_acceptance_is_high():
    """At RTT 100 ms: the best pipelined K over the best plain K, D = 2."""
    def gain(acceptance):
        plain = max(throughput_tokens_per_s(acceptance, k, cycle_time_distributed_s(
            k, TIMES, 0.1)) for k in range(1, 16))
        return max(pipelined_throughput(acceptance, k, 2, TIMES, 0.1) for k in range(1, 16)) \
            / plain
    assert 1.0 < gain(0.7) < gain(0.9)


def test_a_block_the_draft_ended_with_its_eos_counts_the_tokens_its_answer_had_left():
    """The answer's end is the text's: such a block commits what was left (no bonus when kept
    whole), not E[tau(k)] on the acceptance of the blocks before it; its time is modeled."""
    from validation.prediction import HostTimes, predicted_tokens_per_s
    from shaping.profile import DirectionSpec, LinkState
    host = HostTimes(edge=TIMES, cloud=TIMES)
    link = LinkState(uplink=DirectionSpec(delay_ms=10.0), downlink=DirectionSpec(delay_ms=10.0))
    cycle_s = lambda k: cycle_time_distributed_s(k, TIMES, 0.020)  # noqa: E731
    ended = predicted_tokens_per_s("fixed-k", [5] * 8, 0.7, host, link, answer_ends=[(3, 3)])
    expected = (8 * expected_tokens_per_cycle(0.7, 5) + 3) / (8 * cycle_s(5) + cycle_s(3))
    assert ended == pytest.approx(expected)
    assert predicted_tokens_per_s("fixed-k", [5] * 8 + [3], 0.7, host, link) == pytest.approx(
        (8 * expected_tokens_per_cycle(0.7, 5) + expected_tokens_per_cycle(0.7, 3))
        / (8 * cycle_s(5) + cycle_s(3)))
