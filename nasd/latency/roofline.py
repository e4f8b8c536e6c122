"""Devices and the roofline: what a device can do at most, and the least time a stage takes.

Owns the device description (``Device``, the schema of ``configs/devices/*.yaml``: memory
bandwidth, an optional last-level cache that a small working set is served from, peak
FLOP/s per dtype, the sources of those figures) and the roofline's two times: moving a
stage's bytes at the bandwidth of the memory level its working set fits in
(``memory_seconds``), computing its FLOPs at the peak for its dtype (``compute_seconds``).
``roofline_bound`` is the larger of the two at the device's peaks: no run of the stage can
be faster, so a prediction never goes below it (``clamp_to_bound``, which also says which
predictions it raised).  The fitted latency models (``nasd.latency.models``) divide the
same two times by efficiencies, so the bound and the models share one roofline; their
memory time is at main memory's bandwidth whatever the working set (measured on this host,
a pass's weights stream at about the same few GB/s in and out of the last-level cache, so a
cache term would only move the efficiency in steps at the cache's size).  A measured CPU
device also says what a linear layer costs beyond a small one when the runtime hands it to
its GEMM library (``library_seconds``): a dispatch cost the fitted models add as it is, and
the bound leaves out.

Pure: no I/O, no clocks (the orchestrator loads device files and measures this host).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from nasd.latency.stages import DTYPE_BYTES, Work

GIGA = 1e9
TERA = 1e12
FIGURES = ("memory_bandwidth_gbps", "cache", "peak_tflops", "library_call_us")


class Source(BaseModel):
    """Where a figure of a device file comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    what: str                       # which figures
    cite: str                       # the document (vendor datasheet, product brief, measurement)
    url: str | None = None


class Cache(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    bytes: int = Field(gt=0)
    bandwidth_gbps: float = Field(gt=0, description="GB/s (1e9 bytes) read from this level")


class Device(BaseModel):
    """One device file: the peaks the roofline uses, each with its source."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    name: str
    description: str = ""
    kind: Literal["cpu", "gpu", "soc"]
    memory_gib: float = Field(gt=0)
    memory_bandwidth_gbps: float = Field(gt=0, description="GB/s (1e9 bytes), main memory")
    cache: Cache | None = None
    peak_tflops: dict[str, float] = Field(
        description="dense peak TFLOP/s per dtype (float32, bfloat16, float16)")
    library_call_us: dict[str, float] = Field(
        default_factory=dict,
        description="microseconds per dtype that a linear layer pays beyond a small one's "
                    "when the runtime hands it to its GEMM library (PyTorch on a CPU: oneDNN, "
                    "for 16-bit products above 16^3 multiply-adds); measured, none if absent")
    sources: list[Source] = Field(min_length=1)
    measured: dict | None = Field(
        default=None, description="for a measured host: how and when (micro-benchmarks)")

    @model_validator(mode="after")
    def _check(self) -> Device:
        for name, values, valid, rule in (
                ("peak_tflops", self.peak_tflops, lambda value: value > 0, "> 0"),
                ("library_call_us", self.library_call_us, lambda value: value >= 0, ">= 0")):
            unknown = sorted(set(values) - set(DTYPE_BYTES))
            if unknown:
                raise ValueError(f"{name}: unknown dtype {unknown[0]!r}: one of "
                                 f"{', '.join(DTYPE_BYTES)}")
            bad = [dtype for dtype, value in values.items() if not valid(value)]
            if bad:
                raise ValueError(f"{name}.{bad[0]}: must be {rule}")
        if "float32" not in self.peak_tflops:
            raise ValueError("peak_tflops: float32 is required")
        return self

    def figures(self) -> dict:
        """What a fit depends on (``FIGURES``), as JSON: a device file measured again later
        is told apart from the one a fit was made against by them."""
        return self.model_dump(mode="json", include=set(FIGURES))

    def peak_flops(self, dtype: str) -> float:
        """FLOP/s at ``dtype``; a dtype the file does not list runs at the float32 rate (a
        CPU without bfloat16 instructions converts and computes in float32)."""
        return TERA * self.peak_tflops.get(dtype, self.peak_tflops["float32"])


def bandwidth(device: Device, working_set) -> np.ndarray:
    """Bytes/s a stage can read: the cache's when its working set fits there, else main
    memory's."""
    working_set = np.asarray(working_set, dtype=float)
    main = GIGA * device.memory_bandwidth_gbps
    if device.cache is None:
        return np.full_like(working_set, main)
    return np.where(working_set <= device.cache.bytes, GIGA * device.cache.bandwidth_gbps, main)


def memory_seconds(device: Device, moved, working_set, cached: bool = True) -> np.ndarray:
    """Bytes moved at the bandwidth of the level the working set fits in, or (``cached``
    False) at main memory's, the scale the fitted models' efficiency is relative to."""
    if not cached:
        return np.asarray(moved, dtype=float) / (GIGA * device.memory_bandwidth_gbps)
    return np.asarray(moved, dtype=float) / bandwidth(device, working_set)


def compute_seconds(device: Device, flops, dtype) -> np.ndarray:
    """FLOPs at the peak of ``dtype`` (one name, or one per element of ``flops``)."""
    peaks = (device.peak_flops(dtype) if isinstance(dtype, str)
             else np.array([device.peak_flops(d) for d in dtype], dtype=float))
    return np.asarray(flops, dtype=float) / peaks


def library_seconds(device: Device, calls, dtype) -> np.ndarray:
    """What ``calls`` linear layers handed to the GEMM library cost beyond small ones, at
    ``dtype`` (one name, or one per element of ``calls``): none where the device measured
    no such cost."""
    per_call_us = (device.library_call_us.get(dtype, 0.0) if isinstance(dtype, str)
                   else np.array([device.library_call_us.get(d, 0.0) for d in dtype], dtype=float))
    return np.asarray(calls, dtype=float) * per_call_us / 1e6


def roofline_bound(device: Device, work: Work, dtype: str) -> float:
    """The least time ``work`` can take on ``device``: its bytes at the bandwidth, or its
    FLOPs at the peak, whichever takes longer."""
    return float(bound_seconds(device, work.bytes, work.flops, work.working_set, dtype))


def bound_seconds(device: Device, moved, flops, working_set, dtype) -> np.ndarray:
    """``roofline_bound`` over arrays of work."""
    return np.maximum(memory_seconds(device, moved, working_set),
                      compute_seconds(device, flops, dtype))


def clamp_to_bound(predicted, bound) -> tuple[np.ndarray, np.ndarray]:
    """Predictions raised to the bound where they fell below it, and which ones were
    (flagged: such a prediction says the model left the range it was fitted on)."""
    predicted, bound = np.asarray(predicted, dtype=float), np.asarray(bound, dtype=float)
    below = predicted < bound
    return np.where(below, bound, predicted), below
