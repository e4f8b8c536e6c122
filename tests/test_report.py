"""``orchestrator report``: the CSVs, the figures and the self-contained HTML page.

The sweep is ``tests/fixtures/sweep-small.yaml`` in sim mode as conftest's
``resumed_sweep`` runs it through the real CLI (shared with the sweep tests);
here it is reported again with ``orchestrator report``.  A single smoke run
folder and a folder that is neither are reported too.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from orchestrator.reporting.analysis import leaderboard, load_results, reversal
from orchestrator.reporting.plots import PLOTS
from orchestrator.reporting.report import (
    HOW_TO_READ,
    KEY_LEGEND,
    PLOTS_FOLDER,
    REPORT,
    REVERSAL_LEGEND,
    key_frame,
    reversal_frame,
)

ROOT = Path(__file__).resolve().parent.parent


def orchestrator(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def sweep_report(resumed_sweep) -> tuple[Path, subprocess.CompletedProcess]:
    reported = orchestrator("report", str(resumed_sweep.path))
    assert reported.returncode == 0, reported.stdout + reported.stderr
    return resumed_sweep.path, reported


@pytest.fixture(scope="module")
def run_report(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("run")
    ran = orchestrator("run", "--mode", "sim", "--job", "smoke", "--results", str(root))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    (folder,) = root.iterdir()
    return folder, orchestrator("report", str(folder))


def cell_names(path: Path) -> list[str]:
    return sorted(p.name for p in (path / "cells").iterdir())


def test_the_key_table_names_every_cell_and_the_reversal(sweep_report):
    path, reported = sweep_report
    assert len(cell_names(path)) >= 4
    for cell in cell_names(path):
        assert cell in reported.stdout
    assert "performance reversal" in reported.stdout
    assert "skipped:" not in reported.stdout


def test_every_plot_is_a_readable_png(sweep_report):
    path, _ = sweep_report
    for plot in PLOTS:
        image = matplotlib.image.imread(path / PLOTS_FOLDER / plot.name)
        height, width = image.shape[:2]
        assert height >= 300 and width >= 500, (plot.name, image.shape)
        assert image[..., :3].std() > 0.05, f"{plot.name} is blank"


def test_the_page_embeds_every_plot_and_fetches_nothing(sweep_report):
    path, _ = sweep_report
    page = (path / REPORT).read_text()
    for plot in PLOTS:
        data = base64.b64encode((path / PLOTS_FOLDER / plot.name).read_bytes()).decode()
        assert f'src="data:image/png;base64,{data}"' in page, plot.name
        assert html.escape(plot.caption) in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?://""", page, re.IGNORECASE)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    for cell in cell_names(path):
        assert cell in page
    for section in ("Per cell", "Performance reversal", "Full leaderboard",
                    "How to read this page"):
        assert f"{section}</h2>" in page
    assert "synthetic" in page and "sim" in page


def test_leaderboard_ranks_the_lossless_strategies_of_each_cell_by_tokens_per_s(sweep_report):
    path, _ = sweep_report
    board = pd.read_csv(path / "leaderboard.csv")
    assert sorted(board["cell"].unique()) == cell_names(path)
    for cell, rows in board.groupby("cell"):
        assert set(rows["label"]) == {"cloud-only", "cloud-spec", "edge-only", "fixed-k3",
                                      "fixed-k5", "nasd"}
        assert set(rows["strategy"]) == {"cloud-only", "cloud-spec", "edge-only", "fixed-k",
                                         "nasd"}
        lossy = rows[rows["lossy"]]
        assert lossy["label"].tolist() == ["edge-only"]             # the draft's output
        assert lossy["rank_tokens_per_s"].isna().all()              # shown, never ranked
        lossless = rows[~rows["lossy"]].sort_values("tokens_per_s", ascending=False)
        assert lossless["rank_tokens_per_s"].tolist() == list(range(1, len(lossless) + 1)), cell
        # each interval holds its figure, and "separated" is exactly "the intervals do not
        # overlap" with the next-ranked lossless strategy
        for column in ("tokens_per_s", "ttft_ms_p50", "ttft_ms_p95", "e2e_s_p95", "e2e_s_p99",
                       "bytes_up_per_token"):
            assert (rows[f"{column}_low"] <= rows[column] + 1e-9).all(), (cell, column)
            assert (rows[column] <= rows[f"{column}_high"] + 1e-9).all(), (cell, column)
        for (_, first), (_, second) in zip(lossless.iloc[:-1].iterrows(),
                                           lossless.iloc[1:].iterrows()):
            apart = first["tokens_per_s_low"] > second["tokens_per_s_high"]
            assert first["separated_from_next"] == apart, (cell, first["label"])
        assert set(rows["model_vs_measured"].dropna()) <= {"inside", "above", "below"}


