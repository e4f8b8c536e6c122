"""From per-query and per-cycle records to the per-strategy summary.

One row per strategy label (``cloud-only``, ``fixed-k5``, ...): percentiles
over queries of tokens/s, TTFT and end-to-end latency; the aggregate rate
(all decoded tokens over all decode time, the figure the analytic model
predicts); acceptance; cycle time and RTT percentiles; network share of the
cycle; bytes and cloud compute per output token; task accuracy where the
prompts have answers; and, under greedy decoding, the share of queries whose
output equals cloud-only's token for token (losslessness).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from nasd.analytic import acceptance_from_counts
from validation.accuracy import is_correct
from validation.stats import percentiles


def read_jsonl(path: Path) -> pd.DataFrame:
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame()
    return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines() if line])


def _with_percentiles(row: dict, prefix: str, values, scale: float = 1.0) -> None:
    for name, value in percentiles(np.asarray(values, dtype=float) * scale).items():
        row[f"{prefix}_{name}"] = value


LOSSLESS_STRATEGIES = ("cloud-spec", "fixed-k")


def mark_queries(queries: pd.DataFrame, prompt_kinds: dict[str, str], greedy: bool) -> pd.DataFrame:
    """Add ``correct`` (None without an expected answer) and ``lossless`` (None where
    there is nothing to compare: sampling, edge-only, or no cloud-only reference)."""
    marked = queries.copy()
    marked["correct"] = [
        None if not isinstance(q.answer, str) else
        is_correct(prompt_kinds.get(q.query_id, "free"), q.answer, q.output_text)
        for q in marked.itertuples()]
    reference = {(q.query_id, q.repetition): q.output_ids
                 for q in marked.itertuples() if q.strategy == "cloud-only"}
    marked["lossless"] = [
        reference[(q.query_id, q.repetition)] == q.output_ids
        if greedy and (q.query_id, q.repetition) in reference
        and q.strategy.startswith(LOSSLESS_STRATEGIES) else None
        for q in marked.itertuples()]
    return marked


def _share(values: pd.Series) -> float:
    known = values.dropna()
    return float(known.astype(bool).mean()) if len(known) else np.nan


def summarize(queries: pd.DataFrame, cycles: pd.DataFrame) -> pd.DataFrame:
    """``queries`` as marked by ``mark_queries``."""
    rows = []
    for label, group in queries.groupby("strategy", sort=False):
        tokens = group["n_tokens"].sum()
        decoded = (group["n_tokens"] - 1).clip(lower=0).sum()
        row = {
            "strategy": label,
            "k": group["k"].iloc[0],
            "queries": len(group),
            "tokens": int(tokens),
            "tokens_per_s": decoded / group["decode_s"].sum() if group["decode_s"].sum() > 0
            else np.nan,
        }
        _with_percentiles(row, "tokens_per_s", group["tokens_per_s"])
        _with_percentiles(row, "ttft_ms", group["ttft_s"], 1000.0)
        _with_percentiles(row, "e2e_s", group["e2e_s"])
        drafted, accepted = group["drafted"].sum(), group["accepted"].sum()
        row["acceptance"] = accepted / drafted if drafted else np.nan
        row["per_token_acceptance"] = (acceptance_from_counts(int(accepted), int(group["rejections"].sum()))
                                       if drafted else np.nan)
        own_cycles = cycles[cycles["strategy"] == label] if not cycles.empty else cycles
        if len(own_cycles):
            row["accepted_per_cycle"] = own_cycles["accepted"].mean()
            row["tokens_per_cycle"] = own_cycles["tokens"].mean()
            _with_percentiles(row, "cycle_ms", own_cycles["t_cycle"], 1000.0)
            _with_percentiles(row, "rtt_ms", own_cycles["rtt_ms"])
            row["network_ratio"] = own_cycles["t_network"].sum() / own_cycles["t_cycle"].sum()
            row["bytes_up_per_cycle"] = own_cycles["bytes_up"].mean()
            row["bytes_down_per_cycle"] = own_cycles["bytes_down"].mean()
            row["t_draft_ms"] = own_cycles["t_draft"].mean() * 1000.0
            row["t_verify_ms"] = own_cycles["t_verify"].mean() * 1000.0
        row["bytes_up_per_token"] = group["bytes_up"].sum() / tokens if tokens else np.nan
        row["bytes_down_per_token"] = group["bytes_down"].sum() / tokens if tokens else np.nan
        row["cloud_ms_per_token"] = 1000.0 * group["cloud_compute_s"].sum() / tokens if tokens \
            else np.nan
        row["accuracy"] = _share(group["correct"])
        row["lossless"] = _share(group["lossless"])
        rows.append(row)
    return pd.DataFrame(rows)


def format_number(value, digits: int = 1) -> str:
    """``value`` with ``digits`` decimals; ``-`` for a missing or infinite one."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def print_summary(summary: pd.DataFrame, console: Console, title: str) -> None:
    table = Table(title=title, title_justify="left")
    columns = [
        ("strategy", "strategy", None), ("tok/s", "tokens_per_s", 1),
        ("model", "predicted_tokens_per_s", 1), ("TTFT p50", "ttft_ms_p50", 0),
        ("TTFT p95", "ttft_ms_p95", 0), ("accept", "acceptance", 2),
        ("cycle p50", "cycle_ms_p50", 1), ("cycle p99", "cycle_ms_p99", 1),
        ("RTT p50", "rtt_ms_p50", 1), ("net", "network_ratio", 2),
        ("B/tok", "bytes_up_per_token", 0), ("cloud/tok", "cloud_ms_per_token", 1),
        ("crossover", "crossover_rtt_ms", 1), ("accuracy", "accuracy", 2),
        ("lossless", "lossless", 2),
    ]
    present = [c for c in columns if c[1] in summary.columns]
    for header, _, _ in present:
        table.add_column(header, justify="left" if header == "strategy" else "right")
    for _, row in summary.iterrows():
        table.add_row(*[str(row[key]) if digits is None else format_number(row[key], digits)
                        for _, key, digits in present])
    console.print(table)
    console.print("tok/s: decoded tokens over decode time (prefill excluded); model: the analytic "
                  "prediction; times in ms; B/tok: bytes sent up per output token; "
                  "cloud/tok: cloud compute ms per output token; crossover: the RTT (ms) above which "
                  "cloud-only beats this fixed K, by the analytic model; accuracy: share of answers "
                  "right; lossless: share of outputs equal to cloud-only's (greedy)")
