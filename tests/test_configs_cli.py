"""Shipped configs (orchestrator/config/loading.py) and the orchestrator CLI on bad input."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from orchestrator.config import loading as configs
from orchestrator.config.datasets import load_dataset
from orchestrator.config.job import plan
from orchestrator.config.loading import (
    ConfigError,
    available,
    load_job,
    load_model_pair,
    load_profile,
)

REPO = Path(__file__).resolve().parent.parent
RTTS = (0, 10, 25, 50, 100, 200, 500)
BANDWIDTHS = (100, 10, 1)
LAYER_RTTS = (10, 50, 200)
PRESETS = ("lan", "wifi", "4g", "5g", "wan", "satellite", "oscillating")


def orchestrator(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def agent_processes(marker: str) -> list[str]:
    """Running edge/cloud agents whose command line contains ``marker``.

    Agents get their settings file from the run's results folder, so filtering on
    a test's own folder ignores agents that other, concurrent test sessions own.
    """
    found = subprocess.run(["pgrep", "-af", r"agents\.(edge|cloud)"], capture_output=True,
                           text=True)
    return [line for line in found.stdout.splitlines() if marker in line]


# --------------------------------------------------------------------------- shipped configs


def test_every_shipped_config_loads():
    profiles, models, jobs = available("profiles"), available("models"), available("jobs")
    assert len(profiles) >= 40 and models and len(jobs) >= 3
    # a name must select one file: the same stem in two folders would be ambiguous
    assert len(set(profiles)) == len(profiles)
    files = sorted((configs.CONFIG_DIR / "profiles").rglob("*.yaml"))
    assert sorted(path.stem for path in files) == profiles
    for name in profiles:
        prof = load_profile(name)
        assert prof.name == name
        assert prof.initial.rtt_ms >= 0
    for name in models:
        pair = load_model_pair(name)
        if pair.backend == "synthetic":
            assert all(0 <= rate <= 1 for rate in pair.rates) and pair.vocab_size >= 257
        else:  # hf: local folders resolved to absolute paths that hold the weights
            assert all(Path(source, "config.json").is_file() for source in (pair.draft, pair.target))
    for name in jobs:
        job = load_job(name)
        assert plan(job)
        assert load_model_pair(job.model_pair).name == job.model_pair
        assert load_dataset(job.prompts)


def test_a_sweep_folder_reads_back_the_job_it_wrote(tmp_path):
    """A sweep keeps its resolved job (every field, defaults included) in sweep.yaml and
    reads it back to resume and to report: every shipped sweep job, and a guarded one, come
    back equal."""
    from orchestrator.results import SweepFolder
    from orchestrator.lifecycle.sweep import expand
    jobs = [load_job(name) for name in available("jobs")]
    jobs.append(load_job(str(REPO / "tests" / "fixtures" / "sweep-guardrail.yaml")))
    swept = [job for job in jobs if job.network is not None]
    assert len(swept) >= 3 and any(job.guarded for job in swept)
    for index, job in enumerate(swept):
        folder = SweepFolder.create_at(tmp_path / str(index), job, "sim", expand(job))
        assert folder.plan()[0] == job, job.name


def test_shipped_model_pair_and_default_job():
    pair = load_model_pair("synthetic")
    assert pair.acceptance == 0.7 and pair.vocab_size == 1024
    job = load_job("default")
    assert job.strategies == ["cloud-only", "cloud-spec", "edge-only", "fixed-k"]
    assert job.k_values == [3, 5, 10, 15]
    assert [run.label for run in plan(job)] == [
        "cloud-only", "cloud-spec", "edge-only", "fixed-k3", "fixed-k5", "fixed-k10", "fixed-k15"]


@pytest.mark.parametrize("rtt", RTTS)
@pytest.mark.parametrize("bandwidth", BANDWIDTHS)
def test_seed_grid_cell(rtt, bandwidth):
    name = f"rtt{rtt:03d}-bw{bandwidth:03d}"
    prof = load_profile(name)
    link = prof.initial
    assert prof.is_static
    assert link.rtt_ms == rtt
    assert link.uplink.delay_ms == link.downlink.delay_ms == rtt / 2
    assert link.uplink.bandwidth_mbps == link.downlink.bandwidth_mbps == bandwidth
    assert link.uplink.jitter_ms == link.downlink.jitter_ms == 0
    assert link.uplink.loss.is_lossless and link.downlink.loss.is_lossless


@pytest.mark.parametrize("rtt", LAYER_RTTS)
@pytest.mark.parametrize("layer, jitter, loss", [
    ("j10", 10, 0), ("j25", 25, 0), ("l1", 0, 1), ("l5", 0, 5)])
def test_seed_grid_jitter_and_loss_layers(rtt, layer, jitter, loss):
    prof = load_profile(f"rtt{rtt:03d}-bw010-{layer}")
    for direction in (prof.initial.uplink, prof.initial.downlink):
        assert direction.delay_ms == rtt / 2
        assert direction.bandwidth_mbps == 10
        assert direction.jitter_ms == jitter
        assert direction.loss_pct == loss
        if jitter:
            assert direction.jitter_distribution == "normal"


def test_presets_exist_with_plausible_links():
    links = {name: load_profile(name).initial for name in PRESETS}
    assert links["lan"].rtt_ms <= 2 and links["lan"].uplink.bandwidth_mbps >= 1000
    assert links["satellite"].rtt_ms >= 500
    assert links["lan"].rtt_ms < links["5g"].rtt_ms < links["4g"].rtt_ms < links["wan"].rtt_ms \
        < links["satellite"].rtt_ms
    for mobile in ("4g", "5g", "satellite"):     # access links: more down than up
        assert links[mobile].downlink.bandwidth_mbps > links[mobile].uplink.bandwidth_mbps
    for name in PRESETS:
        assert load_profile(name).is_static == (name != "oscillating")


def test_oscillating_reaches_10_200_and_500_ms_over_one_period():
    prof = load_profile("oscillating")
    period = prof.repeat_every_s
    assert period is not None and period > 0
    samples = [prof.state_at(i * period / 400).rtt_ms for i in range(400)]
    assert set(samples) == {10.0, 200.0, 500.0}
    assert samples[0] == 10.0
    # and it repeats: the next period looks the same
    assert [prof.state_at(period + i * period / 400).rtt_ms for i in range(400)] == samples
    assert {prof.state_at(t).rtt_ms for t in prof.change_times(period)} == {10.0, 200.0, 500.0}


def test_overrides_win_over_the_file_and_unset_overrides_keep_it():
    prof = load_profile("rtt050-bw010", {"rtt_ms": 120, "bandwidth_mbps": None})
    assert prof.initial.rtt_ms == 120 and prof.initial.uplink.bandwidth_mbps == 10
    assert load_profile("rtt050-bw010", {"rtt_ms": 0}).initial.rtt_ms == 0
    job = load_job("default", {"k_values": [7], "strategies": [], "max_new_tokens": None})
    assert job.k_values == [7] and len(job.strategies) == 4 and job.max_new_tokens == 48


def test_load_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="'no-such-profile' not found"):
        load_profile("no-such-profile")
    bad = tmp_path / "bad.yaml"
    bad.write_text("downlink:\n  bandwidth_mbps: 0\n")
    with pytest.raises(ConfigError) as error:
        load_profile(str(bad))
    assert str(error.value).startswith(f"{bad}: downlink.bandwidth_mbps:")
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_job(str(bad))


# --------------------------------------------------------------------------- CLI: bad input

# id -> (file name and contents or None, argv (FILE is replaced by the file's path),
#        words the single error line must contain)
BAD_INPUT = {
    "negative-delay": (("neg.yaml", "rtt_ms: 20\nuplink:\n  delay_ms: -5\n"),
                       ["run", "--profile", "FILE"], ["uplink.delay_ms", "FILE"]),
    "negative-rtt": (("negrtt.yaml", "rtt_ms: -10\n"),
                     ["run", "--profile", "FILE"], ["rtt_ms", "FILE"]),
    "loss-150": (("loss.yaml", "rtt_ms: 20\nloss_pct: 150\n"),
                 ["run", "--profile", "FILE"], ["loss_pct", "FILE"]),
    "bandwidth-0": (("bw.yaml", "rtt_ms: 20\nbandwidth_mbps: 0\n"),
                    ["run", "--profile", "FILE"], ["bandwidth_mbps", "FILE"]),
    "malformed-yaml": (("broken.yaml", "rtt_ms: [10, 20\nbandwidth_mbps: 5\n"),
                       ["run", "--profile", "FILE"], ["FILE", "YAML"]),
    "unknown-profile": (None, ["run", "--profile", "no-such-profile"], ["no-such-profile"]),
    "unknown-field": (("typo.yaml", "rtt_ms: 20\nlatency_ms: 5\n"),
                      ["run", "--profile", "FILE"], ["latency_ms", "FILE"]),
    "job-k0": (("k0.yaml", "strategies: [fixed-k]\nk_values: [0]\n"),
               ["run", "--job", "FILE"], ["k_values", "FILE"]),
    "job-sampling-ids": (("codec.yaml", "decoding: sampling\ncodec: ids\n"),
                         ["run", "--job", "FILE"], ["codec", "FILE"]),
    "job-folder": (None, ["run", "--job", "/tmp"], ["/tmp: a folder, not a job file"]),
    "unknown-model-pair": (None, ["run", "--model-pair", "no-such-pair"], ["no-such-pair"]),
    "job-unknown-model-pair": (("pair.yaml", "model_pair: no-such-pair\n"),
                               ["run", "--job", "FILE"], ["no-such-pair"]),
    "k-0": (None, ["run", "--k", "0"], ["--k"]),
    "job-k-range": (("range.yaml", "strategies: [nasd]\nnasd_k_min: 9\nnasd_k_max: 3\n"),
                    ["run", "--job", "FILE"], ["nasd_k_min (9) is above nasd_k_max (3)", "FILE"]),
    "flags-k-range": (None, ["run", "--nasd-k-min", "9", "--nasd-k-max", "3"],
                      ["--nasd-k-min 9", "--nasd-k-max 3", "nasd_k_max"]),
    "strategy-bogus": (None, ["run", "--strategy", "bogus"], ["--strategy", "bogus"]),
    "max-new-tokens-abc": (None, ["run", "--max-new-tokens", "abc"], ["--max-new-tokens"]),
    "codec-bogus": (None, ["run", "--codec", "bogus"], ["--codec bogus", "unknown codec"]),
    # the conflict comes from the flags, not from the (valid) job file: they are named
    "flags-sampling-ids": (None, ["run", "--decoding", "sampling", "--codec", "ids"],
                           ["--decoding sampling --codec ids", "draft probabilities"]),
    "profile-typo": (None, ["run", "--profile", "4gg"], ["did you mean '4g'?", "wifi",
                                                          "orchestrator profiles"]),
    "flags-ahead-bandit": (None, ["run", "--strategy", "bandit", "--draft-ahead", "1"],
                           ["--strategy bandit --draft-ahead 1", "only fixed-k and nasd"]),
    "flags-objective-p100": (None, ["run", "--nasd-objective", "p100"],
                             ["--nasd-objective p100", "percentile such as 'p90'"]),
    "job-ahead-hf": (("ahead.yaml", "strategies: [cloud-only, hf-heuristic]\ndraft_ahead: 2\n"),
                     ["run", "--job", "FILE"], ["draft_ahead", "not hf-heuristic", "FILE"]),
    "seed-2**80": (None, ["run", "--seed", str(2**80)], ["--seed", "less than"]),
    "duplicate-key": (("twice.yaml", "rtt_ms: 10\nrtt_ms: 20\n"), ["run", "--profile", "FILE"],
                      ["FILE", "duplicate key 'rtt_ms'"]),
    "trace-dev-zero": (("zero.yaml", "trace: /dev/zero\n"), ["run", "--profile", "FILE"],
                       ["FILE", "trace", "not a regular file"]),
}


# run as the console script (a process of its own: its exit status and stderr as a shell sees
# them); the others go through the CLI's entry point in this process, as the malformed ones below
SPAWNED = ("negative-delay", "malformed-yaml", "codec-bogus", "seed-2**80", "trace-dev-zero")


def _bad_input_argv(case: str, folder: Path) -> tuple[list[str], str]:
    """The case's arguments, its file written to ``folder`` (FILE: its path), and the path."""
    file, argv, _ = BAD_INPUT[case]
    path = ""
    if file is not None:
        path = str(folder / file[0])
        Path(path).write_text(file[1])
    return [path if arg == "FILE" else arg for arg in argv] + ["--results",
                                                               str(folder / "results")], path


