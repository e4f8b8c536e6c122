"""The ``orchestrator`` command line.

Bad input (a CLI value, a profile, a job, a model pair, a results folder that cannot be
made) ends with one line, ``error: <where>: <what>``, and exit code 2; a failed agent or
a disk that fails mid-run (full, read-only) with exit code 1;
Ctrl-C (SIGINT) with 130 and SIGTERM with 143, after everything started has
been stopped (``orchestrator.interrupts``).  ``python -m orchestrator.cli`` starts
as ``orchestrator`` does (``interrupts.run_command``), so its handlers are in before
the second of imports below.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":        # the signal handlers go in before the imports below
    from orchestrator import interrupts
    sys.exit(interrupts.run_command("orchestrator.cli"))

import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import Annotated, get_args, get_origin

import click
import numpy as np
from pydantic import TypeAdapter, ValidationError
from rich.console import Console

from agents.control import AgentError
from agents.protocol import ProtocolError
from agents.sampling import Decoding, Seed
from agents.security import DataPlaneSecurity
from nasd.latency.stages import Dtype
from orchestrator import interrupts
from orchestrator.config.job import (
    ALL_STRATEGIES,
    PROBE_NEEDS_GUARDRAIL,
    QUERY_ORDERS,
    largest_k,
)
from orchestrator.config.loading import (
    ConfigError,
    available,
    first_error,
    flag,
    load_job,
    load_profile,
)
from orchestrator.config.run_spec import RunSpec
from orchestrator.lifecycle import vm
from orchestrator.lifecycle.crossvalidate import check_job_for_validation, crossvalidate
from orchestrator.lifecycle.doctor import MODES, HostReport, choose_mode
from orchestrator.lifecycle.launch import make_link
from orchestrator.lifecycle.run import run
from orchestrator.lifecycle.sweep import expand, sweep
from orchestrator.progress import work_progress
from orchestrator.reporting.probe_report import print_probe_report, save_probe_report
from orchestrator.results import SweepFolder
from shaping.cleanup import leftovers, remove_leftovers
from shaping.profile import BandwidthMbps, DirectionSpec, LinkState, Milliseconds, NetworkProfile
from shaping.qdisc.parameters import kernel_shaping_problem, profile_needs_netem
from shaping.router import RouterError
from validation.crossval import passed
from validation.link_probe import ProbePlan, probe_link, probe_sim


def make_console() -> Console:
    """A terminal console; piped output gets a wide fixed width so tables stay whole.

    Inside the VM stdout is a serial port: what counts is whether the host's is a terminal.
    """
    host_tty = os.environ.get(vm.HOST_TTY_ENV)
    # soft wrap: a long line (a path, a command to copy) is never broken by a newline
    if (sys.stdout.isatty() if host_tty is None else host_tty == "1"):
        return Console(force_terminal=True, soft_wrap=True) if host_tty else Console(soft_wrap=True)
    return Console(width=160, force_terminal=False, force_interactive=False, soft_wrap=True)


def enter_mode(ctx: click.Context, requested: str, profiles: list[NetworkProfile],
               console: Console, reason: str | None = None, measured: bool = False) -> str:
    """Pick the mode for ``profiles`` on this host and print it; for vm, boot the router VM
    that the whole command shares (it boots while the agents load; stopped when the command
    ends, however it ends).  A mode this host cannot run (``measured``: or sim) exits 2.

    The one place ``run``, ``sweep``, ``validate`` and ``probe`` decide where their links
    live; ``reason`` replaces the printed reason (a resumed sweep keeps its mode).
    """
    if requested == "sim":
        chosen, why = choose_mode("sim", HostReport(root=False, in_vm=vm.in_vm()))
    else:
        try:
            chosen, why = choose_mode(requested, HostReport.inspect(),
                                      any(profile_needs_netem(profile) for profile in profiles))
        except ValueError as error:
            raise click.UsageError(str(error)) from None
    if measured and chosen == "sim":
        raise click.UsageError(f"{ctx.info_name} needs the emulated or vm mode, and {why}")
    for profile in profiles if chosen != "sim" else ():
        problem = kernel_shaping_problem(profile)
        if problem is not None:
            raise ConfigError(f"profile {profile.name}: {problem} (in {chosen} mode)")
    console.print(f"mode: {chosen} ({reason or why})")
    if chosen == "vm":
        try:
            ctx.with_resource(vm.shared_router())
        except (vm.VmError, RouterError) as error:
            raise click.ClickException(f"vm: {error}") from None
    return chosen


def run_in_vm(argv: list[str], writable: list[Path], timeout_s: float, accel: str = "auto",
              cpus: int | None = None, memory_mib: int = 2048) -> int:
    """Run ``argv`` inside the VM with this stdout; its exit code (124 on timeout)."""
    for folder in writable:
        folder.mkdir(parents=True, exist_ok=True)
    try:
        host = vm.VmHost.find()
        result = host.run(argv, cwd=Path.cwd(), writable=writable, accel=accel,
                          timeout_s=timeout_s, cpus=cpus, memory_mib=memory_mib)
    except vm.VmError as error:
        raise click.ClickException(f"vm: {error}") from None
    if result.exit_code == vm.EXIT_TIMEOUT:
        click.echo(f"vm: timed out after {timeout_s:g} s; the VM was stopped", err=True)
    click.echo(f"vm: {result.accel} VM, {result.wall_s:.1f} s, exit code {result.exit_code}",
               err=True)
    return result.exit_code


def device_emulation_options(command):
    """The flags of device emulation, added to ``command``, which takes them as keyword
    arguments named as their job fields (``--edge-device``: ``edge_device``)."""
    options = [
        click.option("--edge-device", help="Device emulation: the edge computes the real "
                     "tokens, each pass of its draft padded to the time this device takes "
                     "for the declared draft (its roofline bound: see README, Device "
                     "emulation): a name under configs/devices (jetson-orin-nano, "
                     "raspberry-pi-5, a100-sxm, h100-sxm, h200-sxm, ...) or a YAML path; "
                     "needs --cloud-device [default: the job's, none]."),
        click.option("--cloud-device", help="Device emulation: the device the cloud's models "
                     "are timed as [default: the job's, none]."),
        click.option("--edge-model-params", type=float, help="Device emulation: the draft's "
                     "size in parameters (0.5e9), timed as the published Qwen2.5 shape nearest "
                     "to it; or give --edge-model-shape."),
        click.option("--edge-model-shape", help="Device emulation: the draft's exact shape: "
                     "llama-68m, llama-160m, qwen2.5-0.5b ... qwen2.5-72b, or a transformers "
                     "config.json (or its model folder)."),
        click.option("--cloud-model-params", type=float, help="Device emulation: the target's "
                     "size in parameters (7e9); or give --cloud-model-shape."),
        click.option("--cloud-model-shape", help="Device emulation: the target's exact shape, "
                     "as --edge-model-shape."),
        click.option("--emulated-dtype", type=click.Choice(get_args(Dtype)),
                     help="Device emulation: the dtype both models are timed at [default: the "
                          "job's, bfloat16]."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


data_plane_security_option = click.option(
    "--data-plane-security", type=click.Choice(get_args(DataPlaneSecurity)),
    help="The data plane between the agents: curve (ZeroMQ CURVE, authenticated and "
         "encrypted with keys made for the run), plain, or auto: curve whenever it leaves "
         "this host's loopback and the run's own namespaces (the sim, emulated and vm links "
         "never do) [default: the job's, auto].")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Real-network testbed for cloud-edge speculative decoding.

    Runs a draft model on an "edge" agent and a target model on a "cloud"
    agent, each its own process, exchanging drafts and verdicts over ZeroMQ
    through a shaped link, and compares cloud-only, cloud-spec, edge-only,
    fixed-K speculation and the policies that choose K per cycle (nasd, the
    network-adaptive controller; hf-heuristic; bandit).
    """


