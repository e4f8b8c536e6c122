"""Sweeps: one job over many network cells, written cell by cell, resumable.

A job's ``network`` section expands (``expand``) into cells: each named
profile and each point of each grid, crossed with the codecs to compare.  Each
cell runs into its own run folder inside the sweep's folder
(``orchestrator.results.SweepFolder``) and is marked finished only once its
summary is on disk.  Resuming skips every finished cell and reruns a cell that
was cut off, from scratch.  The job, its model pair and prompts are checked once,
before the sweep's folder exists (the ``RunSpec`` template each cell runs).

Under a budget guardrail (``orchestrator.config.guardrail``) each cell's strategy runs are
decided first: the rejected ones are skipped (the cell runs the job cut to the others,
``narrowed``; a cell with none left runs nothing and is marked skipped), and the cell's
line in ``cells.jsonl`` keeps every decision, with each run's measured ms per token beside
it and whether the decision held.  Before the first cell it runs, the guardrail is fitted to
how this host serves the pair at that moment (``guardrail_probe``: a short run of cloud-only
and fixed-K on an unshaped link, kept in the sweep's folder), and after every cell it
follows what that cell measured (``follow_host``).
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from orchestrator import interrupts
from orchestrator.config.job import JobConfig, NetworkGrid, StrategyRun, narrowed, plan
from orchestrator.config.loading import ConfigError, load_profile
from orchestrator.config.run_spec import RunSpec
from orchestrator.lifecycle.run import execute
from orchestrator.progress import work_progress
from orchestrator.results import Cell, ResultsFolder, SweepFolder
from shaping.profile import NetworkProfile, ProfileFile, resolve

if TYPE_CHECKING:    # its latency model imports scikit-learn: only a guarded sweep loads it
    from orchestrator.config.guardrail import ProbeRun, SweepGuardrail


def _number(value: float) -> str:
    return f"{int(value):03d}" if float(value).is_integer() else f"{value:g}".replace(".", "p")


def grid_profile(rtt_ms: float, bandwidth_mbps: float | None, jitter_ms: float = 0.0,
                 loss_pct: float = 0.0, jitter_distribution: str = "normal") -> NetworkProfile:
    """A symmetric link, named like the shipped grid files (``rtt050-bw010-j10``)."""
    name = f"rtt{_number(rtt_ms)}" + (f"-bw{_number(bandwidth_mbps)}" if bandwidth_mbps else "")
    name += (f"-j{jitter_ms:g}" if jitter_ms else "") + (f"-l{loss_pct:g}" if loss_pct else "")
    fields = {"rtt_ms": rtt_ms, "bandwidth_mbps": bandwidth_mbps, "loss_pct": loss_pct}
    if jitter_ms:
        fields.update(jitter_ms=jitter_ms, jitter_distribution=jitter_distribution)
    return resolve(ProfileFile.model_validate(fields), name=name.replace(".", "p"))


def grid_profiles(grid: NetworkGrid) -> list[NetworkProfile]:
    return [grid_profile(rtt, bandwidth, jitter, loss, grid.jitter_distribution)
            for rtt, bandwidth, jitter, loss in itertools.product(
                grid.rtt_ms, grid.bandwidth_mbps, grid.jitter_ms, grid.loss_pct)]


def expand(job: JobConfig) -> list[Cell]:
    """Every cell of the job's network section, in order, each once."""
    if job.network is None:
        raise ConfigError(f"job {job.name!r} has no network section: a sweep needs "
                          "`network: {profiles: [...]}` or `network: {grids: [...]}`")
    default_codecs = job.network.codecs or [None]
    points = [(load_profile(name), default_codecs) for name in job.network.profiles]
    points += [(profile, grid.codecs or default_codecs)
               for grid in job.network.grids for profile in grid_profiles(grid)]
    cells, seen = [], set()
    for profile, codecs in points:
        for codec in codecs:
            cell = Cell(profile, codec)
            if cell.name not in seen:
                seen.add(cell.name)
                cells.append(cell)
    return cells


