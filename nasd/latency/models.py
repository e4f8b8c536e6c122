"""Per-stage latency models fitted on a measured table, and how well they predict
configurations they never saw.

Owns the three model families compared per stage and their group-wise evaluation:

- **roofline-shaped** (``RooflineParams``, fitted by ``fit_roofline``): ``overhead +
  per_layer * layers + per_activation * activations + per_block / K + library +
  row_factor(rows) * smoothmax(memory / eta_bw, compute / eta_flops)``, where memory and
  compute are the roofline's two times on the device (``nasd.latency.roofline``: bytes at
  main memory's bandwidth, the KV cache's share and the copies the runtime makes of it
  (``kv_repeat_bytes``) counted ``kv_factor`` times, and FLOPs at the dtype's peak), the
  efficiencies ``eta_*`` in (0, 1] say how much of each peak the stage reaches, the
  overheads are the fixed cost of a call, of each layer (kernel dispatch), of the per-token
  vector work and (``draft_token`` only, reported at its floor elsewhere) of a draft block
  shared by its K tokens, ``library`` is the device's measured cost of the pass's linear
  layers that the runtime hands to its GEMM library
  (``nasd.latency.roofline.library_seconds``, added as it is, not fitted: at bfloat16 on the
  Xeon that measured the committed tables such a call costs about 17 us more than a small
  one, so a draft of hidden 64, whose attention projections stay small, makes 3 such calls
  a layer where one of hidden 128 makes 7, which a fit on the other shapes cannot tell from
  their layer count), and the smooth maximum ``(a^p + b^p)^(1/p)`` (p fitted in [1, 16]: 1
  is a sum, 16 almost the hard max) lets the ridge point be as sharp as the stage shows it:
  verify is flat in K while the weights' bytes dominate and grows once the FLOPs do.
  ``row_factor`` is the runtime's speed by the rows a pass feeds, for passes of 2 to 16
  rows (a verification's K + 1): a CPU's matrix kernels block their rows, so on the Xeon
  that measured the committed tables a float32 verification of 13 rows takes longer than
  one of 16.  It is fitted, for a stage whose passes all feed 2 to 16 rows (verify), at each
  row count the training saw (a prior of sd 1 on its log keeps it near 1 where the samples
  say little), interpolated between them, and 1 for one row and for longer passes.  Fitted
  by ``scipy.optimize.least_squares`` on log errors (relative: what MAPE judges) with a
  soft-L1 loss (a sample a busy neighbour slowed weighs less), optionally with a Gaussian
  prior on the parameters (how ``nasd.latency.transfer`` refits from a few samples on new
  hardware);
- **linear** (``fit_linear``): scikit-learn's non-negative least squares of the time on the
  same work terms (bytes, KV bytes and their copies, FLOPs, layers, activation elements,
  block share), weighted by 1 / t^2 so the errors are relative;
- **random forest** (``fit_forest``): scikit-learn's forest on the log time from the
  configuration and its work; its impurity importances say what the time depends on.

``held_out`` predicts every sample with models fitted on the other groups (``GroupKFold``
over the shape of the stage's model: a held-out sample's model size was never seen in
training), each prediction raised to the roofline bound where it fell below it (and
flagged); ``errors`` gives MAPE, MAE and the 95th percentile of the absolute error.

Pure: no I/O, no clocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
from scipy.optimize import least_squares
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GroupKFold

from nasd.latency.roofline import (
    Device,
    bound_seconds,
    clamp_to_bound,
    compute_seconds,
    library_seconds,
    memory_seconds,
)

LINEAR_FEATURES = ("bytes", "kv_bytes", "kv_repeat_bytes", "flops", "layers", "activations",
                   "blocks")
FOREST_FEATURES = ("params", "layers", "hidden", "tokens", "prompt_tokens", "context_tokens", "k",
                   "dtype_bytes", "bytes", "flops", "activations")
PARAMETERS = ("overhead_s", "per_layer_s", "per_activation_s", "per_block_s", "eta_bw",
              "eta_flops", "kv_factor", "sharpness")
LINEAR_SCALE = ("kv_factor", "sharpness")     # fitted as they are; the rest as logs
LOWER = {"overhead_s": 1e-7, "per_layer_s": 1e-8, "per_activation_s": 1e-15, "per_block_s": 1e-9,
         "eta_bw": 1e-4, "eta_flops": 1e-4, "kv_factor": 1.0, "sharpness": 1.0}
UPPER = {"overhead_s": 10.0, "per_layer_s": 1.0, "per_activation_s": 1e-6, "per_block_s": 1.0,
         "eta_bw": 1.0, "eta_flops": 1.0, "kv_factor": 64.0, "sharpness": 16.0}
START = {"overhead_s": 1e-4, "per_layer_s": 1e-5, "per_activation_s": 1e-10, "per_block_s": 1e-5,
         "eta_bw": 0.1, "eta_flops": 0.1, "kv_factor": 2.0, "sharpness": 2.0}
FACTOR_ROWS = range(2, 17)    # the passes with a row factor: a verification's K + 1, K <= 15
ROW_FACTOR_SIGMA = 1.0        # the prior's sd on a row factor's log, fitted without a source
ROW_FACTOR_LIMIT = 2.0        # a row factor's log within +-2 (x 0.14 to 7.4)


@dataclass(frozen=True)
class RooflineParams:
    """One stage's roofline-shaped model (see the module's docstring)."""

    overhead_s: float
    per_layer_s: float
    per_activation_s: float
    per_block_s: float
    eta_bw: float
    eta_flops: float
    kv_factor: float
    sharpness: float
    row_factors: Mapping[int, float] = field(default_factory=dict)  # rows -> factor, fitted

    def seconds(self, device: Device, frame: pd.DataFrame) -> np.ndarray:
        """Predicted seconds of each row of a stage frame (``nasd.latency.stages``)."""
        return form(self, roofline_terms(device, frame))

    def row_factor(self, rows) -> np.ndarray:
        """The factor on the pass's roofline time for passes of ``rows`` rows: the fitted
        one at a fitted row count, interpolated in log between fitted counts (and towards
        1 at the ends of ``FACTOR_ROWS``), 1 outside ``FACTOR_ROWS``."""
        rows = np.asarray(rows, dtype=float)
        known = sorted(self.row_factors)
        at = [FACTOR_ROWS.start - 1, *known, FACTOR_ROWS.stop]
        logs = [0.0, *(np.log(self.row_factors[count]) for count in known), 0.0]
        inside = (rows >= FACTOR_ROWS.start) & (rows < FACTOR_ROWS.stop)
        return np.where(inside, np.exp(np.interp(rows, at, logs)), 1.0)

    def to_vector(self) -> np.ndarray:
        """The fitted parameters as least squares sees them: ``PARAMETERS`` (logs but for
        ``LINEAR_SCALE``), then the row factors' logs by row count."""
        values = asdict(self)
        return np.array([values[name] if name in LINEAR_SCALE else np.log(values[name])
                         for name in PARAMETERS]
                        + [np.log(self.row_factors[rows]) for rows in sorted(self.row_factors)])

    @classmethod
    def from_vector(cls, vector, rows=()) -> RooflineParams:
        """``to_vector``'s inverse, with the row counts its row factors are for."""
        base, logs = vector[:len(PARAMETERS)], vector[len(PARAMETERS):]
        return cls(**{name: float(value if name in LINEAR_SCALE else np.exp(value))
                      for name, value in zip(PARAMETERS, base)},
                   row_factors={int(count): float(np.exp(log)) for count, log in zip(rows, logs)})


