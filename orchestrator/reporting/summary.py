"""From per-query and per-cycle records to the per-strategy summary, and how it reads.

One row per strategy run, its ``label`` (``cloud-only``, ``fixed-k5``, ...) beside the
structured ``strategy`` and ``k`` it stands for (the label is for grouping and display;
decisions read the structured fields): percentiles
over queries of tokens/s, TTFT and end-to-end latency; the aggregate rate
(all decoded tokens over all decode time, the figure the analytic model
predicts); acceptance (accepted / drafted, and the per-token maximum-likelihood
alpha the model uses); cycle time and RTT percentiles; network share of the
cycle; bytes and cloud compute per output token; task accuracy where the
prompts have answers; under greedy decoding, the share of queries whose
output equals cloud-only's token for token (losslessness); ``lossy``,
whether the strategy's output is not the target model's; and under device
emulation, how many passes were padded to the emulated devices' times, how many
overran them (and the worst), and each stage's real and emulated milliseconds.
Every query-level figure carries its 95 % interval as ``<column>_low`` / ``<column>_high``
(``validation.stats``: a seeded bootstrap over query rows), and so do the cycle RTT
percentiles (a bootstrap that draws whole queries, each with all its cycles).

Reading it (pure functions shared by the terminal and the report): speed
ranks among lossless strategies only, with whether each lead is clear of the
next (the intervals do not overlap) or too close to call; where the model's
prediction lies against the measured interval; the sentences that say so;
the formatted tables, and ``GLOSSARY``, the definition of every column.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from agents.edge import STRATEGY_NAMES
from nasd.analytic import acceptance_from_counts
from nasd.latency.stages import STAGES
from nasd.policy import POLICY_NAMES, NasdController
from orchestrator.results import read_records
from validation.stats import (
    clustered_percentile_interval,
    percentile_interval,
    percentiles,
    prediction_verdict,
    ratio_interval,
    separated,
)
from validation.prediction import speculation_cycles
from validation.task_accuracy import is_correct


def read_jsonl(path: Path) -> pd.DataFrame:
    """Query or cycle records (``structured``: also those written before the label split;
    ``read_records``: a last line cut short left out)."""
    return structured(pd.DataFrame(read_records(path)))


def structured(frame: pd.DataFrame) -> pd.DataFrame:
    """Records or summary rows with ``label`` and the structured ``strategy``.  Folders written
    before the two were split hold the label in ``strategy`` (``fixed-k5``); for them alone the
    name is read back off the label (the only place that does)."""
    if "label" in frame or "strategy" not in frame:
        return frame
    legacy = frame.rename(columns={"strategy": "label"})
    legacy.insert(legacy.columns.get_loc("label") + 1, "strategy", [
        label if label in STRATEGY_NAMES else str(label).rstrip("0123456789")
        for label in legacy["label"]])
    return legacy


def _with_percentiles(row: dict, prefix: str, values, scale: float = 1.0,
                      intervals: bool = False, clusters=None) -> None:
    """``<prefix>_p50/p95/p99``, and with ``intervals`` each one's ``_low``/``_high`` bounds
    (values from several per query: ``clusters`` names each one's query, and the bootstrap
    draws whole queries)."""
    scaled = np.asarray(values, dtype=float) * scale
    for name, value in percentiles(scaled).items():
        row[f"{prefix}_{name}"] = value
        if intervals:
            q = float(name.removeprefix("p"))
            _with_interval(row, f"{prefix}_{name}", percentile_interval(scaled, q)
                           if clusters is None else
                           clustered_percentile_interval(scaled, clusters, q))


def _with_interval(row: dict, column: str, bounds: tuple[float, float]) -> None:
    row[f"{column}_low"], row[f"{column}_high"] = bounds


def _with_ratio(row: dict, column: str, numerators, denominators, scale: float = 1.0) -> None:
    """``column`` = scale * sum(numerators) / sum(denominators) over queries, and its interval."""
    numerators = np.asarray(numerators, dtype=float) * scale
    denominators = np.asarray(denominators, dtype=float)
    total = denominators.sum()
    row[column] = numerators.sum() / total if total > 0 else np.nan
    _with_interval(row, column, ratio_interval(numerators, denominators))


def query_keys(records: pd.DataFrame) -> pd.Series | None:
    """Which query (and repetition) each record belongs to; None where records do not say."""
    if "query_id" not in records:
        return None
    keys = records["query_id"].astype(str)
    return keys + "/" + records["repetition"].astype(str) if "repetition" in records else keys


def interval(row, column: str) -> tuple[float, float]:
    """The (low, high) bounds stored beside ``column`` in a summary row (NaN where none)."""
    return (float(row.get(f"{column}_low", np.nan)), float(row.get(f"{column}_high", np.nan)))


# strategies meant to give the target's output (compared with cloud-only's), and not
LOSSLESS_STRATEGIES = ("cloud-spec", *POLICY_NAMES)
LOSSY_STRATEGIES = ("edge-only",)


def is_lossy(strategy: str, lossless_share: float = np.nan, cutoff_cycles: int = 0) -> bool:
    """Whether a strategy's output is not the target model's: edge-only (the draft's output)
    by design, any strategy that served cycles edge-only (a NASD cutoff), and any whose
    greedy outputs differed from cloud-only's (a lossless share below 1).  ``strategy`` is
    the strategy's name."""
    return (strategy in LOSSY_STRATEGIES or cutoff_cycles > 0
            or (pd.notna(lossless_share) and lossless_share < 1.0))


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
        and q.strategy in LOSSLESS_STRATEGIES else None
        for q in marked.itertuples()]
    return marked


