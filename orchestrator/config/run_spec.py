"""A run's resolved configuration: the job, the network profile, the model pair, the prompts,
the mode and the device emulation, built from config names (``RunSpec.load``) or read back
from a run folder's ``config.yaml`` (``RunSpec.from_folder``); it expands into the edge's
query requests."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from agents.backends import ModelPairConfig
from agents.backends.emulated import DeviceEmulation
from agents.backends.synthetic import SyntheticPairConfig
from agents.edge import QueryRequest
from agents.security import Security
from nasd.estimator import Calibration
from nasd.table import RttTable
from orchestrator.config.datasets import Prompt, load_dataset
from orchestrator.config.emulation import load_emulation
from orchestrator.config.job import JobConfig, plan
from orchestrator.config.loading import (
    ConfigError,
    flag,
    load_job,
    load_model_pair,
    load_profile,
    parse,
)
from orchestrator.config.nasd_files import check_emulation, load_calibration, load_rtt_table
from shaping.profile import NetworkProfile

RESOLVED_FILE = "config.yaml"   # what ``resolved()`` is saved as in a run folder
MAX_QUERIES_PER_RUN = 100_000   # strategy runs x repetitions x prompts: listed before it starts


@dataclass(frozen=True)
class RunSpec:
    job: JobConfig
    profile: NetworkProfile
    model_pair: ModelPairConfig
    prompts: list[Prompt]
    mode: str
    nasd_rtt_table: RttTable | None = None        # the job's nasd_rtt_table_path, loaded
    nasd_calibration: Calibration | None = None   # the job's nasd_calibration_path, loaded
    emulation: DeviceEmulation | None = None      # the job's device emulation, resolved

    @classmethod
    def load(cls, job: str, profile: str, mode: str, job_overrides: dict | None = None,
             profile_overrides: dict | None = None) -> "RunSpec":
        """Everything a run needs, from config names or paths (``ConfigError`` on bad input)."""
        return cls.build(load_job(job, job_overrides), load_profile(profile, profile_overrides),
                         mode)

    @classmethod
    def build(cls, job: JobConfig, profile: NetworkProfile, mode: str,
              model_pair: ModelPairConfig | None = None,
              prompts: list[Prompt] | None = None) -> "RunSpec":
        """A run of ``job`` on ``profile``; the pair and prompts are loaded unless given."""
        emulation = load_emulation(job)     # before the pair: a bad device fails at once
        model_pair = model_pair or load_model_pair(job.model_pair)
        if isinstance(model_pair, SyntheticPairConfig) and job.sampling.reshapes:
            raise ConfigError(f"job {job.name!r}: the synthetic pair samples its "
                              "distributions as they are; temperature, top_k and top_p must "
                              "keep their defaults")
        prompts = prompts if prompts is not None else load_dataset(job.prompts)
        runs, used = len(plan(job)), len(prompts[: job.max_queries])
        if runs * job.repetitions * used > MAX_QUERIES_PER_RUN:
            raise ConfigError(f"job {job.name!r}: repetitions: {job.repetitions:,} of {runs} "
                              f"strategy runs x {used} prompts make more than "
                              f"{MAX_QUERIES_PER_RUN:,} queries")
        return cls(job=job, profile=profile, model_pair=model_pair, prompts=prompts, mode=mode,
                   emulation=emulation, **nasd_files(job, model_pair.name, emulation))

    @classmethod
    def from_folder(cls, folder: Path) -> "RunSpec":
        """The spec a run folder was made with, from its ``config.yaml``."""
        source = str(folder / RESOLVED_FILE)
        resolved = yaml.safe_load((folder / RESOLVED_FILE).read_text())
        return cls(job=parse(JobConfig, resolved["job"], source),
                   profile=parse(NetworkProfile, resolved["profile"], source),
                   model_pair=parse(ModelPairConfig, resolved["model_pair"], source),
                   prompts=[Prompt(**prompt) for prompt in resolved["prompts"]],
                   mode=resolved["mode"],
                   emulation=parse(DeviceEmulation, resolved["emulation"], source)
                   if resolved.get("emulation") else None)

    def requests(self) -> list[QueryRequest]:
        prompts = self.prompts[: self.job.max_queries]
        nasd = {"nasd_rtt_table": self.nasd_rtt_table, "nasd_calibration": self.nasd_calibration,
                "edge_only_cutoff": self.job.nasd_edge_only_cutoff,
                "confidence_floor": self.job.nasd_confidence_floor,
                "rtt_estimate": self.job.nasd_rtt_estimate, "objective": self.job.nasd_objective,
                "objective_tokens": self.job.max_new_tokens}
        runs, queries = plan(self.job), [(repetition, prompt)
                                         for repetition in range(self.job.repetitions)
                                         for prompt in prompts]
        order = [(run, query) for query in queries for run in runs] \
            if self.job.query_order == "interleaved" \
            else [(run, query) for run in runs for query in queries]
        return [QueryRequest(strategy=run.strategy, label=run.label, k=run.k,
                             draft_ahead=run.draft_ahead,
                             k_min=self.job.nasd_k_min, k_max=self.job.nasd_k_max,
                             **(nasd if run.strategy == "nasd" else {}),
                             query_id=prompt.id, repetition=repetition, prompt=prompt.prompt,
                             answer=prompt.answer, max_new_tokens=self.job.max_new_tokens,
                             sampling=self.job.sampling, codec=self.job.resolved_codec,
                             seed=self.job.seed)
                for run, (repetition, prompt) in order]

    def warmups(self) -> list[QueryRequest]:
        """One short unrecorded query per strategy run, on the first prompt."""
        if not self.job.warmup_tokens:
            return []
        first = self.requests()
        labels = list(dict.fromkeys(request.label for request in first))
        return [next(request for request in first if request.label == label).model_copy(
                    update={"query_id": "warmup", "max_new_tokens": min(
                        self.job.warmup_tokens, self.job.max_new_tokens)})
                for label in labels]

    def resolved(self, data_plane_security: Security) -> dict:
        """What ``RESOLVED_FILE`` holds; ``data_plane_security``: what the run's deployment
        uses (the job's ``auto`` resolved on its link)."""
        return {"mode": self.mode, "data_plane_security": data_plane_security,
                "job": self.job.model_dump(mode="json"),
                "profile": self.profile.model_dump(mode="json"),
                "model_pair": self.model_pair.model_dump(mode="json"),
                "prompts": [asdict(prompt) for prompt in self.prompts],
                **({"emulation": self.emulation.model_dump(mode="json")} if self.emulation
                   else {})}


def nasd_files(job: JobConfig, pair_name: str, emulation: DeviceEmulation | None = None) -> dict:
    """The job's NASD files, loaded and checked (the table's K within the job's nasd_k
    range; the calibration of the run's pair ``pair_name``; both measured under the run's
    device ``emulation``, or both on this host's own devices without one): the ``RunSpec``
    fields ``nasd_rtt_table`` and ``nasd_calibration``."""
    identity = None if emulation is None else emulation.identity

    def calibration(path: Path):
        measured = load_calibration(path)
        if measured.model_pair != pair_name:
            raise ConfigError(f"{path}: measured on model pair {measured.model_pair!r}, not "
                              f"this run's {pair_name!r}")
        check_emulation(path, measured.emulation, identity)
        return measured.calibration()
    loaders = {
        "nasd_rtt_table": lambda path: load_rtt_table(path, job.nasd_k_min, job.nasd_k_max,
                                                      identity),
        "nasd_calibration": calibration,
    }
    loaded = {}
    for name, load in loaders.items():
        field = f"{name}_path"
        if getattr(job, field):
            try:
                loaded[name] = load(Path(getattr(job, field)))
            except ConfigError as error:
                raise ConfigError(f"{field} ({flag(field)}): {error}") from None
    return loaded