def roofline_terms(device: Device, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """What the form combines, per row: the memory time of all bytes and of the KV cache's
    (with its repeated copies) at main memory's bandwidth, the compute time at the dtype's
    peak, the device's cost of the pass's GEMM library calls, the rows the pass feeds, and
    the counts the overheads scale with (layers, activation elements, the block share)."""
    main = np.asarray(memory_seconds(device, frame["bytes"], frame["working_set"], cached=False))
    kv = frame["kv_bytes"].to_numpy(dtype=float) + frame["kv_repeat_bytes"].to_numpy(dtype=float)
    return {"memory": main, "kv": main * kv / frame["bytes"].to_numpy(dtype=float),
            "compute": compute_seconds(device, frame["flops"], frame["dtype"].to_numpy()),
            "library": library_seconds(device, frame["library_calls"].to_numpy(),
                                       frame["dtype"].to_numpy()),
            "rows": frame["tokens"].to_numpy(dtype=float),
            **{name: frame[name].to_numpy(dtype=float)
               for name in ("layers", "activations", "blocks")}}


def form(params: RooflineParams, terms: dict[str, np.ndarray]) -> np.ndarray:
    """overhead + per layer + per activation element + the block's share + the library
    calls' measured cost + the smooth maximum of the memory time (the KV cache's bytes moved
    ``kv_factor`` times) and the compute time, each over its efficiency, times the row
    factor of the pass's rows."""
    a = (terms["memory"] + (params.kv_factor - 1) * terms["kv"]) / params.eta_bw
    b = terms["compute"] / params.eta_flops
    p = params.sharpness
    top = np.maximum(a, b)
    smooth = top * ((a / top) ** p + (b / top) ** p) ** (1.0 / p)   # scaled: no overflow
    return (params.overhead_s + params.per_layer_s * terms["layers"]
            + params.per_activation_s * terms["activations"]
            + params.per_block_s * terms["blocks"] + terms["library"]
            + smooth * params.row_factor(terms["rows"]))


def bounds(frame: pd.DataFrame, device: Device) -> np.ndarray:
    """The roofline bound of each row (``nasd.latency.roofline.bound_seconds``)."""
    return bound_seconds(device, frame["bytes"], frame["flops"], frame["working_set"],
                         frame["dtype"].to_numpy())


def fit_roofline(frame: pd.DataFrame, device: Device, prior: RooflineParams | None = None,
                 prior_sigma: float = 0.5) -> RooflineParams:
    """The stage's roofline-shaped model fitted to ``frame``'s seconds; with ``prior``, the
    maximum a posteriori fit under a Gaussian prior on the parameters (sd ``prior_sigma`` on
    the logs, the row factors' included; on ``kv_factor`` and ``sharpness``, ``4 *
    prior_sigma`` on their own scale).  Row factors are fitted at the prior's row counts, or
    without one at the frame's where all of them lie in ``FACTOR_ROWS`` (a verification's
    stage: one row is the reference, and a prefill's longer passes run other kernels), under
    a prior of 1 with sd ``ROW_FACTOR_SIGMA`` on the log."""
    seconds = frame["seconds"].to_numpy(dtype=float)
    if len(seconds) == 0 or np.any(seconds <= 0):
        raise ValueError("fitting needs positive measured seconds")
    terms = roofline_terms(device, frame)
    seen = {int(count) for count in terms["rows"]}
    rows = (sorted(prior.row_factors) if prior is not None
            else sorted(seen) if seen <= set(FACTOR_ROWS) else [])
    limits = np.full(len(rows), ROW_FACTOR_LIMIT)
    lower, upper = (np.concatenate([RooflineParams(**limit).to_vector(), sign * limits])
                    for limit, sign in ((LOWER, -1), (UPPER, 1)))
    if prior is not None:
        centre = prior.to_vector()
        sigma = np.array([4 * prior_sigma if name in LINEAR_SCALE else prior_sigma
                          for name in PARAMETERS] + [prior_sigma] * len(rows))
    else:
        centre = np.zeros(len(rows))
        sigma = np.full(len(rows), ROW_FACTOR_SIGMA)

    def residuals(vector):
        fit = np.log(form(RooflineParams.from_vector(vector, rows), terms)) - np.log(seconds)
        prior_part = vector if prior is not None else vector[len(PARAMETERS):]
        return np.concatenate([fit, (prior_part - centre) / sigma])

    starts = [prior.to_vector()] if prior is not None else [
        np.concatenate([RooflineParams(**(START | {"overhead_s": max(0.3 * seconds.min(), 2e-7),
                                                   "eta_bw": eta, "eta_flops": eta})).to_vector(),
                        np.zeros(len(rows))])
        for eta in (0.05, 0.3)]
    best = None
    for start in starts:
        start = np.clip(start, lower + 1e-9, upper - 1e-9)
        result = least_squares(residuals, start, bounds=(lower, upper), loss="soft_l1",
                               f_scale=0.05)
        if best is None or result.cost < best.cost:
            best = result
    fitted = RooflineParams.from_vector(best.x, rows)
    if not np.any(terms["blocks"]):    # a stage without draft blocks: the term never applies
        fitted = replace(fitted, per_block_s=LOWER["per_block_s"])
    return fitted


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


def fit_forest(frame: pd.DataFrame, seed: int = 0, trees: int = 200) -> RandomForestRegressor:
    """A random forest of the log seconds on the configuration and its work."""
    model = RandomForestRegressor(n_estimators=trees, min_samples_leaf=2, random_state=seed,
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


def held_out(frame: pd.DataFrame, device: Device, folds: int = 5, seed: int = 0,
             trees: int = 200) -> HeldOut:
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
        forest = fit_forest(fit, seed, trees)
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
            "p95_abs_s": float(np.percentile(absolute, 95)), "rows": len(measured)}


def noise_floor_pct(frame: pd.DataFrame) -> float | None:
    """The MAPE a perfect model would still show against these measurements: the expected
    relative error of each sample's median of R repeats, from its interquartile range under
    normal noise (sd = IQR / 1.349; the median's sd 1.2533 sd / sqrt(R); E|error| = sqrt(2 /
    pi) of that), over the samples repeated at least twice.  None when the table has no
    spread columns or no sample was repeated (one time has no spread to read)."""
    if "iqr_s" not in frame or "repeats" not in frame:
        return None
    repeated = frame[frame["repeats"] >= 2]
    if repeated.empty:
        return None
    sd = repeated["iqr_s"] / 1.349 * 1.2533 / np.sqrt(repeated["repeats"])
    return float(100 * np.mean(np.sqrt(2 / np.pi) * sd / repeated["seconds"]))


def bound_check(measured, bound) -> dict[str, float]:
    """How often the roofline bound sat above a measured time (it must never), and how close
    it came (the largest bound / measured ratio)."""
    measured, bound = np.asarray(measured, dtype=float), np.asarray(bound, dtype=float)
    return {"violations": int(np.sum(bound > measured)),
            "max_bound_over_measured": float(np.max(bound / measured)), "rows": len(measured)}


def evaluate(frames: dict[str, pd.DataFrame], device: Device, folds: int = 5, seed: int = 0,
             trees: int = 200) -> tuple[dict, dict[str, pd.DataFrame]]:
    """``held_out`` on every stage frame: a JSON-ready report per stage (the samples and
    groups, each model's errors and how many of its predictions the bound raised, the
    bound's check against the measurements, the forest's importances) and the held-out
    predictions themselves."""
    report, predictions = {}, {}
    for stage, frame in frames.items():
        judged = held_out(frame, device, folds, seed, trees)
        rows = judged.predictions
        report[stage] = {
            "samples": len(frame), "groups": int(frame["group"].nunique()),
            "folds": judged.folds,
            "models": {name: {**errors(rows["seconds"], rows[name]),
                              "at_bound": int(rows[f"{name}_at_bound"].sum())}
                       for name in MODELS},
            "bound": bound_check(rows["seconds"], rows["bound"]),
            "noise_floor_mape_pct": noise_floor_pct(frame),
            "forest_importances": judged.importances}
        predictions[stage] = rows
    return report, predictions