def _share(values: pd.Series) -> float:
    known = values.dropna()
    return float(known.astype(bool).mean()) if len(known) else np.nan


def inter_token_gaps_s(queries: pd.DataFrame) -> np.ndarray:
    """Every gap between two consecutive output tokens of a query, as the edge held them
    (``token_times_s``), all queries together; none from records that lack the times."""
    if "token_times_s" not in queries:
        return np.array([])
    return np.concatenate([np.diff(np.asarray(times, dtype=float))
                           for times in queries["token_times_s"]
                           if isinstance(times, list) and len(times) > 1] or [np.array([])])


def summarize(queries: pd.DataFrame, cycles: pd.DataFrame) -> pd.DataFrame:
    """``queries`` as marked by ``mark_queries``."""
    rows = []
    for label, group in queries.groupby("label", sort=False):
        tokens = group["n_tokens"].sum()
        row = {"label": label, "strategy": group["strategy"].iloc[0], "k": group["k"].iloc[0],
               "queries": len(group), "tokens": int(tokens)}
        _with_ratio(row, "tokens_per_s", (group["n_tokens"] - 1).clip(lower=0), group["decode_s"])
        _with_percentiles(row, "tokens_per_s", group["tokens_per_s"], intervals=True)
        _with_percentiles(row, "ttft_ms", group["ttft_s"], 1000.0, intervals=True)
        _with_percentiles(row, "e2e_s", group["e2e_s"], intervals=True)
        gaps = inter_token_gaps_s(group)
        if len(gaps):
            _with_percentiles(row, "itl_ms", gaps, 1000.0)
        drafted, accepted = group["drafted"].sum(), group["accepted"].sum()
        row["acceptance"] = accepted / drafted if drafted else np.nan
        row["per_token_acceptance"] = (acceptance_from_counts(int(accepted), int(group["rejections"].sum()))
                                       if drafted else np.nan)
        own_cycles = cycles[cycles["label"] == label] if not cycles.empty else cycles
        speculated = speculation_cycles(own_cycles)
        if len(speculated):
            row["accepted_per_cycle"] = speculated["accepted"].mean()
            row["tokens_per_cycle"] = speculated["tokens"].mean()
            _with_percentiles(row, "cycle_ms", speculated["t_cycle"], 1000.0)
            row["bytes_up_per_cycle"] = speculated["bytes_up"].mean()
            row["bytes_down_per_cycle"] = speculated["bytes_down"].mean()
            row["t_draft_ms"] = speculated["t_draft"].mean() * 1000.0
            row["t_verify_ms"] = speculated["t_verify"].mean() * 1000.0
        if len(own_cycles):     # stretches too: a hand-off's first token measures the RTT
            timed = own_cycles.dropna(subset=["rtt_ms"])
            queries_of = query_keys(timed)
            _with_percentiles(row, "rtt_ms", timed["rtt_ms"], intervals=queries_of is not None,
                              clusters=queries_of)
            row["network_ratio"] = own_cycles["t_network"].sum() / own_cycles["t_cycle"].sum()
        if group.get("draft_ahead", pd.Series([0])).max() > 0:
            row["draft_ahead"] = int(group["draft_ahead"].max())
            for field in ("ahead_blocks_kept", "ahead_blocks_dropped", "ahead_drafts_dropped"):
                row[field] = int(group[field].sum())
        if "handoff_tokens" in group and row["strategy"] == NasdController.name:
            row["handoff_share"] = group["handoff_tokens"].sum() / tokens if tokens else np.nan
            row["cutoff_share"] = group["cutoff_tokens"].sum() / tokens if tokens else np.nan
        _with_ratio(row, "bytes_up_per_token", group["bytes_up"], group["n_tokens"])
        _with_ratio(row, "bytes_down_per_token", group["bytes_down"], group["n_tokens"])
        _with_ratio(row, "cloud_ms_per_token", group["cloud_compute_s"], group["n_tokens"], 1000.0)
        row["accuracy"] = _share(group["correct"])
        row["lossless"] = _share(group["lossless"])
        cutoffs = (int(own_cycles["nasd_cutoff"].sum())
                   if len(own_cycles) and "nasd_cutoff" in own_cycles else 0)
        row["lossy"] = is_lossy(row["strategy"], row["lossless"], cutoffs)
        if "emulated_stages" in group and group["emulated_stages"].notna().any():
            row.update(emulation_columns(group["emulated_stages"].dropna()))
        rows.append(row)
    return pd.DataFrame(rows)


