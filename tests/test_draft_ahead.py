"""Draft-ahead: blocks pipelined on the premise that the blocks before them are kept whole.

Through the real edge and cloud agents in one process (``tests.inproc_agents``): greedy
output is the target's for depths 1 and 2 over several K and every codec; sampled runs keep
both sides on one sequence (the cloud checks each block's start, the test compares the
sequences at the close); blocks are dropped when acceptance is low and the edge, the cloud
and the records agree on which.  In process, on the very functions the edge and the cloud
run: the token in the deferred bonus's place (the next block's first draft, tested against
the target row after a block kept whole) follows the target's distribution.  The pipelined
throughput's closed form is tests/test_analytic.py's.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.stats import chisquare

from agents.backends import build_models
from agents.backends.base import TokenSequence
from agents.backends.synthetic import SyntheticPairConfig
from agents.codecs import get_codec
from agents.edge import QueryRequest
from agents.sampling import SamplingConfig
from agents.speculative import (decode_plainly, draft_tokens, settle_verdict, speculation_step,
                                verify_drafts)
from nasd.estimator import Stretch
from orchestrator.config.datasets import Prompt
from orchestrator.config.job import JobConfig, StrategyRun, plan
from orchestrator.config.loading import load_profile
from orchestrator.config.run_spec import RunSpec
from tests.inproc_agents import edge_and_cloud
from tests.test_stretches import Scripted

GREEDY, SAMPLING = SamplingConfig(decoding="greedy"), SamplingConfig(decoding="sampling")
PROMPT = "draft ahead"
MAX_NEW_TOKENS = 60


def pair(acceptance: float, draft_ms: float = 0.0, verify_ms: float = 0.0) -> SyntheticPairConfig:
    """A synthetic pair whose draft step takes ``draft_ms`` and target forward ``verify_ms``."""
    return SyntheticPairConfig(acceptance=acceptance, latency={
        "edge_draft": {"base_ms": draft_ms, "per_token_ms": 0.0},
        "cloud_draft": {"base_ms": draft_ms, "per_token_ms": 0.0},
        "cloud_target": {"base_ms": verify_ms, "per_token_ms": 0.0}})


def request(k: int, depth: int, codec: str, sampling: SamplingConfig = GREEDY,
            strategy: str = "fixed-k", query_id: str = "q") -> QueryRequest:
    return QueryRequest(strategy=strategy, label=f"{strategy}{k}+ahead{depth}", k=k,
                        draft_ahead=depth, query_id=query_id, prompt=PROMPT,
                        max_new_tokens=MAX_NEW_TOKENS, sampling=sampling, codec=codec)


def target_greedy(config: SyntheticPairConfig) -> list[int]:
    models = build_models(config, "cloud")
    sequence = TokenSequence(models.target, models.tokenizer.encode(PROMPT), GREEDY)
    return list(decode_plainly(sequence, MAX_NEW_TOKENS, "greedy", None, config.eos_id))


def check_records(record, cycles) -> None:
    """What every draft-ahead query's records say, whatever its verdicts."""
    verified = [c for c in cycles if c.served_by != "dropped"]
    dropped = [c for c in cycles if c.served_by == "dropped"]
    assert sum(c.tokens for c in cycles) == len(record.output_ids) - 1
    assert all(c.ahead and c.tokens == 0 and c.accepted == 0 and np.isnan(c.rtt_ms)
               for c in dropped)
    assert record.ahead_blocks_kept == sum(c.ahead for c in verified)
    assert record.ahead_blocks_dropped == len(dropped)
    assert record.ahead_drafts_dropped == sum(c.k for c in dropped)
    assert record.drafted == sum(c.k for c in verified)
    assert record.bytes_up == sum(c.bytes_up for c in cycles)
    for before, block in zip(verified, verified[1:]):
        if block.ahead:   # verified after it was sent ahead: the block before it kept whole
            assert before.accepted == before.k and before.tokens == before.k, (before, block)
    assert all(np.isnan(c.rtt_ms) == c.ahead for c in verified)


@pytest.mark.parametrize("codec", ["ids", "q-scalar", "topk", "full16", "full32"])
def test_greedy_draft_ahead_is_token_identical_to_the_target(codec):
    config = pair(0.7)
    expected = target_greedy(config)
    with edge_and_cloud(config) as (edge, _):
        for depth in (1, 2):
            for k in (1, 3, 6):
                record, cycles = edge.run_query(request(k, depth, codec))
                assert record.output_ids == expected, (depth, k)
                check_records(record, cycles)
                assert record.ahead_blocks_kept > 0, (depth, k)
                assert max(c.k for c in cycles) == k


