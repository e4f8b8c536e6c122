"""Small statistics helpers shared by the metrics and the validation code.

Owns: exact binomial confidence intervals (loss rates, acceptance rates),
the P50/P95/P99 summaries every report uses, and relative error against an
expected value.  Pure: no I/O, no clocks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy.stats import binomtest


def binomial_interval(
    successes: int, trials: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Clopper-Pearson (exact) interval for a success probability.

    With no trials nothing is known, so the interval is all of [0, 1].
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return 0.0, 1.0
    interval = binomtest(successes, trials).proportion_ci(
        confidence_level=confidence, method="exact"
    )
    return float(interval.low), float(interval.high)


def percentiles(
    values: Iterable[float], qs: Sequence[float] = (50, 95, 99)
) -> dict[str, float]:
    """Percentiles keyed 'p50', 'p95', ... (linear interpolation).

    NaNs are ignored; when nothing else is left, every percentile is NaN.
    """
    samples = np.asarray(list(values), dtype=np.float64)
    samples = samples[~np.isnan(samples)]
    keys = [f"p{q:g}" for q in qs]
    if samples.size == 0:
        return {key: math.nan for key in keys}
    return {key: float(value) for key, value in zip(keys, np.percentile(samples, qs))}


def relative_error(measured: float, expected: float) -> float:
    """(measured - expected) / expected, signed.

    Against an expected zero, a zero measurement is exact (0.0) and anything
    else is infinitely off (signed infinity).
    """
    if expected == 0:
        return 0.0 if measured == 0 else math.copysign(math.inf, measured)
    return (measured - expected) / expected
