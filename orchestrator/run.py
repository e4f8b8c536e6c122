"""One run: every strategy of a job over every prompt, on one network profile.

Lifecycle: resolve and save the config, start the deployment of the mode
(``orchestrator.launch``: sim, emulated, or vm with its router VM as the
link), send each query to the edge, append the
records as they arrive, stop everything (also on errors and signals), then
summarize with the analytic prediction beside every measured rate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import yaml
from rich.console import Console
from rich.progress import Progress

from agents.backends import ModelPairConfig
from agents.edge import QueryRequest
from agents.backends.synthetic import SyntheticPairConfig
from orchestrator.configs import ConfigError, load_job, load_model_pair, load_profile, validate
from orchestrator.datasets import Prompt, load_dataset
from orchestrator.job import JobConfig, StrategyRun, plan
from orchestrator.launch import DEPLOYMENTS
from orchestrator.progress import work_progress
from orchestrator.results import ResultsFolder
from orchestrator.summary import mark_queries, print_summary, read_jsonl, summarize
from shaping.profile import LinkState, NetworkProfile, with_rtt
from validation.prediction import (HostTimes, measured_times, modeled_times,
                                   predicted_crossover_rtt_ms, predicted_tokens_per_s)


@dataclass(frozen=True)
class RunSpec:
    job: JobConfig
    profile: NetworkProfile
    model_pair: ModelPairConfig
    prompts: list[Prompt]
    mode: str

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
        model_pair = model_pair or load_model_pair(job.model_pair)
        if isinstance(model_pair, SyntheticPairConfig) and job.sampling.reshapes:
            raise ConfigError(f"job {job.name!r}: the synthetic pair samples its "
                              "distributions as they are; temperature, top_k and top_p must "
                              "keep their defaults")
        return cls(job=job, profile=profile, model_pair=model_pair,
                   prompts=prompts if prompts is not None else load_dataset(job.prompts),
                   mode=mode)

    @classmethod
    def from_folder(cls, folder: Path) -> "RunSpec":
        """The spec a run folder was made with, from its ``config.yaml``."""
        source = str(folder / ResultsFolder.CONFIG)
        resolved = yaml.safe_load((folder / ResultsFolder.CONFIG).read_text())
        return cls(job=validate(JobConfig, resolved["job"], source),
                   profile=validate(NetworkProfile, resolved["profile"], source),
                   model_pair=validate(ModelPairConfig, resolved["model_pair"], source),
                   prompts=[Prompt(**prompt) for prompt in resolved["prompts"]],
                   mode=resolved["mode"])

    def requests(self) -> list[QueryRequest]:
        prompts = self.prompts[: self.job.max_queries] if self.job.max_queries else self.prompts
        return [QueryRequest(strategy=run.strategy, label=run.label, k=run.k,
                             query_id=prompt.id, repetition=repetition, prompt=prompt.prompt,
                             answer=prompt.answer, max_new_tokens=self.job.max_new_tokens,
                             sampling=self.job.sampling, codec=self.job.resolved_codec,
                             seed=self.job.seed)
                for run in plan(self.job)
                for repetition in range(self.job.repetitions)
                for prompt in prompts]

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

    def resolved(self) -> dict:
        return {"mode": self.mode, "job": self.job.model_dump(mode="json"),
                "profile": self.profile.model_dump(mode="json"),
                "model_pair": self.model_pair.model_dump(mode="json"),
                "prompts": [asdict(prompt) for prompt in self.prompts]}


def query_timeout_s(job: JobConfig) -> float:
    """Control-plane budget for one query: every token may wait a full receive timeout."""
    return job.receive_timeout_s * (job.max_new_tokens + 2)


def run(spec: RunSpec, results_root: Path, console: Console) -> tuple[Path, pd.DataFrame]:
    results = ResultsFolder.create(results_root, f"{spec.profile.name}-{spec.mode}")
    console.print(f"results: {results.path}")
    with work_progress(console) as progress:
        summary = execute(spec, results, progress)
    print_summary(summary, console, title=f"{spec.profile.name} ({spec.mode})")
    return results.path, summary


def execute(spec: RunSpec, results: ResultsFolder, progress: Progress) -> pd.DataFrame:
    """Run every query of ``spec`` into ``results`` (one ``queries`` task on ``progress``)
    and write the summary; the deployment is stopped however this ends."""
    results.write_config(spec.resolved())
    requests = spec.requests()
    task = progress.add_task("queries", total=len(requests), unit="queries")
    try:
        with DEPLOYMENTS[spec.mode](results.path, spec.model_pair, spec.profile, spec.job.seed,
                                    spec.job.receive_timeout_s) as deployment:
            for request in spec.warmups():
                progress.update(task, description=f"{request.label} warm-up")
                deployment.edge.call("query", query_timeout_s(spec.job),
                                     request=request.model_dump(mode="json"))
            for request in requests:
                progress.update(task, description=f"{request.label} q{request.query_id}")
                reply = deployment.edge.call("query", query_timeout_s(spec.job),
                                             request=request.model_dump(mode="json"))
                results.append(reply["query"], reply["cycles"])
                progress.advance(task)
            deployment.write_link_stats()
    finally:
        results.close()
        progress.remove_task(task)
    return summarize_folder(results.path, spec)


def _records(folder: Path, spec: RunSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    queries = read_jsonl(folder / ResultsFolder.QUERIES)
    cycles = read_jsonl(folder / ResultsFolder.CYCLES)
    queries = mark_queries(queries, {prompt.id: prompt.kind for prompt in spec.prompts},
                           greedy=spec.job.decoding == "greedy")
    return queries, cycles


def _host_times(spec: RunSpec, queries: pd.DataFrame, cycles: pd.DataFrame) -> HostTimes | None:
    return (modeled_times(spec.model_pair) if isinstance(spec.model_pair, SyntheticPairConfig)
            else measured_times(queries, cycles))


def summarize_folder(folder: Path, spec: RunSpec) -> pd.DataFrame:
    queries, cycles = _records(folder, spec)
    summary = summarize(queries, cycles)
    runs = {run.label: run for run in plan(spec.job)}
    times = _host_times(spec, queries, cycles)
    if times is not None:
        link = spec.profile.initial
        summary["predicted_tokens_per_s"] = [
            _prediction(runs[row["strategy"]], row, spec, cycles, times, link)
            for _, row in summary.iterrows()]
        summary["crossover_rtt_ms"] = [_crossover(runs[row["strategy"]], row, spec, times)
                                       for _, row in summary.iterrows()]
    summary.to_csv(folder / ResultsFolder.SUMMARY, index=False)
    return summary


def predicted_curve(folder: Path, label: str, rtts_ms: Sequence[float]) -> np.ndarray:
    """The analytic tokens/s of strategy ``label`` in a finished run, had its link's RTT
    been each of ``rtts_ms`` (same rates, acceptance, compute times and bytes per cycle)."""
    spec = RunSpec.from_folder(folder)
    queries, cycles = _records(folder, spec)
    times = _host_times(spec, queries, cycles)
    summary = pd.read_csv(folder / ResultsFolder.SUMMARY).set_index("strategy", drop=False)
    runs = {run.label: run for run in plan(spec.job)}
    if times is None or label not in summary.index:
        return np.full(len(rtts_ms), np.nan)
    row, base = summary.loc[label], spec.profile.initial
    return np.array([_prediction(runs[label], row, spec, cycles, times, with_rtt(base, rtt))
                     for rtt in rtts_ms])


def _acceptance(row: pd.Series, spec: RunSpec) -> float:
    """The run's measured per-token acceptance, or the synthetic pair's configured one."""
    measured = row.get("per_token_acceptance")
    if pd.notna(measured):
        return measured
    return getattr(spec.model_pair, "acceptance", float("nan"))


def _cycle_bytes(row: pd.Series) -> tuple[float, float]:
    up, down = row.get("bytes_up_per_cycle"), row.get("bytes_down_per_cycle")
    return (up if pd.notna(up) else 0.0), (down if pd.notna(down) else 0.0)


def _prediction(run: StrategyRun, row: pd.Series, spec: RunSpec, cycles: pd.DataFrame,
                times: HostTimes, link: LinkState) -> float:
    own = cycles[cycles["strategy"] == run.label] if not cycles.empty else cycles
    ks = own["k"].tolist() if len(own) else [run.k]
    return predicted_tokens_per_s(run.strategy, ks, _acceptance(row, spec), times, link,
                                  *_cycle_bytes(row))


def _crossover(run: StrategyRun, row: pd.Series, spec: RunSpec, times: HostTimes) -> float:
    if run.strategy != "fixed-k":
        return float("nan")
    return predicted_crossover_rtt_ms(run.k, _acceptance(row, spec), times, spec.profile.initial,
                                      *_cycle_bytes(row))