def test_blocks_are_dropped_when_acceptance_is_low_and_both_sides_agree_on_which():
    config = pair(0.3)
    expected = target_greedy(config)
    with edge_and_cloud(config) as (edge, cloud):
        stale = []
        original = cloud._stale
        cloud._stale = lambda key, epoch: stale.append(original(key, epoch)) or stale[-1]
        for depth in (1, 2):
            stale.clear()
            record, cycles = edge.run_query(request(3, depth, "ids"))
            assert record.output_ids == expected
            check_records(record, cycles)
            assert record.ahead_blocks_dropped > 0 and record.ahead_blocks_kept > 0
            assert sum(stale) == record.ahead_blocks_dropped   # the cloud dropped those
            assert len(stale) == sum(c.served_by != "dropped" for c in cycles) \
                + record.ahead_blocks_dropped                     # every block reached it
            assert record.rejections > 0


@pytest.mark.parametrize("codec", ["q-scalar", "topk", "full16"])
def test_sampled_draft_ahead_keeps_edge_and_cloud_on_one_sequence(codec):
    """The q-scalar correction, sampled on the edge, reaches the cloud with the first block
    of the next epoch, never with a stale one; the cloud checks each block's start against
    its own length and would answer an error."""
    config = pair(0.6)
    with edge_and_cloud(config) as (edge, cloud):
        closed: dict[str, list[int]] = {}
        handle = cloud.handle

        def keep_at_close(message, peer, received_at):
            if message.type == "close" and (peer, message.session) in cloud.sessions:
                closed[message.session] = list(
                    cloud.sessions[peer, message.session].target.generated)
            handle(message, peer, received_at)

        cloud.handle = keep_at_close
        kept = dropped = 0
        for depth in (1, 2):
            for k in (2, 5):
                record, cycles = edge.run_query(
                    request(k, depth, codec, SAMPLING, query_id=f"{depth}-{k}"))
                check_records(record, cycles)
                session = f"fixed-k{k}+ahead{depth}/{depth}-{k}/0"
                deadline = time.monotonic() + 5.0
                while session not in closed and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert closed[session] == record.output_ids
                kept += record.ahead_blocks_kept
                dropped += record.ahead_blocks_dropped
        assert kept > 0 and dropped > 0


def test_nasd_drafts_ahead_and_stays_lossless():
    """With compute times where speculating pays (at no RTT, in process), so that the
    controller drafts rather than handing every stretch to the cloud."""
    config = pair(0.7, draft_ms=0.1, verify_ms=2.0)
    kept = 0
    with edge_and_cloud(config) as (edge, _):
        for repetition in range(2):   # one controller across queries, as in a run
            record, cycles = edge.run_query(request(5, 2, "ids", strategy="nasd").model_copy(
                update={"k": None, "repetition": repetition}))
            assert record.output_ids == target_greedy(config)
            check_records(record, cycles)
            kept += record.ahead_blocks_kept
    assert kept > 0


def test_a_stretch_right_after_blocks_kept_whole_serves_the_deferred_bonus():
    """The policy hands off while blocks are in flight: the edge drains them (kept whole,
    bonus deferred) and the stretch's first token is the one the bonus would have been: the
    cloud decodes it from the row it kept (the draft serves it alone under the cutoff)."""
    config = pair(0.99)
    steps = [2, 2, Stretch("cloud", 5, 1.0), 3, 3, 3, Stretch("cloud", 4, 1.0), 2]
    with edge_and_cloud(config, lambda *_, **__: Scripted(steps)) as (edge, _):
        record, cycles = edge.run_query(request(2, 1, "ids", strategy="nasd"))
    assert record.output_ids == target_greedy(config)
    check_records(record, cycles)
    assert [c.served_by for c in cycles].count("cloud") == 2
    assert any(stretch.served_by == "cloud" and block.ahead and block.tokens == block.k
               for block, stretch in zip(cycles, cycles[1:]))


