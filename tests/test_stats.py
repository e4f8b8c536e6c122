import math

import numpy as np
import pytest

from validation.stats import (binomial_interval, bootstrap_interval, clustered_percentile_interval,
                              median_ratio_interval, percentile_interval, percentiles,
                              prediction_verdict, rate_ratio_interval, ratio_interval,
                              relative_error, separated)


def test_binomial_interval_known_values():
    low, high = binomial_interval(5, 100)
    # Reference Clopper-Pearson values for 5/100 at 95%.
    assert low == pytest.approx(0.016431, abs=1e-5)
    assert high == pytest.approx(0.112836, abs=1e-5)


def test_binomial_interval_edges():
    low, high = binomial_interval(0, 50)
    assert low == 0.0 and 0 < high < 0.1
    low, high = binomial_interval(50, 50)
    assert 0.9 < low < 1.0 and high == 1.0
    assert binomial_interval(0, 0) == (0.0, 1.0)


def test_binomial_interval_narrows_with_confidence_and_trials():
    wide = binomial_interval(30, 100, confidence=0.99)
    narrow = binomial_interval(30, 100, confidence=0.90)
    assert wide[0] < narrow[0] < 0.3 < narrow[1] < wide[1]
    few_low, few_high = binomial_interval(30, 100)
    many_low, many_high = binomial_interval(300, 1000)
    assert many_high - many_low < few_high - few_low


@pytest.mark.parametrize(
    "successes, trials, confidence",
    [(-1, 10, 0.95), (11, 10, 0.95), (1, -1, 0.95), (1, 10, 1.0), (1, 10, 0.0)],
)
def test_binomial_interval_rejects_bad_input(successes, trials, confidence):
    with pytest.raises(ValueError):
        binomial_interval(successes, trials, confidence)


def test_percentiles_default_keys_and_values():
    result = percentiles(range(1, 101))
    assert list(result) == ["p50", "p95", "p99"]
    assert result["p50"] == pytest.approx(50.5)
    assert result["p95"] == pytest.approx(95.05)
    assert result["p99"] == pytest.approx(99.01)


def test_percentiles_ignore_nan():
    assert percentiles([1.0, math.nan, 3.0], qs=(50,)) == {"p50": 2.0}


def test_percentiles_empty_or_all_nan_give_nan():
    for values in ([], [math.nan, math.nan], np.array([])):
        result = percentiles(values)
        assert list(result) == ["p50", "p95", "p99"]
        assert all(math.isnan(value) for value in result.values())


def test_percentiles_custom_quantiles_keys():
    result = percentiles(np.arange(11.0), qs=(0, 99.9, 100))
    assert result == pytest.approx({"p0": 0.0, "p99.9": 9.99, "p100": 10.0})


def test_percentiles_accept_generators():
    assert percentiles((x for x in [4.0, 2.0]), qs=(50,)) == {"p50": 3.0}


def test_relative_error():
    assert relative_error(110.0, 100.0) == pytest.approx(0.10)
    assert relative_error(90.0, 100.0) == pytest.approx(-0.10)
    assert relative_error(-2.0, -1.0) == pytest.approx(1.0)
    assert relative_error(0.0, 0.0) == 0.0
    assert relative_error(0.5, 0.0) == math.inf
    assert relative_error(-0.5, 0.0) == -math.inf


# ---- bootstrap intervals and what they allow -------------------------------------------------


def test_a_bootstrap_interval_is_the_same_for_the_same_rows_and_seed():
    rng = np.random.default_rng(7)
    tokens, seconds = rng.integers(20, 60, 12), rng.uniform(0.5, 2.0, 12)
    assert ratio_interval(tokens, seconds) == ratio_interval(tokens, seconds)
    assert ratio_interval(tokens, seconds, seed=1) != ratio_interval(tokens, seconds)


def test_a_ratio_interval_holds_the_pooled_ratio_and_is_exact_for_a_constant_one():
    assert ratio_interval([10, 40, 20], [1.0, 4.0, 2.0]) == pytest.approx((10.0, 10.0))
    rng = np.random.default_rng(3)
    tokens, seconds = rng.integers(10, 100, 30), rng.uniform(0.2, 3.0, 30)
    low, high = ratio_interval(tokens, seconds)
    assert low < tokens.sum() / seconds.sum() < high


def test_an_interval_narrows_with_more_rows():
    rng = np.random.default_rng(5)
    def width(rows):
        low, high = percentile_interval(rng.exponential(100.0, rows), 50)
        return high - low
    assert width(1000) < width(100) / 2 < width(10) / 4


def test_a_95_percent_interval_covers_the_true_median_about_95_percent_of_the_time():
    # 300 experiments of 60 exponential latencies, true median 100 ln 2
    rng = np.random.default_rng(11)
    truth = 100.0 * math.log(2.0)
    covered = [low <= truth <= high for low, high in
               (percentile_interval(rng.exponential(100.0, 60), 50, resamples=500)
                for _ in range(300))]
    assert 0.89 <= np.mean(covered) <= 0.99


