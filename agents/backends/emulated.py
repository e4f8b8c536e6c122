"""Device emulation: any backend's models timed as a named device would run a model of a
declared shape, while they compute the real tokens.

``EmulatedDevice`` wraps a ``LanguageModel`` (``hf``, ``synthetic``, any): each forward pass
of its sessions runs for real, then waits (``shaping.clock.sleep_until``) until the pass has
lasted what the emulated device takes for it (``nasd.latency.emulation.pass_seconds``: the
pass's roofline bound on the device, for the declared shape at the declared dtype).  A pass
that already took longer is not padded: it overran, and is counted as such, never hidden.
This is the one place passes are padded; everything timed around them (a cycle's
``t_draft``, the cloud's ``compute_s``, TTFT) holds the emulated time, so the analytic
model and NASD's estimates see it.

Every pass goes to its host's ``StageLedger`` as a ``PassTiming`` (the latency model's stage,
the real and the emulated seconds, and how long it lasted: a busy host wakes a waiting
process late, so a padded pass can outlast its emulated time, and that lateness is
recorded too, never taken for real work).  The edge takes its own passes per cycle; the cloud
takes the passes of each answer and sends them with it (the ``stages`` field,
``wire_fields``), and the edge records both sides' passes: per cycle the real time beside
the emulated one (``real_seconds``), per query the totals of each stage (``StageTally``).

``DeviceEmulation`` is what both agents get in their settings (the orchestrator resolves it
from a job: devices loaded, shapes declared); ``DeviceEmulation.wrap`` wraps a host's model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from agents.backends.base import Host, LanguageModel, ModelSession
from agents.sampling import SamplingConfig
from nasd.latency.emulation import Role, pass_seconds, pass_stage
from nasd.latency.roofline import Device
from nasd.latency.stages import STAGES, Dtype, ModelShape, Stage
from shaping.clock import now, sleep_until

# an answer's passes: [[stage index in STAGES, real_s, emulated_s, lasted_s], ...]
WIRE_FIELD = "stages"


class DeviceEmulation(BaseModel):
    """The device each host emulates, the declared shape of each model (the cloud runs the
    draft too, for cloud-spec: on its own device) and the dtype both are timed at;
    ``*_shape_name`` says how each shape was declared."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    edge_device: Device
    cloud_device: Device
    draft_shape: ModelShape
    target_shape: ModelShape
    draft_shape_name: str
    target_shape_name: str
    dtype: Dtype = "bfloat16"

    def device(self, host: Host) -> Device:
        return self.edge_device if host == "edge" else self.cloud_device

    @property
    def identity(self) -> str:
        """What a calibration measured under this emulation records, and a run checks."""
        return (f"edge {self.edge_device.name} drafting {self.draft_shape_name}, cloud "
                f"{self.cloud_device.name} verifying {self.target_shape_name}, {self.dtype}")

    def shape(self, role: Role) -> ModelShape:
        return self.draft_shape if role == "draft" else self.target_shape

    def wrap(self, model: LanguageModel, host: Host, role: Role,
             ledger: StageLedger) -> EmulatedDevice:
        """``model`` (the ``role`` model of ``host``) timed as its emulated device."""
        return EmulatedDevice(model, self.device(host), self.shape(role), self.dtype, role,
                              ledger)

    def describe(self, k: int | None = 5, context: int = 64) -> str:
        """One line: which device runs which model, and what a pass costs there at a cache of
        ``context`` tokens (a draft token; a decoding step, and a verification of ``k``
        drafts, a job's largest K: none when its runs verify nothing)."""
        def ms(device: Device, shape: ModelShape, tokens: int) -> str:
            return f"{1000 * pass_seconds(device, shape, self.dtype, tokens, context):.2f} ms"

        def runs(device: Device, role: Role, name: str) -> str:
            fallback = "" if self.dtype in device.peak_tflops else \
                f", computing at its float32 peak: its file lists no {self.dtype}"
            return (f"{device.name} runs the {role} as {name}, "
                    f"{self.shape(role).parameters / 1e9:.2f} B parameters{fallback}")

        edge, cloud, draft, target = (self.edge_device, self.cloud_device, self.draft_shape,
                                      self.target_shape)
        return (f"device emulation ({self.dtype}, roofline bounds): edge "
                f"{runs(edge, 'draft', self.draft_shape_name)}: a draft token "
                f"{ms(edge, draft, 1)}; cloud {runs(cloud, 'target', self.target_shape_name)}: "
                f"a decoding step {ms(cloud, target, 1)}"
                + (f", verifying {k} draft{'s' * (k != 1)} {ms(cloud, target, k + 1)}"
                   if k else ""))


