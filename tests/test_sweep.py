"""Sweeps: cell expansion, resume after an interrupt, the leaderboard, the reversal RTT."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from orchestrator.config.loading import load_job, load_profile
from orchestrator.lifecycle.sweep import expand, grid_profile
from orchestrator.reporting.analysis import (
    ianvs_rank,
    leaderboard,
    load_results,
    reversal,
)
from orchestrator.reporting.summary import verdict_of
from tests.conftest import ROOT, SMALL_SWEEP_JOB


def test_the_seed_grid_expands_to_its_45_cells():
    cells = expand(load_job("seed-grid"))
    names = [cell.name for cell in cells]
    assert len(names) == len(set(names)) == 7 * 3 + 2 * 3 * 2 + 3 * 4
    assert names[:3] == ["rtt000-bw001", "rtt000-bw010", "rtt000-bw100"]
    assert {"rtt200-bw010-j25", "rtt050-bw010-l5", "rtt050-bw001@full32"} <= set(names)
    jittered = next(cell for cell in cells if cell.name == "rtt050-bw010-j10").profile.initial
    assert (jittered.rtt_ms, jittered.uplink.jitter_ms, jittered.uplink.jitter_distribution,
            jittered.downlink.bandwidth_mbps) == (50, 10, "normal", 10)


def test_grid_profiles_match_the_shipped_grid_files():
    for name, args in (("rtt050-bw010-j10", (50, 10, 10, 0)), ("rtt200-bw010-l5", (200, 10, 0, 5)),
                       ("rtt000-bw100", (0, 100, 0, 0))):
        made = grid_profile(*args)
        assert made.name == name
        assert made.initial == load_profile(name).initial


def sweep_cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "sweep", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("body, message", [
    ("model_pair: synthetic\n", "has no network section"),
    ("network: {}\n", "give profiles or grids"),
    ("network: {grids: [{rtt_ms: [-1]}]}\n", "network.grids.0.rtt_ms.0"),
    ("network: {grids: [{rtt_ms: [10], codecs: [zip]}]}\n", "unknown codec 'zip'"),
    ("network: {profiles: [nowhere]}\n", "profile 'nowhere' not found"),
])
def test_a_bad_network_section_is_one_line_and_exit_2(tmp_path, body, message):
    job = tmp_path / "job.yaml"
    job.write_text(body)
    done = sweep_cli("--job", str(job), "--mode", "sim", "--results", str(tmp_path))
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], done.stderr
    assert not list(tmp_path.glob("*sweep*"))


def test_sweep_needs_a_job_or_a_folder_to_resume(tmp_path):
    assert sweep_cli("--mode", "sim").returncode == 2
    not_a_sweep = sweep_cli("--resume", str(tmp_path))
    assert not_a_sweep.returncode == 2 and "not a sweep folder" in not_a_sweep.stderr


def test_an_interrupted_sweep_resumes_without_redoing_or_losing_a_cell(resumed_sweep):
    assert resumed_sweep.interrupt_exit_code == 130
    expected = [cell.name for cell in expand(load_job(str(SMALL_SWEEP_JOB)))]
    assert 2 <= len(resumed_sweep.finished_before_interrupt) < len(expected)
    done = [json.loads(line)["cell"]
            for line in (resumed_sweep.path / "cells.jsonl").read_text().splitlines()]
    assert sorted(done) == sorted(expected)                    # every cell once: none lost
    assert done[:len(resumed_sweep.finished_before_interrupt)] == \
        resumed_sweep.finished_before_interrupt                 # finished ones kept, not redone
    assert f"resuming: {len(resumed_sweep.finished_before_interrupt)} of {len(expected)}" in \
        resumed_sweep.resume_output
    for name in resumed_sweep.finished_before_interrupt:
        assert f"cell {name}: done" not in resumed_sweep.resume_output
    job = load_job(str(SMALL_SWEEP_JOB))
    per_cell = job.max_queries * (len(job.strategies) - 1 + len(job.k_values))
    for name in expected:                        # the cut-off cell was rerun from scratch
        queries = (resumed_sweep.path / "cells" / name / "queries.jsonl").read_text().splitlines()
        assert len(queries) == per_cell, name


def test_the_leaderboard_ranks_each_cell_by_speed_and_accuracy(resumed_sweep):
    board = leaderboard(load_results(resumed_sweep.path))
    assert list(board["cell"].unique()) == [c.name for c in expand(load_job(str(SMALL_SWEEP_JOB)))]
    for _, rows in board.groupby("cell"):
        lossless = rows[~rows["lossy"]]
        assert list(lossless["rank_tokens_per_s"]) == list(range(1, len(lossless) + 1))
        assert lossless["tokens_per_s"].is_monotonic_decreasing
        assert rows["lossy"].tolist()[-1] and rows["strategy"].tolist()[-1] == "edge-only"
    fast = board[board["cell"] == "rtt000-bw010"].set_index("label")
    assert fast.loc["fixed-k5", ["strategy", "k"]].tolist() == ["fixed-k", 5]
    # synthetic pair: the edge drafts at 250 tok/s, the cloud decodes at 33: the fastest by far,
    # but lossy (the draft's output), so flagged and never ranked for speed
    assert fast.loc["edge-only", "tokens_per_s"] == fast["tokens_per_s"].max()
    assert fast.loc["edge-only", "lossy"] and pd.isna(fast.loc["edge-only", "rank_tokens_per_s"])
    assert not fast.drop(index="edge-only")["lossy"].any()
    assert fast["rank_tokens_per_s"].min() == 1
    # a 30 ms decode step per token, plus the prefill spread over 16 tokens
    assert 30.0 <= fast.loc["cloud-only", "cloud_ms_per_token"] <= 40.0
    # speculation verifies several tokens per 32.5 ms forward: the cloud's cost per token drops
    assert fast.loc["fixed-k5", "cloud_ms_per_token"] < fast.loc["cloud-only", "cloud_ms_per_token"]
    full16 = board[board["cell"] == "rtt040-bw001@full16"].set_index("label")
    ids = board[board["cell"] == "rtt040-bw010"].set_index("label")
    assert full16.loc["fixed-k5", "codec"] == "full16" and ids.loc["fixed-k5", "codec"] == "ids"
    assert full16.loc["fixed-k5", "bytes_up_per_token"] > 10 * ids.loc["fixed-k5",
                                                                        "bytes_up_per_token"]


def _series(rtts, spec_rates, cloud_rate) -> pd.DataFrame:
    rows = []
    for rtt, rate in zip(rtts, spec_rates):
        for label, strategy, k, tokens_per_s, crossover in (
                ("cloud-only", "cloud-only", None, cloud_rate, math.nan),
                ("fixed-k5", "fixed-k", 5, rate, 42.0)):
            rows.append({"cell": f"rtt{rtt}", "label": label, "strategy": strategy, "k": k,
                         "rtt_ms": rtt,
                         "bandwidth_mbps": 10.0, "jitter_ms": 0.0, "loss_pct": 0.0,
                         "codec": "ids", "static": True, "tokens_per_s": tokens_per_s,
                         "crossover_rtt_ms": crossover})
    return pd.DataFrame(rows)


def test_reversal_interpolates_seconds_per_token_linearly():
    # the model's shape: 3 tokens per cycle of 60 ms + RTT; cloud-only 25 tok/s (40 ms/token)
    rtts = [0, 50, 100]
    spec = [3 / (0.060 + rtt / 1000) for rtt in rtts]
    found = reversal(_series(rtts, spec, 25.0))
    row = found[found["label"] == "fixed-k5"].iloc[0]
    assert row["measured_reversal_rtt_ms"] == pytest.approx(60.0)   # 3 * 40 - 60
    assert row["predicted_reversal_rtt_ms"] == 42.0
    assert set(found["label"]) == {"fixed-k5", "best fixed-K"}
    assert set(found["strategy"]) == {"fixed-k"} and row["k"] == 5


def test_reversal_says_when_there_is_none_in_the_range():
    never = reversal(_series([0, 50], [20.0, 10.0], 25.0)).iloc[0]
    assert math.isnan(never["measured_reversal_rtt_ms"]) and "slower" in never["note"]
    always = reversal(_series([0, 50], [40.0, 30.0], 25.0)).iloc[0]
    assert math.isnan(always["measured_reversal_rtt_ms"]) and "faster" in always["note"]


def test_a_strategy_missing_at_some_rtts_is_said_not_dropped():
    """A budget guardrail skipped fixed-K 5 at 100 ms, and fixed-K 3 everywhere but 0 ms: the
    first is judged on the RTTs it ran at and says which it lacks; the second gets a row
    that says why it has no reversal, instead of vanishing from the table."""
    rtts = [0, 50, 100]
    series = _series(rtts, [3 / (0.060 + rtt / 1000) for rtt in rtts], 25.0)
    series = series[~((series["label"] == "fixed-k5") & (series["rtt_ms"] == 100))]
    three = series[(series["label"] == "fixed-k5") & (series["rtt_ms"] == 0)].assign(
        label="fixed-k3", k=3)
    found = reversal(pd.concat([series, three])).set_index("label")
    assert found.loc["fixed-k5", "rtts"] == "0 50"
    assert "not run beside cloud-only at 100 ms of the series' RTTs" in found.loc["fixed-k5",
                                                                                   "note"]
    assert math.isnan(found.loc["fixed-k3", "measured_reversal_rtt_ms"])
    assert found.loc["fixed-k3", "note"].startswith(
        "no reversal measurable: not run beside cloud-only at 50, 100 ms")


def with_intervals(series: pd.DataFrame, spread: float) -> pd.DataFrame:
    return series.assign(tokens_per_s_low=series["tokens_per_s"] * (1 - spread),
                         tokens_per_s_high=series["tokens_per_s"] * (1 + spread))


def test_a_reversal_resting_on_overlapping_intervals_is_too_wide_to_conclude():
    rtts = [0, 50, 100]
    series = _series(rtts, [3 / (0.060 + rtt / 1000) for rtt in rtts], 25.0)
    tight = reversal(with_intervals(series, 0.01)).set_index("label").loc["fixed-k5"]
    assert verdict_of(tight["measured_reversal_conclusive"]) is True
    assert "too wide" not in tight["note"]
    wide = reversal(with_intervals(series, 0.2)).set_index("label").loc["fixed-k5"]
    assert wide["measured_reversal_rtt_ms"] == pytest.approx(60.0)    # the number stays
    assert verdict_of(wide["measured_reversal_conclusive"]) is False
    assert "too wide to conclude" in wide["note"] and "overlap at 50, 100 ms" in wide["note"]
    unknown = reversal(series).set_index("label").loc["fixed-k5"]   # no interval columns
    assert verdict_of(unknown["measured_reversal_conclusive"]) is None


def test_no_reversal_in_range_is_conclusive_only_if_every_rtt_is_apart():
    series = with_intervals(_series([0, 50, 100], [40.0, 34.0, 26.0], 25.0), 0.03)
    row = reversal(series).set_index("label").loc["fixed-k5"]
    assert math.isnan(row["measured_reversal_rtt_ms"]) and "faster" in row["note"]
    assert verdict_of(row["measured_reversal_conclusive"]) is False
    assert "overlap at 100 ms" in row["note"]


def test_a_lossy_strategy_is_never_ranked_for_speed_and_close_calls_are_flagged():
    rows = [("edge-only", 250.0, 0.02, True), ("cloud-spec", 44.0, 0.05, False),
            ("fixed-k5", 43.0, 0.05, False), ("cloud-only", 33.0, 0.01, False)]
    results = pd.DataFrame([{"cell": "c", "label": name, "tokens_per_s": rate,
                             "tokens_per_s_low": rate * (1 - spread),
                             "tokens_per_s_high": rate * (1 + spread), "lossy": lossy,
                             "accuracy": np.nan} for name, rate, spread, lossy in rows])
    board = leaderboard(results).set_index("label")
    assert list(board.index) == ["cloud-spec", "fixed-k5", "cloud-only", "edge-only"]
    assert board["rank_tokens_per_s"].tolist()[:3] == [1, 2, 3]
    assert math.isnan(board.loc["edge-only", "rank_tokens_per_s"])
    assert verdict_of(board.loc["cloud-spec", "separated_from_next"]) is False   # 44, 43 +- 5 %
    assert verdict_of(board.loc["fixed-k5", "separated_from_next"]) is True


def test_ianvs_rank_has_its_columns_in_order(resumed_sweep):
    board = leaderboard(load_results(resumed_sweep.path))
    table = ianvs_rank(board, "synthetic")
    columns = ["rank"] + list(table.columns)
    assert columns[:3] == ["rank", "algorithm", "throughput"]
    assert columns[-2:] == ["time", "url"] and "paradigm" in columns
    assert table.index.min() == 1 and np.all(table["throughput"].notna())


def test_each_strategy_warms_up_once_unrecorded_on_the_first_prompt():
    from orchestrator.config.run_spec import RunSpec
    spec = RunSpec.build(load_job("smoke").model_copy(update={"warmup_tokens": 4}),
                         grid_profile(10, 10), "sim")
    warmups = spec.warmups()
    assert [w.label for w in warmups] == ["cloud-only", "cloud-spec", "edge-only", "fixed-k5"]
    first = spec.requests()[0]
    assert {(w.query_id, w.prompt, w.max_new_tokens) for w in warmups} == {
        ("warmup", first.prompt, 4)}
    assert "warmup" not in {request.query_id for request in spec.requests()}
    assert RunSpec.build(load_job("smoke"), grid_profile(10, 10), "sim").warmups() == []
