"""The ``orchestrator`` command line.

Bad input (a CLI value, a profile, a job, a model pair) ends with one line,
``error: <where>: <what>``, and exit code 2; a failed agent with exit code 1;
Ctrl-C or SIGTERM with 130 after everything started has been stopped.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click
from rich.console import Console

from agents.control import AgentError
from agents.protocol import ProtocolError
from orchestrator.configs import ConfigError, available, load_profile
from orchestrator.job import ALL_STRATEGIES
from orchestrator.run import RunSpec, run

MODES = ("auto", "sim")


def make_console() -> Console:
    """A terminal console; piped output gets a wide fixed width so tables stay whole."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def choose_mode(requested: str) -> tuple[str, str]:
    """The mode a run uses and the reason, said in one line."""
    if requested == "sim":
        return "sim", "asked for with --mode sim"
    return "sim", "auto: the emulated and vm modes are not built yet, sim runs everywhere"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Real-network testbed for cloud-edge speculative decoding.

    Runs a draft model on an "edge" agent and a target model on a "cloud"
    agent, each its own process, exchanging drafts and verdicts over ZeroMQ
    through a shaped link, and compares cloud-only, cloud-spec, edge-only and
    fixed-K speculation.
    """


@cli.command("run")
@click.option("--profile", "profile_name", default="lan", show_default=True,
              help="Network profile: a name under configs/profiles (see `orchestrator profiles`) "
                   "or a YAML path.")
@click.option("--mode", type=click.Choice(MODES), default="auto", show_default=True,
              help="sim: agents on loopback with the Python link model (no root needed). "
                   "auto picks the best mode this host supports; today that is always sim, "
                   "since the emulated and vm modes are not built yet.")
@click.option("--job", "job_name", default="default", show_default=True,
              help="Job file: a name under configs/jobs or a YAML path.")
@click.option("--model-pair", help="Model pair: a name under configs/models or a YAML path "
                                   "[default: the job's].")
@click.option("--strategy", "strategies", multiple=True, type=click.Choice(ALL_STRATEGIES),
              help="Strategy to run; repeat for several [default: the job's, all four].")
@click.option("--k", "k_values", multiple=True, type=click.IntRange(1, 64),
              help="Draft length for fixed-k; repeat for several [default: the job's, 3 5 10 15].")
@click.option("--decoding", type=click.Choice(["greedy", "sampling"]), help="[default: the job's]")
@click.option("--temperature", type=click.FloatRange(0, 100, min_open=True),
              help="Sampling temperature, applied on both sides [default: the job's, 1].")
@click.option("--top-k", type=click.IntRange(0), help="Keep the k likeliest tokens (0: all).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), help="Nucleus mass to keep.")
@click.option("--codec", help="Draft payload codec: ids, q-scalar, topk (topkN), full16, full32 "
                              "[default: ids for greedy, q-scalar for sampling].")
@click.option("--prompts", help="Prompt set: a name under configs/prompts, a .jsonl path, or "
                                "mmlu:DIR[:subject,...] [default: the job's].")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), help="[default: the job's]")
@click.option("--queries", "max_queries", type=click.IntRange(1), help="Use the first N prompts.")
@click.option("--repetitions", type=click.IntRange(1), help="[default: the job's]")
@click.option("--seed", type=int, help="[default: the job's]")
@click.option("--rtt-ms", type=click.FloatRange(0), help="Override the profile's RTT.")
@click.option("--results", "results_root", type=click.Path(file_okay=False, path_type=Path),
              default=Path("results"), show_default=True, help="Where run folders go.")
def run_command(profile_name, mode, job_name, model_pair, strategies, k_values, decoding,
                temperature, top_k, top_p, codec, prompts, max_new_tokens, max_queries,
                repetitions, seed, rtt_ms, results_root) -> None:
    """Run a job's strategies on one network profile and summarize them.

    Writes config.yaml, queries.jsonl, cycles.jsonl (as they happen) and
    summary.csv into a new folder under --results, and prints the summary.
    """
    console = make_console()
    chosen, reason = choose_mode(mode)
    spec = RunSpec.load(job_name, profile_name, chosen, job_overrides={
        "model_pair": model_pair, "strategies": list(strategies), "k_values": list(k_values),
        "decoding": decoding, "temperature": temperature, "top_k": top_k, "top_p": top_p,
        "codec": codec, "prompts": prompts, "max_new_tokens": max_new_tokens,
        "max_queries": max_queries,
        "repetitions": repetitions, "seed": seed}, profile_overrides={"rtt_ms": rtt_ms})
    console.print(f"mode: {chosen} ({reason})")
    run(spec, results_root, console)


@cli.command("profiles")
def profiles_command() -> None:
    """List the shipped network profiles with their RTT, bandwidth, jitter and loss."""
    for name in available("profiles"):
        profile = load_profile(name)
        link = profile.initial
        bandwidth = (f"{link.uplink.bandwidth_mbps:g} Mbps" if link.uplink.bandwidth_mbps
                     else "unshaped")
        timeline = "" if profile.is_static else "  (changes over time)"
        click.echo(f"{name:28s} rtt {link.rtt_ms:6.1f} ms  {bandwidth:>10s}  "
                   f"jitter {link.uplink.jitter_ms:4.1f} ms  loss {link.uplink.loss_pct:4.1f}%"
                   f"{timeline}")


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    try:
        cli.main(args=argv, prog_name="orchestrator", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.ClickException as error:
        click.echo(f"error: {error.format_message()}", err=True)
        return error.exit_code
    except ConfigError as error:
        click.echo(f"error: {error}", err=True)
        return 2
    except (AgentError, ProtocolError) as error:
        click.echo(f"error: {error}", err=True)
        return 1
    except (KeyboardInterrupt, click.Abort):
        click.echo("interrupted: everything the run started has been stopped", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
