"""NASD's calibration and RTT -> K table: the table against the closed form (nasd/table.py),
its lookup, its files and their errors (orchestrator/config/nasd_files.py), `orchestrator
calibrate` end to end on the synthetic and the shipped pair, and a sim run whose nasd
controller takes K from a table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nasd.analytic import ComputeTimes, cloud_only_throughput, optimal_k
from nasd.estimator import Calibration, Line
from nasd.policy import HAND_OFF, PROBE_TOKENS, NasdController, make_policy
from nasd.table import CLOUD_ONLY_K, RttTable, TableRow, build_table
from orchestrator.config.loading import ConfigError
from orchestrator.config.nasd_files import load_calibration, load_rtt_table, write_table
from tests.test_sim_run import read_jsonl

REPO = Path(__file__).resolve().parent.parent
TIMES = ComputeTimes(draft_token_s=0.004, verify_base_s=0.0295, verify_per_token_s=0.0005)
# full16 rows of a 1024-token vocabulary on a 10 Mbit/s link
FULL16 = Calibration(0.7, TIMES, bytes_up=Line(100, 2048), bytes_down=Line(40),
                     seconds_per_byte=8 / 10e6)
GRID = list(range(0, 1001, 10))
LATE_WAKE_UPS = 1.5   # a slept stage's measured mean on a loaded host: at most this x modelled


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


# --------------------------------------------------------------------------- the table


@pytest.mark.parametrize("calibration", [FULL16, Calibration(0.9, TIMES),
                                         Calibration(0.3, TIMES, bytes_up=Line(60, 4))])
def test_the_table_is_the_closed_form_at_every_grid_rtt_and_delay_monotone(calibration):
    table = build_table(calibration, GRID, 1, 15)
    cloud_only = cloud_only_throughput(calibration.times)
    for row in table.rows:
        rtt_s = row.rtt_ms / 1000.0
        assert row.spec_k == optimal_k(calibration.acceptance, calibration.times, rtt_s, 15,
                                       calibration.transmit_s, 1)
        assert row.spec_tokens_per_s == pytest.approx(
            calibration.throughputs(rtt_s, [row.spec_k])[0], rel=1e-12)
        assert row.k == (CLOUD_ONLY_K if cloud_only > row.spec_tokens_per_s else row.spec_k)
        assert row.tokens_per_s == max(cloud_only, row.spec_tokens_per_s)
    spec_ks = [row.spec_k for row in table.rows]
    assert spec_ks == sorted(spec_ks)
    ks = [row.k for row in table.rows]
    first_cloud = ks.index(0) if 0 in ks else len(ks)
    assert all(k == 0 for k in ks[first_cloud:]) and 0 not in ks[:first_cloud]


def test_the_shipped_pairs_model_reverses_within_the_grid():
    table = build_table(FULL16, GRID, 1, 15)
    assert table.rows[0].k > 0 and table.rows[-1].k == 0
    assert len({row.spec_k for row in table.rows}) > 3


def test_lookup_is_the_nearest_grid_row_at_between_and_beyond_the_grid():
    table = build_table(FULL16, [0, 10, 20, 50, 100, 200, 500], 1, 15)
    rows = {row.rtt_ms: row for row in table.rows}
    for rtt, row in rows.items():
        assert table.row_at(rtt) == row
    assert table.row_at(4.9) == rows[0] and table.row_at(5.1) == rows[10]
    assert table.row_at(5.0) == rows[0]            # halfway: the lower row
    assert table.row_at(74.0) == rows[50] and table.row_at(76.0) == rows[100]
    assert table.row_at(10_000.0) == rows[500]
    fine = build_table(FULL16, GRID, 1, 15)
    # an evenly spaced grid is indexed by arithmetic (O(1)), any other by bisection
    assert table.step_ms is None and fine.step_ms == pytest.approx(GRID[1] - GRID[0])
    assert fine.row_at(GRID[0] + fine.step_ms / 2) == fine.rows[0]   # halfway: the lower row
    assert fine.row_at(-5.0) == fine.rows[0]
    for rtt in np.random.default_rng(0).uniform(0, 1000, 200):
        nearest = fine.rows[int(np.argmin([abs(g - rtt) for g in GRID]))]
        assert fine.row_at(rtt) == nearest


def test_a_table_checks_its_rows():
    row = TableRow(0.0, 3, 10.0, 3, 10.0, 5.0)
    with pytest.raises(ValueError, match="increasing"):
        RttTable((row, row), 1, 15)
    with pytest.raises(ValueError, match="outside"):
        RttTable((row,), 4, 15)
    with pytest.raises(ValueError, match="k must be spec_k"):
        RttTable((TableRow(0.0, 2, 10.0, 3, 10.0, 5.0),), 1, 15)
    with pytest.raises(ValueError, match="within"):
        RttTable((row,), 1, 15).check_range(2, 15)


def test_the_controller_takes_k_from_the_table_for_its_rtt_estimate():
    table = build_table(FULL16, GRID, 1, 15)
    controller = make_policy("nasd", k_min=1, k_max=15, table=table)
    assert isinstance(controller, NasdController)
    # first the stretch that measures the cloud's plain step; without hand-offs, k_start
    assert controller.next_k() == HAND_OFF and controller.stretch.tokens == PROBE_TOKENS
    assert NasdController(table=table, hand_off=False).next_k() == 5
    for rtt_s in (0.0, 0.05, 0.3, 0.9):
        controller = NasdController(table=table, hand_off=False)   # K alone
        for _ in range(3):
            controller.observe(cycle(controller.next_k(), rtt_s))
        assert controller.next_k() == table.row_at(controller.rtt_estimate_ms).spec_k
        assert controller.rtt_estimate_ms == pytest.approx(1000 * rtt_s, abs=1.0)
    with pytest.raises(ValueError, match="only nasd"):
        make_policy("bandit", table=table)
    with pytest.raises(ValueError, match="within"):
        NasdController(k_min=2, k_max=15, table=table)


def cycle(k: int, rtt_s: float):
    from tests.test_policy import Cycle
    return Cycle(k, 0, 1, 0.004 * k, 0.03, rtt_s, rtt_s + 0.04, 60, 40)


# --------------------------------------------------------------------------- files


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


HEADER = "rtt_ms,k,tokens_per_s,spec_k,spec_tokens_per_s,cloud_only_tokens_per_s\n"
BAD_TABLES = {
    "missing": (None, "no such file"),
    "columns": ("rtt,k\n0,3\n", "expected the columns"),
    "empty": (HEADER, "at least one row"),
    "range": (HEADER + "0,20,9,20,9,5\n", "outside"),
    "order": (HEADER + "10,3,9,3,9,5\n0,3,9,3,9,5\n", "increasing"),
    "number": (HEADER + "0,3.5,9,3,9,5\n", "whole K"),
    "text": (HEADER + "zero,3,9,3,9,5\n", "could not convert"),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_a_bad_table_is_a_config_error(tmp_path, case):
    text, message = BAD_TABLES[case]
    path = tmp_path / "table.csv"
    if text is not None:
        write(path, text)
    with pytest.raises(ConfigError, match=message) as error:
        load_rtt_table(path, 1, 15)
    assert "\n" not in str(error.value)


def test_a_table_file_reads_back_as_written(tmp_path):
    table = build_table(FULL16, GRID, 1, 15)
    write_table(tmp_path / "t.csv", table, ["made by a test"])
    again = load_rtt_table(tmp_path / "t.csv", 1, 15)
    assert [(r.rtt_ms, r.k, r.spec_k) for r in again.rows] == \
        [(r.rtt_ms, r.k, r.spec_k) for r in table.rows]
    assert pd.read_csv(tmp_path / "t.csv", comment="#").shape == (len(GRID), 6)


@pytest.mark.parametrize("case", ["missing", "range"])
def test_a_run_with_a_bad_table_is_one_error_line_with_exit_code_2(tmp_path, case):
    text, message = BAD_TABLES[case]
    path = tmp_path / "table.csv"
    if text is not None:
        write(path, text)
    result = cli("run", "--mode", "sim", "--job", "smoke", "--strategy", "nasd",
                 "--nasd-rtt-table", str(path), "--results", str(tmp_path / "results"),
                 cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: nasd_rtt_table_path (--nasd-rtt-table): ")
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "results").exists()


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def synthetic_calibration(tmp_path_factory) -> Path:
    """`orchestrator calibrate` on the synthetic pair, run from outside the checkout."""
    where = tmp_path_factory.mktemp("calibrate")
    result = cli("calibrate", "--job", "smoke", "--k-max", "6", "--cycles", "8",
                 "--repetitions", "2", "--rtt-grid", "0:300:25,37", "--bandwidth-mbps", "10",
                 cwd=where)
    assert result.returncode == 0, result.stderr
    folder = where / "calibration" / "synthetic-ids"
    assert f"calibration: {Path('calibration/synthetic-ids/calibration.yaml')}" in result.stdout
    assert "measuring synthetic, codec ids" in result.stderr   # progress goes to stderr
    return folder


def test_calibrate_measures_the_synthetic_pair(synthetic_calibration):
    measured = load_calibration(synthetic_calibration / "calibration.yaml")
    assert (measured.model_pair, measured.codec, measured.decoding) == ("synthetic", "ids",
                                                                        "greedy")
    # the shipped synthetic pair's latency profile: draft 4 ms a token, verify 29.5 + 0.5 (K+1)
    # and decode 30 ms, all slept: a sleep is never shorter than asked, and on a loaded host
    # it wakes late, so each figure is bounded tightly below and loosely above (how close
    # calibrate comes on a quiet host is a benchmark's figure, not a test's)
    assert [row.k for row in measured.verify] == list(range(7))
    times = measured.calibration().times

    def slept(seconds: float, modelled: float) -> bool:
        return 0.97 * modelled <= seconds <= LATE_WAKE_UPS * modelled

    # drafting is a line in K: its time per cycle at every K measured, the line through them
    assert [row.k for row in measured.draft] == list(range(1, 7))
    for row in measured.draft:
        assert slept(row.seconds.mean, 0.004 * row.k)
        assert times.draft_time_s(row.k) == pytest.approx(row.seconds.mean, rel=0.25)
    assert times.draft_token_s == pytest.approx(0.004, rel=0.5)
    # a file from before the draft's line: the mean per drafted token, nothing per cycle
    older = measured.model_copy(update={"draft": None}).calibration().times
    assert (older.draft_base_s, older.draft_token_s) == (0.0, measured.draft_token_s.mean)
    for row in measured.verify:
        assert slept(row.seconds.mean, 0.0295 + 0.0005 * (row.k + 1))
    assert times.verify_time_s(6) - times.verify_time_s(0) == pytest.approx(0.003, abs=0.006)
    assert slept(measured.decode_s.mean, 0.030)
    for row in measured.verify:
        assert row.seconds.low <= row.seconds.mean <= row.seconds.high
    # ids: four bytes of int32 per drafted id, nothing else grows with K
    ups = [row.up for row in measured.bytes]
    assert np.diff(ups).tolist() == [4.0] * 6
    acceptance = measured.acceptance
    assert acceptance.low < acceptance.rate < acceptance.high and 0.4 < acceptance.rate < 0.9
    drafting = sum(row.cycles for row in measured.bytes if row.k > 0)
    assert acceptance.positions[0].reached == drafting      # every drafting cycle tests one
    assert sum(p.accepted for p in acceptance.positions) == acceptance.accepted
    assert {row.prompt_tokens for row in measured.prefill} and all(
        row.cloud_s.mean > 0.0295 for row in measured.prefill)


def test_the_calibrated_table_is_the_closed_form_on_the_calibration(synthetic_calibration):
    measured = load_calibration(synthetic_calibration / "calibration.yaml")
    table = load_rtt_table(synthetic_calibration / "rtt_table.csv", 1, 6)
    assert 37.0 in table.rtts_ms and len(table.rows) == 14
    expected = build_table(measured.calibration(8 / 10e6), table.rtts_ms, 1, 6)
    for row, want in zip(table.rows, expected.rows):
        assert (row.k, row.spec_k) == (want.k, want.spec_k)
        assert row.tokens_per_s == pytest.approx(want.tokens_per_s, rel=1e-5)
    text = (synthetic_calibration / "rtt_table.csv").read_text()
    assert text.startswith("# RTT -> K table of synthetic, codec ids") and "10 Mbit/s" in text


def test_calibrate_rebuilds_a_table_from_a_calibration(synthetic_calibration, tmp_path):
    result = cli("calibrate", "--job", "smoke", "--k-max", "6", "--from-calibration",
                 str(synthetic_calibration / "calibration.yaml"), "--rtt-grid", "0,100,1000",
                 "--out", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert load_rtt_table(tmp_path / "rtt_table.csv", 1, 6).rtts_ms == [0.0, 100.0, 1000.0]
    assert not (tmp_path / "calibration.yaml").exists()
    bad = cli("calibrate", "--job", "smoke", "--rtt-grid", "100:0:10", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--rtt-grid" in bad.stderr


def test_calibrate_measures_the_shipped_pair(tmp_path):
    result = cli("calibrate", "--k-max", "4", "--cycles", "4", "--repetitions", "2",
                 "--codec", "topk", "--rtt-grid", "0:200:50", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "calibration" / "tiny-arith-topk"
    measured = load_calibration(folder / "calibration.yaml")
    assert measured.model_pair == "tiny-arith" and measured.host["torch"]
    assert [row.k for row in measured.verify] == list(range(5))
    # topk: 8 (id, prob) pairs of int32 and float32 per drafted token, and its id
    ups = {row.k: row.up for row in measured.bytes}
    assert ups[4] - ups[3] == 8 * 8 + 4
    assert 0.0 < measured.acceptance.rate <= 1.0
    assert load_rtt_table(folder / "rtt_table.csv", 1, 4).rtts_ms == [0, 50, 100, 150, 200]


def test_a_sim_run_takes_k_from_the_table(tmp_path):
    """A table whose K steps at 8, 16 and 30 ms (wifi: 12 +- 3 ms): every nasd cycle after
    the first (a stretch the cloud decodes) drafts the table's K at the RTT estimate it
    records."""
    rows = [TableRow(0.0, 2, 9.0, 2, 9.0, 5.0), TableRow(16.0, 7, 9.0, 7, 9.0, 5.0),
            TableRow(32.0, 11, 9.0, 11, 9.0, 5.0), TableRow(60.0, 0, 5.0, 12, 4.0, 5.0)]
    table = RttTable(tuple(rows), 2, 12)
    write_table(tmp_path / "table.csv", table, ["a test's table"])
    result = cli("run", "--mode", "sim", "--profile", "wifi", "--job", "smoke", "--strategy",
                 "nasd", "--nasd-k-min", "2", "--nasd-k-max", "12", "--max-new-tokens", "40",
                 "--nasd-rtt-table", "table.csv", "--results", "results", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    folder = next((tmp_path / "results").iterdir())
    cycles = pd.DataFrame(read_jsonl(folder / "cycles.jsonl"))
    assert (cycles["strategy"] == "nasd").all() and len(cycles) > 4
    # the first decision: a stretch the cloud decodes (it measures the cloud's plain step
    # and the RTT), riding on the open
    assert cycles.loc[0, "served_by"] == "cloud" and cycles.loc[0, "policy_k"] == 0
    later = cycles.drop(index=0)
    expected = [table.row_at(rtt).spec_k for rtt in later["nasd_rtt_estimate_ms"]]
    assert later["policy_k"].tolist() == expected
    assert set(expected) & {7, 11}, later["nasd_rtt_estimate_ms"].tolist()
    assert str(tmp_path / "table.csv") in (folder / "config.yaml").read_text()


def test_calibrate_measures_the_emulated_devices_and_runs_take_only_their_own(tmp_path):
    """The jetson-h100 job: every pass padded to its roofline bound on the device that runs it,
    so the calibration holds the Jetson's draft token and the H100's decoding step, not this
    host's; it records the emulation, and a run takes it only under the same one."""
    from orchestrator.config.emulation import load_emulation
    from orchestrator.config.loading import load_job, load_profile
    from orchestrator.config.run_spec import RunSpec
    from nasd.latency.emulation import pass_seconds
    result = cli("calibrate", "--job", "jetson-h100", "--k-max", "2", "--cycles", "2",
                 "--repetitions", "1", "--rtt-grid", "0:100:50", "--out", "cal", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    emulation = load_emulation(load_job("jetson-h100"))
    assert emulation.describe(2) in result.stderr     # verifying --k-max drafts
    measured = load_calibration(tmp_path / "cal" / "calibration.yaml")
    assert measured.emulation == emulation.identity
    # padded, never faster than the bound: a draft token onto the prompt's cache, one step
    draft_bound = pass_seconds(emulation.edge_device, emulation.draft_shape, "bfloat16", 1, 1)
    step_bound = pass_seconds(emulation.cloud_device, emulation.target_shape, "bfloat16", 1, 1)
    assert draft_bound <= measured.draft_token_s.mean < 1.5 * draft_bound + 0.002
    assert step_bound <= measured.decode_s.mean < 1.5 * step_bound + 0.002
    table = (tmp_path / "cal" / "rtt_table.csv").read_text()
    assert f"# emulation: {emulation.identity}" in table
    profile = load_profile("lan")
    for name in ("nasd_calibration_path", "nasd_rtt_table_path"):
        path = str(tmp_path / "cal" / ("calibration.yaml" if "calibration" in name
                                       else "rtt_table.csv"))
        spec = RunSpec.build(load_job("jetson-h100", {name: path}), profile, "sim")
        assert (spec.nasd_calibration or spec.nasd_rtt_table) is not None
        with pytest.raises(ConfigError, match="emulating edge jetson-orin-nano.*this host's own"):
            RunSpec.build(load_job("smoke", {name: path, "model_pair": "tiny-arith"}), profile,
                          "sim")