@pytest.mark.parametrize("codec", ["full32", "q-scalar"])
def test_the_token_in_the_deferred_bonus_place_follows_the_target(codec):
    """Two blocks of one draft each, the second drafted ahead; the first verified without a
    bonus.  Kept whole, the second's draft is tested in the bonus's place; rejected, the
    correction ends the epoch and a plain cycle commits the next token.  Either way the two
    tokens after the prompt follow the target jointly: p(t0) p(t1 | t0)."""
    config = pair(0.6)
    models = build_models(config, "cloud")
    wire = get_codec(codec)
    prompt = [11]
    rng = np.random.default_rng(5)
    counts: dict[tuple[int, int], int] = {}
    samples = 2500

    def verify(target: TokenSequence, drafts, bonus: bool):
        payload = wire.decode(wire.encode(drafts.ids, drafts.model_rows), config.vocab_size)
        verification = verify_drafts(target, payload, "sampling", rng, None, bonus)
        return verification.verdict, verification.residual_row

    def catch_up(target: TokenSequence, verdict, residual) -> None:
        if residual is not None:   # q-scalar: the edge's correction reaches the cloud
            target.extend([verdict.next_token])

    for _ in range(samples):
        target = TokenSequence(models.target, prompt, SAMPLING)
        draft = TokenSequence(models.draft, prompt, SAMPLING)
        first = draft_tokens(draft, 1, "sampling", rng, None, wire)
        ahead = draft_tokens(draft, 1, "sampling", rng, None, wire)
        verdict, residual = verify(target, first, bonus=False)
        verdict = settle_verdict(draft, len(prompt), first, verdict, residual, rng, None)
        catch_up(target, verdict, residual)
        heard: dict = {}

        def plain(drafts):
            heard["verdict"], heard["residual"] = verify(target, drafts, bonus=True)
            return heard["verdict"], heard["residual"]

        if verdict.bonus_deferred(1):   # the block drafted ahead stands: verify it
            heard["verdict"], heard["residual"] = plain(ahead)
            verdict = settle_verdict(draft, len(prompt) + 1, ahead, heard["verdict"],
                                     heard["residual"], rng, None)
        else:                           # it is stale: a plain cycle from the correction on
            verdict = speculation_step(draft, 1, "sampling", rng, None, wire, plain)[1]
        catch_up(target, verdict, heard["residual"])
        pair_ = tuple(target.tokens[len(prompt):len(prompt) + 2])
        counts[pair_] = counts.get(pair_, 0) + 1

    p0 = TokenSequence(models.target, prompt, SAMPLING).next_probs().astype(float)
    expected: dict[tuple[int, int], float] = {}
    for t0 in np.flatnonzero(p0):
        p1 = TokenSequence(models.target, prompt + [int(t0)], SAMPLING).next_probs().astype(float)
        for t1 in np.flatnonzero(p1):
            expected[(int(t0), int(t1))] = p0[t0] / p0.sum() * p1[t1] / p1.sum() * samples
    assert set(counts) <= set(expected)
    big = [cell for cell, mass in expected.items() if mass >= 5]
    observed = [counts.get(cell, 0) for cell in big] + [samples - sum(counts.get(c, 0)
                                                                      for c in big)]
    wanted = [expected[cell] for cell in big] + [samples - sum(expected[c] for c in big)]
    assert chisquare(observed, wanted).pvalue > 0.01


def test_a_job_drafts_ahead_with_fixed_k_and_nasd_and_runs_the_baselines_as_they_are():
    job = JobConfig(model_pair="synthetic", strategies=["cloud-only", "fixed-k", "nasd"],
                    k_values=[3, 5], draft_ahead=2)
    assert plan(job) == [StrategyRun("cloud-only", None), StrategyRun("fixed-k", 3, 2),
                         StrategyRun("fixed-k", 5, 2), StrategyRun("nasd", None, 2)]
    assert [run.label for run in plan(job)] == ["cloud-only", "fixed-k3+ahead2",
                                                "fixed-k5+ahead2", "nasd+ahead2"]
    spec = RunSpec.build(job, load_profile("lan"), "sim",
                         prompts=[Prompt(id="p", prompt="draft ahead")])
    assert [(r.strategy, r.k, r.draft_ahead) for r in spec.requests()] == [
        ("cloud-only", None, 0), ("fixed-k", 3, 2), ("fixed-k", 5, 2), ("nasd", None, 2)]
    with pytest.raises(ValueError, match="not bandit"):
        JobConfig(strategies=["fixed-k", "bandit"], draft_ahead=1)
    with pytest.raises(ValueError, match="only fixed-k and nasd"):
        QueryRequest(strategy="cloud-only", label="x", query_id="q", prompt="p",
                     max_new_tokens=4, draft_ahead=1)