def sweep(folder: SweepFolder, template: RunSpec, cells: list[Cell], console: Console,
          guardrail: SweepGuardrail | None = None) -> list[str]:
    """Run every cell not yet finished; the names of the cells run now.  ``template``: the
    job's run as checked before the sweep began (``RunSpec.build`` on any cell's profile):
    each cell runs it on its own profile and codec, without the runs ``guardrail`` rejects."""
    finished = folder.finished()
    todo = [cell for cell in cells if cell.name not in finished]
    if finished:
        console.print(f"resuming: {len(finished)} of {len(cells)} cells already finished")
    if guardrail is not None and todo:       # nothing left to judge: nothing to say
        if template.job.guardrail_probe:
            with work_progress(console) as progress:
                guardrail = guardrail.at_probe(guardrail_probe(folder, template, progress))
        console.print(guardrail.describe(), highlight=False)
    ran = []
    with work_progress(console) as progress:
        overall = progress.add_task("cells", total=len(cells), completed=len(finished),
                                    unit="cells")
        for cell in todo:
            progress.update(overall, description=f"cell {cell.name}")
            verdicts = (guardrail.judge(cell.profile, cell_spec(template, cell).job.resolved_codec,
                                        plan(template.job)) if guardrail else [])
            for skipped in (v for v in verdicts if v.verdict == "reject"):
                console.print(f"cell {cell.name}: {skipped.run.label} skipped by the guardrail: "
                              f"{skipped.why}", highlight=False)
            runs = [v.run for v in verdicts if v.verdict != "reject"] if guardrail else None
            path = folder.cell_path(cell.name)
            if path.exists():          # cut off last time: nothing in it counts
                shutil.rmtree(path)
            if runs == []:
                with interrupts.shielded():
                    folder.mark_finished(cell, 0.0, [v.record() for v in verdicts], skipped=True)
                progress.advance(overall)
                continue
            path.mkdir(parents=True)
            started = time.perf_counter()
            summary = execute(cell_spec(template, cell, runs), ResultsFolder(path), progress)
            measured = {row["label"]: row for row in summary.to_dict("records")}
            records = [v.record(measured.get(v.run.label)) for v in verdicts] if guardrail \
                else None
            with interrupts.shielded():      # the cell's line in cells.jsonl is written whole
                folder.mark_finished(cell, time.perf_counter() - started, records)
            ran.append(cell.name)
            progress.advance(overall)
            console.print(f"cell {cell.name}: done in {time.perf_counter() - started:.1f} s")
            if guardrail is not None and template.job.guardrail_probe:
                guardrail = follow_host(guardrail, cell, path, console)
    return ran


PROBE_FOLDER = "guardrail-probe"   # in a sweep's folder: the run the guardrail fits itself to
PROBE_QUERIES = 4                  # ... its queries at most (the job's first prompts)
MAX_PROBES = 1000                  # ... and its runs in one sweep folder (one per resumption)


def guardrail_probe(folder: SweepFolder, template: RunSpec, progress) -> ProbeRun:
    """How this host serves the job's pair right now: cloud-only and fixed-K at the job's
    smallest K, on the job's first prompts (``PROBE_QUERIES`` at most, once each), on an
    unshaped link in the sweep's mode, agents and serving loop included, into the sweep's
    ``PROBE_FOLDER`` (a resumed sweep runs it anew, into ``PROBE_FOLDER``-2, -3, ...).  Its
    cloud-only steps are (the tokens of context decoded at, the interval between two tokens
    as the edge received them), what a cell's cloud-only ms per token is made of; its
    cycles' network times are the round trip the agents and the path add to every cycle
    before any RTT; its cloud-only answers' lengths are those of the sweep's queries of the
    same prompts (under greedy decoding every lossless strategy's answer is cloud-only's)."""
    from orchestrator.config.guardrail import ProbeRun
    path = next(folder.path / f"{PROBE_FOLDER}{suffix}"      # a resumption's beside the first
                for suffix in ["", *(f"-{n}" for n in range(2, MAX_PROBES + 1))]
                if not (folder.path / f"{PROBE_FOLDER}{suffix}").exists())
    path.mkdir()
    job = template.job
    probe = job.model_copy(update={
        "strategies": ["cloud-only", "fixed-k"], "k_values": [min(job.k_values)],
        "draft_ahead": 0, "max_queries": min(job.max_queries or PROBE_QUERIES, PROBE_QUERIES),
        "repetitions": 1})
    unshaped = grid_profile(0, None)
    execute(replace(template, job=probe, profile=unshaped), ResultsFolder(path), progress)
    return ProbeRun(*cloud_only_tokens(path), own_round_trips(path, unshaped))


