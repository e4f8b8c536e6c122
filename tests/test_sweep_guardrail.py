"""The sweep's budget guardrail: each strategy run of a cell decided from the committed fit
of this host (benchmarks/measured/latency/float32-t1) for the shipped pair, the job's
guardrail fields checked at load, and a real sim sweep of the shipped pair that skips what
the guardrail rejects and reports it."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from agents.payload_bytes import cycle_bytes
from nasd.latency.guardrail import Spread, verdict_held
from nasd.latency.stages import ModelShape
from orchestrator.config.guardrail import ProbeRun, SweepGuardrail, read_fit
from orchestrator.config.job import StrategyRun, narrowed, plan
from orchestrator.config.loading import ConfigError, load_device, load_job
from orchestrator.lifecycle.sweep import grid_profile
from shaping.link_model import transmit_s
from tests.conftest import ROOT, SMALL_SWEEP_JOB

FIT = ROOT / "benchmarks" / "measured" / "latency" / "float32-t1"
PAIR = ROOT / "configs" / "models" / "tiny-arith"
GUARDED_JOB = ROOT / "tests" / "fixtures" / "sweep-guardrail.yaml"
CLOUD_ONLY, CLOUD_SPEC5 = StrategyRun("cloud-only", None), StrategyRun("cloud-spec", 5)
FIXED5, AHEAD5 = StrategyRun("fixed-k", 5), StrategyRun("fixed-k", 5, 1)
EDGE_ONLY, NASD = StrategyRun("edge-only", None), StrategyRun("nasd", None)


def tiny_guardrail(budget_ms: float, acceptance=(0.0, 1.0)) -> SweepGuardrail:
    """The committed fit for the shipped pair, decoding at contexts of 29 to 36 tokens (its
    first arith-free prompt and 8 new tokens)."""
    fitted = read_fit(FIT)
    low, high = acceptance
    return SweepGuardrail(
        budget_s=budget_ms / 1000, fitted=fitted, device=load_device(fitted.estimator.device),
        shapes={role: ModelShape.from_config(json.loads((PAIR / role / "config.json").read_text()))
                for role in ("draft", "target")},
        dtype="float32", width=511, contexts=Spread(29, 32.5, 36),
        acceptance=Spread(low, (low + high) / 2, high))


def decided(guard: SweepGuardrail, profile, runs, codec: str = "ids") -> dict:
    return {verdict.run.label: verdict for verdict in guard.judge(profile, codec, runs)}


def test_each_run_of_a_cell_is_decided_against_the_budget_from_the_committed_fit():
    guard = tiny_guardrail(20.0)
    runs = [CLOUD_ONLY, CLOUD_SPEC5, FIXED5, AHEAD5, EDGE_ONLY, NASD]
    near = decided(guard, grid_profile(0, 100), runs)
    assert {label: v.verdict for label, v in near.items()} == {
        "cloud-only": "accept", "cloud-spec": "accept", "fixed-k5": "accept",
        "fixed-k5+ahead1": "measure", "edge-only": "measure", "nasd": "measure"}
    for label in ("fixed-k5+ahead1", "edge-only", "nasd"):       # no stage model: run them
        assert near[label].per_token_s is None and near[label].why
    for verdict in (near["cloud-only"], near["fixed-k5"]):
        spread = verdict.per_token_s
        assert 0 < spread.low <= spread.point <= spread.high <= guard.budget_s
    far = decided(guard, grid_profile(200, 100), [CLOUD_ONLY, CLOUD_SPEC5, FIXED5])
    assert {label: v.verdict for label, v in far.items()} == {
        "cloud-only": "accept", "cloud-spec": "accept", "fixed-k5": "reject"}
    assert far["fixed-k5"].per_token_s.low > guard.budget_s      # even at acceptance 1
    assert "breaks the budget of 20 ms" in far["fixed-k5"].why
    # jitter or loss: the model bounds nothing above, so nothing is accepted
    jittery = decided(guard, grid_profile(10, 100, jitter_ms=10), [CLOUD_ONLY, FIXED5])
    assert {v.verdict for v in jittery.values()} == {"measure"}
    assert jittery["fixed-k5"].per_token_s.high == float("inf")
    # a tighter budget than the target's decoding step alone: cloud-only is skipped
    tight = decided(tiny_guardrail(3.0), grid_profile(0, 100), [CLOUD_ONLY, FIXED5])
    assert (tight["cloud-only"].verdict, tight["fixed-k5"].verdict) == ("reject", "measure")


def test_a_device_file_measured_again_since_the_fit_is_named(tmp_path):
    """A fit records its device file; a guardrail whose device file now says otherwise
    (measured again since) names the first figure that moved, and one fitted before fits
    recorded it says nothing."""
    import shutil
    from dataclasses import replace
    guard = tiny_guardrail(20.0)
    assert guard.device_warning() is None
    unrecorded = replace(guard, fitted=replace(guard.fitted, device=None))
    assert unrecorded.device_warning() is None
    remeasured = guard.device.model_copy(update={"library_call_us": {"bfloat16": 15.5}})
    said = replace(guard, device=remeasured, source="FIT").device_warning()
    assert said.startswith("guardrail: device dev-epyc-2c's file has changed since the fit in "
                           "FIT (library_call_us.bfloat16: None then, 15.5 now)"), said
    # `latency fit` records it
    from orchestrator.cli import main
    table = tmp_path / "float32-t1.csv"
    shutil.copy(FIT.with_suffix(".csv"), table)
    assert main(["latency", "fit", str(table), "--device", "dev-epyc-2c", "--folds", "2"]) == 0
    assert read_fit(tmp_path / "float32-t1").device == load_device("dev-epyc-2c")


def test_a_fit_whose_device_file_is_not_here_predicts_with_the_one_it_recorded(tmp_path):
    """A fit made against a device file of the user's own (``latency device`` writes
    NAME.yaml where it runs), used by a sweep started elsewhere: the guardrail takes the
    device file the fit recorded, and says so; a fit without that record is one error."""
    import shutil

    from orchestrator.config.guardrail import load_guardrail
    from orchestrator.config.run_spec import RunSpec
    fit = tmp_path / "fit"
    shutil.copytree(FIT, fit)
    data = json.loads((fit / "estimator.json").read_text())
    data["device"] = data["device_file"]["name"] = "my-host"
    (fit / "estimator.json").write_text(json.dumps(data))
    pair = tmp_path / "tiny-arith.yaml"
    pair.write_text(f"name: tiny-arith\nbackend: hf\ndraft: {PAIR / 'draft'}\n"
                    f"target: {PAIR / 'target'}\ntokenizer: {PAIR / 'tokenizer'}\n"
                    "dtype: float32\ncpu_threads: 1\n")
    job = load_job(str(GUARDED_JOB), {"guardrail_path": str(fit), "model_pair": str(pair)})
    spec = RunSpec.build(job, grid_profile(0, None), "sim")
    guard = load_guardrail(spec)
    assert not guard.device_found and guard.device.name == "my-host"
    assert guard.device.figures() == load_device("dev-epyc-2c").figures()
    assert guard.device_warning() == (f"guardrail: no device file 'my-host' here: the one the "
                                      f"fit in {fit} recorded is used")
    del data["device_file"]
    (fit / "estimator.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="estimator.json: its device: .*'my-host'"):
        load_guardrail(spec)


def test_the_network_term_is_the_rtt_and_the_codecs_bytes_over_the_link_per_token():
    guard = tiny_guardrail(20.0)
    at = {rtt: decided(guard, grid_profile(rtt, None), [FIXED5])["fixed-k5"].per_token_s
          for rtt in (0, 50)}
    assert at[50].low - at[0].low == pytest.approx(0.050 / 6)     # acceptance 1: K + 1 tokens
    assert at[50].high - at[0].high == pytest.approx(0.050)       # acceptance 0: one token
    link = grid_profile(0, 1).initial                             # 1 Mbit/s
    sizes = cycle_bytes("full32", 5, 511)
    shaped = decided(guard, grid_profile(0, 1), [FIXED5], "full32")["fixed-k5"].per_token_s
    transfer = transmit_s(link.uplink, sizes["up"]) + transmit_s(link.downlink, sizes["down"])
    assert transfer > 0.03 and shaped.low - at[0].low == pytest.approx(transfer / 6)
    cloud = [decided(guard, grid_profile(rtt, 1), [CLOUD_ONLY])["cloud-only"].per_token_s
             for rtt in (0, 200)]
    assert cloud[0] == cloud[1]                                   # streamed: no RTT per token
    narrow = decided(tiny_guardrail(20.0, (0.6, 0.9)), grid_profile(0, None),
                     [FIXED5])["fixed-k5"].per_token_s
    assert at[0].low < narrow.low < narrow.high < at[0].high


def test_a_probe_run_fits_the_guardrail_to_how_this_host_serves_now():
    guard = tiny_guardrail(3.0)
    assert "fitted times as they are (no probe run)" in guard.describe()
    fitted = [(context, guard._seconds("decode", 1, context)) for context in range(25, 45)]
    assert guard.at_probe(ProbeRun([fitted], [], [])).host.time_scale == pytest.approx(1.0)
    assert guard.at_probe(ProbeRun([], [], [])).host.time_scale == 1.0   # nothing served: as fitted
    # tokens at half the fitted step; the cycles' own round trip: their median
    half = [(c, s / 2) for c, s in fitted]
    faster = guard.at_probe(ProbeRun([half[:10], half[10:]], [], [0.0004, 0.0005, 0.009]))
    assert faster.host.time_scale == pytest.approx(0.5) and faster.host.round_trip_s == 0.0005
    # a stall counts within its answer, as in a run's ms per token (total over total), and
    # an answer slowed throughout is one of the median's three
    stalled = half[:9] + [(34, 10 * fitted[9][1])]
    within = sum(s for _, s in stalled) / sum(s for _, s in fitted[:10])
    assert within > 0.9 and guard.at_probe(ProbeRun([stalled], [])).host.time_scale == \
        pytest.approx(within)
    slow = [(c, 3 * s) for c, s in fitted[10:15]]
    strayed = guard.at_probe(ProbeRun([half[:5], slow, half[15:]], []))
    assert strayed.host.time_scale == pytest.approx(0.5)
    assert strayed.host.speed_spread == pytest.approx((1.0, 6.0))    # 3x over the median 0.5
    assert "fitted times x0.50 (x0.50-0.50 over its answers, the intervals widened so) and " \
           "0.50 ms of the agents' own round trip per cycle (a probe run just now: 20 " \
           "cloud-only tokens" in faster.describe()
    as_fitted = decided(guard, grid_profile(0, None), [CLOUD_ONLY, FIXED5])
    now = decided(faster, grid_profile(0, None), [CLOUD_ONLY, FIXED5])
    for end in ("low", "point", "high"):       # unshaped at 0 ms: the stages alone, halved
        assert getattr(now["cloud-only"].per_token_s, end) == pytest.approx(
            getattr(as_fitted["cloud-only"].per_token_s, end) / 2)
    # fixed-K: its stages halved, and one round trip per cycle: K + 1 tokens at acceptance 1
    assert now["fixed-k5"].per_token_s.low == pytest.approx(
        as_fitted["fixed-k5"].per_token_s.low / 2 + 0.0005 / 6)
    assert now["fixed-k5"].per_token_s.high == pytest.approx(
        as_fitted["fixed-k5"].per_token_s.high / 2 + 0.0005)     # acceptance 0: one token
    record = now["fixed-k5"].record()
    assert (record["time_scale"], record["round_trip_ms"]) == (0.5, 0.5)
    # an answer 3x slower than the median widens the high ends 6x over the scaled ones
    wide = decided(strayed, grid_profile(0, None), [CLOUD_ONLY])["cloud-only"].per_token_s
    assert (wide.low, wide.point, wide.high) == pytest.approx(tuple(
        factor * getattr(as_fitted["cloud-only"].per_token_s, end)
        for factor, end in ((0.5, "low"), (0.5, "point"), (3.0, "high"))))
    assert strayed.at_probe(ProbeRun([half], [])).host.speed_spread == (1.0, 1.0)  # the latest
    # its decoding step alone broke 3 ms per token as fitted; on a host twice as fast it fits
    assert (as_fitted["cloud-only"].verdict, now["cloud-only"].verdict) == ("reject", "accept")


def test_a_decision_holds_when_the_measurement_agrees_with_it():
    verdict = decided(tiny_guardrail(20.0), grid_profile(0, None), [CLOUD_ONLY])["cloud-only"]
    assert verdict.verdict == "accept"
    skipped = verdict.record()
    assert skipped["ran"] is False and "measured_ms" not in skipped
    kept = verdict.record({"tokens_per_s": 200.0, "tokens_per_s_low": 190.0,
                           "tokens_per_s_high": 210.0})
    assert kept["measured_ms"] == pytest.approx(5.0) and kept["within_budget"] is True
    assert kept["verdict_held"] is True and kept["measured_low_ms"] < 5 < kept["measured_high_ms"]
    broken = verdict.record({"tokens_per_s": 40.0})               # 25 ms: above the budget
    assert (broken["within_budget"], broken["verdict_held"]) == (False, False)
    assert verdict_held("reject", 0.030, 0.020) is True
    assert verdict_held("measure", 0.030, 0.020) is None
    assert verdict_held("accept", float("nan"), 0.020) is None


def test_a_fit_of_another_processor_is_named_before_the_sweep_trusts_it():
    guard = tiny_guardrail(20.0)
    measured_on = guard.fitted.table["host"]["processor"]
    assert guard.foreign_host(measured_on) is None
    warning = guard.foreign_host("Another CPU")
    assert measured_on in warning and "Another CPU" in warning


def test_a_job_cut_to_some_runs_plans_exactly_those():
    job = load_job("default")
    runs = plan(job)
    kept = [run for run in runs if run.strategy != "cloud-only" and run.k not in (3, 15)]
    assert plan(narrowed(job, kept)) == kept
    assert plan(narrowed(job, [CLOUD_ONLY])) == [CLOUD_ONLY]


@pytest.mark.parametrize("write, message", [
    (None, "no such folder"),
    ("file", "a file, not a folder"),
    ({"estimator.json": "{"}, "estimator.json: not JSON"),
    ({"estimator.json": (FIT / "estimator.json").read_text(), "guardrail.json": '{"model": '
      '"roofline", "intervals": {}}'}, "no interval of the draft_token stage"),
    ({"estimator.json": (FIT / "estimator.json").read_text(),
      "guardrail.json": (FIT / "guardrail.json").read_text().replace('"roofline"', '"forest"')},
     "intervals of the 'forest' model"),
])
def test_a_folder_that_is_not_a_fit_is_one_config_error(tmp_path, write, message):
    folder = tmp_path / "fit"
    if write == "file":                              # the table given for its fit's folder
        folder.write_text("sample,k\n")
    elif write is not None:
        folder.mkdir()
        for name, text in write.items():
            (folder / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_fit(folder)


@pytest.mark.parametrize("flags, message", [
    (["--latency-budget-ms-per-token", "5"], "needs guardrail_path"),
    (["--guardrail", str(FIT)], "guardrail_path needs latency_budget_ms_per_token"),
    (["--latency-budget-ms-per-token", "0", "--guardrail", str(FIT)], "greater than 0"),
    (["--latency-budget-ms-per-token", "5", "--guardrail", str(FIT),
      "--guardrail-acceptance", "0.9", "0.5"], "the least (0.9) is above the most (0.5)"),
    (["--latency-budget-ms-per-token", "5", "--guardrail", str(FIT)],
     "model pair 'synthetic' is a synthetic pair"),
    (["--no-guardrail-probe"], "--no-guardrail-probe (with job"),
    (["--guardrail-probe"], "--guardrail-probe (with job"),    # given: not the default's silence
    # blamed on the flag that conflicts with the file, not on every flag given
    (["--model-pair", "tiny-arith", "--no-guardrail-probe"],
     "error: --no-guardrail-probe (with job"),
])
def test_bad_guardrail_input_is_one_line_and_exit_2_before_anything_starts(
        tmp_path, capsys, flags, message):
    from orchestrator.cli import main
    results = tmp_path / "results"
    capsys.readouterr()
    code = main(["sweep", "--job", str(SMALL_SWEEP_JOB), "--mode", "sim", "--results",
                 str(results), *flags])
    stderr = capsys.readouterr().err
    assert code == 2 and stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
    assert message in stderr, stderr
    assert not results.exists()


def test_a_job_files_acceptance_needs_both_ends(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(f"name: x\nlatency_budget_ms_per_token: 5\nguardrail_path: {FIT}\n"
                   "guardrail_acceptance: [0.7]\n")
    with pytest.raises(ConfigError, match=r"guardrail_acceptance: two numbers, the least and "
                                          r"the most acceptance \(got \[0.7\]\)"):
        load_job(str(job))


@pytest.mark.slow
def test_a_guarded_sweep_skips_the_rejected_runs_and_reports_every_decision(tmp_path, capsys):
    """``tests/fixtures/sweep-guardrail.yaml`` in sim mode on the shipped pair, pinned to the
    one torch thread the committed fit was measured at, through the CLI's entry point."""
    from orchestrator.cli import main
    pair = tmp_path / "tiny-arith.yaml"
    pair.write_text(f"name: tiny-arith\nbackend: hf\ndraft: {PAIR / 'draft'}\n"
                    f"target: {PAIR / 'target'}\ntokenizer: {PAIR / 'tokenizer'}\n"
                    "dtype: float32\ncpu_threads: 1\n")
    code = main(["sweep", "--mode", "sim", "--job", str(GUARDED_JOB), "--model-pair", str(pair),
                 "--results", str(tmp_path / "results")])
    output = capsys.readouterr().out
    assert code == 0, output
    assert "fitted times as they are (no probe run)" in output   # guardrail_probe: false
    folder, = (tmp_path / "results").glob("*-sweep-guardrail-sim")
    cells = {json.loads(line)["cell"]: json.loads(line)
             for line in (folder / "cells.jsonl").read_text().splitlines()}
    assert list(cells) == ["rtt000", "rtt200"]
    near = {d["label"]: d for d in cells["rtt000"]["guardrail"]}
    assert (near["cloud-only"]["verdict"], near["cloud-only"]["ran"]) == ("reject", False)
    assert near["cloud-only"]["predicted_low_ms"] > 3.0
    ran = near["fixed-k5"]
    assert (ran["verdict"], ran["ran"]) == ("measure", True) and ran["verdict_held"] is None
    assert ran["measured_ms"] > 0 and ran["within_budget"] == (ran["measured_ms"] <= 3.0)
    assert ran["predicted_low_ms"] <= 3.0 <= ran["predicted_high_ms"]
    # the rejected run never ran: no query of it, and no folder for the cell skipped whole
    labels = {json.loads(line)["label"]
              for line in (folder / "cells" / "rtt000" / "queries.jsonl").read_text().splitlines()}
    assert labels == {"fixed-k5"}
    assert cells["rtt200"]["skipped"] and not (folder / "cells" / "rtt200").exists()
    assert {d["verdict"] for d in cells["rtt200"]["guardrail"]} == {"reject"}
    assert "cell rtt200: fixed-k5 skipped by the guardrail: even its least" in output
    # the report: guardrail.csv beside the leaderboard, which has the run that ran only
    decisions = pd.read_csv(folder / "guardrail.csv")
    assert list(zip(decisions["cell"], decisions["label"], decisions["verdict"])) == [
        ("rtt000", "cloud-only", "reject"), ("rtt000", "fixed-k5", "measure"),
        ("rtt200", "cloud-only", "reject"), ("rtt200", "fixed-k5", "reject")]
    board = pd.read_csv(folder / "leaderboard.csv")
    assert list(zip(board["cell"], board["label"])) == [("rtt000", "fixed-k5")]
    assert "skipped 3 of 4 strategy runs (1 cell whole)" in output
    page = (folder / "report.html").read_text()
    assert "Budget guardrail" in page and "1 run, 1 skipped whole by the budget guardrail" in page


