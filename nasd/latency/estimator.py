"""The fitted latency estimator and the one question it answers: how many seconds does stage
S take on device D for a model of this shape, at this prompt, context and K?

``LatencyEstimator`` holds one roofline-shaped model per stage (``nasd.latency.models.
RooflineParams``) with the device it was fitted on; it is saved as JSON (``to_dict`` /
``from_dict``).  ``stage_seconds`` is the prediction: the stage's work
(``nasd.latency.stages.stage_work``) on the asked device's peaks, divided by the fitted
efficiencies, plus the fitted overheads, and never below the device's roofline bound
(``at_bound`` says when the bound decided).  On the device it was fitted on that is the
fitted model; on another device the efficiencies and overheads carry over unchanged (the
"no recalibration" of ``nasd.latency.transfer``) unless the estimator was recalibrated
there (``transfer.recalibrated_estimator``, method C): a CPU's per-layer dispatch overhead
carried to a GPU as it is says more about the CPU than the GPU, so an emulated device wants
its own estimator (a few samples measured on it, or efficiencies and overheads assumed for
it).  A model known only by its size gets a published shape from
``nasd.latency.stages.shape_for_parameters``.

Pure: no I/O, no clocks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from nasd.latency.models import RooflineParams, bounds, fit_roofline
from nasd.latency.roofline import Device, clamp_to_bound
from nasd.latency.stages import STAGES, ModelShape, Stage, stage_work


@dataclass(frozen=True)
class LatencyEstimator:
    device: str                              # the device file it was fitted on
    stages: dict[str, RooflineParams]

    def to_dict(self) -> dict:
        return {"device": self.device,
                "stages": {stage: asdict(params) for stage, params in self.stages.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> LatencyEstimator:
        unknown = sorted(set(data["stages"]) - set(STAGES))
        if unknown:
            raise ValueError(f"stages: unknown stage {unknown[0]!r}: one of {', '.join(STAGES)}")
        return cls(device=str(data["device"]),
                   stages={stage: RooflineParams(**(params | {"row_factors": {
                       int(rows): float(factor)
                       for rows, factor in params.get("row_factors", {}).items()}}))
                           for stage, params in data["stages"].items()})


def fit_estimator(frames: dict[str, pd.DataFrame], device: Device) -> LatencyEstimator:
    """One roofline-shaped model per stage frame, fitted on all of its rows."""
    return LatencyEstimator(device.name, {stage: fit_roofline(frame, device)
                                          for stage, frame in frames.items()})


@dataclass(frozen=True)
class StagePrediction:
    seconds: float     # the prediction, never below the bound
    bound_s: float     # the roofline bound on the device
    at_bound: bool     # the model predicted less than the bound: the bound is the answer


def stage_seconds(estimator: LatencyEstimator, stage: Stage, device: Device, shape: ModelShape,
                  dtype: str, prompt_tokens: int = 1, context_tokens: int = 1,
                  k: int = 1) -> StagePrediction:
    """Predicted seconds of ``stage`` on ``device`` for a model of ``shape`` at ``dtype``:
    a prefill of ``prompt_tokens``; a drafted token (averaged over a block of ``k``), a
    verification of ``k`` drafts or a decoding step at a committed context of
    ``context_tokens``."""
    if stage not in estimator.stages:
        raise ValueError(f"the estimator has no model of {stage!r}")
    work = stage_work(stage, shape, dtype, prompt_tokens, context_tokens, k)
    frame = pd.DataFrame([{**asdict(work), "dtype": dtype}])
    bound = bounds(frame, device)
    seconds, below = clamp_to_bound(estimator.stages[stage].seconds(device, frame), bound)
    return StagePrediction(float(seconds[0]), float(bound[0]), bool(below[0]))