def test_no_lossy_strategy_is_called_fastest(sweep_report):
    path, reported = sweep_report
    board = leaderboard(load_results(path))
    key = key_frame(board)
    assert "edge-only" not in set(key["fastest lossless"])
    assert key["lossy (unranked)"].str.startswith("edge-only ").all()
    assert "fastest lossless" in reported.stdout
    page = (path / REPORT).read_text()
    assert "What the intervals allow</h2>" in page
    assert "lossy, shown but never ranked for speed: edge-only" in page


def test_every_column_of_the_report_tables_is_defined(sweep_report):
    path, reported = sweep_report
    board = leaderboard(load_results(path))
    key_terms = set(KEY_LEGEND) | set(REVERSAL_LEGEND)
    assert set(key_frame(board).columns) <= key_terms
    reversal_frame_columns = set(reversal_frame(reversal(board)).columns)
    assert reversal_frame_columns - key_terms <= {"bandwidth", "jitter ms", "loss %", "codec",
                                                  "strategy", "note"}
    for term in key_terms:
        assert term in reported.stdout, term
    page = (path / REPORT).read_text()
    for term in HOW_TO_READ:
        assert f"<dt>{html.escape(term)}</dt>" in page


def test_the_reversal_says_never_for_a_negative_prediction_and_keeps_the_number():
    reversals = pd.DataFrame([{"bandwidth_mbps": 10.0, "jitter_ms": 0.0, "loss_pct": 0.0,
                               "codec": "ids", "label": "fixed-k5", "strategy": "fixed-k",
                               "k": 5, "rtts": "0 40",
                               "measured_reversal_rtt_ms": float("nan"),
                               "measured_reversal_conclusive": True,
                               "predicted_reversal_rtt_ms": -153.0, "note": "slower"}])
    shown = reversal_frame(reversals).iloc[0]
    assert shown["predicted ms"] == "never" and shown["measured ms"] == "-"
    assert shown["conclusive"] == "yes"
    assert reversals["predicted_reversal_rtt_ms"].iloc[0] == -153.0


def test_the_reversal_table_has_a_row_for_each_adaptive_policy():
    """nasd hands stretches to the cloud past the reversal: it keeps within a token/s of
    cloud-only where fixed K falls far behind, so no crossing of its is conclusive."""
    rows = []
    for rtt, rates in ((10, {"cloud-only": 33, "fixed-k3": 40, "nasd": 40}),
                       (100, {"cloud-only": 33, "fixed-k3": 14, "nasd": 32.5}),
                       (200, {"cloud-only": 33, "fixed-k3": 9, "nasd": 32.8})):
        for label, rate in rates.items():
            rows.append({"bandwidth_mbps": 100.0, "jitter_ms": 0.0, "loss_pct": 0.0,
                         "codec": "ids", "rtt_ms": rtt, "static": True, "label": label,
                         "strategy": "fixed-k" if label == "fixed-k3" else label,
                         "k": 3 if label == "fixed-k3" else None,
                         "tokens_per_s": rate, "tokens_per_s_low": rate - 1,
                         "tokens_per_s_high": rate + 1,
                         "crossover_rtt_ms": 28.0 if label == "fixed-k3" else float("nan")})
    found = reversal(pd.DataFrame(rows)).set_index("label")
    assert set(found.index) == {"fixed-k3", "best fixed-K", "nasd"}
    assert 10 < found.loc["fixed-k3", "measured_reversal_rtt_ms"] < 100
    assert found.loc["fixed-k3", "measured_reversal_conclusive"]
    assert found.loc["nasd", "strategy"] == "nasd"
    assert not found.loc["nasd", "measured_reversal_conclusive"]
    assert "overlap" in found.loc["nasd", "note"]


