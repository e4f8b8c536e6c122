"""A sweep's budget guardrail: which strategy runs of a cell to skip.

``load_guardrail`` resolves a job's guardrail fields (``GuardrailFields``) once, before
anything runs or is created: the folder ``orchestrator latency fit`` wrote (``read_fit``:
``estimator.json``, the per-stage models fitted on a measured table; ``guardrail.json``, the
split-conformal interval of each stage's held-out ratios measured / predicted), checked to
apply to the job's pair on this host (an hf pair on CPU, at a dtype and torch threads the
table was measured at, without device emulation: a synthetic pair's times come from its
latency profile, not from any fitted stage), the shapes of the pair's two models, its
vocabulary width (what the codec's messages carry) and the contexts the job's queries
decode at (their prompts' tokens, up to the token budget).

``SweepGuardrail.at_probe`` fits the guardrail to this host as it runs now (``HostSpeed``),
from a short probe run of the pair on an unshaped link made just before the sweep's cells
(``ProbeRun``, ``orchestrator.lifecycle.sweep.guardrail_probe``; job field
``guardrail_probe``): every stage is scaled by how fast its cloud-only tokens came against the
fitted decoding step (``time_scale``, from ``nasd.latency.guardrail.host_speed``: a virtual
host's speed drifts by tens of percent over hours, more than the stages' intervals allow
for, and the serving loop costs a little on every token) and its interval widened by how far
the answers' speeds strayed from it (``speed_spread``), and every fixed-K cycle pays the
round trip its cycles took on that link (``round_trip_s``: the agents' messages, wake-ups
and, in vm mode, the VM's forwarding: 0.5-0.9 ms on the build VM), on top of the profile's
RTT.

``SweepGuardrail.judge`` predicts the seconds per committed token of each strategy run of a
cell with its interval (``nasd.latency.guardrail.per_token_spread``: ``draft_token``,
``verify(K)`` and ``decode`` from ``nasd.latency.estimator.stage_seconds``; the RTT and one
cycle's bytes, ``agents.payload_bytes``, through the link's token buckets,
``shaping.link_model.transfer_s``, over every state of the profile's timeline) and decides
(``decide``): a rejected run is skipped, an accepted or an unsure one runs, and so does a
strategy the model does not cover (``unpredictable``).  ``RunVerdict.record`` is what the
sweep's ``cells.jsonl`` keeps of a decision, with the run's measurement beside it once it
ran.  Every failure is a one-line ``ConfigError`` naming the job field and its flag.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from agents.backends.hf import (
    HFPairConfig,
    load_tokenizer,
    model_configs,
    pair_width,
    torch_threads,
)
from agents.backends.tokenizer import HFTokenizer
from agents.payload_bytes import cycle_bytes
from nasd.analytic import accepted_distribution
from nasd.latency.estimator import LatencyEstimator, stage_seconds
from nasd.latency.guardrail import (
    UNCERTAIN,
    Spread,
    StageInterval,
    decide,
    host_speed,
    per_token_spread,
    unpredictable,
    verdict_held,
)
from nasd.latency.roofline import Device
from nasd.latency.stages import ROLE, ModelShape
from orchestrator.config.job import StrategyRun
from orchestrator.config.loading import ConfigError, flag, load_device, named, read_text
from orchestrator.config.run_spec import RunSpec
from shaping.link_model import transfer_s
from shaping.profile import LinkState, NetworkProfile

ESTIMATOR_FILE = "estimator.json"      # what `orchestrator latency fit` writes: the stages
INTERVALS_FILE = "guardrail.json"      # ... and the guardrail's conformal intervals
FITTED_MODEL = "roofline"              # the family estimator.json holds


@dataclass(frozen=True)
class ProbeRun:
    """What a sweep's probe run measured on an unshaped link."""

    steps: list[list[tuple[int, float]]]   # cloud-only, per answer: (context tokens, seconds
                                           # since the token before)
    answer_tokens: list[int]          # cloud-only: each answer's tokens (the sweep's own)
    round_trips_s: list[float] = field(default_factory=list)   # fixed-K: each cycle's network
                                                               # time at no RTT


@dataclass(frozen=True)
class FittedModel:
    """What a folder of ``orchestrator latency fit`` holds for the guardrail."""

    estimator: LatencyEstimator
    intervals: dict[str, StageInterval]   # by stage: ``UNCERTAIN``'s
    table: dict                           # the measured table's description (``describe``)
    device: Device | None = None          # the device file it was fitted against, as it was


