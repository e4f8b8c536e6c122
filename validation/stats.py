"""Small statistics helpers shared by the metrics and the validation code.

Owns: exact binomial confidence intervals (loss rates, acceptance rates),
the P50/P95/P99 summaries every report uses, relative error against an
expected value, and the bootstrap intervals of measured figures with the
rule that says what they allow one to conclude.  Pure: no I/O, no clocks.

Intervals of measured figures (``bootstrap_interval``, ``ratio_interval``,
``percentile_interval``) are seeded percentile bootstraps over rows (one row
a query of one repetition): the rows are drawn with replacement as often as
there are rows, ``BOOTSTRAP_RESAMPLES`` times from ``BOOTSTRAP_SEED``, the
figure is recomputed on each draw, and the interval is the central
``confidence`` share of those figures.  Same rows, same interval.  Fewer than
``MIN_ROWS`` rows give no interval (NaN bounds).  Caveats: repetitions of one
prompt count as rows of their own, so few prompts repeated often speak about
those prompts; and a tail percentile's interval cannot reach past the largest
row measured, so a P95 or P99 of a few dozen queries is bounded too tightly
from above.

What intervals allow one to conclude (``separated``, ``prediction_verdict``):
two figures differ conclusively only when their intervals do not overlap;
overlapping intervals mean "too close to call with these rows", not "equal".
For two 95 % intervals of similar width, non-overlap is stricter than a 5 %
test of the difference (about 0.6 %), so a call made this way is safe.  A
prediction agrees with a measurement when it lies inside the measurement's
interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np


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
    from scipy.stats import binomtest  # here: scipy.stats takes a second to import, and
    #                                    every CLI start (even a bad flag) imports this module
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


BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
MIN_ROWS = 2
_WEIGHT_CELLS = 2_000_000     # a clustered bootstrap weighs this many values at a time
NO_INTERVAL = (math.nan, math.nan)


def bootstrap_interval(
    statistic: Callable[[np.ndarray], np.ndarray], rows: int, confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a figure computed from ``rows`` rows.

    ``statistic`` gets an integer array of shape (resamples, rows), each line
    one draw of row indices with replacement, and returns the figure of each
    draw (NaN where a draw has none); the interval is the central
    ``confidence`` share of the finite ones.  Deterministic for a seed.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if rows < MIN_ROWS:
        return NO_INTERVAL
    draws = np.random.default_rng(seed).integers(0, rows, size=(resamples, rows))
    return _central(statistic(draws), confidence)


def _central(figures, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` share of the finite bootstrap figures."""
    figures = np.asarray(figures, dtype=np.float64)
    figures = figures[np.isfinite(figures)]
    if figures.size == 0:
        return NO_INTERVAL
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(figures, [tail, 100.0 - tail])
    return float(low), float(high)


def ratio_interval(numerators: Sequence[float], denominators: Sequence[float],
                   **bootstrap) -> tuple[float, float]:
    """Interval of sum(numerators) / sum(denominators) over rows (an aggregate rate such
    as decoded tokens over decode seconds); a draw whose denominators sum to 0 has none."""
    top = np.asarray(numerators, dtype=np.float64)
    bottom = np.asarray(denominators, dtype=np.float64)
    if top.shape != bottom.shape:
        raise ValueError(f"{top.size} numerators but {bottom.size} denominators")
    known = np.isfinite(top) & np.isfinite(bottom)
    top, bottom = top[known], bottom[known]

    def ratio(draws: np.ndarray) -> np.ndarray:
        below = bottom[draws].sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(below > 0, top[draws].sum(axis=1) / below, np.nan)

    return bootstrap_interval(ratio, top.size, **bootstrap)