# Every flag of `run` that stands for a job or profile field is checked by that field's schema
# as the job or profile loads (``orchestrator.config.loading``), so it keeps the file's bounds.
@cli.command("run")
@click.option("--profile", "profile_name", default="lan", show_default=True,
              help="Network profile: a name under configs/profiles (see `orchestrator profiles`) "
                   "or a YAML path.")
@click.option("--mode", type=click.Choice(MODES), default="auto", show_default=True,
              help="emulated: agents in two network namespaces joined by a veth shaped by "
                   "kernel netem + tbf (root, a kernel with sch_netem). vm: the same "
                   "namespaces and native agents, joined through a qemu router VM whose stock "
                   "kernel shapes with netem + tbf (root, qemu). sim: agents on loopback with "
                   "the Python link model (no root). auto: emulated, else vm, else sim; "
                   "`orchestrator doctor` says which and why.")
@click.option("--job", "job_name", default="default", show_default=True,
              help="Job file: a name under configs/jobs or a YAML path.")
@click.option("--model-pair", help="Model pair: a name under configs/models or a YAML path "
                                   "[default: the job's].")
@click.option("--strategy", "strategies", multiple=True, type=click.Choice(ALL_STRATEGIES),
              help="Strategy to run; repeat for several [default: the job's; a job without "
                   "strategies runs cloud-only, cloud-spec, edge-only and fixed-k].  nasd, "
                   "hf-heuristic and bandit choose K per cycle within --nasd-k-min..--nasd-k-max.")
@click.option("--k", "k_values", multiple=True, type=int,
              help="Draft length for fixed-k, at least 1; repeat for several [default: the "
                   "job's, 3 5 10 15].")
@click.option("--nasd-k-min", type=int,
              help="Smallest K of nasd, hf-heuristic, bandit [default: the job's, 1].")
@click.option("--nasd-k-max", type=int,
              help="Largest K of nasd, hf-heuristic, bandit [default: the job's, 15].")
@click.option("--nasd-edge-only-cutoff", is_flag=True, default=None,
              help="nasd: past the reversal RTT, serve stretches with the draft alone where "
                   "that beats handing them to the cloud (lossy, flagged; labelled "
                   "nasd-cutoff) [default: the job's, off].")
@click.option("--nasd-confidence-floor", type=float,
              help="nasd: within a cycle, stop drafting before a position whose likeliest "
                   "draft token has a lower probability; K stays the ceiling [default: the "
                   "job's, 0: never].")
@click.option("--nasd-rtt-estimate",
              help="nasd: the RTT it decides on: ewma, or a percentile of the last second's "
                   "samples such as p50 or p90 [default: the job's, ewma].")
@click.option("--nasd-objective",
              help="nasd: what K optimises: mean (expected tokens/s), or a percentile of a "
                   "query's decode time such as p95 [default: the job's, mean].")
@click.option("--draft-ahead", type=int,
              help="fixed-k, nasd: while a verdict is in flight, draft and send up to N further "
                   "blocks, each on the premise that the blocks before it are kept whole "
                   "(lossless; labels gain +aheadN) [default: the job's, 0: none].")
@click.option("--nasd-rtt-table", "nasd_rtt_table_path",
              type=click.Path(dir_okay=False, path_type=str),
              help="nasd: an RTT -> K table (CSV from `orchestrator calibrate`); K is the "
                   "table's for the controller's RTT estimate instead of the online argmax "
                   "[default: the job's nasd_rtt_table_path, none].")
@click.option("--nasd-calibration", "nasd_calibration_path",
              type=click.Path(dir_okay=False, path_type=str),
              help="nasd: a calibration file (YAML from `orchestrator calibrate`) that "
                   "seeds the controller's online estimates (20 cycles' worth of evidence, "
                   "fading as its own cycles come) [default: the job's "
                   "nasd_calibration_path, none].")
@click.option("--decoding", type=click.Choice(get_args(Decoding)), help="[default: the job's]")
@click.option("--temperature", type=float,
              help="Sampling temperature, applied on both sides [default: the job's, 1].")
@click.option("--top-k", type=int, help="Keep the k likeliest tokens (0: all).")
@click.option("--top-p", type=float, help="Nucleus mass to keep.")
@click.option("--codec", help="Draft payload codec: ids, q-scalar, topk (topkN), full16, full32 "
                              "[default: ids for greedy, q-scalar for sampling].")
@click.option("--prompts", help="Prompt set: a name under configs/prompts, a .jsonl path, or "
                                "mmlu:DIR[:subject,...] [default: the job's].")
@click.option("--max-new-tokens", type=int, help="[default: the job's]")
@click.option("--queries", "max_queries", type=int, help="Use the first N prompts (N >= 1).")
@click.option("--repetitions", type=int, help="Runs of each query, at least 1 [default: the "
                                              "job's].")
@click.option("--seed", type=int, help="[default: the job's]")
@click.option("--query-order", type=click.Choice(QUERY_ORDERS),
              help="interleaved: each prompt goes to every strategy before the next prompt, so "
                   "a host whose speed drifts slows every strategy alike; by-strategy: one "
                   "strategy's queries after another's [default: the job's, interleaved].")
@click.option("--rtt-ms", type=float, help="Override the profile's RTT (ms, >= 0).")
@device_emulation_options
@data_plane_security_option
@click.option("--results", "results_root", type=click.Path(file_okay=False, path_type=Path),
              default=Path("results"), show_default=True, help="Where run folders go.")
@click.option("--report/--no-report", "write_html", default=True, show_default=True,
              help="Write the plots and report.html once the run is summarized (what "
                   "`orchestrator report` writes; a few seconds).")
@click.pass_context
def run_command(ctx, profile_name, mode, job_name, model_pair, strategies, k_values, nasd_k_min,
                nasd_k_max, nasd_edge_only_cutoff, nasd_confidence_floor, nasd_rtt_estimate,
                nasd_objective, draft_ahead, nasd_rtt_table_path, nasd_calibration_path,
                decoding, temperature, top_k, top_p, codec, prompts, max_new_tokens,
                max_queries, repetitions, seed, query_order, rtt_ms, data_plane_security,
                results_root, write_html, **emulation) -> None:
    """Run a job's strategies on one network profile and summarize them.

    Writes config.yaml, queries.jsonl, cycles.jsonl (as they happen),
    summary.csv and link_stats.json into a new folder under --results, prints
    the summary, then writes the plots, leaderboard.csv, reversal.csv and
    report.html beside them (--no-report: not).
    """
    console = make_console()
    spec = RunSpec.load(job_name, profile_name, mode, job_overrides={
        "model_pair": model_pair, "strategies": list(strategies), "k_values": list(k_values),
        "nasd_k_min": nasd_k_min, "nasd_k_max": nasd_k_max,
        "nasd_edge_only_cutoff": nasd_edge_only_cutoff,
        "nasd_confidence_floor": nasd_confidence_floor,
        "nasd_rtt_estimate": nasd_rtt_estimate, "nasd_objective": nasd_objective,
        "draft_ahead": draft_ahead,
        "nasd_rtt_table_path": nasd_rtt_table_path, "nasd_calibration_path": nasd_calibration_path,
        "decoding": decoding, "temperature": temperature, "top_k": top_k, "top_p": top_p,
        "codec": codec, "prompts": prompts, "max_new_tokens": max_new_tokens,
        "max_queries": max_queries,
        "repetitions": repetitions, "seed": seed, "query_order": query_order,
        "data_plane_security": data_plane_security, **emulation},
        profile_overrides={"rtt_ms": rtt_ms})
    # all input is checked before a router VM boots
    path, _ = run(replace(spec, mode=enter_mode(ctx, mode, [spec.profile], console)),
                  results_root, console)
    if write_html:
        from orchestrator.reporting.report import write_report  # matplotlib: only when plotting
        report = write_report(path)
        if report is not None:
            console.print(report.line(path), highlight=False)