def _read_json(path: Path) -> dict:
    text = read_text(path)
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ConfigError(f"{path}: not JSON: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def read_fit(folder: Path) -> FittedModel:
    """The fitted stages, their intervals and the table's description from ``folder``."""
    if not folder.is_dir():
        what = "a file, not a folder" if folder.exists() else "no such folder"
        raise ConfigError(f"{folder}: {what} (give one `orchestrator latency fit` wrote, "
                          f"with {ESTIMATOR_FILE} and {INTERVALS_FILE}: TABLE without .csv)")
    path = folder / ESTIMATOR_FILE
    data = _read_json(path)
    try:
        estimator = LatencyEstimator.from_dict(data)
        table = dict(data["table"])
        recorded = data.get("device_file")      # fits before 2026-12-05 recorded none
        device = Device(**recorded) if recorded is not None else None
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"{path}: not an estimator of `orchestrator latency fit`: "
                          f"{str(error).splitlines()[0]}") from None
    missing = [stage for stage in UNCERTAIN if stage not in estimator.stages]
    if missing:
        raise ConfigError(f"{path}: no model of the {missing[0]} stage")
    path = folder / INTERVALS_FILE
    data = _read_json(path)
    if data.get("model") != FITTED_MODEL:
        raise ConfigError(f"{path}: intervals of the {data.get('model')!r} model; "
                          f"{ESTIMATOR_FILE} holds the {FITTED_MODEL} one")
    intervals = {}
    for stage in UNCERTAIN:
        try:
            interval = StageInterval(**data["intervals"][stage])
        except (KeyError, TypeError) as error:
            raise ConfigError(f"{path}: intervals: no interval of the {stage} stage "
                              f"({error})") from None
        if not (0 < interval.low <= interval.high < math.inf):
            raise ConfigError(f"{path}: intervals.{stage}: low and high must be ratios with "
                              f"0 < low <= high (got {interval.low}, {interval.high})")
        intervals[stage] = interval
    return FittedModel(estimator, intervals, table, device)


def _ms(seconds: float | None) -> float | None:
    return round(1000.0 * seconds, 4) if seconds is not None and math.isfinite(seconds) else None


@dataclass(frozen=True)
class HostSpeed:
    """How this host serves now against the fitted stages (``SweepGuardrail.at_probe``)."""

    time_scale: float = 1.0                          # what the fitted times are multiplied by
    speed_spread: tuple[float, float] = (1.0, 1.0)   # how far below and above it answers went
    round_trip_s: float = 0.0                        # a fixed-K cycle's link at no RTT

    @property
    def scale_range(self) -> tuple[float, float]:
        """The least and the most factor on the fitted times."""
        low, high = self.speed_spread
        return self.time_scale * low, self.time_scale * high

    def record(self) -> dict:
        return {"time_scale": round(self.time_scale, 4),
                "speed_spread": [round(end, 4) for end in self.speed_spread],
                "round_trip_ms": _ms(self.round_trip_s)}


@dataclass(frozen=True)
class RunVerdict:
    """The guardrail's decision on one strategy run of a cell."""

    run: StrategyRun
    verdict: str                  # accept, reject, measure
    per_token_s: Spread | None    # the prediction; None: the model does not cover the run
    budget_s: float
    why: str
    host: HostSpeed = HostSpeed()   # what the prediction took of this host

    def record(self, measured: dict | None = None) -> dict:
        """The decision as ``cells.jsonl`` keeps it (ms per committed token); with
        ``measured`` (the run's summary row: ``tokens_per_s`` and its interval) whether the
        run kept the budget and whether the decision held (``verdict_held``)."""
        spread = self.per_token_s
        row = {"label": self.run.label, "strategy": self.run.strategy, "k": self.run.k,
               "verdict": self.verdict, "budget_ms_per_token": _ms(self.budget_s),
               "predicted_low_ms": _ms(spread.low) if spread else None,
               "predicted_ms": _ms(spread.point) if spread else None,
               "predicted_high_ms": _ms(spread.high) if spread else None,
               **self.host.record(), "why": self.why, "ran": measured is not None}
        if measured is None:
            return row
        rates = [float(measured.get(column, np.nan)) for column in
                 ("tokens_per_s", "tokens_per_s_high", "tokens_per_s_low")]
        seconds = [1.0 / rate if rate > 0 else math.nan for rate in rates]
        inside = (None if spread is None or not math.isfinite(seconds[0])
                  else bool(spread.low <= seconds[0] <= spread.high))
        return row | {"measured_ms": _ms(seconds[0]), "measured_low_ms": _ms(seconds[1]),
                      "measured_high_ms": _ms(seconds[2]),
                      "within_budget": (bool(seconds[0] <= self.budget_s)
                                        if math.isfinite(seconds[0]) else None),
                      "verdict_held": verdict_held(self.verdict, seconds[0], self.budget_s),
                      "inside_predicted": inside}


