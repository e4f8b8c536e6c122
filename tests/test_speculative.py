"""Speculation cycles on synthetic models, in process: lossless by construction.

Greedy: spec-decode output equals target-only greedy output token for token.
Sampling: tokens committed by a cycle follow the target's distribution.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare

from agents.backends.base import TokenSequence
from agents.codecs import DraftPayload, get_codec
from agents.sampling import SamplingConfig
from agents.backends.synthetic import SyntheticModel, SyntheticPairConfig
from agents.speculative import (choose_token, draft_tokens, generate_locally,
                                verify_drafts)

INSTANT = {"base_ms": 0.0, "per_token_ms": 0.0}
PROMPTS = [[5, 6, 7, 8], [100, 200, 300], [42], [9, 9, 9, 9, 9, 9]]

PLAIN = SamplingConfig()
FULL_ROWS = get_codec("full32")


def payload(drafts) -> DraftPayload:
    """The drafts as the cloud would decode them from a full32 message."""
    return FULL_ROWS.decode(FULL_ROWS.encode(drafts.ids, drafts.model_rows), 1024)


def make_pair(acceptance: float = 0.7, seed: int = 0) -> tuple[SyntheticModel, SyntheticModel]:
    config = SyntheticPairConfig(acceptance=acceptance, seed=seed, latency={
        "edge_draft": INSTANT, "cloud_draft": INSTANT, "cloud_target": INSTANT})
    return SyntheticModel(config, "draft", config.latency.edge_draft), \
        SyntheticModel(config, "target", config.latency.cloud_target)


def target_only(target, prompt, n, decoding, rng):
    sequence = TokenSequence(target, prompt, PLAIN)
    while len(sequence.generated) < n:
        sequence.extend([choose_token(sequence.next_probs(), decoding, rng)])
    return sequence.generated


def speculative(draft_model, target_model, prompt, n, k, decoding, rng):
    """Speculation with both models here (``generate_locally``, the cycle the edge runs too):
    the output and each cycle's accepted count."""
    target, draft = TokenSequence(target_model, prompt, PLAIN), \
        TokenSequence(draft_model, prompt, PLAIN)
    commits = list(generate_locally(target, draft, k, decoding, rng, None, n))
    assert draft.tokens == target.tokens
    return target.generated, [commit.accepted for commit in commits[1:]]


@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_greedy_speculation_is_token_identical_to_target_greedy(k):
    draft, target = make_pair()
    rng = np.random.default_rng(0)
    for prompt in PROMPTS:
        expected = target_only(target, prompt, 60, "greedy", rng)
        output, accepted = speculative(draft, target, prompt, 60, k, "greedy", rng)
        assert output == expected
        assert len(accepted) < 60 - 1  # speculation did commit several tokens per cycle


@pytest.mark.parametrize("k", [1, 5])
def test_generate_locally_commits_target_greedy_in_cycles(k):
    """The cloud's in-process loop (cloud-only without a draft, cloud-spec with one)."""
    draft_model, target_model = make_pair()
    for prompt in PROMPTS:
        expected = target_only(target_model, prompt, 24, "greedy", None)
        for with_draft in (False, True):
            target = TokenSequence(target_model, prompt, PLAIN)
            draft = TokenSequence(draft_model, prompt, PLAIN) if with_draft else None
            commits = list(generate_locally(target, draft, k, "greedy", None, None, 24))
            assert [t for c in commits for t in c.tokens] == target.generated == expected
            assert commits[0].drafted == 0 and len(commits[0].tokens) == 1
            assert all(len(c.tokens) == c.accepted + 1 and c.accepted <= c.drafted <= k
                       for c in commits[1:])
            assert (len(commits) < 24) == with_draft


def test_sessions_never_recompute_the_prefix():
    draft, target = make_pair()
    sequence = TokenSequence(target, PROMPTS[0], PLAIN)
    fed = []
    original = sequence.model_session.forward
    sequence.model_session.forward = lambda ids, all_rows=False: fed.append(len(ids)) or \
        original(ids, all_rows)
    for _ in range(30):
        sequence.extend([choose_token(sequence.next_probs(), "greedy", None)])
    assert fed == [len(PROMPTS[0])] + [1] * 29
    assert sequence.model_session.processed == len(sequence.tokens) - 1


def test_per_token_acceptance_matches_the_configured_rate():
    draft, target = make_pair(acceptance=0.7)
    rng = np.random.default_rng(1)
    accepted = rejections = 0
    for prompt in PROMPTS * 3:
        _, per_cycle = speculative(draft, target, prompt, 120, 5, "sampling", rng)
        accepted += sum(per_cycle)
        rejections += sum(1 for a in per_cycle if a < 5)
    rate = accepted / (accepted + rejections)
    assert abs(rate - 0.7) < 0.04


def test_sampled_speculation_follows_the_target_distribution():
    """The token right after the first (committed by the first cycle) ~ p(. | prompt, first)."""
    draft, target = make_pair(acceptance=0.6)
    prompt, first = [11, 12, 13], None
    rng = np.random.default_rng(7)
    counts: dict[int, int] = {}
    n_samples = 3000
    for _ in range(n_samples):
        sequence = TokenSequence(target, prompt, PLAIN)
        first = int(np.argmax(sequence.next_probs()))  # fix the first token: one context to test
        target_seq, draft_seq = TokenSequence(target, prompt + [first], PLAIN), \
            TokenSequence(draft, prompt + [first], PLAIN)
        target_seq.model_session.forward(prompt)
        drafts = draft_tokens(draft_seq, 3, "sampling", rng, None, FULL_ROWS)
        verdict = verify_drafts(target_seq, payload(drafts), "sampling", rng, None).verdict
        token = verdict.committed(drafts.ids)[0]
        counts[token] = counts.get(token, 0) + 1
    reference = TokenSequence(target, prompt + [first], PLAIN).next_probs().astype(float)
    support = np.flatnonzero(reference > 0)
    assert set(counts) <= set(support.tolist())
    observed = np.array([counts.get(int(t), 0) for t in support])
    expected = reference[support] / reference[support].sum() * n_samples
    assert chisquare(observed, expected).pvalue > 0.01