@pytest.fixture(scope="module")
def spawned_bad_input(tmp_path_factory) -> dict:
    """Run the spawned bad-input cases once, in parallel (each CLI start costs about a second)."""
    folder = tmp_path_factory.mktemp("bad-input")
    commands = {case: _bad_input_argv(case, folder) for case in SPAWNED}
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {case: pool.submit(orchestrator, *argv) for case, (argv, _) in commands.items()}
        results = {case: (future.result(), commands[case][1]) for case, future in futures.items()}
    assert not (folder / "results").exists(), "a bad-input run created a results folder"
    return results


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_error_line_with_exit_code_2(spawned_bad_input, case, tmp_path, capsys):
    if case in SPAWNED:
        result, path = spawned_bad_input[case]
        stderr, code = result.stderr, result.returncode
        assert "Traceback" not in result.stdout
    else:
        from orchestrator.cli import main
        argv, path = _bad_input_argv(case, tmp_path)
        capsys.readouterr()
        code = main(argv)
        stderr = capsys.readouterr().err
        assert not (tmp_path / "results").exists(), "a results folder appeared"
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    line = lines[0]
    assert line.startswith("error:"), line
    assert len(line) > len("error: ")
    for word in BAD_INPUT[case][2]:
        assert (path if word == "FILE" else word) in line, line
    assert line.count("got ") <= 1, line   # the value is named once
    assert code == 2, (code, line)