MAX_RTT_GRID = 100_000     # RTTs in a table of `orchestrator calibrate`


def parse_rtt_grid(ctx, param, text: str) -> list[float]:
    """The ``--rtt-grid`` of ms: ``0:1000:10`` (start:stop:step, stop included) or
    ``0,10,25``, or both, comma-joined; sorted; each RTT one a profile's ``rtt_ms`` takes."""
    grid: set[float] = set()
    try:
        for part in text.split(","):
            if ":" in part:
                start, stop, step = (float(value) for value in part.split(":"))
                if not (np.isfinite([start, stop, step]).all() and step > 0 and stop >= start):
                    raise ValueError
                count = int((stop - start) / step + 1e-9) + 1
                values = (start + step * i for i in range(count))
            else:
                count, values = 1, (float(part),)
            if len(grid) + count > MAX_RTT_GRID:
                raise click.BadParameter(f"{text!r}: more than {MAX_RTT_GRID:,} RTTs")
            grid.update(values)
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected START:STOP:STEP (STOP >= START, a "
                                 "positive STEP) or comma-separated RTTs in ms") from None
    return FieldType(list[Milliseconds]).convert(sorted(grid), param, ctx)


class FieldType(click.ParamType):
    """A flag that stands for a config field: its value parsed and bounded by the field's own
    type (``Seed``, ``BandwidthMbps``, ...), as in a file."""

    def __init__(self, annotation) -> None:
        self.adapter = TypeAdapter(annotation)
        base = get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation
        self.name = getattr(base, "__name__", "value")       # click's metavar: INT, FLOAT

    def convert(self, value, param, ctx):
        try:
            return self.adapter.validate_python(value)
        except ValidationError as error:
            self.fail(first_error(error)[1], param, ctx)


@cli.command("calibrate")
@click.option("--job", "job_name", default="default", show_default=True,
              help="Job file: a name under configs/jobs or a YAML path; its model pair, prompts "
                   "(prefill lengths, the text drafted), decoding, codec, max_new_tokens, seed "
                   "and nasd_k_min..nasd_k_max are used.")
@click.option("--model-pair", help="Model pair: a name under configs/models or a YAML path "
                                   "[default: the job's].")
@click.option("--codec", help="Draft payload codec whose bytes are measured [default: the job's].")
@click.option("--k-min", type=click.IntRange(1, 64),
              help="Smallest K of the table [default: the job's nasd_k_min].")
@click.option("--k-max", type=click.IntRange(1, 64),
              help="Largest K measured and in the table [default: the job's nasd_k_max].")
@click.option("--cycles", "cycles_per_k", type=click.IntRange(1), default=20, show_default=True,
              help="Speculation cycles measured at each K in 0..--k-max.")
@click.option("--repetitions", type=click.IntRange(1), default=5, show_default=True,
              help="Repetitions of each prefill measurement.")
@click.option("--rtt-grid", "grid", default="0:1000:10", show_default=True,
              callback=parse_rtt_grid,
              help="RTTs of the table in ms: START:STOP:STEP (stop included) or a comma list.")
@click.option("--bandwidth-mbps", type=FieldType(BandwidthMbps),
              help="Link rate for the transfers' time in the table (both directions) "
                   "[default: unshaped, no transfer time].")
@click.option("--from-calibration", "calibration_path",
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Measure nothing: build the table from this calibration file.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for calibration.yaml and rtt_table.csv [default: "
                   "calibration/<pair>-<codec>, or beside --from-calibration].")
@device_emulation_options
def calibrate_command(job_name, model_pair, codec, k_min, k_max, cycles_per_k, repetitions,
                      grid, bandwidth_mbps, calibration_path, out_dir, **emulation) -> None:
    """Measure a model pair with a payload codec on this host, then build the RTT -> K table.

    With device emulation (the job's, or the --edge-device ... flags) every pass is
    padded to its emulated device's time as in a run, and both files record the
    emulation: a run takes them only with the same one (and a run without emulation
    only files measured without).

    Both models run in this process (no agents, no network): draft time per token,
    t_verify(K) for K = 0..--k-max, the cloud's plain decoding step, edge and cloud
    prefill per prompt length, bytes on the wire per cycle at each K, and the acceptance
    (pooled and per position), each with a 95 % interval, into calibration.yaml.  From it,
    with the closed form of nasd.analytic, rtt_table.csv: per grid RTT the best K in
    [--k-min, --k-max] and the predicted tokens/s, k = 0 where cloud-only decoding is
    predicted faster.  Progress goes to stderr.  A run uses the table with
    `orchestrator run --strategy nasd --nasd-rtt-table FILE` (its K within the run's
    nasd K range).
    """
    from nasd.table import build_table
    from orchestrator.config.nasd_files import (
        EMULATION_COMMENT,
        load_calibration,
        write_calibration,
        write_table,
    )
    job = load_job(job_name, {"model_pair": model_pair, "codec": codec, "nasd_k_min": k_min,
                              "nasd_k_max": k_max, **emulation},
                   flags={"nasd_k_min": "--k-min", "nasd_k_max": "--k-max"})
    if calibration_path is not None:
        measured = load_calibration(calibration_path)
        if measured.k_max < job.nasd_k_max:
            raise click.UsageError(f"--k-max {job.nasd_k_max}: {calibration_path} measured K "
                                   f"up to {measured.k_max}")
        out_dir = out_dir or calibration_path.parent
    else:
        measured = measure(job, cycles_per_k, repetitions)
        out_dir = out_dir or Path("calibration") / f"{measured.model_pair}-{measured.codec}"
        write_calibration(out_dir / "calibration.yaml", measured)
        click.echo(f"calibration: {out_dir / 'calibration.yaml'}")
    seconds_per_byte = (0.0 if bandwidth_mbps is None
                        else 1.0 / DirectionSpec(bandwidth_mbps=bandwidth_mbps).rate_bytes_per_s)
    table = build_table(measured.calibration(seconds_per_byte), grid, job.nasd_k_min,
                        job.nasd_k_max)
    link = "unshaped" if bandwidth_mbps is None else f"{bandwidth_mbps:g} Mbit/s"
    write_table(out_dir / "rtt_table.csv", table, [
        f"RTT -> K table of {measured.model_pair}, codec {measured.codec}, "
        f"{measured.decoding} decoding, measured {measured.created} on {measured.host['node']}",
        f"link: {link}; K in [{job.nasd_k_min}, {job.nasd_k_max}]; "
        "k = 0: cloud-only decoding is predicted faster (spec_k: the best K all the same)",
        *([f"{EMULATION_COMMENT}{measured.emulation}"] if measured.emulation else [])])
    click.echo(f"table: {out_dir / 'rtt_table.csv'} ({len(table.rows)} RTTs, {link})")
    reversal = next((row.rtt_ms for row in table.rows if row.k == 0), None)
    click.echo(f"acceptance {measured.acceptance.rate:.3f}; K {table.rows[0].spec_k} at "
               f"{table.rows[0].rtt_ms:g} ms to {table.rows[-1].spec_k} at "
               f"{table.rows[-1].rtt_ms:g} ms; " + (
                   f"cloud-only decoding is faster from {reversal:g} ms (k = 0)"
                   if reversal is not None
                   else "speculation pays at every RTT of the grid"))


def measure(job, cycles_per_k: int, repetitions: int):
    """The calibration of ``job``'s pair and codec on this host, progress on stderr."""
    from orchestrator.lifecycle.calibrate import CalibrationPlan, Calibrator
    no_link = LinkState(uplink=DirectionSpec(), downlink=DirectionSpec())
    # the checks a run of the job gets (pair, prompts, decoding), on no link at all
    spec = RunSpec.build(job, NetworkProfile(name="in-process", initial=no_link), "sim")
    prompts = spec.prompts[: job.max_queries] if job.max_queries else spec.prompts
    plan = CalibrationPlan(pair_name=spec.model_pair.name, prompts=[p.prompt for p in prompts],
                           sampling=job.sampling, codec=job.resolved_codec,
                           max_new_tokens=job.max_new_tokens, k_max=job.nasd_k_max,
                           cycles_per_k=cycles_per_k, repetitions=repetitions, seed=job.seed)
    console = Console(stderr=True, soft_wrap=True)
    console.print(f"measuring {plan.pair_name}, codec {plan.codec}: prefill of "
                  f"{len(prompts)} prompts, cloud-only steps, {cycles_per_k} cycles at each K "
                  f"in 0..{plan.k_max}")
    if spec.emulation is not None:
        console.print(spec.emulation.describe(max(plan.k_max, 1)), soft_wrap=True, highlight=False)
    with console.status(f"loading {plan.pair_name}"):
        calibrator = Calibrator(spec.model_pair, plan, spec.emulation)
    with work_progress(console) as progress:
        return calibrator.run(progress)


@cli.command("sweep")
@click.option("--job", "job_name", help="Job file with a `network` section (profiles and/or "
                                        "grids, codecs): a name under configs/jobs or a path.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, exists=True,
                                                        path_type=Path),
              help="Finish this sweep folder: cells it finished are kept, a cell cut off is "
                   "rerun; the job and mode are the folder's.")
