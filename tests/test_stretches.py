"""The stretches NASD serves without drafting, through the real edge and cloud agents in
one process (``tests.inproc_agents``): a stretch handed to the cloud
(K = 0: on the ``open`` before the first draft, or mid-query with ``decode``) keeps the
output the target's; a stretch the draft serves alone (the edge-only cutoff) reaches the
cloud before it verifies anything after it, so the target continues from the very tokens
the edge served.  A scripted policy (a real ``KPolicy``) fixes the schedule; which steps
NASD itself chooses is tests/test_policy.py's."""

from __future__ import annotations

import numpy as np
import pytest

from agents.backends import build_models
from agents.backends.base import TokenSequence
from agents.backends.synthetic import SyntheticPairConfig
from agents.edge import QueryRequest
from agents.sampling import SamplingConfig
from agents.speculative import decode_plainly
from nasd.estimator import Stretch
from nasd.policy import HAND_OFF, KPolicy
from tests.inproc_agents import edge_and_cloud

PAIR = SyntheticPairConfig(acceptance=0.7, latency={
    side: {"base_ms": 0.0, "per_token_ms": 0.0}
    for side in ("edge_draft", "cloud_draft", "cloud_target")})
GREEDY = SamplingConfig(decoding="greedy")
PROMPT = "stretches"
MAX_NEW_TOKENS = 60


class Scripted(KPolicy):
    """The K of each cycle from a list (a ``Stretch`` for HAND_OFF); K = 2 once it runs out."""

    name = "nasd"

    def __init__(self, steps: list[int | Stretch]) -> None:
        self.steps, self.observed = list(steps), []

    def next_k(self) -> int:
        step = self.steps.pop(0) if self.steps else 2
        self.stretch = step if isinstance(step, Stretch) else None
        return HAND_OFF if self.stretch else step

    def observe(self, cycle) -> None:
        self.observed.append(cycle)


def run(policy: KPolicy, codec: str = "ids", confidence_floor: float = 0.0):
    with edge_and_cloud(PAIR, lambda *_, **__: policy) as (edge, _):
        return edge.run_query(QueryRequest(strategy="nasd", label="nasd", query_id="q",
                                           prompt=PROMPT, max_new_tokens=MAX_NEW_TOKENS,
                                           sampling=GREEDY, codec=codec,
                                           confidence_floor=confidence_floor))


def continuation(model, context: list[int], n: int) -> list[int]:
    """``model``'s greedy continuation of ``context``, ``n`` tokens (fewer after EOS)."""
    sequence = TokenSequence(model, context, GREEDY)
    return list(decode_plainly(sequence, n, "greedy", np.random.default_rng(0), PAIR.eos_id))


def prompt_ids() -> list[int]:
    return build_models(PAIR, "edge").tokenizer.encode(PROMPT)


@pytest.mark.parametrize("codec", ["ids", "q-scalar"])
def test_cloud_stretches_on_the_open_and_mid_query_keep_the_target_output(codec):
    stretch = Stretch("cloud", 7, 1.0)
    policy = Scripted([stretch, 3, stretch, 1, 4, stretch])
    record, cycles = run(policy, codec)
    target = build_models(PAIR, "cloud").target
    assert record.output_ids == continuation(target, prompt_ids(), MAX_NEW_TOKENS)
    served = [c.served_by for c in cycles]
    assert served[:6] == ["cloud", "speculation", "cloud", "speculation", "speculation", "cloud"]
    # the opening stretch: 7 tokens in all, the first of them the open's own
    assert [c.tokens for c in cycles if c.served_by == "cloud"][:3] == [6, 7, 7]
    assert all(c.k == 0 and c.accepted == 0 for c in cycles if c.served_by == "cloud")
    assert record.handoff_tokens == 20 and record.cutoff_tokens == 0
    assert not record.nasd_cutoff_triggered
    assert sum(c.tokens for c in cycles) == len(record.output_ids) - 1
    assert policy.observed == cycles