def emulation_columns(per_query: pd.Series) -> dict:
    """A strategy's device emulation from its queries' ``emulated_stages``: passes, those
    padded (and their share), those that overran the emulated time, the worst overrun (ms)
    and its stage, how late a pass woke on average (ms), and per stage the mean real,
    emulated and lasted ms of a pass."""
    totals = pd.DataFrame([{"stage": stage, **values} for stages in per_query
                           for stage, values in stages.items()])
    by_stage = totals.groupby("stage")[["passes", "real_s", "emulated_s", "lasted_s"]].sum()
    passes = int(totals["passes"].sum())
    worst = totals.loc[totals["worst_overrun_s"].idxmax()]
    row = {"emulated_passes": passes, "padded_passes": int(totals["padded"].sum()),
           "padded_share": totals["padded"].sum() / passes if passes else np.nan,
           "overrun_passes": int(totals["overruns"].sum()),
           "worst_overrun_ms": 1000.0 * worst["worst_overrun_s"],
           "worst_overrun_stage": worst["stage"] if worst["worst_overrun_s"] > 0 else None,
           "late_ms_per_pass": 1000.0 * totals["late_s"].sum() / passes if passes else np.nan}
    for stage in STAGES:
        if stage in by_stage.index:
            stage_row = by_stage.loc[stage]
            for kind in ("real", "emulated", "lasted"):
                row[f"{stage}_{kind}_ms"] = 1000.0 * stage_row[f"{kind}_s"] / stage_row["passes"]
    return row


def emulation_conclusion(rows: pd.DataFrame) -> str | None:
    """One sentence on a run's (or a sweep's) device emulation: passes, the share padded, and
    how many overran the emulated time, the worst where (``cell`` when ``rows`` has it); None
    without emulation."""
    if "emulated_passes" not in rows or not rows["emulated_passes"].notna().any():
        return None
    rows = rows[rows["emulated_passes"].notna()]
    passes, overran = int(rows["emulated_passes"].sum()), int(rows["overrun_passes"].sum())
    late = (rows["late_ms_per_pass"] * rows["emulated_passes"]).sum() / passes
    text = (f"device emulation: {passes:,} passes, {rows['padded_passes'].sum() / passes:.1%} "
            f"padded to the emulated devices' times (woken {late:.2f} ms late on average); ")
    if not overran:
        return text + "none overran (no pass took longer for real than its emulated time)"
    worst = rows.loc[rows["worst_overrun_ms"].idxmax()]
    where = " ".join(filter(None, [worst.get("cell"), worst["label"]]))
    return (text + f"{overran} overran (their real time above the emulated one, not padded), "
            f"the worst by {worst['worst_overrun_ms']:.2f} ms ({worst['worst_overrun_stage']}, "
            f"{where})")


# ---- reading a summary: ranks, verdicts, formatting ------------------------------------------