# --------------------------------------------------------------------------- malformed input

# Files the malformed configs point at (DIR: the folder they are written to).
MEASURED = "{mean: 0.01, low: 0.009, high: 0.011, n: 9}"
# a calibration measured on this host's own devices (no emulation recorded)
HOST_CALIBRATION = (
    f"model_pair: tiny-arith\ncodec: ids\ndecoding: greedy\nhost: {{node: here}}\n"
    f"created: '2026-12-03'\nk_max: 1\ndraft_token_s: {MEASURED}\ndecode_s: {MEASURED}\n"
    f"verify: [{{k: 0, seconds: {MEASURED}}}, {{k: 1, seconds: {MEASURED}}}]\nprefill: []\n"
    "bytes: [{k: 1, cycles: 9, up: 90, down: 60}]\n"
    "acceptance: {rate: 0.5, low: 0.2, high: 0.8, accepted: 4, rejections: 4, positions: []}\n")
AUXILIARY = {"inf.txt": "0 10\n1 inf\n", "nan.txt": "nan 10\n", "binary.txt": b"\xff\xfe0 10\n",
             "calibration.yaml": HOST_CALIBRATION}
SYNTHETIC_PAIR = (REPO / "configs" / "models" / "synthetic.yaml").read_text()
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{name}: &{name} [{', '.join(['*' + previous] * 9)}]\n"
    for previous, name in zip("abcdefgh", "bcdefghi")) + "uplink: {delay_ms: *i}\n"
