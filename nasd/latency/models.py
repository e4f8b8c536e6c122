"""Per-stage latency models fitted on a measured table, and how well they predict
configurations they never saw.

Owns the three model families compared per stage and their group-wise evaluation:

- **roofline-shaped** (``RooflineParams``, fitted by ``fit_roofline``):
  ``overhead + per_layer * layers + smoothmax(memory / eta_bw, compute / eta_flops)``, where
  memory and compute are the roofline's two times on the device (``nasd.latency.roofline``:
  bytes at the bandwidth of the level the working set fits in, FLOPs at the dtype's peak),
  the efficiencies ``eta_*`` in (0, 1] say how much of each peak the stage reaches, the
  overheads are the fixed cost of a call and of each layer (kernel dispatch), and the smooth
  maximum ``(a^p + b^p)^(1/p)`` (p fitted in [1, 16]: 1 is a sum, 16 almost the hard max)
  lets the ridge point be as sharp as the stage shows it: verify is flat in K while the
  weights' bytes dominate and grows once the FLOPs do.  Fitted by ``scipy.optimize.
  least_squares`` on log errors (relative: what MAPE judges) with a soft-L1 loss (a sample a
  busy neighbour slowed weighs less), optionally with a Gaussian prior on the log parameters
  (how ``nasd.latency.transfer`` refits from a few samples on new hardware);
- **linear** (``fit_linear``): scikit-learn's non-negative least squares of the time on the
  work (bytes, FLOPs, layers, tokens), weighted by 1 / t^2 so the errors are relative;
- **random forest** (``fit_forest``): scikit-learn's forest on the log time from the
  configuration and its work; its impurity importances say what the time depends on.

``held_out`` predicts every sample with models fitted on the other groups (``GroupKFold``
over the shape of the stage's model: a held-out sample's model size was never seen in
training), each prediction raised to the roofline bound where it fell below it (and
flagged); ``errors`` gives MAPE, MAE and the 95th percentile of the absolute error.

Pure: no I/O, no clocks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.optimize import least_squares
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GroupKFold

from nasd.latency.roofline import Device, bound_seconds, clamp_to_bound, compute_seconds, memory_seconds

LINEAR_FEATURES = ("bytes", "flops", "layers", "tokens")
FOREST_FEATURES = ("params", "layers", "hidden", "tokens", "prompt_tokens", "context_tokens", "k",
                   "dtype_bytes", "bytes", "flops")
PARAMETERS = ("overhead_s", "per_layer_s", "eta_bw", "eta_flops", "sharpness")
# bounds of each parameter (the log of all but sharpness is what is fitted)
LOWER = {"overhead_s": 1e-7, "per_layer_s": 1e-8, "eta_bw": 1e-4, "eta_flops": 1e-4,
         "sharpness": 1.0}
UPPER = {"overhead_s": 10.0, "per_layer_s": 1.0, "eta_bw": 1.0, "eta_flops": 1.0,
         "sharpness": 16.0}


@dataclass(frozen=True)
class RooflineParams:
    """One stage's roofline-shaped model (see the module's docstring)."""

    overhead_s: float
    per_layer_s: float
    eta_bw: float
    eta_flops: float
    sharpness: float

    def seconds(self, device: Device, frame: pd.DataFrame) -> np.ndarray:
        """Predicted seconds of each row of a stage frame (``nasd.latency.stages``)."""
        return roofline_seconds(self, device, frame)

    def to_vector(self) -> np.ndarray:
        values = asdict(self)
        return np.array([np.log(values[name]) if name != "sharpness" else values[name]
                         for name in PARAMETERS])

    @classmethod
    def from_vector(cls, vector) -> "RooflineParams":
        return cls(**{name: float(np.exp(value) if name != "sharpness" else value)
                      for name, value in zip(PARAMETERS, vector)})


def roofline_times(device: Device, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(memory seconds at main memory's bandwidth, compute seconds at the dtype's peak) of
    each row: the two times the roofline-shaped form divides by its efficiencies."""
    return (memory_seconds(device, frame["bytes"], frame["working_set"], cached=False),
            compute_seconds(device, frame["flops"], frame["dtype"].to_numpy()))