def speed_ranks(cell: pd.DataFrame) -> pd.DataFrame:
    """Per row of one run's (or sweep cell's) summary: ``rank_tokens_per_s`` among the lossless
    strategies (1 fastest, ties share the better rank; NaN for lossy ones, never ranked for
    speed) and ``separated_from_next`` (its tokens/s interval does not overlap the next-ranked
    lossless strategy's; None for the last one or where an interval is missing)."""
    if cell.empty:
        return pd.DataFrame(index=cell.index, columns=["rank_tokens_per_s",
                                                       "separated_from_next"], dtype=object)
    lossless_rates = cell["tokens_per_s"].where(~cell["lossy"].astype(bool))
    ranks = lossless_rates.rank(ascending=False, method="min")
    order = ranks.dropna().sort_values(kind="stable").index
    apart = pd.Series([None] * len(cell), index=cell.index, dtype=object)
    for here, below in zip(order, order[1:]):
        apart[here] = separated(interval(cell.loc[here], "tokens_per_s"),
                                interval(cell.loc[below], "tokens_per_s"))
    return pd.DataFrame({"rank_tokens_per_s": ranks, "separated_from_next": apart})


def verdict_of(value) -> bool | None:
    """A stored yes/no verdict (``separated_from_next``, ``measured_reversal_conclusive``) as
    True or False, or None where it is unknown (None, NaN)."""
    return None if value is None or (isinstance(value, float) and np.isnan(value)) \
        else bool(value)


def model_vs_measured(row) -> str | None:
    """Where the model's tokens/s lies against the measured interval (``inside``, ``above``,
    ``below``; None when either is unknown, and for edge-only, whose model is the draft's
    step measured on its own queries: its own rate, nothing to judge)."""
    if row.get("strategy") == "edge-only":
        return None
    return prediction_verdict(float(row.get("predicted_tokens_per_s", np.nan)),
                              interval(row, "tokens_per_s"))


