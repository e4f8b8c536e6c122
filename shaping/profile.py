"""Network profiles: the schema of what a link should do, validated once.

A profile file may use shorthands (``rtt_ms`` split evenly over the two
directions, symmetric ``bandwidth_mbps``, ``jitter_ms``, ``loss_pct``) and
per-direction blocks (``uplink``, ``downlink``) whose fields win over the
shorthands.  A ``schedule`` (or a ``trace`` file of RTT samples) changes the
link over time; every step is itself a set of overrides on the base profile.

``NetworkProfile`` is the resolved form every consumer uses: the sim link
model, kernel shaping, probes and the analytic model.  Loading files by name
(and a trace's file, bounded) and turning validation errors into one-line
messages is the orchestrator's job.

Every number is finite and within the bounds below, declared once on the field
types (``Milliseconds``, ``BandwidthMbps``, ``Percent``): a typo such as
``rtt_ms: 1e308`` or ``bandwidth_mbps: 1e-300`` is refused here, not deep in an
agent.  A timeline is bounded too: at most ``MAX_TIMELINE_STEPS`` steps, and at
most ``MAX_CHANGE_TIMES`` changes of the link within ``TIMELINE_HORIZON_S``
(the consumers list them all: ``NetworkProfile.change_times``).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

JitterDistribution = Literal["uniform", "normal", "pareto", "paretonormal"]

MAX_DELAY_MS = 120_000.0            # a delay, jitter or RTT: two minutes
MIN_BANDWIDTH_MBPS = 0.001          # 1 kbit/s: a full frame in 12 s
MAX_BANDWIDTH_MBPS = 1_000_000.0    # 1 Tbit/s
MAX_BURST_BYTES = 0xFFFF_FFFF       # tbf's 32-bit burst
# The span of a timeline the link follows after each restart (one query: the sim link and
# the kernel link list the changes within it), and how many changes it may hold.
TIMELINE_HORIZON_S = 24 * 3600.0
MAX_TIMELINE_STEPS = 100_000        # schedule steps or trace samples
MAX_CHANGE_TIMES = 1_000_000
MAX_TRACE_BYTES = 16 << 20          # a trace file: 100,000 samples with comments fit

Percent = Annotated[float, Field(ge=0.0, le=100.0)]
Milliseconds = Annotated[float, Field(ge=0.0, le=MAX_DELAY_MS)]
BandwidthMbps = Annotated[float, Field(ge=MIN_BANDWIDTH_MBPS, le=MAX_BANDWIDTH_MBPS)]
TimelineOffsetS = Annotated[float, Field(ge=0.0, le=TIMELINE_HORIZON_S)]
PeriodS = Annotated[float, Field(gt=0.0, le=TIMELINE_HORIZON_S)]

# Times closer than this are the same instant (periods like 2.2 s are inexact in binary).
TIME_EPSILON_S = 1e-9


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class RandomLoss(_Strict):
    """Independent (Bernoulli) packet loss."""

    model: Literal["random"] = "random"
    pct: Percent = 0.0

    @property
    def is_lossless(self) -> bool:
        return self.pct == 0.0


class GilbertElliottLoss(_Strict):
    """Two-state Markov loss (netem ``gemodel p r 1-h 1-k``)."""

    model: Literal["gilbert-elliott"]
    p_good_to_bad_pct: Percent
    r_bad_to_good_pct: Annotated[float, Field(gt=0.0, le=100.0)]
    loss_in_bad_pct: Percent = 100.0
    loss_in_good_pct: Percent = 0.0

    @property
    def is_lossless(self) -> bool:
        return self.loss_in_good_pct == 0.0 and (
            self.p_good_to_bad_pct == 0.0 or self.loss_in_bad_pct == 0.0
        )

    @property
    def mean_loss_pct(self) -> float:
        """Stationary loss rate of the chain, in percent."""
        p, r = self.p_good_to_bad_pct / 100.0, self.r_bad_to_good_pct / 100.0
        share_bad = p / (p + r) if p + r > 0 else 0.0
        return 100.0 * (
            share_bad * self.loss_in_bad_pct / 100.0
            + (1.0 - share_bad) * self.loss_in_good_pct / 100.0
        )


LossSpec = Annotated[Union[RandomLoss, GilbertElliottLoss], Field(discriminator="model")]


class DirectionSpec(_Strict):
    """What one direction of the link does to every packet, resolved."""

    delay_ms: Milliseconds = 0.0
    jitter_ms: Milliseconds = 0.0
    jitter_distribution: JitterDistribution = "uniform"
    delay_correlation_pct: Percent = 0.0
    loss: LossSpec = RandomLoss()
    bandwidth_mbps: BandwidthMbps | None = None
    burst_bytes: Annotated[int, Field(gt=0, le=MAX_BURST_BYTES)] | None = None
    allow_reordering: bool = False

    @property
    def loss_pct(self) -> float:
        if isinstance(self.loss, RandomLoss):
            return self.loss.pct
        return self.loss.mean_loss_pct

    @property
    def rate_bytes_per_s(self) -> float:
        """Shaped rate in bytes per second; infinity when unshaped."""
        if self.bandwidth_mbps is None:
            return math.inf
        return self.bandwidth_mbps * 1e6 / 8.0


class _Overrides(_Strict):
    """Shorthands plus per-direction blocks; shared by profiles and schedule steps."""

    rtt_ms: Milliseconds | None = None
    jitter_ms: Milliseconds | None = None
    jitter_distribution: JitterDistribution | None = None
    delay_correlation_pct: Percent | None = None
    loss_pct: Percent | None = None
    bandwidth_mbps: BandwidthMbps | None = None
    allow_reordering: bool | None = None
    uplink: dict | None = None
    downlink: dict | None = None

    def apply_to(self, base: dict[str, dict]) -> dict[str, dict]:
        """Return per-direction field dicts with these overrides laid on ``base``."""
        merged = {direction: dict(fields) for direction, fields in base.items()}
        for direction in ("uplink", "downlink"):
            fields = merged[direction]
            if self.rtt_ms is not None:
                fields["delay_ms"] = self.rtt_ms / 2.0
            if self.loss_pct is not None:
                fields["loss"] = {"model": "random", "pct": self.loss_pct}
            for name in ("jitter_ms", "jitter_distribution", "delay_correlation_pct",
                         "bandwidth_mbps", "allow_reordering"):
                value = getattr(self, name)
                if value is not None:
                    fields[name] = value
            fields.update(getattr(self, direction) or {})
        return merged


class ScheduleStep(_Overrides):
    at_s: TimelineOffsetS


class Schedule(_Strict):
    """Changes over time; ``repeat_every_s`` makes the steps cycle."""

    steps: list[ScheduleStep] = Field(min_length=1, max_length=MAX_TIMELINE_STEPS)
    repeat_every_s: PeriodS | None = None

    @model_validator(mode="after")
    def _ordered(self) -> "Schedule":
        times = [step.at_s for step in self.steps]
        if times != sorted(times):
            raise ValueError("steps must be in increasing at_s order")
        if self.repeat_every_s is not None and times[-1] >= self.repeat_every_s:
            raise ValueError("every step's at_s must be below repeat_every_s")
        return self

    @model_validator(mode="after")
    def _bounded_changes(self) -> "Schedule":
        """At most ``MAX_CHANGE_TIMES`` changes within the horizon (counted, not listed: the
        count of ``NetworkProfile.change_times``)."""
        if self.repeat_every_s is not None:
            per_period = len(self.steps) + (self.steps[0].at_s > 0.0)   # + the return to base
            changes = per_period * (math.floor(TIMELINE_HORIZON_S / self.repeat_every_s) + 1)
            if changes > MAX_CHANGE_TIMES:
                raise ValueError(
                    f"repeat_every_s {self.repeat_every_s:g} with {per_period} changes a period "
                    f"makes {changes:.3g} changes in the {TIMELINE_HORIZON_S / 3600:g} h a "
                    f"timeline spans, more than {MAX_CHANGE_TIMES:,}: repeat every "
                    f"{per_period * TIMELINE_HORIZON_S / MAX_CHANGE_TIMES:.3g} s or more")
        return self


class ProfileFile(_Overrides):
    """A profile as written in YAML (shorthands allowed)."""

    name: str | None = None
    description: str = ""
    schedule: Schedule | None = None
    trace: str | None = Field(default=None, description="file of 't_s rtt_ms' lines")

    @model_validator(mode="after")
    def _one_timeline(self) -> "ProfileFile":
        if self.schedule is not None and self.trace is not None:
            raise ValueError("give either schedule or trace, not both")
        return self


Side = Literal["edge", "cloud"]
Direction = Literal["uplink", "downlink"]
# The one definition of which side sends each direction: the edge sends its drafts up,
# the cloud its verdicts and tokens down.  Kernel links shape a direction on the sender's
# egress (veth) or on the router's NIC facing the receiver; the sim link in the receiver.
SENDER: dict[Direction, Side] = {"uplink": "edge", "downlink": "cloud"}
RECEIVER: dict[Direction, Side] = {"uplink": "cloud", "downlink": "edge"}


def received_by(side: Side) -> Direction:
    """The direction ``side`` receives on."""
    return next(direction for direction, receiver in RECEIVER.items() if receiver == side)


class LinkState(_Strict):
    """Both directions at one moment."""

    uplink: DirectionSpec
    downlink: DirectionSpec

    @property
    def rtt_ms(self) -> float:
        return self.uplink.delay_ms + self.downlink.delay_ms


def with_rtt(state: LinkState, rtt_ms: float) -> LinkState:
    """``state`` with its RTT split evenly over the two directions, all else kept."""
    return LinkState(uplink=state.uplink.model_copy(update={"delay_ms": rtt_ms / 2.0}),
                     downlink=state.downlink.model_copy(update={"delay_ms": rtt_ms / 2.0}))


def with_extra_rtt(profile: "NetworkProfile", extra_ms: float) -> "NetworkProfile":
    """``profile`` with ``extra_ms`` more round-trip delay in every state, half each way."""
    def longer(state: LinkState) -> dict:
        return {direction: getattr(state, direction).model_copy(
                    update={"delay_ms": getattr(state, direction).delay_ms + extra_ms / 2.0})
                for direction in ("uplink", "downlink")}
    return profile.model_copy(update={
        "initial": LinkState(**longer(profile.initial)),
        "timeline": [TimedLinkState(at_s=step.at_s, **longer(step)) for step in profile.timeline]})


class TimedLinkState(LinkState):
    at_s: TimelineOffsetS


class NetworkProfile(_Strict):
    """A resolved profile: the initial link state and its timeline."""

    name: str
    description: str = ""
    initial: LinkState
    timeline: list[TimedLinkState] = Field(default_factory=list, max_length=MAX_TIMELINE_STEPS)
    repeat_every_s: PeriodS | None = None

    @property
    def is_static(self) -> bool:
        return not self.timeline

    def state_at(self, t_s: float) -> LinkState:
        """The link state in force ``t_s`` seconds after the link came up."""
        if not self.timeline:
            return self.initial
        if self.repeat_every_s is not None:
            t_s = t_s % self.repeat_every_s
            if self.repeat_every_s - t_s < TIME_EPSILON_S:  # a period boundary that rounded down
                t_s = 0.0
        current: LinkState = self.initial
        for step in self.timeline:
            if step.at_s > t_s + TIME_EPSILON_S:
                break
            current = step
        return LinkState(uplink=current.uplink, downlink=current.downlink)

    def change_times(self, horizon_s: float) -> list[float]:
        """Absolute times (s) up to ``horizon_s`` at which the state changes.

        A repeating schedule whose first step is after 0 reverts to the base
        state at every period boundary, which is a change too.
        """
        if not self.timeline:
            return []
        offsets = [step.at_s for step in self.timeline]
        if self.repeat_every_s is None:
            return [t for t in offsets if t <= horizon_s]
        later_periods = offsets if offsets[0] == 0.0 else [0.0, *offsets]
        times, period, period_start = [], 0, 0.0
        while period_start <= horizon_s:
            times += [period_start + t for t in (offsets if period == 0 else later_periods)
                      if period_start + t <= horizon_s]
            period += 1
            period_start = period * self.repeat_every_s
        return times


def parse_trace(text: str, source: str) -> list[ScheduleStep]:
    """The samples of a trace (the text of ``source``): one ``t_s rtt_ms`` pair a line,
    '#' comments, at most ``MAX_TIMELINE_STEPS`` samples."""
    steps = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].replace(",", " ").strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{source}:{number}: expected 't_s rtt_ms', got {line!r}")
        if len(steps) == MAX_TIMELINE_STEPS:
            raise ValueError(f"{source}:{number}: more than {MAX_TIMELINE_STEPS:,} samples")
        try:
            t_s, rtt_ms = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"{source}:{number}: not numbers: {line!r}") from None
        try:
            steps.append(ScheduleStep(at_s=t_s, rtt_ms=rtt_ms))
        except ValidationError as error:
            problem = error.errors()[0]
            raise ValueError(f"{source}:{number}: {problem['loc'][0]}: {problem['msg']}") from None
    if not steps:
        raise ValueError(f"{source}: trace has no samples")
    return steps


def resolve(raw: ProfileFile, name: str,
            trace: list[ScheduleStep] | None = None) -> NetworkProfile:
    """Expand shorthands and the timeline into a ``NetworkProfile``; ``trace``: the samples
    of ``raw.trace``'s file (``parse_trace``), which the caller read.

    Raises ``pydantic.ValidationError`` or ``ValueError`` naming the bad field.
    """
    empty: dict[str, dict] = {"uplink": {}, "downlink": {}}
    base_fields = raw.apply_to(empty)
    initial = LinkState.model_validate(base_fields)
    if (raw.trace is None) != (trace is None):
        raise ValueError("trace: give the samples of the trace file, and only with a trace")
    schedule = Schedule(steps=trace) if trace is not None else raw.schedule
    timeline = []
    for step in (schedule.steps if schedule else []):
        timeline.append(TimedLinkState.model_validate(
            {"at_s": step.at_s, **step.apply_to(base_fields)}))
    return NetworkProfile(
        name=raw.name or name,
        description=raw.description,
        initial=initial,
        timeline=timeline,
        repeat_every_s=schedule.repeat_every_s if schedule else None,
    )