def rate_ratio_interval(numerators_a: Sequence[float], denominators_a: Sequence[float],
                        numerators_b: Sequence[float], denominators_b: Sequence[float],
                        confidence: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = BOOTSTRAP_SEED, paired: bool = False) -> tuple[float, float]:
    """Interval of one aggregate rate over another, (sum num_a / sum den_a) / (sum num_b /
    sum den_b), such as one strategy's tokens/s over another's: each group's rows resampled
    on their own (percentile bootstrap, deterministic for a seed); with ``paired``, row i of
    one group and row i of the other are one unit, resampled together (the same prompt and
    repetition under two strategies: where both meet the same text, as greedy decoding on a
    pair whose acceptance the text decides, what the prompts share cancels out)."""
    groups = [(np.asarray(top, dtype=np.float64), np.asarray(bottom, dtype=np.float64))
              for top, bottom in ((numerators_a, denominators_a), (numerators_b, denominators_b))]
    if any(top.size < MIN_ROWS or top.shape != bottom.shape for top, bottom in groups):
        return NO_INTERVAL
    if paired and groups[0][0].shape != groups[1][0].shape:
        raise ValueError("paired rows need as many rows in each group")
    rng = np.random.default_rng(seed)
    rates = []
    shared = rng.integers(0, groups[0][0].size, size=(resamples, groups[0][0].size)) \
        if paired else None
    for top, bottom in groups:
        draws = shared if paired else rng.integers(0, top.size, size=(resamples, top.size))
        with np.errstate(divide="ignore", invalid="ignore"):
            rates.append(top[draws].sum(axis=1) / bottom[draws].sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return _central(rates[0] / rates[1], confidence)


def median_ratio_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
                          resamples: int = BOOTSTRAP_RESAMPLES,
                          seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Interval of median(a) / median(b), each group's values resampled on their own
    (percentile bootstrap; NaNs ignored): a ratio that a few stalled rows in either group
    do not move, as they move one of sums."""
    groups = [np.asarray(values, dtype=np.float64) for values in (a, b)]
    groups = [values[~np.isnan(values)] for values in groups]
    if any(values.size < MIN_ROWS for values in groups):
        return NO_INTERVAL
    rng = np.random.default_rng(seed)
    medians = [np.median(values[rng.integers(0, values.size, size=(resamples, values.size))],
                         axis=1) for values in groups]
    with np.errstate(divide="ignore", invalid="ignore"):
        return _central(medians[0] / medians[1], confidence)


def percentile_interval(values: Iterable[float], q: float, **bootstrap) -> tuple[float, float]:
    """Interval of the ``q``-th percentile (as ``percentiles`` computes it; NaNs ignored)."""
    samples = np.asarray(list(values), dtype=np.float64)
    samples = samples[~np.isnan(samples)]
    return bootstrap_interval(lambda draws: np.percentile(samples[draws], q, axis=1),
                              samples.size, **bootstrap)


def clustered_percentile_interval(values: Sequence[float], clusters: Sequence, q: float,
                                  **bootstrap) -> tuple[float, float]:
    """Interval of the ``q``-th percentile of ``values`` pooled over clusters (a query's
    cycles), from a bootstrap that draws whole clusters: one query's cycles share its
    link and its prompt, so they are not independent draws (NaNs ignored).

    Each draw's percentile is the inverted-CDF one (the smallest value whose pooled
    share reaches ``q`` %), computed without building the draw: its values are the
    sorted pool weighted by how often the draw took their cluster.
    """
    values = np.asarray(values, dtype=np.float64)
    clusters = np.asarray(clusters)
    known = ~np.isnan(values)
    order = np.argsort(values[known], kind="stable")
    pooled = values[known][order]
    _, cluster_of = np.unique(clusters[known][order], return_inverse=True)
    n_clusters = int(cluster_of.max()) + 1 if pooled.size else 0
    chunk = max(1, _WEIGHT_CELLS // max(1, pooled.size))

    def statistic(draws: np.ndarray) -> np.ndarray:
        figures = np.empty(len(draws))
        for start in range(0, len(draws), chunk):
            part = draws[start:start + chunk]
            rows = np.arange(len(part))[:, None] * n_clusters
            counts = np.bincount((rows + part).ravel(), minlength=len(part) * n_clusters
                                 ).reshape(len(part), n_clusters)
            cumulative = np.cumsum(counts[:, cluster_of], axis=1)
            reached = cumulative >= (q / 100.0) * cumulative[:, -1:]
            figures[start:start + len(part)] = pooled[reached.argmax(axis=1)]
        return figures

    return bootstrap_interval(statistic, n_clusters, **bootstrap)


def _unknown(value: float | None) -> bool:
    return value is None or math.isnan(value)


def separated(first: tuple[float, float], second: tuple[float, float]) -> bool | None:
    """Whether two (low, high) intervals do not overlap (the two figures differ
    conclusively); None when either is unknown (NaN)."""
    if any(_unknown(bound) for bound in (*first, *second)):
        return None
    return first[1] < second[0] or second[1] < first[0]


def prediction_verdict(predicted: float, interval: tuple[float, float]) -> str | None:
    """Where a prediction lies against a measured (low, high) interval: ``"inside"``,
    ``"above"`` or ``"below"``; None when the prediction or the interval is unknown."""
    low, high = interval
    if any(_unknown(value) for value in (predicted, low, high)):
        return None
    if predicted < low:
        return "below"
    return "above" if predicted > high else "inside"