@pytest.mark.slow
def test_a_probe_run_scales_the_guardrail_to_how_fast_this_host_serves_now(tmp_path, capsys):
    """The same sweep with its probe: cloud-only and fixed-K on the job's prompt on an
    unshaped link, kept in the sweep's folder; every decision carries the median of the
    cloud-only tokens' intervals over the fitted decoding step at their contexts, and the
    median network time of the fixed-K cycles; the predictions are built from them."""
    from orchestrator.cli import main
    pair = tmp_path / "tiny-arith.yaml"
    pair.write_text(f"name: tiny-arith\nbackend: hf\ndraft: {PAIR / 'draft'}\n"
                    f"target: {PAIR / 'target'}\ntokenizer: {PAIR / 'tokenizer'}\n"
                    "dtype: float32\ncpu_threads: 1\n")
    code = main(["sweep", "--mode", "sim", "--job", str(GUARDED_JOB), "--model-pair", str(pair),
                 "--guardrail-probe", "--results", str(tmp_path / "results")])
    output = capsys.readouterr().out
    assert code == 0, output
    folder, = (tmp_path / "results").glob("*-sweep-guardrail-sim")
    queries = [json.loads(line) for line in
               (folder / "guardrail-probe" / "queries.jsonl").read_text().splitlines()]
    assert [query["label"] for query in queries] == ["cloud-only", "fixed-k5"]  # 1 prompt
    times, prompt = queries[0]["token_times_s"], queries[0]["prompt_tokens"]
    steps = [[(prompt + index, times[index] - times[index - 1]) for index in range(1, len(times))]]
    trips = [cycle["t_network"] for cycle in map(json.loads, (    # cycles that drafted
        folder / "guardrail-probe" / "cycles.jsonl").read_text().splitlines()) if cycle["k"]]
    assert len(steps[0]) == len(times) - 1 >= 5 and trips and 0 < min(trips)
    fitted = tiny_guardrail(3.0)
    probed = fitted.at_probe(ProbeRun(steps, [queries[0]["n_tokens"]], trips))
    assert probed.answer_tokens == (queries[0]["n_tokens"],)
    assert 0.1 < probed.host.time_scale < 10      # this host against a 2-vCPU build host's fit
    assert probed.host.round_trip_s < 0.05        # the agents' own messages, no RTT
    assert f"fitted times x{probed.host.time_scale:.2f} (x" in output
    assert f"and {1000 * probed.host.round_trip_s:.2f} ms of the agents' own round trip" in output
    assert (folder / "guardrail-probe").is_dir() and not (folder / "guardrail-probe-2").exists()
    cells = [json.loads(line) for line in (folder / "cells.jsonl").read_text().splitlines()]
    assert [cell["cell"] for cell in cells] == ["rtt000", "rtt200"]
    # the second cell follows the first's cloud-only tokens and fixed-K cycles (at 0 ms
    # unshaped: all their network time is the agents' own), where it ran them
    ran = folder / "cells" / "rtt000"
    first = [json.loads(line) for line in (ran / "queries.jsonl").read_text().splitlines()] \
        if ran.exists() else []
    served = [q for q in first if q["label"] == "cloud-only"]
    own = [cycle["t_network"] for cycle in map(json.loads, (ran / "cycles.jsonl").read_text(
        ).splitlines()) if cycle["k"]] if ran.exists() else []
    followed = probed if not (served or own) else probed.at_probe(ProbeRun(
        [[(q["prompt_tokens"] + i, q["token_times_s"][i] - q["token_times_s"][i - 1])
          for i in range(1, q["n_tokens"])] for q in served], [q["n_tokens"] for q in served],
        own))
    for cell, guard in zip(cells, (probed, followed)):
        recorded = guard.host.record()
        assert all(d[name] == value for d in cell["guardrail"] for name, value in recorded.items())
        for label, run in (("cloud-only", CLOUD_ONLY), ("fixed-k5", FIXED5)):
            expected = decided(guard, cell_profile(cell), [run])[label].per_token_s
            made = next(d for d in cell["guardrail"] if d["label"] == label)
            assert made["predicted_ms"] == pytest.approx(1000 * expected.point, rel=1e-3)
    assert ("from here on (cell rtt000's;" in output) == bool(served or own)


def cell_profile(cell: dict):
    return grid_profile(float(cell["cell"].removeprefix("rtt")), None)
