import math

import numpy as np
import pytest

from validation.stats import binomial_interval, percentiles, relative_error


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
