"""A job's device emulation resolved into what both agents get
(``agents.backends.emulated.DeviceEmulation``): the two device files loaded, each model's
shape from its declaration (a size: the published Qwen2.5 shape nearest to it; a published
shape by name; a transformers config.json), and the models checked to fit their device's
memory.  Every failure is a one-line ``ConfigError`` naming the job field and its flag.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from agents.backends.emulated import DeviceEmulation
from nasd.latency.emulation import weight_bytes
from nasd.latency.roofline import Device
from nasd.latency.stages import NAMED_SHAPES, ModelShape, shape_for_parameters
from orchestrator.config.job import JobConfig
from orchestrator.config.loading import ConfigError, load_device, named


def load_emulation(job: JobConfig) -> DeviceEmulation | None:
    """The job's device emulation, or None when it emulates no device."""
    if not job.emulates_devices:
        return None
    edge, cloud = device(job, "edge"), device(job, "cloud")
    (draft, draft_name), (target, target_name) = shape(job, "edge"), shape(job, "cloud")
    fits(job, "edge", edge, [(draft_name, draft)])
    fits(job, "cloud", cloud, [(target_name, target), (draft_name, draft)])   # and cloud-spec's
    return DeviceEmulation(edge_device=edge, cloud_device=cloud, draft_shape=draft,
                           target_shape=target, draft_shape_name=draft_name,
                           target_shape_name=target_name, dtype=job.emulated_dtype)


def device(job: JobConfig, side: str) -> Device:
    field = f"{side}_device"
    try:
        return load_device(getattr(job, field))
    except ConfigError as error:
        raise ConfigError(f"{named(field)}: {error}") from None


def shape(job: JobConfig, side: str) -> tuple[ModelShape, str]:
    """The model of ``side`` as declared: its shape, and a name that says how."""
    params = getattr(job, f"{side}_model_params")
    if params is not None:
        nearest = shape_for_parameters(params)
        name = next(name for name, known in NAMED_SHAPES.items() if known == nearest)
        if not 0.5 <= params / nearest.parameters <= 2.0:    # outside the family's range
            raise ConfigError(f"{named(f'{side}_model_params')}: no published shape near "
                              f"{params / 1e9:g} B parameters (the nearest, {name}, has "
                              f"{nearest.parameters / 1e9:.2g} B): give its shape with "
                              f"{named(f'{side}_model_shape')} instead")
        return nearest, f"{name} (the published shape nearest {params / 1e9:g} B parameters)"
    field = f"{side}_model_shape"
    declared = getattr(job, field)
    if declared in NAMED_SHAPES:
        return NAMED_SHAPES[declared], declared
    path = Path(declared)
    config = path / "config.json" if path.is_dir() else path
    if not config.is_file():
        close = difflib.get_close_matches(declared, NAMED_SHAPES, n=2, cutoff=0.6)
        guess = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise ConfigError(f"{named(field)}: no shape {declared!r}: {guess}give a transformers "
                          f"config.json (or its model folder) or one of "
                          f"{', '.join(sorted(NAMED_SHAPES))}")
    try:
        return ModelShape.from_config(json.loads(config.read_text())), str(config)
    except (OSError, ValueError, KeyError, TypeError) as error:
        what = f"missing {error}" if isinstance(error, KeyError) else str(error).splitlines()[0]
        raise ConfigError(f"{named(field)}: {config}: not a transformers model config: "
                          f"{what}") from None


def fits(job: JobConfig, side: str, on: Device, models: list[tuple[str, ModelShape]]) -> None:
    """The weights of ``models`` (name, shape) at the job's dtype fit in the memory of ``on``."""
    needed = sum(weight_bytes(model, job.emulated_dtype) for _, model in models)
    if needed > on.memory_gib * 2**30:
        names = " and ".join(name for name, _ in models)
        raise ConfigError(f"{named(f'{side}_device')}: {names} at "
                          f"{job.emulated_dtype} take {needed / 1e9:.1f} GB of weights, more "
                          f"than the {on.memory_gib:g} GiB of {on.name}")