@pytest.mark.parametrize("codec", ["ids", "q-scalar"])
def test_the_cloud_verifies_after_the_tokens_the_draft_served_alone(codec):
    """Greedy: each step's tokens are the continuation of all tokens before them by the
    model that served them: the target's for cycles and cloud stretches, the draft's for
    cutoff stretches (the draft's greedy text differs from the target's)."""
    edge_stretch, cloud_stretch = Stretch("edge", 5, 1.0), Stretch("cloud", 4, 1.0)
    policy = Scripted([3, edge_stretch, 2, edge_stretch, cloud_stretch, edge_stretch, 4])
    record, cycles = run(policy, codec)
    models = build_models(PAIR, "cloud")
    context = prompt_ids()
    output = record.output_ids
    assert output[:1] == continuation(models.target, context, 1)
    position = 1
    for cycle in cycles:
        model = models.draft if cycle.served_by == "edge" else models.target
        tokens = output[position:position + cycle.tokens]
        assert tokens == continuation(model, context + output[:position], cycle.tokens), cycle
        position += cycle.tokens
    assert position == len(output)
    edge = [c for c in cycles if c.served_by == "edge"]
    assert len(edge) == 3 and all(c.nasd_cutoff and c.bytes_up == 0 and np.isnan(c.rtt_ms)
                                  for c in edge)
    assert record.cutoff_tokens == 15 and record.nasd_cutoff_triggered
    assert output != continuation(models.target, context, MAX_NEW_TOKENS)   # lossy, as flagged
    # the query's trace under the seed proposal's names, cycle by cycle
    assert record.nasd_k_per_cycle == [c.policy_k for c in cycles]
    assert record.nasd_k_per_cycle[:7] == [3, 0, 2, 0, 0, 0, 4]
    assert record.acceptance_rate_per_cycle == [c.accepted / c.k if c.k else None
                                                for c in cycles]
    assert [rate is None for rate in record.acceptance_rate_per_cycle[:3]] == [False, True, False]
    assert all(0.0 <= share < 1.0 for share in record.network_overhead_per_cycle)
    assert [share == 0.0 for share, c in zip(record.network_overhead_per_cycle, cycles)
            if c.served_by == "edge"] == [True] * 3
    assert len(record.nasd_rtt_per_cycle) == len(cycles)


@pytest.mark.parametrize("floor", [0.0, 0.3, 1.0])
def test_the_confidence_floor_stops_drafting_early_and_the_output_stays_the_targets(floor):
    """K = 6 is the ceiling: with no floor every cycle drafts it, with a floor no draft row
    reaches every cycle drafts one, in between the draft's confidence decides."""
    record, cycles = run(Scripted([6] * 200), confidence_floor=floor)
    target = build_models(PAIR, "cloud").target
    assert record.output_ids == continuation(target, prompt_ids(), MAX_NEW_TOKENS)
    committed = 1 + np.cumsum([0] + [c.tokens for c in cycles])[:-1]
    ceiling = np.minimum(6, MAX_NEW_TOKENS - committed - 1)   # the token budget caps K too
    drafted = np.array([c.k for c in cycles])
    if floor == 0.0:
        assert (drafted == ceiling).all()
    elif floor == 1.0:
        assert (drafted == np.minimum(1, ceiling)).all()
    else:
        assert (np.minimum(1, ceiling) <= drafted).all() and (drafted <= ceiling).all()
        assert (drafted < ceiling).any() and (drafted == ceiling).any()


class StopsOnSecondPing(Scripted):
    """One long stretch for the cloud, stopped at the second round trip its pings measure."""

    def __init__(self) -> None:
        super().__init__([Stretch("cloud", 55, 1.0)])
        self.round_trips: list[float] = []

    def continue_stretch(self, rtt_s: float) -> bool:
        self.round_trips.append(rtt_s)
        return len(self.round_trips) < 2