def test_ianvs_rank_reads_back_with_its_columns(sweep_report):
    path, _ = sweep_report
    rank = pd.read_csv(path / "rank" / "all_rank.csv", sep=" ")
    columns = list(rank.columns)
    assert columns[:3] == ["rank", "algorithm", "throughput"] and columns[-2:] == ["time", "url"]
    assert {"throughput_low", "throughput_high", "lossy"} <= set(columns)
    assert columns.index("paradigm") > columns.index("throughput")
    assert (rank["paradigm"] == "jointinference").all()
    assert len(rank) == len(pd.read_csv(path / "leaderboard.csv"))
    assert set(rank["rank"].dropna()) == {1, 2, 3, 4, 5}
    assert rank.loc[rank["rank"].isna(), "algorithm"].unique().tolist() == ["edge-only"]
    assert rank.loc[rank["algorithm"] == "edge-only", "lossy"].all()


def test_a_single_run_reports_with_the_sweep_plots_skipped(run_report):
    folder, reported = run_report
    assert reported.returncode == 0, reported.stdout + reported.stderr
    assert folder.name in reported.stdout
    page = (folder / REPORT).read_text()
    skipped = [plot.name for plot in PLOTS if plot.name != "k_per_cycle.png"]
    for name in skipped:
        assert f"plot {name} skipped: " in reported.stdout
        assert f"<b>{name}</b>: " in page
        assert not (folder / PLOTS_FOLDER / name).exists()
    assert "two or more RTTs" in reported.stdout
    assert page.count("data:image/png;base64,") == 1
    assert (folder / PLOTS_FOLDER / "k_per_cycle.png").is_file()


def test_a_folder_that_is_neither_exits_2_with_one_error_line(tmp_path):
    reported = orchestrator("report", str(tmp_path))
    assert reported.returncode == 2
    lines = (reported.stdout + reported.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "neither a sweep folder" in lines[0]
    assert not (tmp_path / REPORT).exists()


def test_a_run_summarized_before_intervals_and_labels_still_reports(run_report, tmp_path):
    """Written before intervals, ``lossy`` and the label split (``strategy`` held the label)."""
    folder, _ = run_report
    old = tmp_path / folder.name
    shutil.copytree(folder, old)
    unsplit = lambda frame: frame.drop(columns="strategy").rename(  # noqa: E731
        columns={"label": "strategy"})
    summary = unsplit(pd.read_csv(old / "summary.csv"))
    summary.drop(columns=[c for c in summary.columns
                          if c.endswith(("_low", "_high")) or c == "lossy"]).to_csv(
        old / "summary.csv", index=False)
    for records in ("queries.jsonl", "cycles.jsonl"):
        rows = [json.loads(line) for line in (old / records).read_text().splitlines()]
        (old / records).write_text("".join(json.dumps(
            {("strategy" if name == "label" else name): value for name, value in row.items()
             if name != "strategy"}) + "\n" for row in rows))
    reported = orchestrator("report", str(old))
    assert reported.returncode == 0, reported.stdout + reported.stderr
    board = pd.read_csv(old / "leaderboard.csv").set_index("label")
    assert board["strategy"].to_dict() == {"cloud-spec": "cloud-spec", "fixed-k5": "fixed-k",
                                           "cloud-only": "cloud-only", "edge-only": "edge-only"}
    assert board["lossy"].to_dict() == {"cloud-spec": False, "fixed-k5": False,
                                        "cloud-only": False, "edge-only": True}
    assert board["separated_from_next"].isna().all()
    assert "no interval (or no runner-up) to tell in 1" in reported.stdout
