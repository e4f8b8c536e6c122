"""One run: every strategy of a job over every prompt, on one network profile.

Lifecycle: save the resolved config (``orchestrator.config.run_spec``), start the
deployment of the mode (``orchestrator.lifecycle.launch``: sim, emulated, or vm with its
router VM as the link), send each query to the edge (each on the profile's timeline
started again: ``Deployment.query``), append the records as they arrive
(``orchestrator.results``; a signal never cuts a query's records in two), stop
everything (also on errors and signals), then summarize with the analytic prediction
beside every measured rate (``orchestrator.reporting.run_summary``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import Progress

from agents.control import AgentError
from orchestrator import interrupts
from orchestrator.config.job import JobConfig, largest_k
from orchestrator.config.run_spec import RunSpec
from orchestrator.lifecycle.launch import Deployment, make_link
from orchestrator.progress import work_progress
from orchestrator.reporting.run_summary import summarize_folder
from orchestrator.reporting.summary import print_summary
from orchestrator.results import ResultsFolder

log = logging.getLogger(__name__)


def query_timeout_s(job: JobConfig) -> float:
    """Control-plane budget for one query: every token may wait a full receive timeout."""
    return job.receive_timeout_s * (job.max_new_tokens + 2)


def run(spec: RunSpec, results_root: Path, console: Console) -> tuple[Path, pd.DataFrame]:
    results = ResultsFolder.create(results_root, f"{spec.profile.name}-{spec.mode}")
    try:
        console.print(f"results: {results.path}")
        if spec.emulation is not None:
            console.print(spec.emulation.describe(largest_k(spec.job)), highlight=False)
        with work_progress(console) as progress:
            summary = execute(spec, results, progress)
    except interrupts.Interrupted:
        console.print(f"what finished is kept in {results.path}: `orchestrator report "
                      f"{results.path}` writes its report", highlight=False, soft_wrap=True)
        raise
    print_summary(summary, console, title=f"{spec.profile.name} ({spec.mode})")
    return results.path, summary


def execute(spec: RunSpec, results: ResultsFolder, progress: Progress) -> pd.DataFrame:
    """Run every query of ``spec`` into ``results`` (one ``queries`` task on ``progress``)
    and write the summary; the deployment is stopped however this ends, and a run cut
    short (a signal, a dead agent, a full disk) still gets the summary of what finished,
    marked incomplete, where the disk takes it."""
    deployment = Deployment(results.path, spec.model_pair,     # nothing started yet
                            make_link(spec.mode, spec.profile, spec.job.seed),
                            spec.job.receive_timeout_s, spec.emulation,
                            spec.job.data_plane_security)
    results.write_config(spec.resolved(deployment.security))
    requests = spec.requests()
    task = progress.add_task("starting the agents and the link", total=len(requests),
                             unit="queries")
    finished = 0                       # queries whose records are on disk
    completed = False
    try:
        with deployment:
            for request in spec.warmups():
                progress.update(task, description=f"{request.label} warm-up")
                deployment.query(request, query_timeout_s(spec.job))
            for request in requests:
                progress.update(task, description=f"{request.label} q{request.query_id}")
                with interrupts.shielded():    # a signal ends the wait, or waits for the
                    reply = deployment.query(request, query_timeout_s(spec.job))
                    results.append(reply["query"], reply["cycles"])   # reply to be on disk
                    finished += 1
                progress.advance(task)
            deployment.write_link_stats()
        completed = True
    except AgentError as error:      # an agent or the link failed: say what is kept
        kept = "1 finished query is" if finished == 1 else f"{finished} finished queries are"
        raise type(error)(f"{error}; {kept} kept in {results.path}") from None
    finally:
        results.close()
        progress.remove_task(task)
        if not completed:
            _summarize_cut_short(results, spec)
    return summarize_folder(results.path, spec)


def _summarize_cut_short(results: ResultsFolder, spec: RunSpec) -> None:
    """The summary of a run that stopped early; the reason it stopped is what gets raised,
    so a summary that cannot be written (a full disk) is only logged."""
    try:
        summarize_folder(results.path, spec)
    except Exception as error:
        log.warning("%s: no summary of the queries that finished: %s", results.path, error)