@click.option("--model-pair", help="Model pair: a name under configs/models or a YAML path "
                                   "[default: the job's].")
@click.option("--mode", type=click.Choice(MODES), default="auto", show_default=True,
              help="As for `run`; one mode for every cell.")
@device_emulation_options
@data_plane_security_option
@click.option("--latency-budget-ms-per-token", type=float,
              help="Budget guardrail: skip each strategy run of a cell that the fitted latency "
                   "model (--guardrail) predicts will break this many ms per committed token "
                   "even at the low end of its interval; the rest run as usual [default: the "
                   "job's latency_budget_ms_per_token, none].")
@click.option("--guardrail", "guardrail_path", type=click.Path(path_type=str),
              help="A folder `orchestrator latency fit` wrote (estimator.json, guardrail.json) "
                   "for this host, dtype and threads; needs an hf pair [default: the job's "
                   "guardrail_path].")
@click.option("--guardrail-acceptance", nargs=2, type=float, metavar="LOW HIGH",
              help="The least and most per-token acceptance the guardrail assumes [default: "
                   "the job's guardrail_acceptance, 0 1: any].")
@click.option("--guardrail-probe/--no-guardrail-probe", default=None,
              help="Before judging, run the pair cloud-only and fixed-K on an unshaped link "
                   "(a few queries): scale every fitted stage by how its tokens came against "
                   "the fitted decoding step (this host's speed now, serving loop included: "
                   "a virtual host's speed drifts by tens of percent over hours) and add its "
                   "cycles' own round trip to every RTT [default: the job's guardrail_probe, "
                   "true].")
@click.option("--results", "results_root", type=click.Path(file_okay=False, path_type=Path),
              default=Path("results"), show_default=True, help="Where the sweep folder goes.")
@click.pass_context
def sweep_command(ctx, job_name, resume_dir, model_pair, mode, data_plane_security,
                  latency_budget_ms_per_token, guardrail_path, guardrail_acceptance,
                  guardrail_probe, results_root, **emulation) -> None:
    """Run a job on every cell of its network section, then rank and report.

    Each cell is a full run (same files as `run`) under cells/, recorded in
    cells.jsonl once finished; Ctrl-C stops cleanly and `--resume DIR`
    continues without redoing finished cells.  At the end: leaderboard.csv,
    reversal.csv, rank/ (Ianvs layout), plots and report.html.  With a budget
    guardrail, the strategy runs predicted to break the budget are skipped;
    cells.jsonl, guardrail.csv and the report say which, and how each decision
    compares with what the runs measured.
    """
    console = make_console()
    if (job_name is None) == (resume_dir is None):
        raise click.UsageError("give either --job FILE (a new sweep) or --resume DIR")
    for name, value in (("--model-pair", model_pair),
                        ("--data-plane-security", data_plane_security),
                        ("--latency-budget-ms-per-token", latency_budget_ms_per_token),
                        ("--guardrail", guardrail_path),
                        ("--guardrail-acceptance", guardrail_acceptance or None),
                        ("--[no-]guardrail-probe", guardrail_probe)):
        if resume_dir is not None and value is not None:
            raise click.UsageError(f"{name}: a resumed sweep keeps its own")
    given = [name for name, value in emulation.items() if value is not None]
    if resume_dir is not None and given:
        raise click.UsageError(f"{flag(given[0])}: a resumed sweep keeps its own device "
                               "emulation")
    if resume_dir is not None:
        folder = SweepFolder.open(resume_dir.resolve())
        job, chosen, names = folder.plan()
        cells = {cell.name: cell for cell in expand(job)}
        if sorted(cells) != sorted(names):
            raise ConfigError(f"{resume_dir}: the job's cells no longer match {SweepFolder.PLAN}")
        cells = [cells[name] for name in names]
        if mode not in ("auto", chosen):
            raise click.UsageError(f"--mode {mode}: this sweep runs in {chosen} mode")
        template = RunSpec.build(job, cells[0].profile, chosen)
        guardrail = sweep_guardrail(template)
        enter_mode(ctx, chosen, [cell.profile for cell in cells], console,
                   reason="the mode the sweep started with")
    else:
        job = load_job(job_name, {"model_pair": model_pair,
                                  "data_plane_security": data_plane_security,
                                  "latency_budget_ms_per_token": latency_budget_ms_per_token,
                                  "guardrail_path": guardrail_path,
                                  "guardrail_acceptance": list(guardrail_acceptance or []),
                                  "guardrail_probe": guardrail_probe,
                                  **emulation})
        if guardrail_probe and not job.guarded:     # the default: the job cannot tell
            raise ConfigError(f"--guardrail-probe (with job {job_name}): {PROBE_NEEDS_GUARDRAIL}")
        cells = expand(job)
        template = RunSpec.build(job, cells[0].profile, mode)    # before a VM or a folder
        guardrail = sweep_guardrail(template)
        template = replace(template, mode=enter_mode(ctx, mode, [cell.profile for cell in cells],
                                                      console))
        folder = SweepFolder.create(results_root, job, template.mode, cells)
    if template.emulation is not None:
        console.print(template.emulation.describe(largest_k(template.job)),
                      highlight=False)
    if guardrail is not None:
        from orchestrator.lifecycle.calibrate import host
        for warning in (guardrail.foreign_host(host()["processor"]),
                        guardrail.device_warning()):
            if warning:
                console.print(warning, highlight=False, markup=False)
    console.print(f"sweep: {folder.path} ({len(cells)} cell{'s' * (len(cells) != 1)}); "
                  f"resume with `orchestrator sweep --resume {folder.path}`")
    sweep(folder, template, cells, console, guardrail)
    from orchestrator.reporting.report import (
        report_folder,  # matplotlib: only when plotting
    )
    report_folder(folder.path, console)


