"""The per-strategy summary and how it reads: intervals, lossy flags, speed ranks, verdicts,
the terminal tables and their legend.  Records are built by hand (no agents), so every
expected figure is known."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from orchestrator.reporting.summary import (
    GLOSSARY,
    SPECULATION_COLUMNS,
    SPEED_COLUMNS,
    conclusions,
    format_crossover,
    is_lossy,
    mark_queries,
    print_summary,
    speed_ranks,
    structured,
    summarize,
)

# per strategy: decode seconds per query (each query decodes 1 + 20 tokens), TTFT seconds
RATES = {"cloud-only": ([0.60, 0.62, 0.61, 0.63], 0.10),
         "cloud-spec": ([0.45, 0.47, 0.46, 0.44], 0.11),
         "fixed-k5": ([0.452, 0.462, 0.472, 0.442], 0.09),
         "edge-only": ([0.08, 0.09, 0.08, 0.09], 0.05)}
TOKENS = 21


def query(label: str, number: int, decode_s: float, ttft_s: float, answer=None) -> dict:
    strategy = "fixed-k" if label == "fixed-k5" else label
    output = list(range(TOKENS)) if strategy != "edge-only" else [7] * TOKENS
    # fixed-k5: 3 tokens per verdict (gaps of 0, then one per cycle); the others one by one
    step = decode_s / (TOKENS - 1)
    times = ([ttft_s + 3 * step * ((i + 2) // 3) for i in range(TOKENS)] if label == "fixed-k5"
             else [ttft_s + step * i for i in range(TOKENS)])
    return {"label": label, "strategy": strategy, "k": 5 if strategy != "cloud-only" else None,
            "query_id": str(number), "repetition": 0, "n_tokens": TOKENS, "ttft_s": ttft_s,
            "e2e_s": ttft_s + decode_s, "decode_s": decode_s,
            "tokens_per_s": (TOKENS - 1) / decode_s, "drafted": 30 if "spec" in strategy or
            "fixed" in strategy else 0, "accepted": 12 if "fixed" in strategy or "spec" in
            strategy else 0, "rejections": 6, "bytes_up": 1000, "bytes_down": 400,
            "cloud_compute_s": 0.3, "output_ids": output, "output_text": " 13.",
            "answer": answer, "token_times_s": times}


def cycle(number: int) -> dict:
    return {"label": "fixed-k5", "strategy": "fixed-k", "query_id": str(number), "k": 5,
            "accepted": 2, "tokens": 3,
            "t_cycle": 0.07, "rtt_ms": 20.0, "t_network": 0.02, "bytes_up": 50,
            "bytes_down": 20, "t_draft": 0.02, "t_verify": 0.03, "nasd_cutoff": False}


def records(answer=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    queries = pd.DataFrame([query(strategy, number, decode, ttft, answer)
                            for strategy, (decodes, ttft) in RATES.items()
                            for number, decode in enumerate(decodes)])
    return (mark_queries(queries, {}, greedy=True),
            pd.DataFrame([cycle(number) for number in range(4) for _ in range(7)]))


@pytest.fixture(scope="module")
def summary() -> pd.DataFrame:
    frame = summarize(*records())
    frame["predicted_tokens_per_s"] = [32.5, 43.5, 100.0, 300.0]
    frame["crossover_rtt_ms"] = [math.nan, math.nan, -153.0, math.nan]
    return frame.set_index("label", drop=False)


def test_the_aggregate_rate_has_a_seeded_interval_around_it(summary):
    decodes = RATES["cloud-only"][0]
    row = summary.loc["cloud-only"]
    assert row["tokens_per_s"] == pytest.approx(4 * (TOKENS - 1) / sum(decodes))
    assert (TOKENS - 1) / max(decodes) <= row["tokens_per_s_low"] < row["tokens_per_s"]
    assert row["tokens_per_s"] < row["tokens_per_s_high"] <= (TOKENS - 1) / min(decodes)
    for column in ("ttft_ms_p50", "ttft_ms_p95", "e2e_s_p95", "e2e_s_p99", "bytes_up_per_token",
                   "cloud_ms_per_token"):
        assert row[f"{column}_low"] <= row[column] <= row[f"{column}_high"], column
    again = summarize(*records()).set_index("label")
    pd.testing.assert_series_equal(again["tokens_per_s_low"],
                                   summary.set_index("label")["tokens_per_s_low"])


def test_only_a_strategy_whose_output_is_not_the_targets_is_lossy(summary):
    assert summary["lossy"].to_dict() == {"cloud-only": False, "cloud-spec": False,
                                          "fixed-k5": False, "edge-only": True}
    assert is_lossy("fixed-k", lossless_share=0.5)          # greedy output differed
    assert is_lossy("nasd", cutoff_cycles=2)                 # served cycles edge-only
    assert not is_lossy("fixed-k", lossless_share=math.nan)  # sampling: nothing to compare


def test_rows_carry_the_structured_strategy_beside_the_label(summary):
    assert summary[["strategy", "k"]].loc["fixed-k5"].tolist() == ["fixed-k", 5]
    assert summary.loc["cloud-only", "strategy"] == "cloud-only"
    assert math.isnan(summary.loc["cloud-only", "k"])


def test_every_k_policy_is_held_to_cloud_only_output():
    queries = pd.DataFrame([query(label, 0, 0.5, 0.1) for label in ("cloud-only", "fixed-k5")]
                           + [{**query("fixed-k5", 0, 0.5, 0.1), "label": name,
                               "strategy": name, "k": None}
                              for name in ("nasd", "hf-heuristic", "bandit")])
    queries.at[4, "output_ids"] = [1, 2, 3]     # bandit's output differs
    marked = mark_queries(queries, {}, greedy=True).set_index("label")["lossless"]
    assert marked.to_dict() == {"cloud-only": None, "fixed-k5": True, "nasd": True,
                                "hf-heuristic": True, "bandit": False}


def test_records_written_before_the_label_split_read_as_structured():
    legacy = pd.DataFrame({"strategy": ["cloud-only", "fixed-k15", "cloud-spec", "edge-only"],
                           "k": [None, 15, 5, None]})
    read = structured(legacy)
    assert read["label"].tolist() == ["cloud-only", "fixed-k15", "cloud-spec", "edge-only"]
    assert read["strategy"].tolist() == ["cloud-only", "fixed-k", "cloud-spec", "edge-only"]
    assert list(read.columns) == ["label", "strategy", "k"]
    assert structured(read) is read


def test_speed_ranks_leave_lossy_strategies_out_and_say_when_a_lead_is_clear(summary):
    ranks = speed_ranks(summary)
    assert math.isnan(ranks.loc["edge-only", "rank_tokens_per_s"])
    assert ranks["rank_tokens_per_s"].dropna().to_dict() == {"cloud-spec": 1, "fixed-k5": 2,
                                                             "cloud-only": 3}
    # cloud-spec and fixed-k5 decode within 1 % of each other: too close to call;
    # fixed-k5 is far ahead of cloud-only
    assert ranks.loc["cloud-spec", "separated_from_next"] is False
    assert ranks.loc["fixed-k5", "separated_from_next"] is True
    assert ranks.loc["cloud-only", "separated_from_next"] is None


def test_conclusions_name_the_close_call_the_lossy_strategy_and_the_model_misses(summary):
    lines = conclusions(summary)
    assert lines[0].startswith("fastest lossless: cloud-spec") and "too close to call" in lines[0]
    assert "fixed-k5" in lines[0]
    assert lines[1].startswith("lossy, not ranked for speed") and "edge-only" in lines[1]
    assert "inside the measured interval for cloud-only, cloud-spec;" in lines[2]
    assert "fixed-k5 (model 100.0" in lines[2]
    assert "edge-only" not in lines[2]      # its model is its own measured step: not judged


def printed(summary: pd.DataFrame, width: int = 160) -> str:
    out = io.StringIO()
    print_summary(summary.reset_index(drop=True), Console(file=out, width=width), "lan (sim)")
    return out.getvalue()


def test_a_narrow_terminal_gets_every_column_in_continued_tables(summary):
    """rich crops a table it cannot fold to the width: 80 columns lost six of the summary's
    columns without a word; now the columns go on in tables led by the strategy."""
    text = printed(summary, width=80)
    assert max(map(len, text.splitlines())) <= 80
    headers = {line for line in text.splitlines() if line.startswith("┃")}
    for header in [*SPEED_COLUMNS, *SPECULATION_COLUMNS]:
        assert any(header in line for line in headers), header
    assert "(continued)" in text
    tables = text.count("┏")
    assert tables > 2 and all(text.count(f"│ {label} ") == tables for label in RATES)


def test_the_terminal_summary_defines_every_column_and_shows_never_and_dashes(summary):
    text = printed(summary)
    defined = {part for term in GLOSSARY for part in term.split(", ")}
    for header in [*SPEED_COLUMNS, *SPECULATION_COLUMNS]:
        assert header in defined, header
        assert header in text, header
    for term in GLOSSARY:
        assert term in text, term
    fixed = next(line for line in text.splitlines() if "fixed-k5" in line and "never" in line)
    assert "-153" not in fixed
    assert "lossy" in next(line for line in text.splitlines() if line.startswith("│ edge-only"))
    assert format_crossover(-153.0) == "never" and format_crossover(12.34) == "12.3"
    assert summary.loc["fixed-k5", "crossover_rtt_ms"] == -153.0     # the number stays


def test_accuracy_without_answers_is_nothing_to_score_not_zero(summary):
    assert summary["accuracy"].isna().all()
    speculation = [line for line in printed(summary).splitlines()
                   if line.startswith("│ edge-only")][-1]          # the second table's row
    assert speculation.rstrip(" │").endswith("-")     # accuracy, lossless: '-' not 0.00
    scored = summarize(*records(answer="13")).set_index("label")
    assert (scored["accuracy"] == 1.0).all()
    wrong = summarize(*records(answer="12")).set_index("label")
    assert (wrong["accuracy"] == 0.0).all()


def test_a_single_query_has_no_interval_and_reads_as_a_bare_number():
    queries, cycles = records()
    one = summarize(queries.groupby("label").head(1), cycles).set_index("label")
    assert np.isnan(one["tokens_per_s_low"]).all() and np.isnan(one["tokens_per_s_high"]).all()
    assert speed_ranks(one)["separated_from_next"].isna().all()


def test_a_run_without_queries_prints_empty_tables_and_the_legend():
    text = printed(summarize(pd.DataFrame(columns=["label", "strategy"]), pd.DataFrame()))
    assert "nothing to conclude" in text and "accepted / drafted" in text


def test_inter_token_gaps_show_a_cycles_burst_and_its_wait(summary):
    """One by one, every gap is the decode time's share of a token; in cycles of three, two
    gaps in three are 0 and the third is three tokens' worth."""
    cloud = summary.loc["cloud-only"]
    steps = [decode / (TOKENS - 1) for decode in RATES["cloud-only"][0]]
    assert min(steps) * 1000 <= cloud["itl_ms_p50"] <= cloud["itl_ms_p99"] <= max(steps) * 1000 + 1e-9
    fixed = summary.loc["fixed-k5"]
    steps = [decode / (TOKENS - 1) for decode in RATES["fixed-k5"][0]]
    assert fixed["itl_ms_p50"] == 0.0
    assert 3 * min(steps) * 1000 <= fixed["itl_ms_p99"] <= 3 * max(steps) * 1000 + 1e-9


def test_records_without_token_times_leave_the_gaps_out():
    queries, cycles = records()
    frame = summarize(queries.drop(columns="token_times_s"), cycles)
    assert "itl_ms_p99" not in frame


def test_cycle_rtt_percentiles_have_intervals_that_draw_whole_queries():
    queries, cycles = records()
    delayed = (cycles["query_id"] == "3") & (cycles.groupby("query_id").cumcount() < 2)
    cycles.loc[delayed, "rtt_ms"] = 270.0          # one query met a loss: two cycles wait an RTO
    row = summarize(queries, cycles).set_index("label").loc["fixed-k5"]
    assert row["rtt_ms_p50"] == 20.0 and row["rtt_ms_p95"] > 100.0
    # without that query a draw's P95 is the link's 20 ms; with it twice, the RTO's 270 ms
    assert (row["rtt_ms_p95_low"], row["rtt_ms_p95_high"]) == (20.0, 270.0)
    assert row["rtt_ms_p50_low"] == row["rtt_ms_p50_high"] == 20.0