def test_the_edge_pings_during_a_cloud_stretch_and_stops_it_keeping_the_target_output():
    """The cloud takes 4 ms a token, so a 55-token stretch streams for about 0.2 s: pings
    (about every 50 ms) come back between its tokens, the second stops it, and the tokens
    already on their way are kept; the output is still the target's."""
    slow_cloud = SyntheticPairConfig(acceptance=0.7, latency={
        "edge_draft": {"base_ms": 0.0, "per_token_ms": 0.0},
        "cloud_draft": {"base_ms": 0.0, "per_token_ms": 0.0},
        "cloud_target": {"base_ms": 4.0, "per_token_ms": 0.0}})
    policy = StopsOnSecondPing()
    with edge_and_cloud(slow_cloud, lambda *_, **__: policy) as (edge, _):
        record, cycles = edge.run_query(QueryRequest(
            strategy="nasd", label="nasd", query_id="q", prompt=PROMPT,
            max_new_tokens=MAX_NEW_TOKENS, sampling=GREEDY))
    target = build_models(slow_cloud, "cloud").target
    assert record.output_ids == continuation(target, prompt_ids(), MAX_NEW_TOKENS)
    stretch = cycles[0]
    assert stretch.served_by == "cloud" and 2 < stretch.tokens < 54
    assert len(policy.round_trips) == 2 and all(0.0 <= rtt < 0.05 for rtt in policy.round_trips)
    # the policy weighs the most the RTT can be, the record keeps its bracket's middle
    assert 0.0 <= stretch.rtt_ms <= 1000.0 * policy.round_trips[-1]
    assert stretch.bytes_up > 0             # its pings and the stop crossed the link
    assert sum(c.tokens for c in cycles) == len(record.output_ids) - 1


def assert_token_times(record, cycles=()) -> None:
    """One instant per output token, in order, from the TTFT to the last token; each cycle's
    tokens within the cycle, a speculation cycle's all at its verdict's arrival."""
    times = np.asarray(record.token_times_s)
    assert len(times) == record.n_tokens == len(record.output_ids)
    assert np.all(np.diff(times) >= 0.0)
    assert times[0] == pytest.approx(record.ttft_s, abs=1e-6)
    assert times[-1] == pytest.approx(record.e2e_s, abs=1e-6)
    position = 1
    for cycle in cycles:
        held = times[position:position + cycle.tokens]
        end = cycle.t_start + cycle.t_cycle
        if cycle.served_by == "speculation":
            assert held == pytest.approx([end] * cycle.tokens, abs=1e-6), cycle
        else:
            assert np.all((held >= cycle.t_start - 1e-6) & (held <= end + 1e-6)), cycle
        position += cycle.tokens
    if cycles:
        assert position == len(times)


@pytest.mark.parametrize("strategy", ["cloud-only", "cloud-spec", "edge-only"])
def test_every_strategy_records_when_each_token_reached_the_edge(strategy):
    slow = SyntheticPairConfig(acceptance=0.7, latency={
        side: {"base_ms": 1.0, "per_token_ms": 0.5}
        for side in ("edge_draft", "cloud_draft", "cloud_target")})
    with edge_and_cloud(slow) as (edge, _):
        record, cycles = edge.run_query(QueryRequest(
            strategy=strategy, label=strategy, query_id="q", prompt=PROMPT, k=3,
            max_new_tokens=MAX_NEW_TOKENS, sampling=GREEDY))
    assert cycles == []
    assert_token_times(record)
    assert len(set(record.token_times_s)) > 1
    if strategy != "edge-only":
        # the cloud's stream from its first message to its last: every step's passes, and
        # the serving loop's turn between two of them, which its compute leaves out
        assert 0 < record.cloud_compute_s - record.cloud_first_s <= record.cloud_stream_s
        assert record.cloud_stream_s <= record.e2e_s - record.cloud_first_s


def test_a_speculative_query_records_each_token_when_its_cycle_or_stream_delivered_it():
    policy = Scripted([Stretch("cloud", 7, 1.0), 3, Stretch("edge", 5, 1.0), 2,
                       Stretch("cloud", 6, 1.0), 4])
    record, cycles = run(policy)
    assert {c.served_by for c in cycles} == {"cloud", "speculation", "edge"}
    assert_token_times(record, cycles)