def test_too_few_rows_give_no_interval_and_nans_are_ignored():
    assert all(math.isnan(b) for b in percentile_interval([5.0], 50))
    assert all(math.isnan(b) for b in ratio_interval([], []))
    assert all(math.isnan(b) for b in ratio_interval([3.0, 4.0], [0.0, 0.0]))
    assert percentile_interval([1.0, math.nan, 1.0, math.nan], 95) == (1.0, 1.0)
    with pytest.raises(ValueError):
        ratio_interval([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        bootstrap_interval(lambda draws: draws.sum(axis=1), 5, confidence=1.0)


def test_separated_is_non_overlap_and_unknown_without_bounds():
    assert separated((1.0, 2.0), (2.5, 3.0)) is True
    assert separated((2.5, 3.0), (1.0, 2.0)) is True
    assert separated((1.0, 2.6), (2.5, 3.0)) is False
    assert separated((1.0, 2.0), (math.nan, 3.0)) is None


def test_a_prediction_is_inside_above_or_below_the_measured_interval():
    assert prediction_verdict(10.0, (9.0, 11.0)) == "inside"
    assert prediction_verdict(9.0, (9.0, 11.0)) == "inside"
    assert prediction_verdict(12.0, (9.0, 11.0)) == "above"
    assert prediction_verdict(8.0, (9.0, 11.0)) == "below"
    assert prediction_verdict(math.nan, (9.0, 11.0)) is None
    assert prediction_verdict(10.0, (math.nan, math.nan)) is None


def test_a_rate_ratio_interval_holds_the_ratio_and_resamples_each_group_alone():
    tokens, seconds = [10, 40, 20, 30], [1.0, 4.0, 2.0, 3.0]     # 10 tokens/s in every row
    assert rate_ratio_interval(tokens, seconds, tokens, [s / 2 for s in seconds]) \
        == pytest.approx((0.5, 0.5))
    rng = np.random.default_rng(0)
    fast, slow = rng.normal(20, 2, 30), rng.normal(10, 1, 40)
    low, high = rate_ratio_interval(fast, np.ones(30), slow, np.ones(40))
    assert low < fast.mean() / slow.mean() < high and 1.7 < low and high < 2.3
    assert np.isnan(rate_ratio_interval([1], [1], [1, 2], [1, 1])[0])


def test_a_paired_rate_ratio_interval_cancels_what_the_rows_share():
    """Rows whose rates swing together (one prompt easy for both strategies, another hard):
    the paired interval is far tighter than resampling each group alone, and holds the
    ratio."""
    rng = np.random.default_rng(2)
    seconds = rng.uniform(0.5, 3.0, 20)
    tokens = 100.0 * np.ones(20)
    faster = seconds / 1.1 * rng.normal(1.0, 0.01, 20)
    alone = rate_ratio_interval(tokens, faster, tokens, seconds)
    paired = rate_ratio_interval(tokens, faster, tokens, seconds, paired=True)
    assert paired[0] < 1.1 < paired[1] and alone[0] < paired[0] and paired[1] < alone[1]
    assert paired[1] - paired[0] < 0.2 * (alone[1] - alone[0])
    with pytest.raises(ValueError, match="as many rows"):
        rate_ratio_interval(tokens, seconds, tokens[:5], seconds[:5], paired=True)


def test_a_median_ratio_shrugs_off_stalled_rows_that_move_a_ratio_of_sums():
    """Two samples of the same per-token time, 1.1 times apart, and three rows of one of them
    stalled 20 times longer (the host, not the path measured): the median ratio's interval
    holds 1.1, the ratio of sums reads far above it."""
    rng = np.random.default_rng(1)
    slow, fast = 1.1 * rng.lognormal(0.0, 0.1, 60), rng.lognormal(0.0, 0.1, 60)
    slow[:3] *= 20.0
    low, high = median_ratio_interval(slow, fast)
    assert low < 1.1 < high and high - low < 0.15
    assert slow.sum() / fast.sum() > 1.9
    assert all(math.isnan(v) for v in median_ratio_interval([1.0], fast))   # one row: none


def test_a_clustered_percentile_interval_is_the_pooled_percentile_of_whole_clusters_drawn():
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 9, size=12)
    clusters = np.repeat([f"q{i}" for i in range(12)], sizes)
    values = rng.exponential(50.0, size=clusters.size)
    values[4] = np.nan
    low, high = clustered_percentile_interval(values, clusters, 95, resamples=300, seed=7)
    # the same draws of whole clusters, each pooled and its percentile taken directly
    known = ~np.isnan(values)
    names = np.unique(clusters[known])
    draws = np.random.default_rng(7).integers(0, names.size, size=(300, names.size))
    figures = [np.percentile(np.concatenate([values[known & (clusters == names[j])] for j in draw]),
                             95, method="inverted_cdf") for draw in draws]
    assert (low, high) == tuple(np.percentile(figures, [2.5, 97.5]))
    assert low <= np.nanpercentile(values, 95) <= high


def test_a_clustered_interval_is_as_wide_as_its_clusters_disagree():
    # ten queries, each with 50 cycles of one RTT: 500 cycles, but only ten draws of the link
    clusters = np.repeat(np.arange(10), 50)
    values = np.repeat(np.arange(10.0, 110.0, 10.0), 50)
    clustered = clustered_percentile_interval(values, clusters, 50)
    per_cycle = percentile_interval(values, 50)
    assert clustered[0] <= 55.0 <= clustered[1]
    assert clustered[1] - clustered[0] >= 3 * (per_cycle[1] - per_cycle[0])
    assert all(math.isnan(b) for b in clustered_percentile_interval([5.0, 6.0], ["a", "a"], 50))