def format_number(value, digits: int = 1) -> str:
    """``value`` with ``digits`` decimals; ``-`` for a missing or infinite one."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def format_interval(bounds: tuple[float, float], digits: int = 1) -> str:
    """``[low, high]``; ``-`` where there is no interval."""
    if any(not np.isfinite(bound) for bound in bounds):
        return "-"
    return f"[{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"


def format_measured(row, column: str, digits: int = 1) -> str:
    """A measured figure with its interval: ``171.0 [162.0, 180.0]`` (the value alone where
    there is no interval)."""
    bounds = interval(row, column)
    text = format_number(row.get(column, np.nan), digits)
    return text if format_interval(bounds) == "-" else f"{text} {format_interval(bounds, digits)}"


def format_crossover(rtt_ms: float) -> str:
    """A predicted crossover RTT; ``never`` for a negative one (slower than cloud-only even at
    zero RTT)."""
    return "never" if pd.notna(rtt_ms) and rtt_ms < 0 else format_number(rtt_ms)


def format_rank(rank: float, lossy: bool) -> str:
    return "lossy" if lossy else format_number(rank, 0)


def speed_conclusion(cell: pd.DataFrame) -> str:
    """One sentence: the fastest lossless strategy and whether its lead over the runner-up
    is clear (the intervals do not overlap) or too close to call."""
    ranked = cell.join(speed_ranks(cell)).dropna(subset=["rank_tokens_per_s"])
    ranked = ranked.sort_values("rank_tokens_per_s", kind="stable")
    if ranked.empty:
        return "no lossless strategy to rank"
    first = ranked.iloc[0]
    text = (f"fastest lossless: {first['label']}, "
            f"{format_measured(first, 'tokens_per_s')} tok/s")
    if len(ranked) == 1:
        return text + " (the only lossless strategy)"
    second = ranked.iloc[1]
    runner_up = (f"the runner-up {second['label']} "
                 f"({format_measured(second, 'tokens_per_s')})")
    verdicts = {True: f"clear of {runner_up}: the intervals do not overlap",
                False: f"too close to call: the intervals of it and {runner_up} overlap",
                None: f"not told apart from {runner_up}: no interval (fewer than 2 queries)"}
    return f"{text}; {verdicts[verdict_of(first['separated_from_next'])]}"


def model_miss(row) -> str:
    """``fixed-k3 (model 115.0, measured 70.2 [66.1, 74.0])``."""
    return (f"{row['label']} (model {format_number(row['predicted_tokens_per_s'])}, "
            f"measured {format_measured(row, 'tokens_per_s')})")


def model_conclusion(cell: pd.DataFrame) -> str | None:
    """One sentence: which strategies' model prediction lies inside the measured interval and
    which outside (with both figures); None when no row has both."""
    verdicts = cell.apply(model_vs_measured, axis=1) if len(cell) else pd.Series(dtype=object)
    inside = cell.loc[verdicts == "inside", "label"].tolist()
    outside = [model_miss(row) for (_, row), verdict in zip(cell.iterrows(), verdicts)
               if verdict in ("above", "below")]
    if not inside and not outside:
        return None
    parts = [f"inside the measured interval for {', '.join(inside)}" if inside else "",
             f"outside it for {', '.join(outside)}" if outside else ""]
    return "the model's tok/s is " + "; ".join(filter(None, parts))


def lossy_conclusion(cell: pd.DataFrame) -> str | None:
    """One sentence naming the lossy strategies (shown, never ranked for speed)."""
    lossy = cell[cell["lossy"].astype(bool)]
    if lossy.empty:
        return None
    named = [f"{row['label']} ({format_number(row['tokens_per_s'])} tok/s, accuracy "
             f"{format_number(row.get('accuracy', np.nan), 2)})" for _, row in lossy.iterrows()]
    return ("lossy, not ranked for speed (output not the target model's): "
            + ", ".join(named))


def conclusions(cell: pd.DataFrame) -> list[str]:
    """What one run's (or sweep cell's) intervals allow one to conclude, as sentences."""
    if cell.empty:
        return ["no strategy finished a query: nothing to conclude"]
    return [line for line in (speed_conclusion(cell), lossy_conclusion(cell),
                              model_conclusion(cell), emulation_conclusion(cell)) if line]


INTERVAL_RULE = ("two measured figures differ conclusively only when their 95 % intervals do "
                 "not overlap (overlap: too close to call with these queries, not equal); a "
                 "prediction agrees with a measurement when it lies inside its interval")

GLOSSARY = {
    "rank": "speed rank among lossless strategies (1 fastest, ties share the better rank); "
            "lossy: the output is not the target model's (edge-only serves the draft's), so "
            "it is shown but never ranked for speed",
    "tok/s": "decoded tokens over decode seconds, all queries and repetitions together: "
             "the sum of (n_tokens - 1) over the sum of (t_last - t_first), so prefill and "
             "the first token (in TTFT) are excluded",
    "[low, high]": "95 % interval over queries and repetitions: a seeded percentile "
                   "bootstrap (2000 resamples of the query rows); none with fewer than 2 "
                   "queries; a P95/P99 interval cannot reach past the largest query measured",
    "model": "the analytic model's tok/s for the same strategy with this run's measured "
             "acceptance (alpha), stage times and bytes (cloud-only's step: the cloud's stream "
             "as it ran, its serving loop included): E[tokens per cycle] over (K drafts + "
             "verify + transfer + RTT) at the profile's RTT, without jitter (a jittered link "
             "reads slower than it) and with loss as its mean resend wait, which a run's "
             "few losses sample thinly",
    "model vs CI": "whether the model's tok/s lies inside, above or below the measured "
                   "interval (- for edge-only: its model is its own measured step)",
    "TTFT p50, TTFT p95": "time from submitting a query to its first output token on the "
                          "edge, ms: median and 95th percentile over queries",
    "e2e p95, e2e p99": "time from submitting a query to its last token, s: 95th and 99th "
                        "percentile over queries",
    "gap p99": "inter-token latency: the 99th percentile of the gaps between consecutive "
               "output tokens as the edge held them, ms, over all queries' gaps (a "
               "speculation cycle's tokens arrive together: gaps of 0 inside it, one long gap "
               "per cycle; summary.csv also has itl_ms_p50 and itl_ms_p95)",
    "accepted / drafted": "accepted draft tokens over drafted ones (summary.csv acceptance): "
                        "drafts after a rejection are never tested, so this is below alpha",
    "alpha": "per-token acceptance, accepted / (accepted + rejections) (summary.csv "
             "per_token_acceptance): the maximum-likelihood chance that one drafted token "
             "passes verification, the a of the analytic model",
    "cycle p50, cycle p99": "wall time of one speculation cycle on the edge (draft, send, verify, "
                      "receive), ms, over cycles; - for strategies without cycles",
    "RTT p50": "a cycle's network round trip on the edge, send to receive minus the cloud's "
               "reported compute, ms, median over cycles, with its 95 % interval from a "
               "bootstrap that draws whole queries (one query's cycles are not independent; "
               "summary.csv also has the P95 and P99 with theirs)",
    "net": "network share of the cycle: network seconds over cycle seconds",
    "B/tok": "data-plane payload bytes sent edge to cloud per output token",
    "cloud ms/tok": "the cloud's compute ms per output token: the cloud's cost",
    "handed off": "share of output tokens the cloud decoded in stretches the policy handed it "
                  "without drafts (nasd's K = 0, past the reversal; lossless)",
    "cut off": "share of output tokens the draft served alone under the edge-only cutoff "
               "(lossy, flagged per cycle as nasd_cutoff)",
    "crossover": "the RTT (ms) above which cloud-only decodes faster than this fixed K, by "
                 "the analytic model; never: slower than cloud-only even at zero RTT (a "
                 "negative crossover, kept as a number in summary.csv)",
    "accuracy": "share of answers right; - where the prompt set has no answers (nothing to "
                "score)",
    "lossless": "share of outputs equal to cloud-only's token for token (greedy decoding; - "
                "under sampling and for strategies not meant to match)",

    "too close to call": INTERVAL_RULE,
}
# the device emulation table's columns (shown only for a run that emulates devices)
EMULATION_GLOSSARY = {
    "passes": "device emulation: forward passes of both models (each one run of a stage), "
              "each padded to the time the emulated device takes for it (its roofline bound)",
    "padded": "share of passes whose real time was below the emulated one (padded to it)",
    "overran": "passes whose real time was already above the emulated one (not padded: the "
               "emulated device would have been faster), the worst by how many ms, its stage",
    "late ms": "mean ms a pass lasted past both its real and its emulated time: the wait's "
               "wake-up came late on a busy host (the emulated time is then exceeded too)",
    "<stage> ms": "mean real / emulated ms of one pass of the stage (edge_prefill, "
                  "draft_token: the draft; cloud_prefill, verify, decode: the target); "
                  "summary.csv also has the ms it lasted (<stage>_lasted_ms)",
}

def _formatted(column: str, digits: int = 1):
    return partial(format_number_of, column=column, digits=digits)


def format_number_of(row, column: str, digits: int = 1) -> str:
    return format_number(row.get(column, np.nan), digits)


def _rank_of(row) -> str:
    return format_rank(row["rank_tokens_per_s"], row["lossy"])


def _crossover_of(row) -> str:
    return format_crossover(row.get("crossover_rtt_ms", np.nan))


# header -> how a summary row shows in it
SPEED_COLUMNS = {
    "rank": _rank_of,
    "tok/s": partial(format_measured, column="tokens_per_s"),
    "model": _formatted("predicted_tokens_per_s"),
    "model vs CI": lambda row: model_vs_measured(row) or "-",
    "TTFT p50": partial(format_measured, column="ttft_ms_p50", digits=0),
    "TTFT p95": partial(format_measured, column="ttft_ms_p95", digits=0),
    "e2e p95": partial(format_measured, column="e2e_s_p95", digits=2),
    "e2e p99": partial(format_measured, column="e2e_s_p99", digits=2),
    "gap p99": _formatted("itl_ms_p99"),
}
SPECULATION_COLUMNS = {
    "accepted / drafted": _formatted("acceptance", 2),
    "alpha": _formatted("per_token_acceptance", 2),
    "cycle p50": _formatted("cycle_ms_p50"), "cycle p99": _formatted("cycle_ms_p99"),
    "RTT p50": partial(format_measured, column="rtt_ms_p50"), "net": _formatted("network_ratio", 2),
    "B/tok": _formatted("bytes_up_per_token", 0),
    "cloud ms/tok": _formatted("cloud_ms_per_token"),
    "handed off": _formatted("handoff_share", 2), "cut off": _formatted("cutoff_share", 2),
    "crossover": _crossover_of, "accuracy": _formatted("accuracy", 2),
    "lossless": _formatted("lossless", 2),
}


def _overran_of(row) -> str:
    overran = row.get("overrun_passes", np.nan)
    if pd.isna(overran) or not overran:
        return format_number(overran, 0)
    return f"{overran:.0f} ({row['worst_overrun_ms']:.2f} ms, {row['worst_overrun_stage']})"


def _stage_ms_of(row, stage: str) -> str:
    real, emulated = row.get(f"{stage}_real_ms", np.nan), row.get(f"{stage}_emulated_ms", np.nan)
    return "-" if pd.isna(real) else f"{real:.2f} / {emulated:.2f}"


EMULATION_COLUMNS = {
    "passes": _formatted("emulated_passes", 0), "padded": _formatted("padded_share", 3),
    "overran": _overran_of, "late ms": _formatted("late_ms_per_pass", 2),
    **{f"{stage} ms": partial(_stage_ms_of, stage=stage) for stage in STAGES},
}


# a table's ``strategy`` column shows the run's label (``fixed-k5``)
SHOWN_AS = {"strategy": "label"}


def formatted_frame(summary: pd.DataFrame, columns: dict, first=("strategy",)) -> pd.DataFrame:
    """One formatted row per summary row: the ``first`` columns as they are (``strategy``
    showing the label), then ``columns`` (header -> formatter of a row).  Speed ranks are
    added where missing."""
    if "rank_tokens_per_s" not in summary:
        summary = summary.join(speed_ranks(summary))
    return pd.DataFrame([{**{name: row[SHOWN_AS.get(name, name)] for name in first},
                          **{header: show(row) for header, show in columns.items()}}
                         for _, row in summary.iterrows()],
                        columns=[*first, *columns])


NAME_COLUMNS = ("cell", "strategy")


UNBOUNDED_WIDTH = 100_000


def print_table(console: Console, frame: pd.DataFrame, title: str,
                text_columns=("strategy",)) -> None:
    """``frame`` as ``rich_table``; on a console too narrow for it, in several tables
    (``title (continued)``), each led by the first column (what a row is: its strategy or
    cell) and as wide as its cells unwrapped, so no column is cut off the right edge (rich
    crops a table whose columns it cannot fold to fit, which it often cannot)."""
    keys = list(frame.columns[:1])
    unbounded = console.options.update(max_width=UNBOUNDED_WIDTH)   # else clamped to width
    parts: list[list[str]] = [[]]
    for column in frame.columns[1:]:
        wider = rich_table(frame[keys + parts[-1] + [column]], title, text_columns)
        if parts[-1] and Measurement.get(console, unbounded, wider).maximum > console.width:
            parts.append([])
        parts[-1].append(column)
    for index, part in enumerate(parts):
        console.print(rich_table(frame[keys + part], title if index == 0
                                 else f"{title} (continued)", text_columns))


def rich_table(frame: pd.DataFrame, title: str, text_columns=("strategy",)) -> Table:
    """``frame`` (already formatted) as a terminal table; ``text_columns`` left-aligned.  On a
    narrow terminal other columns wrap, but a cell or strategy name, and a word of a header,
    is never broken or cut."""
    table = Table(title=escape(title), title_justify="left")
    for column in frame.columns:
        names = frame[column].astype(str) if column in NAME_COLUMNS else pd.Series(dtype=str)
        table.add_column(escape(column), justify="left" if column in text_columns else "right",
                         overflow="fold", min_width=max([*names.str.len(),
                                                         *map(len, str(column).split())]))
    for row in frame.itertuples(index=False):
        table.add_row(*(escape(str(cell)) for cell in row))
    return table


def text_list(title: str, items) -> Table:
    """A titled two-column grid of (term, text) pairs whose text wraps beside its term."""
    grid = Table.grid(padding=(0, 1))
    grid.title, grid.title_justify = escape(title), "left"
    grid.add_column(justify="right", no_wrap=True, style="bold")
    grid.add_column()
    for term, text in items:
        grid.add_row(escape(term), escape(text))
    return grid


def print_summary(summary: pd.DataFrame, console: Console, title: str) -> None:
    """The two summary tables, every column defined, then what the intervals allow."""
    queries = int(summary["queries"].max()) if len(summary) else 0
    counted = "1 query" if queries == 1 else f"{queries} queries"
    print_table(console, formatted_frame(summary, SPEED_COLUMNS),
                f"{title}: speed ({counted} per strategy, 95 % intervals)")
    print_table(console, formatted_frame(summary, SPECULATION_COLUMNS),
                f"{title}: speculation, cost, quality")
    emulated = "emulated_passes" in summary
    if emulated:
        print_table(console, formatted_frame(summary, EMULATION_COLUMNS),
                    f"{title}: device emulation (real / emulated)")
    console.print(text_list("columns", {**GLOSSARY, **(EMULATION_GLOSSARY if emulated else {})
                                        }.items()))
    console.print(text_list("what the intervals allow",
                            [("-", line + ".") for line in conclusions(summary)]))