def _why(verdict: str, spread: Spread, budget_s: float) -> str:
    low, high, budget = _ms(spread.low), _ms(spread.high), 1000 * budget_s   # as recorded
    high = math.inf if high is None else high
    if verdict == "reject":
        return f"even its least, {low:.2f} ms/token, breaks the budget of {budget:g} ms"
    if verdict == "accept":
        return f"even its most, {high:.2f} ms/token, fits the budget of {budget:g} ms"
    if math.isinf(high):
        return (f"its least, {low:.2f} ms/token, fits the budget of {budget:g} ms; jitter or "
                "loss on the link: the model has no most")
    return f"the budget of {budget:g} ms lies inside its interval {low:.2f}-{high:.2f} ms/token"


def _leaves(figures: dict, prefix: str = "") -> dict:
    """Nested figures as dotted names (``peak_tflops.bfloat16``) and their values."""
    out = {}
    for name, value in figures.items():
        if isinstance(value, dict):
            out |= _leaves(value, f"{prefix}{name}.")
        else:
            out[f"{prefix}{name}"] = value
    return out


def _bounded(state: LinkState) -> bool:
    """Whether the model bounds what the link adds to a cycle: no jitter, no loss."""
    return all(direction.jitter_ms == 0 and direction.loss.is_lossless
               for direction in (state.uplink, state.downlink))


