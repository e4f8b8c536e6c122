"""Device emulation's arithmetic: which stage of a speculation cycle a forward pass is, and
how many seconds that pass takes on an emulated device for a model of a declared shape.

An emulated pass lasts its roofline bound (``roofline.roofline_bound`` of the pass's work,
``stages.forward_work``, for the tokens it feeds onto the cache it has): the bytes it must
move at the device's datasheet bandwidth or the FLOPs it must compute at the datasheet peak
of its dtype, whichever takes longer.  That is the fastest the device can run the pass: a
roofline-shaped prediction from the device file, not a measurement.  A real serving stack is
slower (kernel launches, framework overheads, a fraction of the peak bandwidth), so real
times are longer by a factor of its own; what the bound keeps is how the two devices and
the two model sizes compare, which is what decides the reversal RTT, to the extent both
stacks reach the same fraction of their peaks.

Why not a fitted estimator's ``estimator.stage_seconds``: the estimators fitted here are
this CPU's (``benchmarks/measured/latency/``), and their overheads per call, per layer and
per element are the host's dispatch costs, with efficiencies fitted against them: carried to
a GPU as they are, the committed float32 estimators (``float32-t1``,
``xeon-float32-t1-own-decode``) give an H100 0.41 and 0.24 s for one bfloat16 decoding step
of a 7 B model at a 512-token context, and a Jetson Orin Nano 136 and 54 ms for a 0.5 B
draft token, where the bounds are 4.2 and 14.6 ms.  An estimator fitted on the emulated
device itself would be the better answer; none exists without that device.

Pure: no I/O, no clocks.
"""

from __future__ import annotations

from typing import Literal

from nasd.latency.roofline import Device, roofline_bound
from nasd.latency.stages import ModelShape, Stage, dtype_size, forward_work

Role = Literal["draft", "target"]


def pass_stage(role: Role, cached: int, all_rows: bool) -> Stage:
    """The stage a forward pass of the ``role`` model is, given the tokens already in its
    cache and whether it scores every token it feeds: onto an empty cache, the prefill
    (``edge_prefill`` for the draft, ``cloud_prefill`` for the target, wherever each runs);
    the draft's other passes are ``draft_token`` (drafting, or decoding alone: edge-only, a
    cutoff stretch); the target's are ``verify`` when they score every token (drafts), else
    ``decode``."""
    if cached == 0:
        return "edge_prefill" if role == "draft" else "cloud_prefill"
    if role == "draft":
        return "draft_token"
    return "verify" if all_rows else "decode"


def pass_seconds(device: Device, shape: ModelShape, dtype: str, tokens: int,
                 cached: int) -> float:
    """Seconds of one forward pass of ``tokens`` tokens onto a cache of ``cached`` on
    ``device``, for a model of ``shape`` at ``dtype``: its roofline bound."""
    return roofline_bound(device, forward_work(shape, tokens, cached, dtype_size(dtype)), dtype)


def weight_bytes(shape: ModelShape, dtype: str) -> float:
    """The bytes a model's weights take at ``dtype`` (what must fit in the device's memory)."""
    return shape.parameters * dtype_size(dtype)