def sweep_guardrail(spec: RunSpec):
    """The job's budget guardrail, checked (``orchestrator.config.guardrail``), or None."""
    if not spec.job.guarded:
        return None
    from orchestrator.config.guardrail import load_guardrail  # scikit-learn: only when asked
    return load_guardrail(spec)


@cli.command("validate")
@click.option("--job", "job_name", default="validate", show_default=True,
              help="Job file with a `network` section: a name under configs/jobs or a path.")
@click.option("--mode", type=click.Choice(["auto", "emulated", "vm"]), default="auto",
              show_default=True, help="The measured leg: emulated (kernel netem here) or vm; "
                                      "auto as for `run`, never sim.")
@click.option("--results", "results_root", type=click.Path(file_okay=False, path_type=Path),
              default=Path("results"), show_default=True, help="Where the validation goes.")
@click.pass_context
def validate_command(ctx, job_name, mode, results_root) -> None:
    """Run a job's cells in sim and in emulated (or vm) mode and compare them with each
    other and with the analytic model.

    First measures the path's own round trip in the measured mode, on a link
    shaped only by a 0.5 ms netem floor each way where its kernel has netem
    (taken off again), and adds it to the sim leg's RTT; then prints, per
    cell and strategy, the difference, tolerance and verdict of tokens/s,
    TTFT P50/P95 and cycle RTT P50/P95, and writes validation.csv (and
    calibration.json: the path's median round trip, how far its P95 lay above
    that, and the verdict).  A sim-vs-
    measured difference past its tolerance but within the two legs' own 95 %
    sampling error is "ok~" (unresolved: more queries would judge it), not a
    miss.  Exit code 1 when a check misses.
    """
    console = make_console()
    job = load_job(job_name)
    cells = expand(job)
    template = RunSpec.build(job, cells[0].profile, mode)    # before a VM or a folder
    check_job_for_validation(job)
    chosen = enter_mode(ctx, mode, [cell.profile for cell in cells], console, measured=True)
    _, comparison = crossvalidate(replace(template, mode=chosen), cells, results_root, console)
    ctx.exit(0 if passed(comparison) else 1)


@cli.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
def report_command(run_dir) -> None:
    """Write RUN_DIR/report.html (tables and plots in one file) and print the key table.

    RUN_DIR is a sweep folder or the folder of one `run`.
    """
    from orchestrator.reporting.report import (
        report_folder,  # matplotlib: only when plotting
    )
    report_folder(run_dir, make_console())


@cli.command("probe")
@click.option("--profile", "profile_name", default="lan", show_default=True,
              help="Network profile: a name under configs/profiles or a YAML path.")
@click.option("--mode", type=click.Choice(MODES), default="auto", show_default=True,
              help="Which link to probe: the sim link model, kernel netem here (emulated), "
                   "or kernel netem in the router VM (vm); auto as for `run`.")
@click.option("--rtt-ms", type=float, help="Override the profile's RTT.")
@click.option("--packets", type=click.IntRange(10), default=ProbePlan.packets, show_default=True,
              help="UDP echo probes (one every --interval-ms).")
@click.option("--interval-ms", type=click.FloatRange(1), default=ProbePlan.interval_s * 1000,
              show_default=True)
@click.option("--goodput-s", type=click.FloatRange(0.2), default=ProbePlan.goodput_s,
              show_default=True, help="Length of each bulk TCP transfer at the shaped rate.")
@click.option("--seed", type=FieldType(Seed), default=0, show_default=True,
              help="Seed of the sim link and of the expectation's simulation.")
@click.option("--results", "results_root", type=click.Path(file_okay=False, path_type=Path),
              default=Path("results"), show_default=True, help="Where the JSON report goes.")
@click.pass_context
def probe_command(ctx, profile_name, mode, rtt_ms, packets, interval_ms, goodput_s, seed,
                  results_root) -> None:
    """Measure what the link delivers per direction against the profile.

    One-way delay and RTT (UDP echo, one clock), jitter sigma, loss with a 95 %
    interval, reordering, and TCP goodput, each beside the expectation from
    the sim mode's link math, after a baseline on the path shaped only by a
    0.5 ms netem floor each way where its kernel has netem (the path's own
    delay, timer included, reported and subtracted as measured).  Prints a
    table, writes JSON under --results; exit code 1 when a check misses.
    """
    console = make_console()
    profile = load_profile(profile_name, {"rtt_ms": rtt_ms})
    chosen = enter_mode(ctx, mode, [profile], console)
    plan = ProbePlan(packets=packets, interval_s=interval_ms / 1000.0, goodput_s=goodput_s)
    with console.status(f"probing {profile.name} ({chosen})"):
        if chosen == "sim":
            report = probe_sim(profile, plan, seed)
        else:
            link = make_link(chosen, profile, seed=0)
            try:
                with interrupts.shielded():    # a signal ends the probe before or after
                    link.create(shape=False)
                report = probe_link(link, chosen, plan, seed)
            finally:
                with interrupts.deferred():    # ... making and removing the link, not inside
                    link.close()
    path = save_probe_report(report, results_root)
    print_probe_report(report, console)
    console.print(f"saved: {path}")
    ctx.exit(0 if report.passed else 1)


@cli.command("doctor")
@click.option("--probe-kvm", is_flag=True, help="Boot the VM once under KVM to see whether it "
                                                "works here (otherwise the first VM run does).")
def doctor_command(probe_kvm) -> None:
    """Say what this host can do and which mode `run` picks, and why."""
    report = HostReport.inspect(probe_kvm=probe_kvm)
    for check in report.checks:
        click.echo(f"{'ok' if check.ok else '--':2s}  {check.name:10s} {check.detail}")
    mode, reason = choose_mode("auto", report)
    click.echo(f"mode: {mode} ({reason})")


@cli.command("vm", context_settings={"ignore_unknown_options": True,
                                     "allow_interspersed_args": False})
@click.option("--writable", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              default=[Path("results")], show_default=True,
              help="A folder the command may write to (created if missing); repeat for several. "
                   "Everything else of the host is read-only inside; /tmp is the VM's own.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1), default=vm.DEFAULT_TIMEOUT_S,
              show_default=True, help="Stop the VM after this many seconds (exit code 124).")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto",
              show_default=True, help="auto: KVM when a probe boot shows it works, else TCG.")