@dataclass(frozen=True)
class PassTiming:
    """One forward pass under emulation: its stage, what it took for real, what the emulated
    device takes for it (what it was padded to, unless it overran), and what it lasted."""

    stage: Stage
    real_s: float
    emulated_s: float
    lasted_s: float

    @property
    def waited_s(self) -> float:
        """The time it spent waiting, not computing."""
        return self.lasted_s - self.real_s

    @property
    def overrun_s(self) -> float:
        return max(self.real_s - self.emulated_s, 0.0)

    @property
    def late_s(self) -> float:
        """How far it outlasted both its real and its emulated time (woken late)."""
        return max(self.lasted_s - max(self.real_s, self.emulated_s), 0.0)


class StageLedger:
    """One host's passes in the order they ran, until someone takes them."""

    def __init__(self) -> None:
        self._passes: list[PassTiming] = []

    def record(self, timing: PassTiming) -> None:
        self._passes.append(timing)

    def take(self) -> list[PassTiming]:
        """Every pass since the last take."""
        taken, self._passes = self._passes, []
        return taken


class EmulatedSession:
    """A backend's session whose every forward pass lasts at least the emulated time."""

    def __init__(self, inner: ModelSession, model: EmulatedDevice) -> None:
        self.inner = inner
        self.model = model

    @property
    def processed(self) -> int:
        return self.inner.processed

    def forward(self, ids: Sequence[int], all_rows: bool = False) -> np.ndarray:
        cached = self.inner.processed
        started = now()
        rows = self.inner.forward(ids, all_rows)
        real_s = now() - started
        model = self.model
        emulated_s = pass_seconds(model.device, model.shape, model.dtype, len(ids), cached)
        sleep_until(started + emulated_s)
        model.ledger.record(PassTiming(pass_stage(model.role, cached, all_rows), real_s,
                                       emulated_s, now() - started))
        return rows

    def truncate(self, length: int) -> None:
        self.inner.truncate(length)

    def start_block(self, length: int) -> None:
        self.inner.start_block(length)


class EmulatedDevice:
    """``inner`` (a draft or a target) as ``device`` runs a model of ``shape`` at ``dtype``."""

    def __init__(self, inner: LanguageModel, device: Device, shape: ModelShape, dtype: str,
                 role: Role, ledger: StageLedger) -> None:
        self.inner = inner
        self.device, self.shape, self.dtype, self.role = device, shape, dtype, role
        self.ledger = ledger
        self.vocab_size = inner.vocab_size
        self.eos_id = inner.eos_id

    def session(self, sampling: SamplingConfig) -> EmulatedSession:
        return EmulatedSession(self.inner.session(sampling), self)


def wire_fields(passes: list[PassTiming] | None) -> dict:
    """An answer's fields for its passes (none without emulation)."""
    if passes is None:
        return {}
    return {WIRE_FIELD: [[STAGES.index(p.stage), p.real_s, p.emulated_s, p.lasted_s]
                         for p in passes]}


def read_passes(fields: dict) -> list[PassTiming] | None:
    """The passes an answer carries; None when the cloud does not emulate a device."""
    if WIRE_FIELD not in fields:
        return None
    return [PassTiming(STAGES[int(stage)], float(real_s), float(emulated_s), float(lasted_s))
            for stage, real_s, emulated_s, lasted_s in fields[WIRE_FIELD]]


def real_seconds(seconds: float, passes: list[PassTiming] | None) -> float | None:
    """``seconds`` measured around ``passes``, less what they waited: the time it took for
    real; None without emulation."""
    return None if passes is None else seconds - sum(p.waited_s for p in passes)


@dataclass
class StageTotals:
    """One stage's passes of a query: how many, how many were padded, how many overran
    (their real time already above the emulated one), the real, emulated and lasted seconds
    summed, how late they woke in all (``PassTiming.late_s``), and the largest overrun."""

    passes: int = 0
    padded: int = 0
    overruns: int = 0
    real_s: float = 0.0
    emulated_s: float = 0.0
    lasted_s: float = 0.0
    late_s: float = 0.0
    worst_overrun_s: float = 0.0


class StageTally:
    """Per stage, the totals of a query's passes on both hosts."""

    def __init__(self) -> None:
        self.stages: dict[str, StageTotals] = {}

    def add(self, passes: Iterable[PassTiming] | None) -> None:
        for timing in passes or ():
            totals = self.stages.setdefault(timing.stage, StageTotals())
            totals.passes += 1
            totals.padded += timing.real_s < timing.emulated_s
            totals.overruns += timing.real_s > timing.emulated_s
            totals.real_s += timing.real_s
            totals.emulated_s += timing.emulated_s
            totals.lasted_s += timing.lasted_s
            totals.late_s += timing.late_s
            totals.worst_overrun_s = max(totals.worst_overrun_s, timing.overrun_s)

    def as_dict(self) -> dict[str, dict]:
        return {stage: asdict(self.stages[stage]) for stage in STAGES if stage in self.stages}