def roofline_seconds(params: RooflineParams, device: Device, frame: pd.DataFrame,
                     times: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    memory, compute = times if times is not None else roofline_times(device, frame)
    return form(params, memory, compute, frame["layers"].to_numpy(dtype=float))


def form(params: RooflineParams, memory: np.ndarray, compute: np.ndarray,
         layers: np.ndarray) -> np.ndarray:
    """The roofline-shaped time from the two roofline times and the layer count."""
    a, b, p = memory / params.eta_bw, compute / params.eta_flops, params.sharpness
    top = np.maximum(a, b)
    smooth = top * ((a / top) ** p + (b / top) ** p) ** (1.0 / p)   # scaled: no overflow
    return params.overhead_s + params.per_layer_s * layers + smooth


def bounds(frame: pd.DataFrame, device: Device) -> np.ndarray:
    """The roofline bound of each row (``nasd.latency.roofline.bound_seconds``)."""
    return bound_seconds(device, frame["bytes"], frame["flops"], frame["working_set"],
                         frame["dtype"].to_numpy())


def fit_roofline(frame: pd.DataFrame, device: Device, prior: RooflineParams | None = None,
                 prior_sigma: float = 0.5) -> RooflineParams:
    """The stage's roofline-shaped model fitted to ``frame``'s seconds; with ``prior``, the
    maximum a posteriori fit under a Gaussian prior on the log parameters (sd
    ``prior_sigma``; the sharpness's sd is ``4 * prior_sigma`` on its own scale)."""
    seconds = frame["seconds"].to_numpy(dtype=float)
    if len(seconds) == 0 or np.any(seconds <= 0):
        raise ValueError("fitting needs positive measured seconds")
    memory, compute = roofline_times(device, frame)
    layers = frame["layers"].to_numpy(dtype=float)
    lower, upper = (np.array([np.log(limit[n]) if n != "sharpness" else limit[n]
                              for n in PARAMETERS]) for limit in (LOWER, UPPER))
    sigma = np.array([prior_sigma] * 4 + [4 * prior_sigma])

    def residuals(vector):
        predicted = form(RooflineParams.from_vector(vector), memory, compute, layers)
        fit = np.log(predicted) - np.log(seconds)
        if prior is None:
            return fit
        return np.concatenate([fit, (vector - prior.to_vector()) / sigma])

    starts = [prior.to_vector()] if prior is not None else [
        RooflineParams(overhead_s=max(0.3 * seconds.min(), 2e-7), per_layer_s=1e-5,
                       eta_bw=eta, eta_flops=eta, sharpness=2.0).to_vector()
        for eta in (0.05, 0.3)]
    best = None
    for start in starts:
        start = np.clip(start, lower + 1e-9, upper - 1e-9)
        result = least_squares(residuals, start, bounds=(lower, upper), loss="soft_l1",
                               f_scale=0.05, x_scale="jac")
        if best is None or result.cost < best.cost:
            best = result
    return RooflineParams.from_vector(best.x)


def relative_weights(seconds: np.ndarray) -> np.ndarray:
    return 1.0 / np.asarray(seconds, dtype=float) ** 2


def fit_linear(frame: pd.DataFrame) -> LinearRegression:
    """Non-negative least squares of seconds on the work, relative (weights 1 / t^2)."""
    model = LinearRegression(positive=True)
    model.fit(frame[list(LINEAR_FEATURES)].to_numpy(dtype=float), frame["seconds"],
              sample_weight=relative_weights(frame["seconds"]))
    return model


def predict_linear(model: LinearRegression, frame: pd.DataFrame) -> np.ndarray:
    return model.predict(frame[list(LINEAR_FEATURES)].to_numpy(dtype=float))


def fit_forest(frame: pd.DataFrame, seed: int = 0) -> RandomForestRegressor:
    """A random forest of the log seconds on the configuration and its work."""
    model = RandomForestRegressor(n_estimators=200, min_samples_leaf=2, random_state=seed,
                                  n_jobs=1)
    model.fit(frame[list(FOREST_FEATURES)].to_numpy(dtype=float),
              np.log(frame["seconds"].to_numpy(dtype=float)))
    return model


def predict_forest(model: RandomForestRegressor, frame: pd.DataFrame) -> np.ndarray:
    return np.exp(model.predict(frame[list(FOREST_FEATURES)].to_numpy(dtype=float)))


MODELS = ("roofline", "linear", "forest")


@dataclass
class HeldOut:
    """Every sample of one stage predicted by models that never saw its group."""

    predictions: pd.DataFrame        # sample, group, seconds, bound, <model>, <model>_at_bound
    importances: dict[str, float]    # the forest's, averaged over the folds
    folds: int


def held_out(frame: pd.DataFrame, device: Device, folds: int = 5, seed: int = 0) -> HeldOut:
    """Group-wise cross-validation of the three models on one stage frame."""
    groups = frame["group"].to_numpy()
    folds = min(folds, len(set(groups)))
    if folds < 2:
        raise ValueError("a group-wise split needs samples of at least two model shapes")
    out = frame[["sample", "group", "seconds"]].copy()
    out["bound"] = bounds(frame, device)
    predicted = {name: np.full(len(frame), np.nan) for name in MODELS}
    importance = np.zeros(len(FOREST_FEATURES))
    for train, test in GroupKFold(n_splits=folds).split(frame, groups=groups):
        fit, judged = frame.iloc[train], frame.iloc[test]
        predicted["roofline"][test] = fit_roofline(fit, device).seconds(device, judged)
        predicted["linear"][test] = predict_linear(fit_linear(fit), judged)
        forest = fit_forest(fit, seed)
        predicted["forest"][test] = predict_forest(forest, judged)
        importance += forest.feature_importances_ / folds
    for name, values in predicted.items():
        out[name], out[f"{name}_at_bound"] = clamp_to_bound(values, out["bound"])
    return HeldOut(out, dict(zip(FOREST_FEATURES, importance.round(4).tolist())), folds)


def errors(measured, predicted) -> dict[str, float]:
    """MAPE (%), MAE (s) and the 95th percentile of the absolute error (s)."""
    measured, predicted = np.asarray(measured, dtype=float), np.asarray(predicted, dtype=float)
    absolute = np.abs(predicted - measured)
    return {"mape_pct": float(100 * np.mean(absolute / measured)), "mae_s": float(absolute.mean()),
            "p95_abs_s": float(np.percentile(absolute, 95)), "n": int(len(measured))}


def bound_check(measured, bound) -> dict[str, float]:
    """How often the roofline bound sat above a measured time (it must never), and how close
    it came (the largest bound / measured ratio)."""
    measured, bound = np.asarray(measured, dtype=float), np.asarray(bound, dtype=float)
    return {"violations": int(np.sum(bound > measured)),
            "max_bound_over_measured": float(np.max(bound / measured)), "n": int(len(measured))}


def evaluate(frames: dict[str, pd.DataFrame], device: Device, folds: int = 5,
             seed: int = 0) -> tuple[dict, dict[str, pd.DataFrame]]:
    """``held_out`` on every stage frame: a JSON-ready report per stage (the samples and
    groups, each model's errors and how many of its predictions the bound raised, the
    bound's check against the measurements, the forest's importances) and the held-out
    predictions themselves."""
    report, predictions = {}, {}
    for stage, frame in frames.items():
        judged = held_out(frame, device, folds, seed)
        rows = judged.predictions
        report[stage] = {
            "samples": int(len(frame)), "groups": int(frame["group"].nunique()),
            "folds": judged.folds,
            "models": {name: {**errors(rows["seconds"], rows[name]),
                              "at_bound": int(rows[f"{name}_at_bound"].sum())}
                       for name in MODELS},
            "bound": bound_check(rows["seconds"], rows["bound"]),
            "forest_importances": judged.importances}
        predictions[stage] = rows
    return report, predictions