@click.option("--cpus", type=click.IntRange(1), help="[default: this host's]")
@click.option("--memory", "memory_mib", type=click.IntRange(256), default=2048,
              show_default=True, help="Guest memory in MiB.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def vm_command(ctx, writable, timeout_s, accel, cpus, memory_mib, command) -> None:
    """Run COMMAND inside a qemu VM that boots this host's installed Debian kernel.

    The host's root is shared read-only, the --writable folders read-write;
    the command runs as root in the current folder, with the same venv.
    Its output and exit code pass through.  Example:

    orchestrator vm -- orchestrator doctor
    """
    ctx.exit(run_in_vm(list(command), list(writable), timeout_s, accel, cpus, memory_mib))


@cli.command("cleanup")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--include-live", is_flag=True,
              help="Also remove what a still-running orchestrator owns.")
def cleanup_command(dry_run, include_live) -> None:
    """Remove the namespaces, veths, owner files and agents' socket folders a killed run left
    behind.

    Only names of this tool's scheme (es<8 hex digits>-edge/-cloud/-probe,
    -e/-c; edgespec-<pid>-<start>-* in the temporary folder) whose owner process is gone
    are touched.
    """
    found = (leftovers if dry_run else remove_leftovers)(include_live=include_live)
    verb = "would remove" if dry_run else "removed"
    for kind, names in (("namespace", found.namespaces), ("veth", found.veths),
                        ("owner file", found.owner_files),
                        ("socket folder", found.socket_folders)):
        for name in names:
            click.echo(f"{verb} {kind} {name}")
    for namespace, pids in found.processes.items():
        click.echo(f"still running inside {namespace}: pids {' '.join(map(str, pids))} "
                   "(not killed)")
    if not found:
        click.echo("nothing to clean up")


@cli.group("latency")
def latency_group() -> None:
    """The latency model (nasd/latency): measure each stage of a cycle on this host, fit the
    stage-aware estimator, recalibrate it to other hardware from a few samples."""


@latency_group.command("measure")
@click.option("--job", "job_name", default="default", show_default=True,
              help="Job file: its model pair (an hf pair: its tokenizer and shape are the "
                   "base of the scaled pairs), prompts (the text cut into prompts and "
                   "contexts), decoding and codec are used.")
@click.option("--model-pair", help="[default: the job's]")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]),
              default="float32", show_default=True, help="Weights and compute dtype.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="torch threads (with --dtype, the \"hardware\" of the campaign).")
@click.option("--samples", type=click.IntRange(1), default=200, show_default=True,
              help="Configurations drawn from the grid (pair, prompt, context, K).")
@click.option("--repeats", type=click.IntRange(1), default=5, show_default=True,
              help="Rounds: repeats of each stage per sample, a whole round over every sample "
                   "apart (the median is kept).")
@click.option("--passes", type=click.IntRange(1), default=3, show_default=True,
              help="Timed passes of each stage per sample and round, back to back (their "
                   "median is the round's time): one pass of a millisecond-scale stage "
                   "varies by +-10 % on a quiet host.")
@click.option("--speed-reference/--no-speed-reference", default=True, show_default=True,
              help="Time the job's own target decoding one token at a fixed context beside "
                   "every turn, and scale the turn's times by it (the host's speed at that "
                   "moment taken out; the raw times are kept too).")
@click.option("--budget-s", type=click.FloatRange(0, min_open=True), default=480.0,
              show_default=True, help="Do no round that would end after this many seconds (one round at least).")
@click.option("--seed", type=FieldType(Seed), default=0, show_default=True,
              help="Seeds the draw of configurations and the scaled models' weights.")
@click.option("--max-load", type=click.FloatRange(0, min_open=True),
              help="Before each round, wait (up to --quiet-wait-s) until the 1-minute load "
                   "average is at most this (this campaign counts about 1 per thread) "
                   "[default: no waiting].")
@click.option("--quiet-wait-s", type=click.FloatRange(0), default=120.0, show_default=True,
              help="The longest wait before a round for --max-load.")
@click.option("--campaign", help="Label of the campaign in every row [default: DTYPE-tTHREADS].")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              help="CSV to write [default: latency/CAMPAIGN.csv].")
@click.option("--overwrite", is_flag=True,
              help="Replace the CSV when it exists (without it, an existing table is kept and "
                   "the command stops before measuring).")
def latency_measure_command(job_name, model_pair, dtype, threads, samples, repeats, passes,
                            speed_reference, budget_s, seed, max_load, quiet_wait_s, campaign,
                            out_path, overwrite) -> None:
    """Time every stage of a speculation cycle over sampled configurations on this host.

    Stages: edge_prefill, draft_token, cloud_prefill, verify (K drafts), decode, with the
    codec's encoding time and the bytes on the wire, through the agents' own code (as
    `orchestrator calibrate` measures).  Model pairs: the job's, and randomly initialized
    Llama pairs of scaled shapes.  Each round times every stage of every sample (the median
    of --passes passes; the rounds are the repeats: the median is kept); one CSV row per
    sample with this machine's description and load average, rewritten after every round;
    progress on stderr.
    """
    from agents.backends.hf import HFPairConfig
    from orchestrator.lifecycle.latency import LatencyPlan
    from orchestrator.lifecycle.latency import measure as measure_latency
    job = load_job(job_name, {"model_pair": model_pair})
    no_link = LinkState(uplink=DirectionSpec(), downlink=DirectionSpec())
    spec = RunSpec.build(job, NetworkProfile(name="in-process", initial=no_link), "sim")
    if not isinstance(spec.model_pair, HFPairConfig):
        raise click.UsageError(f"--model-pair {spec.model_pair.name}: measuring latency needs "
                               "an hf pair (a synthetic pair computes nothing)")
    campaign = campaign or f"{dtype}-t{threads}"
    plan = LatencyPlan(shipped=spec.model_pair, texts=[p.prompt for p in spec.prompts],
                       sampling=job.sampling, codec=job.resolved_codec, dtype=dtype,
                       threads=threads, samples=samples, repeats=repeats, passes=passes,
                       speed_reference=speed_reference, budget_s=budget_s,
                       seed=seed, campaign=campaign, max_load=max_load,
                       quiet_wait_s=quiet_wait_s)
    out_path = out_path or Path("latency") / f"{campaign}.csv"
    if out_path.exists() and not overwrite:
        raise ConfigError(f"{out_path} exists: a new campaign would replace it (--out another "
                          "path, --campaign another name, or --overwrite)")
    writable_file(out_path, "--out")
    console = Console(stderr=True, soft_wrap=True)
    cores = os.cpu_count() or 1
    if threads > cores:
        console.print(f"warning: --threads {threads} on a host with {cores} cores: the threads "
                      "share them, so the table times contention, not more hardware")
    console.print(f"measuring {samples} samples ({dtype}, {threads} thread(s), {repeats} "
                  f"round{'s' * (repeats != 1)} of {passes} passes, at most {budget_s:g} s) "
                  f"into {out_path}")
    with work_progress(console) as progress:
        written = measure_latency(plan, out_path, progress)
    click.echo(f"table: {out_path} ({written} samples)")


