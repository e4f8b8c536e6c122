"""Cross-hardware recalibration: a latency estimator fitted on one machine, corrected for
another from N samples measured there.

Owns the four ways compared (``METHODS``) and their evaluation (``transfer_curve``):

- ``none``: the source estimator as it is, on the target's device peaks and dtype (the
  roofline already moves with the bytes per parameter and the dtype's peak);
- ``A``, per-stage affine: for each stage, target seconds = a + b * source prediction, fitted
  on the N samples (relative least squares, scikit-learn);
- ``B``, one global affine on the total: a sample's total (the sum of its stages) on the
  target = a + b * its predicted total; each stage is scaled by its sample's ratio of the
  corrected to the predicted total;
- ``C``, the roofline refitted: each stage's efficiencies, overheads and sharpness fitted to
  the N samples with the source's as a Gaussian prior on their logs
  (``nasd.latency.models.fit_roofline`` with ``prior``); the prior's width, per stage, the
  one of ``PRIOR_SIGMAS`` that predicts best in a cross-validation over the N samples
  themselves (``choose_prior_sigma``), unless one is given.  How far the target moved from
  the source is what the width says, and only the target's samples tell it: on this
  project's tables a fixed 0.5 held C to 5.4 % at N = 50 where 4 gave 4.0 %, and another
  pair of machines may want the opposite.

A "sample" is one configuration measured on the target (a row of the measured table: all
five stages); N counts samples.  ``transfer_curve`` holds out a fixed set of target samples,
draws the N calibration samples from the rest ``draws`` times per N, and scores every method
on the held-out samples: MAPE, MAE and the 95th percentile of the absolute error, per stage
and over all stages' rows together.

Pure: no I/O, no clocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import KFold

from nasd.latency.estimator import LatencyEstimator
from nasd.latency.models import RooflineParams, errors, fit_roofline, relative_weights
from nasd.latency.roofline import Device

METHODS = ("none", "A", "B", "C")
PRIOR_SIGMAS = (0.5, 1.0, 2.0, 4.0)   # method C's candidate prior widths (sd of the logs)
PRIOR_FOLDS = 3
Frames = dict[str, pd.DataFrame]


@dataclass(frozen=True)
class Affine:
    intercept: float
    slope: float

    def __call__(self, x):
        return self.intercept + self.slope * np.asarray(x, dtype=float)


def fit_affine(x, y) -> Affine:
    """y = a + b x by relative least squares (weights 1 / y^2); through the origin (a ratio)
    when fewer than three points or the line would not rise."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    weights = relative_weights(y)
    if len(x) >= 3 and np.ptp(x) > 0:
        line = LinearRegression().fit(x[:, None], y, sample_weight=weights)
        if line.coef_[0] > 0:
            return Affine(float(line.intercept_), float(line.coef_[0]))
    ratio = LinearRegression(fit_intercept=False).fit(x[:, None], y, sample_weight=weights)
    return Affine(0.0, float(ratio.coef_[0]))


def source_predictions(estimator: LatencyEstimator, frames: Frames, device: Device) -> Frames:
    """Each stage frame with the source estimator's prediction (``predicted``)."""
    return {stage: frame.assign(predicted=estimator.stages[stage].seconds(device, frame))
            for stage, frame in frames.items()}


def totals(frames: Frames, column: str) -> pd.Series:
    """Per sample, the sum of ``column`` over the stages."""
    return pd.concat([frame.set_index("sample")[column] for frame in frames.values()],
                     axis=1).sum(axis=1)


@dataclass
class Recalibration:
    """One method's correction, fitted on calibration samples; ``predict`` applies it."""

    method: str
    estimator: LatencyEstimator
    device: Device
    per_stage: dict[str, Affine] = field(default_factory=dict)        # A
    total: Affine | None = None                                        # B
    refitted: dict[str, RooflineParams] = field(default_factory=dict)  # C
    prior_sigmas: dict[str, float] = field(default_factory=dict)       # C: each stage's

    def predict(self, frames: Frames) -> dict[str, np.ndarray]:
        predicted = source_predictions(self.estimator, frames, self.device)
        if self.method == "none":
            return {stage: frame["predicted"].to_numpy() for stage, frame in predicted.items()}
        if self.method == "A":
            return {stage: self.per_stage[stage](frame["predicted"])
                    for stage, frame in predicted.items()}
        if self.method == "B":
            source_total = totals(predicted, "predicted")
            scale = self.total(source_total) / source_total
            return {stage: frame["predicted"].to_numpy() * scale.loc[frame["sample"]].to_numpy()
                    for stage, frame in predicted.items()}
        return {stage: self.refitted[stage].seconds(self.device, frame)
                for stage, frame in frames.items()}


