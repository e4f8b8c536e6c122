"""What the edge measures: one record per query and one per speculation cycle.

Field names are the column names of ``queries.jsonl``, ``cycles.jsonl`` and
the summary (DESIGN.md section 5).  Times are seconds unless the name says
``_ms``; wall-clock instants are ``time.perf_counter`` readings on the edge.

A record names its strategy run twice: structured, as ``strategy`` (the
strategy's name: ``fixed-k``, ``nasd``, ...) and, on a query, the run's ``k``
(None where the strategy has no fixed one) and ``draft_ahead`` depth; and as
``label`` (``fixed-k5``, ``fixed-k5+ahead1``),
which tells the runs of one job apart and is what tables show.  Code decides
on the structured fields and groups by the label; it never parses a label.

Under device emulation (``agents.backends.emulated``) the times are the emulated ones (each
forward pass padded to the emulated device's time), and the records keep the real ones
beside them: a cycle's ``t_draft_real`` and ``t_verify_real``, a query's
``emulated_stages``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class CycleRecord:
    label: str             # the strategy run (``fixed-k5``): for grouping and display
    strategy: str          # its strategy's name (``fixed-k``, ``nasd``, ...)
    query_id: str
    repetition: int
    cycle: int
    k: int                 # tokens drafted: the policy's K, capped by the token budget (or EOS)
    policy_k: int          # the K the strategy's policy chose for this cycle (0: a stretch)
    accepted: int
    tokens: int            # tokens committed by this cycle (accepted + correction/bonus)
    rtt_ms: float          # send -> receive on the edge, minus the cloud's compute time
    bytes_up: int
    bytes_down: int
    t_draft: float
    t_verify: float        # the cloud's compute time for this cycle, as it reported it (a cloud
    #                        stretch: its stream's wall time there, the serving loop's turns included)
    t_network: float       # cycle time minus drafting and t_verify
    t_cycle: float
    t_start: float         # since the query was submitted
    # "speculation"; or a stretch served without drafts (k = 0): "cloud" (handed off; rtt_ms
    # the link's as the edge's pings measured it when the stretch ended, else its first
    # token's; as a query's cycle 1 it rode on the open, its round trip in the TTFT), "edge"
    # (the edge-only cutoff: unverified, rtt_ms NaN)
    # "dropped" (draft-ahead): a block sent ahead whose premise a verdict broke before the
    # cloud reached it; the cloud dropped it unverified (accepted = tokens = 0, rtt_ms NaN,
    # t_cycle until the edge knew; its bytes_up crossed the link all the same)
    served_by: str = "speculation"
    # draft-ahead: sent before the verdict on the block before it, on the premise that that
    # one is kept whole; its rtt_ms is NaN (send to receive holds its wait behind the blocks
    # before it, t_network keeps it)
    ahead: bool = False
    nasd_cutoff: bool = False  # served_by == "edge": tokens the target never saw
    # the block ends with the draft's EOS (it drafted fewer than K for that): the draft
    # proposed the answer's end, and kept whole it commits no bonus
    draft_eos: bool = False
    nasd_rtt_estimate_ms: float | None = None  # the RTT the controller chose K on (nasd only)
    # device emulation (None without): t_draft and t_verify as the passes took for real, their
    # waits to the emulated device's time left out
    t_draft_real: float | None = None
    t_verify_real: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class QueryRecord:
    label: str
    strategy: str
    k: int | None          # the run's K (fixed-k, cloud-spec); None: none, or chosen per cycle
    query_id: str
    repetition: int
    prompt_tokens: int
    n_tokens: int
    ttft_s: float
    e2e_s: float
    tokens_per_s: float    # (n_tokens - 1) / (t_last - t_first): excludes prefill
    decode_s: float        # t_last - t_first
    draft_ahead: int = 0   # the run's draft-ahead depth (fixed-k, nasd; 0: none)
    cycles: int = 0
    drafted: int = 0
    accepted: int = 0
    rejections: int = 0    # cycles that ended on a rejected draft token
    bytes_up: int = 0
    bytes_down: int = 0
    cloud_compute_s: float = 0.0
    cloud_first_s: float = 0.0  # the cloud's compute for the first token (prefill included)
    cloud_stream_s: float = 0.0  # cloud-only, cloud-spec: the cloud's wall time from its first
    #                              streamed message to its last (its serving loop included)
    edge_compute_s: float = 0.0  # edge-only: the draft model's forwards, all tokens
    edge_first_s: float = 0.0    # edge-only: the forward of the first token (prefill included)
    handoff_tokens: int = 0      # nasd: tokens of stretches the cloud decoded (K = 0)
    cutoff_tokens: int = 0       # nasd: tokens of stretches the draft served alone (lossy)
    ahead_blocks_kept: int = 0     # draft-ahead: blocks sent ahead and verified
    ahead_blocks_dropped: int = 0  # draft-ahead: blocks sent ahead and dropped unverified
    ahead_drafts_dropped: int = 0  # draft-ahead: the drafts of the dropped blocks
    nasd_cutoff_triggered: bool = False
    # the query's cycles in order, under the seed proposal's names (cycles.jsonl has them
    # whole): the policy's K (0: a stretch), the RTT estimate it chose K on (nasd; None for
    # others), accepted / drafted (None for a stretch), network time / cycle time
    nasd_k_per_cycle: list[int] = field(default_factory=list)
    nasd_rtt_per_cycle: list[float | None] = field(default_factory=list)
    acceptance_rate_per_cycle: list[float | None] = field(default_factory=list)
    network_overhead_per_cycle: list[float] = field(default_factory=list)
    finished_by_eos: bool = False
    output_ids: list[int] = field(default_factory=list)
    # when the edge held each output token, in seconds since submit (the first is the TTFT):
    # a cycle's tokens share its verdict's arrival, a stream's each its message's
    token_times_s: list[float] = field(default_factory=list)
    output_text: str = ""
    answer: str | None = None  # the prompt set's expected answer, if any
    # when the link's timeline (re)started for this query, in seconds since its submit (<= 0;
    # None: a static profile): a cycle met the profile at offset t_start - timeline_start_s
    timeline_start_s: float | None = None
    # device emulation (None without): per stage of the latency model (edge_prefill,
    # draft_token, cloud_prefill, verify, decode), the query's passes on both hosts: passes,
    # padded (real below the emulated time), overruns (real above it: never padded, the
    # emulated time exceeded), real_s, emulated_s and lasted_s summed, late_s (lasted past
    # both: woken late on a busy host), worst_overrun_s
    emulated_stages: dict[str, dict] | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def decode_rate(n_tokens: int, t_first: float, t_last: float) -> tuple[float, float]:
    """(tokens/s excluding prefill, decode seconds); NaN rate for fewer than two tokens."""
    decode_s = t_last - t_first
    if n_tokens < 2 or decode_s <= 0:
        return float("nan"), decode_s
    return (n_tokens - 1) / decode_s, decode_s
