"""Jobs: which strategies to run, on which model pair and prompts, how often.

``JobConfig`` is the validated job file; ``plan`` expands it into the
strategy runs (one per strategy, one per K for ``fixed-k``; the adaptive K
policies ``nasd``, ``hf-heuristic`` and ``bandit`` choose K within
[``nasd_k_min``, ``nasd_k_max``]; ``fixed-k`` and ``nasd`` draft ahead by the
job's ``draft_ahead``, the baselines run as they are beside them).  Its optional
``network`` section (``NetworkSpace``) is what ``orchestrator sweep`` expands
into cells: named profiles and grids of RTT x bandwidth x jitter x loss,
each crossed with the payload codecs to compare, and its budget guardrail fields
(``GuardrailFields``) the per-token latency budget against which the sweep skips the
strategy runs a fitted latency model predicts will break it (``orchestrator.config.guardrail``;
``narrowed`` is a job cut to the runs kept).  Its device emulation fields
(``DeviceEmulationFields``) name the devices the agents act as and the model sizes they
are timed for (resolved into devices and shapes by ``orchestrator.config.emulation``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from agents.codecs import get_codec
from agents.edge import AHEAD_STRATEGIES, MAX_DRAFT_AHEAD, STRATEGY_NAMES, StrategyName
from agents.messages import MAX_DRAFT_TOKENS, MAX_NEW_TOKENS
from agents.security import DataPlaneSecurity
from agents.sampling import SamplingConfig, Seed
from nasd.latency.stages import Dtype
from nasd.policy import DEFAULT_K_MAX, DEFAULT_K_MIN, EWMA, MEAN, POLICY_NAMES, percentile_of
from shaping.profile import BandwidthMbps, JitterDistribution, Milliseconds, Percent

ALL_STRATEGIES: tuple[StrategyName, ...] = STRATEGY_NAMES
# what a job without ``strategies`` runs: the baselines and fixed K (name the adaptive ones)
DEFAULT_STRATEGIES: tuple[StrategyName, ...] = ("cloud-only", "cloud-spec", "edge-only", "fixed-k")

MAX_RECEIVE_TIMEOUT_S = 3600.0
MAX_SWEEP_CELLS = 10_000             # a sweep's network section: grid points and profiles x codecs
STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
# the order a run sends its queries in: each prompt to every strategy run before the next
# prompt, or each strategy run's queries together
QueryOrder = Literal["interleaved", "by-strategy"]
QUERY_ORDERS: tuple[str, ...] = get_args(QueryOrder)

Item = TypeVar("Item")


def _each_once(items: list) -> list:
    seen = set()
    for item in items:
        if item in seen:
            raise ValueError(f"{item!r} is listed twice")
        seen.add(item)
    return items


Distinct = Annotated[list[Item], AfterValidator(_each_once)]   # a list without repeats


class NetworkGrid(BaseModel):
    """The cartesian product of its axes; each point is one symmetric link (each axis takes
    what the profile field of its name takes)."""

    model_config = STRICT
    rtt_ms: Distinct[Milliseconds] = Field(min_length=1)
    bandwidth_mbps: Distinct[BandwidthMbps | None] = Field(default=[None], min_length=1)
    jitter_ms: Distinct[Milliseconds] = Field(default=[0.0], min_length=1)
    jitter_distribution: JitterDistribution = "normal"
    loss_pct: Distinct[Percent] = Field(default=[0.0], min_length=1)
    codecs: Distinct[str] = Field(default=[], description="default: the network section's")

    @model_validator(mode="after")
    def _known_codecs(self) -> "NetworkGrid":
        for codec in self.codecs:
            get_codec(codec)
        return self

    @property
    def points(self) -> int:
        return (len(self.rtt_ms) * len(self.bandwidth_mbps) * len(self.jitter_ms)
                * len(self.loss_pct))


class NetworkSpace(BaseModel):
    """What a sweep covers: profiles by name, grids, and the codecs to cross them with."""

    model_config = STRICT
    profiles: Distinct[str] = []
    grids: list[NetworkGrid] = []
    codecs: Distinct[str] = Field(default=[], description="default: the job's codec")

    @model_validator(mode="after")
    def _not_empty(self) -> "NetworkSpace":
        if not self.profiles and not self.grids:
            raise ValueError("give profiles or grids (or both)")
        for codec in self.codecs:
            get_codec(codec)
        return self

    @model_validator(mode="after")
    def _bounded_cells(self) -> "NetworkSpace":
        codecs = max(len(self.codecs), 1)
        cells = len(self.profiles) * codecs + sum(grid.points * (len(grid.codecs) or codecs)
                                                  for grid in self.grids)
        if cells > MAX_SWEEP_CELLS:
            raise ValueError(f"{cells:,} cells (profiles and grid points, times codecs), "
                             f"more than {MAX_SWEEP_CELLS:,}")
        return self


class DeviceEmulationFields(BaseModel):
    """A job's device emulation: the agents compute the real tokens, each forward pass padded
    to the time the named device takes for a model of the declared size
    (``agents.backends.emulated``).  Both devices or neither; each side's model declared by
    its size or by its exact shape, one of the two."""

    model_config = STRICT
    edge_device: str | None = Field(default=None, description="device emulation: the device "
                                    "the edge's draft runs on (a name under configs/devices, "
                                    "or a YAML path)")
    cloud_device: str | None = Field(default=None, description="device emulation: the device "
                                     "the cloud's models run on")
    edge_model_params: float | None = Field(default=None, gt=0,
                                            description="device emulation: the draft's size "
                                            "in parameters, timed as the published Qwen2.5 "
                                            "shape nearest to it")
    edge_model_shape: str | None = Field(default=None, description="device emulation: the "
                                         "draft's exact shape: a published one by name "
                                         "(llama-160m, qwen2.5-0.5b, ...) or a transformers "
                                         "config.json (or its model folder)")
    cloud_model_params: float | None = Field(default=None, gt=0,
                                             description="device emulation: the target's size "
                                             "in parameters")
    cloud_model_shape: str | None = Field(default=None, description="device emulation: the "
                                          "target's exact shape")
    emulated_dtype: Dtype = Field(
        default="bfloat16", description="device emulation: the dtype both models are timed at")

    @property
    def emulates_devices(self) -> bool:
        return self.edge_device is not None

    @model_validator(mode="after")
    def _declared_per_side(self) -> "DeviceEmulationFields":
        if (self.edge_device is None) != (self.cloud_device is None):
            raise ValueError("device emulation needs both edge_device and cloud_device")
        for side, role in (("edge", "draft"), ("cloud", "target")):
            declared = [name for name in (f"{side}_model_params", f"{side}_model_shape")
                        if getattr(self, name) is not None]
            if not self.emulates_devices and declared:
                raise ValueError(f"{declared[0]} declares the {role} for device emulation, "
                                 "which needs edge_device and cloud_device")
            if self.emulates_devices and len(declared) != 1:
                raise ValueError(f"{side}_device: declare the {role}'s size with one of "
                                 f"{side}_model_params and {side}_model_shape"
                                 + (" (not both)" if declared else ""))
        return self


Probability = Annotated[float, Field(ge=0.0, le=1.0)]


PROBE_NEEDS_GUARDRAIL = "guardrail_probe needs guardrail_path and latency_budget_ms_per_token"


class GuardrailFields(BaseModel):
    """A sweep's budget guardrail: the budget, the folder of the fitted latency model that
    predicts each strategy run against it, and the acceptance to assume.  The budget and the
    folder together or neither."""

    model_config = STRICT
    latency_budget_ms_per_token: float | None = Field(
        default=None, gt=0, description="sweep: the budget in ms per committed token; a "
        "strategy run of a cell the guardrail predicts will break it is skipped (needs "
        "guardrail_path; `run` ignores it)")
    guardrail_path: str | None = Field(
        default=None, description="sweep: a folder of `orchestrator latency fit` "
        "(estimator.json, guardrail.json): the fitted stages and their conformal intervals "
        "the guardrail predicts with")
    guardrail_acceptance: tuple[Probability, Probability] = Field(
        default=(0.0, 1.0), description="sweep guardrail: the least and the most per-token "
        "acceptance to assume (default: any)")
    guardrail_probe: bool = Field(
        default=True, description="sweep guardrail: before judging, run the pair cloud-only "
        "and fixed-K on an unshaped link, scale every fitted stage by how fast this host "
        "served against the fitted times and add its cycles' own round trip to every RTT "
        "(false: the fitted times as they are)")

    @property
    def guarded(self) -> bool:
        return self.guardrail_path is not None

    @field_validator("guardrail_acceptance", mode="before")
    @classmethod
    def _two_ends(cls, value):
        if isinstance(value, (list, tuple)) and len(value) != 2:
            raise ValueError(f"two numbers, the least and the most acceptance (got "
                             f"{list(value)})")
        return value

    @model_validator(mode="after")
    def _budget_with_model(self) -> "GuardrailFields":
        if (self.latency_budget_ms_per_token is None) != (self.guardrail_path is None):
            given, needed = (("latency_budget_ms_per_token", "guardrail_path")
                             if self.guardrail_path is None
                             else ("guardrail_path", "latency_budget_ms_per_token"))
            raise ValueError(f"{given} needs {needed}: the guardrail judges a budget with a "
                             "fitted latency model")
        low, high = self.guardrail_acceptance
        if low > high:
            raise ValueError(f"guardrail_acceptance: the least ({low:g}) is above the most "
                             f"({high:g})")
        if not self.guarded and self.guardrail_acceptance != (0.0, 1.0):
            raise ValueError("guardrail_acceptance needs guardrail_path and "
                             "latency_budget_ms_per_token")
        if not self.guarded and not self.guardrail_probe:
            raise ValueError(PROBE_NEEDS_GUARDRAIL)
        return self


class JobConfig(GuardrailFields, DeviceEmulationFields, SamplingConfig):
    """A benchmark job; its decoding fields (``decoding``, ``temperature``, ``top_k``,
    ``top_p``) are ``SamplingConfig``'s, defined there once, its device emulation fields
    ``DeviceEmulationFields``', its guardrail fields ``GuardrailFields``'."""

    model_config = STRICT
    name: str = "job"
    description: str = ""
    model_pair: str = "synthetic"
    prompts: str = "default"
    max_queries: Annotated[int, Field(gt=0)] | None = None
    strategies: Distinct[StrategyName] = Field(default=list(DEFAULT_STRATEGIES), min_length=1)
    k_values: Distinct[Annotated[int, Field(ge=1, le=MAX_DRAFT_TOKENS)]] = Field(default=[3, 5, 10, 15],
                                                                   min_length=1)
    cloud_spec_k: int = Field(default=5, ge=1, le=MAX_DRAFT_TOKENS)
    nasd_k_min: int = Field(default=DEFAULT_K_MIN, ge=1, le=MAX_DRAFT_TOKENS,
                            description="nasd, hf-heuristic, bandit: the smallest K they choose")
    nasd_k_max: int = Field(default=DEFAULT_K_MAX, ge=1, le=MAX_DRAFT_TOKENS,
                            description="nasd, hf-heuristic, bandit: the largest K they choose")
    nasd_edge_only_cutoff: bool = Field(default=False, description="nasd: past the reversal "
                                        "RTT, serve stretches with the draft alone where that "
                                        "beats handing them to the cloud (lossy, flagged; "
                                        "labelled nasd-cutoff)")
    nasd_confidence_floor: float = Field(default=0.0, ge=0.0, le=1.0, description="nasd: "
                                         "within a cycle, stop drafting before a position "
                                         "whose likeliest draft token has a lower probability "
                                         "(0: never; K stays the ceiling)")
    nasd_rtt_estimate: str = Field(default=EWMA, description="nasd: the RTT it decides on: "
                                   "ewma, or a percentile of the last second's samples "
                                   "(p50, p90, ...)")
    nasd_objective: str = Field(default=MEAN, description="nasd: what K optimises: mean "
                                "(expected tokens/s), or a percentile of a query's decode "
                                "time (p95, ...)")
    nasd_rtt_table_path: str | None = Field(default=None, description="nasd: an RTT -> K "
                                            "table (`orchestrator calibrate`); K is looked up "
                                            "for the RTT estimate instead of the online argmax")
    nasd_calibration_path: str | None = Field(default=None, description="nasd: a calibration "
                                              "file (`orchestrator calibrate`) that seeds "
                                              "the controller's online estimates")
    draft_ahead: int = Field(default=0, ge=0, le=MAX_DRAFT_AHEAD, description="fixed-k, "
                             "nasd: while a verdict is in flight, draft and send up to this "
                             "many further blocks, each on the premise that the blocks before "
                             "it are kept whole (lossless; 0: none)")
    codec: str | None = Field(default=None, description="default: ids for greedy, q-scalar for sampling")
    max_new_tokens: int = Field(default=64, gt=0, le=MAX_NEW_TOKENS)
    repetitions: int = Field(default=1, gt=0, description="how often each query runs (the "
                             "run's queries in all are bounded: ``RunSpec.build``)")
    seed: Seed = 0
    query_order: QueryOrder = Field(default="interleaved", description="interleaved: each "
                                    "prompt (and repetition) goes to every strategy run before "
                                    "the next, so a host whose speed drifts slows every "
                                    "strategy alike; by-strategy: one strategy run's queries "
                                    "after another's")
    receive_timeout_s: float = Field(default=30.0, gt=0, le=MAX_RECEIVE_TIMEOUT_S)
    warmup_tokens: int = Field(default=5, ge=0, le=MAX_NEW_TOKENS, description="per strategy, "
                               "one unrecorded query of this many tokens first (0: none): the "
                               "data-plane handshake and first-call costs stay out of the first "
                               "query's TTFT, and nasd's probe of the cloud's step streams the "
                               "4 tokens after the first, enough for it to stand")
    data_plane_security: DataPlaneSecurity = Field(
        default="auto", description="the data plane between the agents: curve (authenticated "
        "and encrypted with keys made for the run), plain, or auto: curve whenever it leaves "
        "this host's loopback and the run's own namespaces (`agents.security`)")
    network: NetworkSpace | None = Field(default=None, description="what `orchestrator sweep` "
                                         "covers; `run` takes --profile instead")

    @field_validator("codec")
    @classmethod
    def _known_codec(cls, name: str | None) -> str | None:
        if name is not None:
            get_codec(name)
        return name

    @field_validator("nasd_rtt_estimate")
    @classmethod
    def _rtt_estimate(cls, choice: str) -> str:
        percentile_of(choice, EWMA)
        return choice

    @field_validator("nasd_objective")
    @classmethod
    def _objective(cls, choice: str) -> str:
        percentile_of(choice, MEAN)
        return choice

    @model_validator(mode="after")
    def _table_is_for_the_mean(self) -> "JobConfig":
        if self.nasd_rtt_table_path and self.nasd_objective != MEAN:
            raise ValueError(f"nasd_rtt_table_path holds the mean objective's K: it cannot "
                             f"serve nasd_objective {self.nasd_objective!r}")
        return self

    @model_validator(mode="after")
    def _k_range(self) -> "JobConfig":
        if self.nasd_k_min > self.nasd_k_max:
            raise ValueError(f"nasd_k_min ({self.nasd_k_min}) is above nasd_k_max "
                             f"({self.nasd_k_max})")
        return self

    @model_validator(mode="after")
    def _ahead_strategies(self) -> "JobConfig":
        if self.draft_ahead:
            others = [s for s in self.strategies if s in POLICY_NAMES and s not in AHEAD_STRATEGIES]
            if others:
                raise ValueError(f"draft_ahead: only {' and '.join(AHEAD_STRATEGIES)} draft "
                                 f"ahead, not {', '.join(others)}")
            if self.nasd_rtt_table_path and "nasd" in self.strategies:
                raise ValueError("draft_ahead: an RTT -> K table (nasd_rtt_table_path) plans "
                                 "without draft-ahead; nasd draft-ahead plans on its own")
            if self.nasd_objective != MEAN and "nasd" in self.strategies:
                raise ValueError(f"draft_ahead: nasd_objective {self.nasd_objective!r} is "
                                 "modelled without draft-ahead; nasd draft-ahead plans for "
                                 "the mean")
        return self

    @model_validator(mode="after")
    def _codec_fits_decoding(self) -> "JobConfig":
        codecs = ([self.codec] if self.codec else []) + (
            self.network.codecs + [c for grid in self.network.grids for c in grid.codecs]
            if self.network else [])
        for name in codecs:
            if self.decoding == "sampling" and not get_codec(name).carries_draft_probs:
                raise ValueError(f"codec {name!r} carries no draft probabilities, "
                                 "which sampling verification needs")
        return self

    @property
    def resolved_codec(self) -> str:
        return self.codec or ("ids" if self.decoding == "greedy" else "q-scalar")

    @property
    def sampling(self) -> SamplingConfig:
        """What travels with each query: the decoding fields alone."""
        return SamplingConfig(**self.model_dump(include=set(SamplingConfig.model_fields)))


@dataclass(frozen=True)
class StrategyRun:
    strategy: StrategyName
    k: int | None   # fixed-k, cloud-spec: the K of every cycle; None: no K, or an adaptive one
    draft_ahead: int = 0   # fixed-k, nasd: blocks in flight beyond the oldest (0: none)
    edge_only_cutoff: bool = False   # nasd: the draft may serve alone (lossy)

    @property
    def label(self) -> str:
        """For display and grouping only (``fixed-k5``, ``nasd+ahead2``, ``nasd-cutoff``):
        code decides on the fields."""
        name = f"fixed-k{self.k}" if self.strategy == "fixed-k" else self.strategy
        name += "-cutoff" if self.edge_only_cutoff else ""
        return f"{name}+ahead{self.draft_ahead}" if self.draft_ahead else name


def narrowed(job: JobConfig, runs: list[StrategyRun]) -> JobConfig:
    """``job`` cut to ``runs`` (some of ``plan(job)``): the strategies and the fixed K they
    keep, so ``plan`` of the result is ``runs``."""
    kept = {run.strategy for run in runs}
    cut = job.model_copy(update={
        "strategies": [strategy for strategy in job.strategies if strategy in kept],
        "k_values": [k for k in job.k_values
                     if any(run.strategy == "fixed-k" and run.k == k for run in runs)]
                    or job.k_values})
    assert plan(cut) == runs, (plan(cut), runs)
    return cut


def largest_k(job: JobConfig) -> int | None:
    """The most drafts one verification of ``job``'s runs checks (a fixed K, cloud-spec's K,
    or an adaptive policy's ``nasd_k_max``); None when none verifies (cloud-only, edge-only)."""
    ks = [run.k or job.nasd_k_max if run.strategy in POLICY_NAMES else run.k
          for run in plan(job) if run.strategy in (*POLICY_NAMES, "cloud-spec")]
    return max(ks, default=None)


def plan(job: JobConfig) -> list[StrategyRun]:
    runs = []
    ahead = job.draft_ahead
    for strategy in job.strategies:
        if strategy == "fixed-k":
            runs += [StrategyRun("fixed-k", k, ahead) for k in job.k_values]
        elif strategy == "nasd":
            runs.append(StrategyRun("nasd", None, ahead, job.nasd_edge_only_cutoff))
        elif strategy == "cloud-spec":
            runs.append(StrategyRun("cloud-spec", job.cloud_spec_k))
        else:
            runs.append(StrategyRun(strategy, None))
    return runs