RUN = ["run", "--mode", "sim", "--job", "smoke", "--results", "RESULTS"]
EMULATED = ["--edge-device", "jetson-orin-nano", "--cloud-device", "h100-sxm",
            "--edge-model-params", "5e8", "--cloud-model-params", "7e9"]
SWEEP = ["sweep", "--mode", "sim", "--job", "FILE", "--results", "RESULTS"]
PROFILE, JOB, PAIR = RUN + ["--profile", "FILE"], RUN + ["--job", "FILE"], RUN + ["--model-pair",
                                                                                 "FILE"]

# id -> (the file's text (bytes: as they are) or None, argv (FILE: the file, RESULTS: a
#        results folder that must not appear), words the single error line must contain)
MALFORMED = {
    # profiles: every number finite and bounded, timelines bounded, files bounded
    "profile-rtt-inf": ("rtt_ms: .inf\n", PROFILE, ["FILE", "rtt_ms", "finite"]),
    "profile-rtt-nan": ("rtt_ms: .nan\n", PROFILE, ["rtt_ms", "finite"]),
    "profile-rtt-1e308": ("rtt_ms: 1.0e+308\n", PROFILE, ["rtt_ms", "120000"]),
    "profile-bandwidth-1e-300": ("bandwidth_mbps: 1.0e-300\n", PROFILE,
                                 ["bandwidth_mbps", "0.001"]),
    "profile-bandwidth-inf": ("bandwidth_mbps: .inf\n", PROFILE, ["bandwidth_mbps", "finite"]),
    "profile-jitter-inf": ("jitter_ms: .inf\n", PROFILE, ["jitter_ms", "finite"]),
    "profile-uplink-delay-1e308": ("uplink: {delay_ms: 1.0e+308}\n", PROFILE,
                                   ["uplink.delay_ms", "120000"]),
    "profile-burst-2**70": (f"bandwidth_mbps: 10\nuplink: {{burst_bytes: {2**70}}}\n", PROFILE,
                            ["uplink.burst_bytes"]),
    "profile-gilbert-elliott-nan": (
        "uplink:\n  loss: {model: gilbert-elliott, p_good_to_bad_pct: .nan, "
        "r_bad_to_good_pct: 5}\n", PROFILE, ["uplink.loss", "p_good_to_bad_pct", "finite"]),
    "profile-repeat-every-ms": ("schedule: {repeat_every_s: 0.001, steps: [{at_s: 0, rtt_ms: 10}]}"
                                "\n", PROFILE, ["schedule", "repeat_every_s 0.001", "1,000,000"]),
    "profile-repeat-every-1e-300": ("schedule: {repeat_every_s: 1.0e-300, steps: [{at_s: 0}]}\n",
                                    PROFILE, ["schedule", "repeat_every_s"]),
    "profile-step-at-inf": ("schedule: {steps: [{at_s: 0, rtt_ms: 10}, {at_s: .inf}]}\n", PROFILE,
                            ["schedule.steps.1.at_s", "finite"]),
    "profile-step-after-a-day": ("schedule: {steps: [{at_s: 1.0e+6, rtt_ms: 10}]}\n", PROFILE,
                                 ["schedule.steps.0.at_s", "86400"]),
    "profile-trace-dev-zero": ("trace: /dev/zero\n", PROFILE,
                               ["FILE", "trace", "/dev/zero", "not a regular file"]),
    "profile-trace-missing": ("trace: none.txt\n", PROFILE, ["trace", "none.txt: no such file"]),
    "profile-trace-inf": ("trace: inf.txt\n", PROFILE, ["trace", "inf.txt:2", "rtt_ms", "finite"]),
    "profile-trace-nan": ("trace: nan.txt\n", PROFILE, ["trace", "nan.txt:1", "at_s", "finite"]),
    "profile-trace-not-utf8": ("trace: binary.txt\n", PROFILE, ["trace", "binary.txt", "UTF-8"]),
    "profile-duplicate-key": ("rtt_ms: 10\nrtt_ms: 20\n", PROFILE,
                              ["FILE", "line 2", "duplicate key 'rtt_ms'", "first on line 1"]),
    "profile-duplicate-nested-key": ("uplink: {delay_ms: 10, delay_ms: 20}\n", PROFILE,
                                     ["duplicate key 'delay_ms'"]),
    "profile-20000-deep": ("a: " + "[" * 20_000 + "]" * 20_000 + "\n", PROFILE,
                           ["FILE", "nested deeper than 32 levels"]),
    "profile-alias-bomb": (ALIAS_BOMB, PROFILE, ["FILE", "aliases expanded"]),
    "profile-recursive-alias": ("a: &a [*a]\n", PROFILE, ["FILE", "alias inside the node"]),
    "profile-not-utf8": (b"rtt_ms: 10\ndescription: \xff\n", PROFILE, ["FILE", "UTF-8"]),
    "profile-over-1-mib": ("rtt_ms: 10\n#" + "x" * (1 << 20) + "\n", PROFILE,
                           ["FILE", "larger than the 1024 KiB"]),
    # jobs: seeds msgpack and numpy take, bounded sizes, each item once
    "job-seed-2**80": (f"seed: {2**80}\n", JOB, ["FILE", "seed", "less than"]),
    "job-seed-negative": ("seed: -1\n", JOB, ["seed", "greater than or equal to 0"]),
    "job-seed-fraction": ("seed: 1.5\n", JOB, ["seed", "fractional"]),
    "job-repetitions-1e12": ("repetitions: 1000000000000\n", JOB,
                             ["repetitions", "more than 100,000 queries"]),
    "job-receive-timeout-inf": ("receive_timeout_s: .inf\n", JOB, ["receive_timeout_s", "finite"]),
    "job-receive-timeout-1e308": ("receive_timeout_s: 1.0e+308\n", JOB,
                                  ["receive_timeout_s", "3600"]),
    "job-temperature-nan": ("temperature: .nan\n", JOB, ["temperature", "finite"]),
    "job-top-k-2**80": (f"top_k: {2**80}\n", JOB, ["top_k"]),
    "job-max-new-tokens-1e9": ("max_new_tokens: 1000000000\n", JOB, ["max_new_tokens", "4096"]),
    "job-warmup-tokens-1e9": ("warmup_tokens: 1000000000\n", JOB, ["warmup_tokens", "4096"]),
    "job-codec-TOPK": ("codec: TOPK\n", JOB, ["FILE", "codec", "unknown codec 'TOPK'"]),
    "job-codec-topk0": ("codec: topk0\n", JOB, ["codec", "unknown codec 'topk0'"]),
    "job-strategy-twice": ("strategies: [fixed-k, cloud-only, fixed-k]\n", JOB,
                           ["strategies", "'fixed-k' is listed twice"]),
    "job-k-twice": ("k_values: [3, 5, 3]\n", JOB, ["k_values", "3 is listed twice"]),
    "job-duplicate-key": ("seed: 1\nseed: 2\n", JOB, ["FILE", "duplicate key 'seed'"]),
    "job-rtt-table-dev-zero": ("strategies: [nasd]\nnasd_rtt_table_path: /dev/zero\n", JOB,
                               ["nasd_rtt_table_path", "/dev/zero", "not a regular file"]),
    "job-calibration-dev-zero": ("strategies: [nasd]\nnasd_calibration_path: /dev/zero\n", JOB,
                                 ["nasd_calibration_path", "not a regular file"]),
    "job-prompts-dev-zero": ("prompts: /dev/zero\n", JOB, ["/dev/zero"]),
    "sweep-grid-rtt-1e308": ("network:\n  grids: [{rtt_ms: [10, 1.0e+308]}]\n", SWEEP,
                             ["FILE", "network.grids.0.rtt_ms.1", "120000"]),
    "sweep-grid-rtt-twice": ("network:\n  grids: [{rtt_ms: [10, 10]}]\n", SWEEP,
                             ["network.grids.0.rtt_ms", "listed twice"]),
    "sweep-20000-cells": ("network:\n  grids:\n    - rtt_ms: [" + ", ".join(map(str, range(200)))
                          + "]\n      bandwidth_mbps: [" + ", ".join(map(str, range(1, 101)))
                          + "]\n", SWEEP, ["network", "20,000 cells", "more than 10,000"]),
    "sweep-codec-TOPK": ("network: {profiles: [lan], codecs: [TOPK]}\n", SWEEP,
                         ["network", "unknown codec 'TOPK'"]),
    "sweep-unknown-pair": ("model_pair: nowhere\nnetwork: {profiles: [lan]}\n", SWEEP,
                           ["'nowhere' not found"]),
    "validate-without-cycles": ("strategies: [cloud-only]\nnetwork: {profiles: [lan]}\n",
                                ["validate", "--job", "FILE", "--results", "RESULTS"],
                                ["strategies", "validate needs one with cycles"]),
    # model pairs
    "pair-latency-inf": (SYNTHETIC_PAIR.replace("base_ms: 3.5", "base_ms: .inf"), PAIR,
                         ["FILE", "latency.edge_draft.base_ms", "finite"]),
    "pair-seed-2**80": (SYNTHETIC_PAIR.replace("seed: 0", f"seed: {2**80}"), PAIR,
                        ["FILE", "seed"]),
    "pair-duplicate-key": (SYNTHETIC_PAIR + "vocab_size: 2048\n", PAIR,
                           ["FILE", "duplicate key 'vocab_size'"]),
    # flags: checked as the fields they stand for
    "flag-seed-2**80": (None, RUN + ["--seed", str(2**80)], [f"--seed {2**80}", "less than"]),
    "flag-seed-negative": (None, RUN + ["--seed", "-1"], ["--seed -1", "greater than"]),
    "flag-rtt-inf": (None, RUN + ["--rtt-ms", "inf"], ["--rtt-ms inf", "finite"]),
    "flag-rtt-1e308": (None, RUN + ["--rtt-ms", "1e308"], ["--rtt-ms", "120000"]),
    "flag-temperature-nan": (None, RUN + ["--temperature", "nan"], ["--temperature nan"]),
    "flag-top-k-2**80": (None, RUN + ["--top-k", str(2**80)], ["--top-k", "less than"]),
    "flag-repetitions-1e12": (None, RUN + ["--repetitions", str(10**12)],
                              ["repetitions", "more than 100,000 queries"]),
    "flag-k-65": (None, RUN + ["--k", "65"], ["--k 65", "64"]),
    "flag-draft-ahead-99": (None, RUN + ["--draft-ahead", "99"], ["--draft-ahead 99"]),
    "flag-confidence-floor-nan": (None, RUN + ["--nasd-confidence-floor", "nan"],
                                  ["--nasd-confidence-floor nan", "finite"]),
    "flag-codec-topk0": (None, RUN + ["--codec", "topk0"], ["--codec topk0", "unknown codec"]),
    "flag-codec-TOPK": (None, RUN + ["--codec", "TOPK"], ["--codec TOPK", "unknown codec"]),
    "flag-data-plane-security-tls": (None, RUN + ["--data-plane-security", "tls"],
                                     ["--data-plane-security", "'tls' is not one of"]),
    "flag-sweep-data-plane-security-tls": (None, SWEEP + ["--data-plane-security", "tls"],
                                           ["--data-plane-security", "'tls'"]),
    "job-data-plane-security-tls": ("data_plane_security: tls\n", JOB,
                                    ["FILE", "data_plane_security", "'auto', 'curve' or 'plain'"]),
    "flag-results-under-a-file": ("a file\n", RUN + ["--results", "FILE/results"],
                                  ["FILE", "cannot create a results folder", "Not a directory"]),
    "flag-rtt-grid-1e9-points": (None, ["calibrate", "--rtt-grid", "0:1e12:1000"],
                                 ["--rtt-grid", "more than 100,000 RTTs"]),
    # calibrate names its own flags, not the job fields' run flags
    "flag-calibrate-k-range": (None, ["calibrate", "--k-min", "5", "--k-max", "3"],
                               ["--k-min 5 --k-max 3", "nasd_k_min (5) is above nasd_k_max (3)"]),
    "flag-calibrate-k-min-above-the-jobs": (None, ["calibrate", "--k-min", "40"],
                                            ["--k-min 40 (with job", "nasd_k_min (40) is above"]),
    "flag-rtt-grid-1e308": (None, ["calibrate", "--rtt-grid", "0,1e308"], ["--rtt-grid", "120000"]),
    "flag-calibrate-bandwidth-1e-300": (None, ["calibrate", "--bandwidth-mbps", "1e-300"],
                                        ["--bandwidth-mbps", "0.001"]),
    "flag-probe-seed-negative": (None, ["probe", "--mode", "sim", "--seed", "-1", "--results",
                                       "RESULTS"], ["--seed", "greater than or equal to 0"]),
    "flag-probe-rtt-inf": (None, ["probe", "--mode", "sim", "--rtt-ms", "inf", "--results",
                                  "RESULTS"], ["--rtt-ms inf", "finite"]),
    "flag-latency-seed-2**80": (None, ["latency", "measure", "--seed", str(2**80)], ["--seed"]),
    "flag-latency-device-name-empty": (None, ["latency", "device", "--name", " "],
                                       ["--name", "a device name is a non-empty file name"]),
    # device emulation: unknown devices and shapes list the known ones
    "flag-device-unknown": (None, RUN + EMULATED[:1] + ["jetson-nano"] + EMULATED[2:],
                            ["--edge-device", "did you mean 'jetson-orin-nano'?",
                             "raspberry-pi-5"]),
    "flag-device-shape-unknown": (None, RUN + EMULATED[:4] + ["--edge-model-shape", "llama-16m"]
                                  + EMULATED[6:],
                                  ["--edge-model-shape", "did you mean 'llama-160m'",
                                   "qwen2.5-7b"]),
    "flag-device-shape-negative-layers": (
        '{"hidden_size": 64, "num_hidden_layers": -2, "num_attention_heads": 2, '
        '"intermediate_size": 128, "vocab_size": 100}\n',
        RUN + EMULATED[:4] + ["--edge-model-shape", "FILE"] + EMULATED[6:],
        ["--edge-model-shape", "not a transformers model config", "layers must be >= 1 (got -2)"]),
    "flag-device-one-only": (None, RUN + EMULATED[:2] + EMULATED[4:6],
                             ["--edge-device", "needs both edge_device and cloud_device"]),
    "flag-device-without-size": (None, RUN + EMULATED[:6],
                                 ["--cloud-device h100-sxm", "cloud_model_params"]),
    "flag-size-without-device": (None, RUN + ["--cloud-model-params", "7e9"],
                                 ["--cloud-model-params", "needs edge_device and cloud_device"]),
    "flag-model-params-nan": (None, RUN + EMULATED[:6] + ["--cloud-model-params", "nan"],
                              ["--cloud-model-params nan", "finite"]),
    "flag-device-model-too-big": (None, RUN + EMULATED[:6] + ["--cloud-model-params", "72e9"],
                                  ["--cloud-device", "80 GiB of h100-sxm"]),
    "flag-device-model-params-off-the-family": (
        None, RUN + EMULATED[:4] + ["--edge-model-params", "1"] + EMULATED[6:],
        ["--edge-model-params", "no published shape near 1e-09 B", "--edge-model-shape"]),
    "job-device-calibrated-here": ("model_pair: tiny-arith\n"
                                   "edge_device: jetson-orin-nano\ncloud_device: h100-sxm\n"
                                   "edge_model_params: 5.0e+8\ncloud_model_params: 7.0e+9\n"
                                   "nasd_calibration_path: calibration.yaml\n", JOB,
                                   ["--nasd-calibration", "measured for this host's own devices",
                                    "the run is for emulating edge jetson-orin-nano"]),
    "job-calibration-of-another-pair": ("model_pair: synthetic\n"
                                        "nasd_calibration_path: calibration.yaml\n", JOB,
                                        ["--nasd-calibration", "model pair 'tiny-arith'",
                                         "this run's 'synthetic'"]),
}