def checked_device_name(ctx, param, name: str) -> str:
    if not name.strip() or "/" in name:
        raise click.BadParameter(f"{name!r}: a device name is a non-empty file name (no '/')")
    return name


@latency_group.command("device")
@click.option("--name", default="this-host", show_default=True, callback=checked_device_name,
              help="The device's name (what --device finds it by).")
@click.option("--tries", type=click.IntRange(1), default=7, show_default=True,
              help="Tries of each micro-benchmark (the best is kept).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Device file to write [default: NAME.yaml].")
def latency_device_command(name, tries, out_path) -> None:
    """Measure this host's roofline peaks (read bandwidth in cache and main memory, matmul
    FLOP/s per dtype) and what a linear layer PyTorch hands to its GEMM library costs beyond
    a small one (per dtype: one row just above 16^3 multiply-adds against one at it, the
    least of several rounds), and write them as a device file (the schema of
    configs/devices)."""
    import yaml

    from orchestrator.lifecycle.latency import device_file, measure_device
    out_path = out_path or Path(f"{name}.yaml")
    writable_file(out_path, "--out")
    console = Console(stderr=True, soft_wrap=True)
    with work_progress(console) as progress:
        measured = measure_device(tries, progress)
    out_path.write_text(yaml.safe_dump(device_file(measured, name), sort_keys=False))
    click.echo(f"device: {out_path} (main memory {measured.memory_bandwidth_gbps:.1f} GB/s, "
               + ", ".join(f"{dtype} {value * 1000:.0f} GFLOP/s"
                           for dtype, value in measured.peak_tflops.items())
               + "; a layer handed to the GEMM library " + ", ".join(
                   f"{dtype} +{value:g} us" for dtype, value in measured.library_call_us.items())
               + ")")
    others = measured.details["others_cpu_share"]
    if others > BUSY_SHARE:
        click.echo(f"warning: other processes used {others:.0%} of the cores while measuring: "
                   "the figures are a busy host's (its GEMM library calls can cost several "
                   "times a quiet one's); measure again on a quiet host", err=True)
    for dtype, rounds in measured.details["library_call_rounds_us"].items():
        if max(rounds) > 1.5 * max(min(rounds), 1.0):
            click.echo(f"note: {dtype}'s GEMM library calls cost {min(rounds):g}-"
                       f"{max(rounds):g} us over the rounds: a busy host slows them; the "
                       "least is kept", err=True)


BUSY_SHARE = 0.2   # of the cores, used by other processes while `latency device` measured

# a group-wise split needs two shapes, the guardrail two calibration and two judged samples
MIN_FIT_SAMPLES = 4


def writable_file(path: Path, flag: str) -> None:
    """Stop before any work when ``path`` (a file to write) cannot be written: its folder
    is made, and a file beside it created and removed."""
    probe = path.with_name(f".{path.name}.write-check")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"{flag} {path}: cannot write there ({error.strerror})") from None