@dataclass(frozen=True)
class SweepGuardrail:
    """A job's guardrail resolved for its pair on this host (``load_guardrail``)."""

    budget_s: float                       # per committed token
    fitted: FittedModel
    device: Device                        # the device file the stages were fitted on
    shapes: dict[str, ModelShape]         # by role: draft, target
    dtype: str
    width: int                            # the pair's vocabulary: a codec's row
    contexts: Spread                      # tokens: the least, mean and most context decoded at
    acceptance: Spread
    source: str = ""                      # the folder, for display
    device_found: bool = True             # False: no such device file here, the fit's record
    host: HostSpeed = HostSpeed()         # how this host serves now (as fitted: 1, no RTT)
    answer_tokens: tuple[int, ...] = ()   # the answers' lengths (none: endless answers)
    probe: tuple[int, int] = (0, 0)       # the tokens and cycles they come from (0: as fitted)
    _stages: dict = field(default_factory=dict, compare=False, repr=False)

    def describe(self) -> str:
        table, interval = self.fitted.table, self.fitted.intervals["verify"]
        measured_on = table.get("host", {})
        tokens, cycles = self.probe
        answers = (f", answers of {min(self.answer_tokens)}-{max(self.answer_tokens)} "
                   "tokens" if self.answer_tokens else "")
        host = self.host
        low, high = host.scale_range
        speed = (f"fitted times x{host.time_scale:.2f} (x{low:.2f}-{high:.2f} over its answers, "
                 f"the intervals widened so) and {1000 * host.round_trip_s:.2f} ms "
                 f"of the agents' own round trip per cycle{answers} (a probe run just now: "
                 f"{tokens} cloud-only tokens at x{host.time_scale:.2f} the fitted decoding "
                 f"step, {cycles} fixed-K cycles on an unshaped link)"
                 if tokens or cycles else "fitted times as they are (no probe run)")
        return (f"guardrail: budget {1000 * self.budget_s:g} ms per token; stages fitted on "
                f"{self.device.name} ({table.get('campaign', '?')}, host "
                f"{measured_on.get('node', '?')}, {measured_on.get('processor', '?')}) in "
                f"{self.source}, {speed}, {interval.coverage:.0%} split-conformal intervals; "
                f"acceptance "
                f"{self.acceptance.low:g}-{self.acceptance.high:g}; contexts "
                f"{self.contexts.low:g}-{self.contexts.high:g} tokens")

    def at_probe(self, probe: ProbeRun) -> SweepGuardrail:
        """This guardrail fitted to how this host serves now: every stage scaled by the
        ``time_scale`` of the probe's cloud-only answers' tokens (context, seconds) against
        the fitted ``decode`` stage at those contexts, and every fixed-K cycle's link given the
        median round trip of the probe's cycles.  What the probe lacks (a finished cell that
        ran no cloud-only, or no fixed-K on a plain link) stays as it was."""
        host = self.host
        if any(probe.steps):
            measured = [[seconds for _, seconds in answer] for answer in probe.steps]
            predicted = [[self._seconds("decode", 1, context) for context, _ in answer]
                         for answer in probe.steps]
            speed = host_speed(measured, predicted)
            host = replace(host, time_scale=speed.point,
                           speed_spread=(speed.low / speed.point, speed.high / speed.point))
        if probe.round_trips_s:
            host = replace(host, round_trip_s=float(np.median(probe.round_trips_s)))
        return replace(self, host=host,
                       answer_tokens=tuple(probe.answer_tokens) or self.answer_tokens,
                       probe=(sum(map(len, probe.steps)),
                              len(probe.round_trips_s) or self.probe[1]),
                       _stages={})

    def foreign_host(self, processor: str) -> str | None:
        """A warning when the stages were measured on another processor than ``processor``
        (this host's): the fitted times are that machine's, and so are the verdicts."""
        fitted = self.fitted.table.get("host", {}).get("processor")
        if not fitted or fitted == processor:
            return None
        return (f"guardrail: its stages were measured on {fitted}, this host is {processor}: "
                "its verdicts may not hold here (`orchestrator latency measure` and `fit` "
                "on this host give its own)")

    def device_warning(self) -> str | None:
        """A warning when the device is not the file the fit was made against: none of that
        name here (the fit's record of it is used), or one measured again since (the stages
        were fitted against the old figures)."""
        if not self.device_found:
            return (f"guardrail: no device file {self.device.name!r} here: the one the fit in "
                    f"{self.source} recorded is used")
        if self.fitted.device is None:
            return None
        then, now = _leaves(self.fitted.device.figures()), _leaves(self.device.figures())
        changed = [name for name in [*then, *(name for name in now if name not in then)]
                   if then.get(name) != now.get(name)]
        if not changed:
            return None
        more = f", +{len(changed) - 1} more" if len(changed) > 1 else ""
        return (f"guardrail: device {self.device.name}'s file has changed since the fit in "
                f"{self.source} ({changed[0]}: {then.get(changed[0])} then, "
                f"{now.get(changed[0])} now{more}): its stages were fitted against the old "
                "figures (`orchestrator latency fit` again)")

    def judge(self, profile: NetworkProfile, codec: str,
              runs: list[StrategyRun]) -> list[RunVerdict]:
        """Each run of a cell on ``profile`` with ``codec``, decided."""
        states = [profile.initial, *profile.timeline]
        return [self._verdict(run, states, codec) for run in runs]

    def _verdict(self, run: StrategyRun, states: list[LinkState], codec: str) -> RunVerdict:
        why = unpredictable(run.strategy, run.draft_ahead)
        if why is not None:
            return RunVerdict(run, "measure", None, self.budget_s, why, self.host)
        k = run.k or 1                   # cloud-only: one decoding step, no K
        stages = {stage: self._stage(stage, k) for stage in UNCERTAIN}
        rtt_s, transfer_s = self._link(run.strategy, k, states, codec)
        spread = per_token_spread(run.strategy, k, stages, self.fitted.intervals, rtt_s,
                                  transfer_s, self.acceptance, self.answer_tokens)
        if not all(_bounded(state) for state in states):
            spread = replace(spread, high=math.inf)
        verdict = str(decide(spread.low, spread.high, spread.point, self.budget_s))
        return RunVerdict(run, verdict, spread, self.budget_s,
                          _why(verdict, spread, self.budget_s), self.host)

    def _stage(self, stage: str, k: int) -> Spread:
        """The stage's predicted seconds at the least, mean and most context, scaled to the
        host's speed and widened by its spread."""
        if (stage, k) not in self._stages:
            low, high = self.host.scale_range
            self._stages[stage, k] = Spread(*(
                scale * self._seconds(stage, k, context)
                for scale, context in ((low, self.contexts.low),
                                       (self.host.time_scale, self.contexts.point),
                                       (high, self.contexts.high))))
        return self._stages[stage, k]

    def _seconds(self, stage: str, k: int, context: float) -> float:
        """The fitted stage's seconds for the pair's model at ``context`` tokens."""
        return stage_seconds(self.fitted.estimator, stage, self.device,
                             self.shapes[ROLE[stage]], self.dtype,
                             context_tokens=int(round(context)), k=k).seconds

    def _link(self, strategy: str, k: int, states: list[LinkState],
              codec: str) -> tuple[Spread, Spread]:
        """The RTT (the profile's and the agents' own round trip) and one cycle's transfer
        (s) over the timeline's states: the least, at its start, the most; only fixed-K
        speculation crosses the link once per cycle."""
        if strategy != "fixed-k":
            return Spread(0.0, 0.0, 0.0), Spread(0.0, 0.0, 0.0)
        sizes = cycle_bytes(codec, k, self.width)
        rejected = sizes.get("down_rejected", sizes["down"])   # q-scalar: the target row
        rtts = [state.rtt_ms / 1000.0 + self.host.round_trip_s for state in states]
        kept = [transfer_s(s, "uplink", sizes["up"]) + transfer_s(s, "downlink", sizes["down"])
                for s in states]
        with_row = [transfer_s(s, "uplink", sizes["up"]) + transfer_s(s, "downlink", rejected)
                    for s in states]
        p_row = 1.0 - accepted_distribution(self.acceptance.point, k)[-1]   # not all kept
        return (Spread(min(rtts), rtts[0], max(rtts)),
                Spread(min(kept), kept[0] + p_row * (with_row[0] - kept[0]), max(with_row)))