def follow_host(guardrail: SweepGuardrail, cell: Cell, path: Path,
                console: Console) -> SweepGuardrail:
    """The guardrail for the cells after a finished one: its stages scaled and widened by
    that cell's cloud-only tokens (``cloud_only_tokens``), and its cycles given that cell's
    own round trip (``own_round_trips``), where it ran them: the latest word on how fast
    this host serves (a sweep of many cells outlasts the probe's moment: this VM drifts by
    tens of percent over hours) and on what its path adds at that RTT (in vm mode more at
    10-20 ms than at none)."""
    from orchestrator.config.guardrail import ProbeRun
    steps, answers = cloud_only_tokens(path)
    trips = own_round_trips(path, cell.profile)
    if not any(steps) and not trips:
        return guardrail
    followed = guardrail.at_probe(ProbeRun(steps, answers, trips))
    now, before = followed.host, guardrail.host
    low, high = now.scale_range
    console.print(f"guardrail: fitted times x{now.time_scale:.2f} (x{low:.2f}-{high:.2f}) "
                  f"and a {1000 * now.round_trip_s:.2f} ms round trip of the agents' own "
                  f"from here on (cell {cell.name}'s; were x{before.time_scale:.2f} and "
                  f"{1000 * before.round_trip_s:.2f} ms)", highlight=False)
    return followed


def own_round_trips(path: Path, profile: NetworkProfile) -> list[float]:
    """A run folder's fixed-K cycles' network time beyond its link's RTT: what the agents
    and the path add to every cycle.  Only on a static link without jitter, loss or a rate,
    where nothing else adds to it; none elsewhere."""
    state = profile.initial
    if profile.timeline or any(direction.jitter_ms or not direction.loss.is_lossless
                               or direction.bandwidth_mbps
                               for direction in (state.uplink, state.downlink)):
        return []
    cycles = [json.loads(line) for line in (path / ResultsFolder.CYCLES).read_text().splitlines()]
    return [max(0.0, cycle["t_network"] - state.rtt_ms / 1000.0) for cycle in cycles
            if cycle["strategy"] == "fixed-k" and cycle["k"]]


def cloud_only_tokens(path: Path) -> tuple[list[list[tuple[int, float]]], list[int]]:
    """A run folder's cloud-only answers: for each, its tokens after the first as (the
    tokens of context each was decoded at, the interval since the one before it as the edge
    received them); and each answer's tokens."""
    steps, answers = [], []
    for line in (path / ResultsFolder.QUERIES).read_text().splitlines():
        query = json.loads(line)
        if query["strategy"] == "cloud-only":
            times = query["token_times_s"]
            steps.append([(query["prompt_tokens"] + index, later - earlier)
                          for index, (earlier, later) in enumerate(zip(times, times[1:]),
                                                                   start=1)])
            answers.append(query["n_tokens"])
    return steps, answers


def cell_spec(template: RunSpec, cell: Cell, runs: list[StrategyRun] | None = None) -> RunSpec:
    """``template`` on ``cell``'s profile, with its codec (checked with the job's network
    section: ``JobConfig``), cut to ``runs`` when given (``narrowed``)."""
    job = template.job.model_copy(update={"codec": cell.codec}) if cell.codec else template.job
    return replace(template, job=narrowed(job, runs) if runs is not None else job,
                   profile=cell.profile)