def output_folder(path: Path, flag: str) -> Path:
    """A folder to write into: stop before any work when a file stands where it would be."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path}: a file is there, not a folder (give --out)")
    return path


def warn_device(table, device, prefix: str, remedy: str) -> None:
    """Say when ``device`` does not describe the machine ``table`` was measured on (with
    ``remedy``), or describes it without the GEMM library call cost of its dtype."""
    from orchestrator.config.loading import foreign_table, unmeasured_library_cost
    foreign = foreign_table(table, device)
    if foreign:
        click.echo(f"warning: {prefix}{foreign}{remedy}", err=True)
    elif note := unmeasured_library_cost(table, device):
        click.echo(f"note: {prefix}{note}", err=True)


def parse_ns(ctx, param, text: str) -> list[int]:
    """``--n 10,25,50,100``: calibration sample counts, each >= 1."""
    try:
        values = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise click.BadParameter(f"{text!r}: comma-separated whole numbers") from None
    if not values or values[0] < 1:
        raise click.BadParameter(f"{text!r}: every N must be >= 1")
    return values


@latency_group.command("fit")
@click.argument("table_path", metavar="TABLE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--device", "device_name", required=True,
              help="The device file the table was measured on: a name under configs/devices "
                   "(or NAME.yaml in the current folder, where `latency device` writes one) "
                   "or a path (its peaks scale the roofline).")
@click.option("--folds", type=click.IntRange(2), default=5, show_default=True,
              help="Group-wise folds (over model shapes).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for estimator.json, heldout.json, guardrail.json and their plots "
                   "[default: TABLE's path without its .csv; TABLE-fit for a name without one].")
def latency_fit_command(table_path, device_name, folds, out_dir) -> None:
    """Fit the stage-aware estimator on a measured table and judge it on model shapes it
    never saw: MAPE, MAE and P95 absolute error per stage for the roofline-shaped, linear
    and random-forest models, the forest's importances, how often the roofline bound sat
    above a measured time (it must never), and the budget guardrail on those held-out
    predictions (violation and false-reject rates at budget fractions 0.5..1)."""
    from orchestrator.config.loading import load_device, load_latency_table
    from orchestrator.reporting.latency_report import fit_report
    table, device = load_latency_table(table_path), load_device(device_name)
    from nasd.latency.stages import shape_group, shape_of
    for role in ("draft", "target"):     # the split's groups: ``held_out`` needs two
        if len({shape_group(shape_of(row, role)) for row in table.to_dict("records")}) < 2:
            raise ConfigError(f"{table_path}: every sample has one {role} model shape: "
                              "judging on shapes never seen in training needs two or more "
                              "(measure more --samples)")
    if len(table) < MIN_FIT_SAMPLES:
        raise ConfigError(f"{table_path}: {len(table)} samples: the fit and its guardrail "
                          f"need at least {MIN_FIT_SAMPLES} (measure more --samples)")
    warn_device(table, device, "", " (--device: the table's own)")
    out_dir = output_folder(out_dir or (table_path.with_suffix("") if table_path.suffix
                                        else table_path.with_name(f"{table_path.name}-fit")),
                            "--out")
    if (out_dir / "estimator.json").exists():
        click.echo(f"note: replacing the fit in {out_dir}", err=True)
    report = fit_report(table, device, out_dir, folds)
    click.echo("held-out MAPE per stage (each sample predicted by models fitted without its "
               "model shape):")
    click.echo(f"{'stage':14s} {'samples':>7s} {'groups':>6s} {'roofline':>9s} {'linear':>7s} "
               f"{'forest':>7s}  bound above measured")
    for stage, row in report["stages"].items():
        mape = {name: f"{values['mape_pct']:.1f}%" for name, values in row["models"].items()}
        click.echo(f"{stage:14s} {row['samples']:7d} {row['groups']:6d} {mape['roofline']:>9s} "
                   f"{mape['linear']:>7s} {mape['forest']:>7s}  {row['bound']['violations']}")
    used = sorted({row["folds"] for row in report["stages"].values()})
    if used[-1] < folds:
        click.echo(f"note: --folds {folds}: one fold per model shape at most, "
                   f"{'-'.join(map(str, sorted({used[0], used[-1]})))} here", err=True)
    for row in report["guardrail"]["fractions"]:
        guarded, unguarded = row["guarded"], row["unguarded"]
        click.echo(f"guardrail at budget fraction {row['fraction']:g}: violations "
                   f"{100 * guarded['violation_rate']:.1f}% (unguarded "
                   f"{100 * unguarded['violation_rate']:.1f}%), false rejects "
                   f"{100 * guarded['false_reject_rate']:.1f}% (unguarded "
                   f"{100 * unguarded['false_reject_rate']:.1f}%), left to measuring "
                   f"{guarded['measured']}/{guarded['candidates']}")
    from nasd.latency.guardrail import COVERAGE as GUARDRAIL_COVERAGE
    guard = report["guardrail"]
    if guard["coverage"] < GUARDRAIL_COVERAGE:
        click.echo(f"note: the guardrail's intervals cover {guard['coverage']:.0%}, not "
                   f"{GUARDRAIL_COVERAGE:.0%}: calibrated on {guard['calibration_samples']} "
                   "samples (measure more --samples)", err=True)
    click.echo(f"written: {out_dir}/estimator.json, heldout.json, guardrail.json and plots")


@latency_group.command("transfer")
@click.argument("source_path", metavar="SOURCE", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("target_path", metavar="TARGET", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--device", "device_name", required=True,
              help="The target's device file (a name under configs/devices or NAME.yaml in "
                   "the current folder, or a path); the source's too, unless --source-device.")
@click.option("--source-device", "source_device_name",
              help="The source's device file, where the tables come from different machines "
                   "(the estimator is fitted on its peaks, then predicts on the target's) "
                   "[default: --device].")
@click.option("--n", "ns", default="10,25,50,100", show_default=True, callback=parse_ns,
              help="Calibration sample counts.")
@click.option("--holdout", type=click.IntRange(1), default=60, show_default=True,
              help="Target samples held out for scoring (at most half the table).")
@click.option("--draws", type=click.IntRange(1), default=20, show_default=True,
              help="Random draws of the calibration samples per N.")
@click.option("--prior-sigma", type=click.FloatRange(0, min_open=True),
              help="Method C: sd of the prior on the log parameters [default: per stage, the "
                   "best of 0.5, 1, 2, 4 in a 3-fold cross-validation on the N calibration "
                   "samples].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for transfer.json and the plots [default: "
                   "transfer-SOURCE-to-TARGET beside TARGET, by their names without .csv].")
def latency_transfer_command(source_path, target_path, device_name, source_device_name, ns,
                             holdout, draws, prior_sigma, out_dir) -> None:
    """Recalibrate the SOURCE table's estimator to the TARGET table's hardware from N target
    samples: none, A (per-stage affine), B (one global affine on the total), C (the
    roofline refitted with the source as prior); MAPE and P95 absolute error on held-out
    target samples against N."""
    from orchestrator.config.loading import load_device, load_latency_table
    from orchestrator.reporting.latency_report import transfer_report
    source, target = load_latency_table(source_path), load_latency_table(target_path)
    device = load_device(device_name)
    source_device = load_device(source_device_name) if source_device_name else None
    if len(target) < 2:
        raise ConfigError(f"{target_path}: 1 sample: a transfer needs at least 2 (to "
                          "calibrate from and to score on)")
    warn_device(source, source_device or device, "SOURCE: ",
                " (--source-device: the source's own)")
    warn_device(target, device, "TARGET: ", " (--device: the target's own)")
    if source_path.resolve() == target_path.resolve():
        click.echo("warning: SOURCE and TARGET are one table: 'none' is then scored on the "
                   "samples its estimator was fitted on", err=True)
    out_dir = output_folder(out_dir or target_path.parent
                            / f"transfer-{source_path.stem}-to-{target_path.stem}", "--out")
    result = transfer_report(source, target, device, out_dir, ns, holdout, draws,
                             prior_sigma=prior_sigma, source_device=source_device)
    rows = [row for row in result["summary"] if row["stage"] == "all"]
    click.echo(f"{'method':6s} {'N':>4s} {'MAPE':>7s} {'P95 abs':>9s}")
    for row in sorted(rows, key=lambda r: (r["method"] != "none", r["method"], r["n"])):
        click.echo(f"{row['method']:6s} {row['n']:4d} {row['mape_pct']:6.1f}% "
                   f"{row['p95_abs_s'] * 1e3:7.2f}ms")
    held, ran = len(result["held_out_samples"]), {row["n"] for row in rows}
    left_out = [n for n in ns if n not in ran]
    if left_out:
        click.echo(f"note: N = {', '.join(map(str, left_out))} left out: TARGET has "
                   f"{len(target) - held} samples to calibrate from beside the {held} held out "
                   "(--holdout)", err=True)
    if held < 20:
        click.echo(f"note: scored on {held} held-out samples only: the figures are rough",
                   err=True)
    click.echo(f"written: {out_dir}/transfer.json and plots")


@cli.command("profiles")
def profiles_command() -> None:
    """List the shipped network profiles with their RTT, bandwidth, jitter and loss: one
    figure where both directions have it, else uplink/downlink (4g: 5/20 Mbit/s)."""
    def both(link: LinkState, field: str, unit: str, fmt: str = "g") -> str:
        values = [getattr(link.uplink, field), getattr(link.downlink, field)]
        if values == [None, None]:
            return "unshaped"
        shown = ["unshaped" if value is None else f"{value:{fmt}}" for value in values]
        return (shown[0] if values[0] == values[1] else "/".join(shown)) + unit

    for name in available("profiles"):
        profile = load_profile(name)
        link = profile.initial
        timeline = "" if profile.is_static else "  (changes over time)"
        click.echo(f"{name:28s} rtt {link.rtt_ms:6.1f} ms  "
                   f"{both(link, 'bandwidth_mbps', ' Mbit/s'):>15s}  "
                   f"jitter {both(link, 'jitter_ms', ' ms', '.1f'):>11s}  "
                   f"loss {both(link, 'loss_pct', '%', '.1f'):>9s}{timeline}")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; its exit code.  Signal handling: ``orchestrator.interrupts``
    (installed here unless ``orchestrator.__main__`` did it before the imports).

    Once a signal came in, the command ends as interrupted whatever else it ended with:
    an exception raised in a C extension that the interrupt broke, an agent error, or
    success after the interrupt's own exception was lost.
    """
    interrupts.install_once()
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        code = _dispatch(args)
    except Exception:
        if interrupts.received() is None:
            raise
        code = None
    if interrupts.received() is not None:
        click.echo(f"interrupted ({signal.Signals(interrupts.exit_code() - 128).name}): "
                   "everything the run started has been stopped", err=True)
        return interrupts.exit_code()
    return code


def _dispatch(args: list[str]) -> int:
    """The command's exit code; bad input and agent failures as one ``error:`` line."""
    try:
        # without standalone mode click returns ctx.exit()'s code instead of raising
        code = cli.main(args=args, prog_name="orchestrator", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.ClickException as error:
        return _error(error.format_message(), error.exit_code)
    except ConfigError as error:
        return _error(error, 2)
    except (AgentError, ProtocolError) as error:
        return _error(error, 1)
    except OSError as error:     # the disk (full, failing) or the host under a running command
        return _error(f"{error.filename}: {error.strerror}" if error.filename and error.strerror
                      else error, 1)
    except (KeyboardInterrupt, click.Abort):
        return interrupts.exit_code()
    return code if isinstance(code, int) else 0


def _error(message, exit_code: int) -> int:
    """One ``error:`` line (none once interrupted: ``main`` says that instead)."""
    if interrupts.received() is None:
        click.echo(f"error: {message}", err=True)
    return exit_code