def choose_prior_sigma(frame: pd.DataFrame, device: Device, prior: RooflineParams,
                       candidates=PRIOR_SIGMAS, folds: int = PRIOR_FOLDS,
                       seed: int = 0) -> float:
    """The prior width of ``candidates`` whose refits predict the left-out samples of
    ``frame`` best (mean absolute log error over ``folds`` folds of the samples); the first
    (the narrowest) when there are too few samples to leave any out."""
    if len(frame) < 2 * folds:
        return candidates[0]
    splits = list(KFold(folds, shuffle=True, random_state=seed).split(frame))
    measured = np.log(frame["seconds"].to_numpy(dtype=float))

    def error(sigma: float) -> float:
        predicted = np.empty(len(frame))
        for train, test in splits:
            refit = fit_roofline(frame.iloc[train], device, prior=prior, prior_sigma=sigma)
            predicted[test] = np.log(refit.seconds(device, frame.iloc[test]))
        return float(np.mean(np.abs(predicted - measured)))
    return min(candidates, key=error)


def recalibrate(method: str, estimator: LatencyEstimator, device: Device, calibration: Frames,
                prior_sigma: float | None = None) -> Recalibration:
    """Fit ``method``'s correction of ``estimator`` on the target samples ``calibration``
    (stage frames of the same samples) measured on ``device``; method C's prior width is
    ``prior_sigma``, or each stage's ``choose_prior_sigma`` when None."""
    if method not in METHODS:
        raise ValueError(f"unknown recalibration {method!r}: one of {', '.join(METHODS)}")
    result = Recalibration(method, estimator, device)
    if method == "A":
        for stage, frame in source_predictions(estimator, calibration, device).items():
            result.per_stage[stage] = fit_affine(frame["predicted"], frame["seconds"])
    elif method == "B":
        predicted = source_predictions(estimator, calibration, device)
        result.total = fit_affine(totals(predicted, "predicted"), totals(predicted, "seconds"))
    elif method == "C":
        for stage, frame in calibration.items():
            prior = estimator.stages[stage]
            sigma = choose_prior_sigma(frame, device, prior) if prior_sigma is None \
                else prior_sigma
            result.prior_sigmas[stage] = sigma
            result.refitted[stage] = fit_roofline(frame, device, prior=prior, prior_sigma=sigma)
    return result


def recalibrated_estimator(recalibration: Recalibration) -> LatencyEstimator:
    """Method C's result as an estimator of its own (for ``stage_seconds`` on the target)."""
    if recalibration.method != "C":
        raise ValueError("only method C refits the roofline models themselves")
    return LatencyEstimator(recalibration.device.name, dict(recalibration.refitted))


def select(frames: Frames, samples) -> Frames:
    chosen = set(samples)
    return {stage: frame[frame["sample"].isin(chosen)].reset_index(drop=True)
            for stage, frame in frames.items()}


def score(frames: Frames, predicted: dict[str, np.ndarray]) -> dict[str, dict]:
    """Errors per stage and over every stage's rows (``all``)."""
    scored = {stage: errors(frame["seconds"], predicted[stage]) for stage, frame in frames.items()}
    scored["all"] = errors(np.concatenate([frames[s]["seconds"] for s in frames]),
                           np.concatenate([predicted[s] for s in frames]))
    return scored


def transfer_curve(estimator: LatencyEstimator, frames: Frames, device: Device,
                   ns=(10, 25, 50, 100), holdout: int = 60, draws: int = 20, seed: int = 0,
                   prior_sigma: float | None = None) -> tuple[pd.DataFrame, list[int]]:
    """Every method at every N, scored on ``holdout`` target samples never used to
    calibrate: one row per (method, N, draw, stage) with MAPE, MAE, P95 absolute error; and
    the held-out samples.  N = 0 is the uncorrected estimator (``none``)."""
    samples = sorted(set.intersection(*(set(frame["sample"]) for frame in frames.values())))
    rng = np.random.default_rng(seed)
    held = sorted(rng.choice(samples, size=min(holdout, len(samples) // 2), replace=False))
    pool = [s for s in samples if s not in set(held)]
    test = select(frames, held)
    rows = []

    def add(method, n, draw, scored):
        rows.extend({"method": method, "n": n, "draw": draw, "stage": stage, **values}
                    for stage, values in scored.items())

    add("none", 0, 0, score(test, recalibrate("none", estimator, device, {}).predict(test)))
    for n in ns:
        if n > len(pool):
            continue
        for draw in range(draws):
            calibration = select(frames, rng.choice(pool, size=n, replace=False))
            for method in METHODS[1:]:
                fitted = recalibrate(method, estimator, device, calibration, prior_sigma)
                add(method, n, draw, score(test, fitted.predict(test)))
    return pd.DataFrame(rows), [int(s) for s in held]


def curve_summary(curve: pd.DataFrame) -> pd.DataFrame:
    """Mean over draws of each method's errors at each N, per stage (and ``all``)."""
    return (curve.groupby(["method", "n", "stage"], as_index=False)
            [["mape_pct", "mae_s", "p95_abs_s"]].mean())