def load_guardrail(spec: RunSpec) -> SweepGuardrail | None:
    """The guardrail of ``spec``'s job for its pair and prompts; None when it has none."""
    job = spec.job
    if not job.guarded:
        return None
    where = named("guardrail_path")
    pair = spec.model_pair
    if not isinstance(pair, HFPairConfig):
        raise ConfigError(f"{where}: model pair {pair.name!r} is a synthetic pair: its times "
                          "come from its latency profile, not from fitted stages; the "
                          "guardrail predicts an hf pair (--model-pair)")
    if spec.emulation is not None:
        raise ConfigError(f"{where}: the job emulates devices ({flag('edge_device')}): the "
                          "fitted stages are this host's, not the emulated devices'")
    if (pair.edge_device, pair.cloud_device) != ("cpu", "cpu"):
        raise ConfigError(f"{where}: model pair {pair.name!r} runs on "
                          f"{pair.edge_device}/{pair.cloud_device}: the stages were fitted "
                          "on a CPU")
    folder = Path(job.guardrail_path)
    try:
        fitted = read_fit(folder)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    measured_on = (fitted.table.get("dtype", []), fitted.table.get("threads", []))
    threads = torch_threads(pair)
    if pair.dtype not in measured_on[0] or threads not in measured_on[1]:
        raise ConfigError(f"{where}: {folder / ESTIMATOR_FILE} was fitted on "
                          f"{'/'.join(map(str, measured_on[0]))} at "
                          f"{'/'.join(map(str, measured_on[1]))} torch thread(s); model pair "
                          f"{pair.name!r} runs {pair.dtype} at {threads} (dtype, cpu_threads)")
    found = True
    try:
        device = load_device(fitted.estimator.device)
    except ConfigError as error:
        if fitted.device is None:
            raise ConfigError(f"{where}: {folder / ESTIMATOR_FILE}: its device: {error}") \
                from None
        device, found = fitted.device, False
    shapes = {role: ModelShape.from_config(config)
              for role, config in model_configs(pair).items()}
    tokenizer = HFTokenizer(load_tokenizer(pair))
    lengths = [len(tokenizer.encode(prompt.prompt))
               for prompt in spec.prompts[: job.max_queries]]
    budget = job.max_new_tokens
    contexts = Spread(min(lengths) + 1, float(np.mean(lengths)) + budget / 2,
                      max(lengths) + budget)
    low, high = job.guardrail_acceptance
    return SweepGuardrail(budget_s=job.latency_budget_ms_per_token / 1000.0, fitted=fitted,
                          device=device, device_found=found, shapes=shapes, dtype=pair.dtype,
                          width=pair_width(pair), contexts=contexts,
                          acceptance=Spread(low, (low + high) / 2, high), source=str(folder))