@pytest.fixture(scope="module")
def malformed_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("malformed")
    for name, content in AUXILIARY.items():
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return folder


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_input_is_one_error_line_with_exit_code_2_before_anything_starts(
        malformed_folder, case, capsys):
    """Through the CLI's own entry point, in this process (as the console script runs it)."""
    from orchestrator.cli import main
    content, argv, words = MALFORMED[case]
    path = malformed_folder / f"{case}.yaml"
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    results = malformed_folder / f"{case}-results"
    capsys.readouterr()
    code = main([arg.replace("FILE", str(path)).replace("RESULTS", str(results))
                 for arg in argv])
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    assert stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
    for word in words:
        assert word.replace("FILE", str(path)) in stderr, (word, stderr)
    assert code == 2, stderr
    assert not results.exists(), "a results folder appeared"


def test_bad_profile_leaves_no_agent_process_behind(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rtt_ms: 20\nuplink:\n  delay_ms: -5\n")
    results = tmp_path / "results"
    process = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "run", "--profile",
                                str(bad), "--job", "smoke", "--results", str(results)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    seen = []
    while process.poll() is None:                 # watch for agents while it runs, too
        seen += agent_processes(str(results))
        time.sleep(0.05)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert stderr.startswith(f"error: {bad}: uplink.delay_ms")
    assert seen == []
    assert agent_processes(str(results)) == []
    assert not (tmp_path / "results").exists()


def test_shipped_configs_are_found_by_name_and_by_sub_folder():
    assert configs.find("profiles", "grid/rtt050-bw010") == configs.find("profiles",
                                                                           "rtt050-bw010")
    assert load_profile("grid/rtt050-bw010-j10").name == "rtt050-bw010-j10"
    with pytest.raises(ConfigError, match="did you mean 'wifi'"):
        load_profile("wfi")


def test_a_relative_config_path_is_made_absolute(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text("rtt_ms: 20\n")
    monkeypatch.chdir(tmp_path)
    assert configs.find("profiles", "mine.yaml") == tmp_path / "mine.yaml"


def test_missing_profile_path_is_a_config_error(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError, match="nowhere"):
        load_profile(str(missing))


def test_missing_trace_file_is_a_config_error(tmp_path):
    prof = tmp_path / "traced.yaml"
    prof.write_text("trace: missing.txt\n")
    with pytest.raises(ConfigError, match="missing.txt"):
        load_profile(str(prof))


# --------------------------------------------------------------------------- CLI: help, listing


@pytest.fixture(scope="module")
def help_and_listing() -> dict:
    calls = {"top": ["--help"], "run": ["run", "--help"], "profiles-help": ["profiles", "--help"],
             "profiles": ["profiles"]}
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {key: pool.submit(orchestrator, *argv) for key, argv in calls.items()}
        return {key: future.result() for key, future in futures.items()}


def test_top_level_help(help_and_listing):
    result = help_and_listing["top"]
    assert result.returncode == 0 and result.stderr == ""
    assert "Usage: orchestrator" in result.stdout
    for word in ("--help", "run", "profiles"):
        assert word in result.stdout


def test_run_help_lists_its_options(help_and_listing):
    result = help_and_listing["run"]
    assert result.returncode == 0 and result.stderr == ""
    for option in ("--profile", "--mode", "--job", "--model-pair", "--strategy", "--k",
                   "--draft-ahead", "--decoding", "--max-new-tokens", "--queries",
                   "--repetitions", "--seed", "--rtt-ms", "--results"):
        assert option in result.stdout, option


def test_profiles_help(help_and_listing):
    result = help_and_listing["profiles-help"]
    assert result.returncode == 0 and result.stderr == ""
    assert "Usage: orchestrator profiles" in result.stdout and "--help" in result.stdout


def test_profiles_lists_every_shipped_profile(help_and_listing):
    result = help_and_listing["profiles"]
    assert result.returncode == 0 and result.stderr == ""
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert set(rows) == set(available("profiles"))
    assert "rtt    1.0 ms" in rows["lan"] and " 1000 Mbit/s" in rows["lan"]
    assert "rtt   50.0 ms" in rows["rtt050-bw010"] and " 10 Mbit/s" in rows["rtt050-bw010"]
    assert "loss      5.0%" in rows["rtt050-bw010-l5"]
    assert " 5/20 Mbit/s" in rows["4g"]       # each direction's, where they differ
    assert "changes over time" in rows["oscillating"]
    assert "changes over time" not in rows["lan"]


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "orchestrator"
    assert script.exists()
    result = subprocess.run([str(script), "run", "--k", "0"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and "--k" in result.stderr
