"""The synthetic backend (agents/backends/synthetic.py), TokenSequence
(agents/backends/base.py) and ByteTokenizer (agents/backends/tokenizer.py)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.stats import chisquare

from agents.backends import build_models
from agents.backends.base import TokenSequence
from agents.sampling import SamplingConfig
from agents.backends.synthetic import (
    ContextDistributions,
    ForwardLatency,
    SyntheticModel,
    SyntheticPairConfig,
    minimum_vocab_size,
    support_size,
)
from agents.backends.tokenizer import ByteTokenizer
from agents.speculative import generate_locally
from nasd.analytic import accepted_distribution, expected_tokens_per_cycle, position_rates
from validation.stats import binomial_interval

ZERO = {"base_ms": 0.0, "per_token_ms": 0.0}
LATENCY = {"edge_draft": ZERO, "cloud_draft": ZERO, "cloud_target": ZERO}
CONTEXTS = 1500

PLAIN = SamplingConfig()


def pair(**fields) -> SyntheticPairConfig:
    return SyntheticPairConfig(latency=LATENCY, **fields)


def random_contexts(vocab_size: int, count: int, seed: int = 1234) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 5, size=count)
    return [tuple(int(t) for t in rng.integers(0, vocab_size, size=n)) for n in lengths]


# --------------------------------------------------------------------------- distributions


@pytest.mark.parametrize("acceptance", [0.3, 0.7, 0.9])
def test_acceptance_is_exact_in_every_context_and_greedy_agreement_matches(acceptance):
    config = pair(acceptance=acceptance, vocab_size=1024, eos_id=0, seed=7)
    dists = ContextDistributions(config)
    agree = 0
    for context in random_contexts(config.vocab_size, CONTEXTS):
        p, q = dists.rows(context)
        assert p.dtype == np.float32 and q.dtype == np.float32
        assert p.shape == q.shape == (config.vocab_size,)
        assert (p >= 0).all() and (q >= 0).all()
        assert float(p.sum(dtype=np.float64)) == pytest.approx(1.0, abs=1e-5)
        assert float(q.sum(dtype=np.float64)) == pytest.approx(1.0, abs=1e-5)
        overlap = float(np.minimum(p, q).sum(dtype=np.float64))
        assert overlap == pytest.approx(acceptance, abs=1e-5), context
        assert np.count_nonzero(p) == support_size(acceptance)
        agree += int(np.argmax(q) == np.argmax(p))
    low, high = binomial_interval(agree, CONTEXTS, confidence=0.999)
    assert low <= acceptance <= high, (agree / CONTEXTS, low, high)


def test_support_size_keeps_the_mode_below_the_greedy_cap():
    for acceptance in (0.3, 0.5, 0.7, 0.9, 0.95, 0.99):
        m = support_size(acceptance)
        assert m >= 8
        # a flattened p can reach the cap 0.9 (1 - a) / a only if 1/m is below it
        assert 1.0 / m < 0.9 * (1.0 - acceptance) / acceptance
    assert support_size(0.99) == 165


def test_rows_are_deterministic_in_seed_and_context():
    config = pair(acceptance=0.7, seed=3)
    context = (17, 42, 99, 5)
    p1, q1 = ContextDistributions(config).rows(context)
    p2, q2 = ContextDistributions(pair(acceptance=0.7, seed=3)).rows(context)
    assert np.array_equal(p1, p2) and np.array_equal(q1, q2)
    p3, q3 = ContextDistributions(pair(acceptance=0.7, seed=4)).rows(context)
    assert not np.array_equal(p1, p3) and not np.array_equal(q1, q3)
    p4, _ = ContextDistributions(config).rows((17, 42, 99, 6))
    assert not np.array_equal(p1, p4)
    # a negative seed is refused where the pair is loaded, not deep inside an agent
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        pair(acceptance=0.7, seed=-3)


@pytest.mark.parametrize("eos_id", [0, 511, 1023])
def test_eos_is_never_in_the_support(eos_id):
    config = pair(acceptance=0.7, vocab_size=1024, eos_id=eos_id)
    dists = ContextDistributions(config)
    for context in random_contexts(config.vocab_size, 300, seed=eos_id):
        p, q = dists.rows(context)
        assert p[eos_id] == 0.0
        assert q[eos_id] == 0.0


def test_models_return_p_for_target_and_q_for_draft():
    config = pair(acceptance=0.7)
    target = SyntheticModel(config, "target", ForwardLatency(**ZERO))
    draft = SyntheticModel(config, "draft", ForwardLatency(**ZERO))
    p, q = ContextDistributions(config).rows((1, 2, 3))
    assert np.array_equal(target.row((1, 2, 3)), p)
    assert np.array_equal(draft.row((1, 2, 3)), q)
    assert target.vocab_size == draft.vocab_size == config.vocab_size
    assert target.eos_id == config.eos_id


@pytest.mark.parametrize("acceptance", [0.01, 0.02, 0.99])
def test_the_smallest_vocabulary_still_decides_greedy_agreement_by_the_coin(acceptance):
    needed = minimum_vocab_size(acceptance)
    assert needed > 257                     # below it, the prompt bytes need more ids anyway
    dists = ContextDistributions(pair(acceptance=acceptance, vocab_size=needed))
    for context in random_contexts(needed, 200):
        p, agreeing = dists.rows(context, coin=0.0)
        _, disagreeing = dists.rows(context, coin=0.999999)
        assert np.argmax(agreeing) == np.argmax(p) != np.argmax(disagreeing)
    with pytest.raises(ValidationError, match=f"at least {needed}"):
        pair(acceptance=acceptance, vocab_size=needed - 1)


def test_infeasible_and_invalid_configs_are_rejected():
    with pytest.raises(ValidationError, match="greater than or equal to 257"):
        pair(acceptance=0.99, vocab_size=256)  # too small for one id per prompt byte
    assert pair(acceptance=0.99, vocab_size=332).acceptance == 0.99
    with pytest.raises(ValidationError, match="at least 332"):
        pair(acceptance=0.99, vocab_size=331)
    with pytest.raises(ValidationError, match="eos_id"):
        pair(vocab_size=300, eos_id=300)
    with pytest.raises(ValidationError, match="eos_id"):
        pair(eos_id=-1)
    for bad in ({"acceptance": 1.0}, {"acceptance": 0.0}, {"vocab_size": 32},
                {"context_window": 0}, {"unknown": 1}):
        with pytest.raises(ValidationError) as error:
            pair(**bad)
        assert error.value.errors()[0]["loc"] == (next(iter(bad)),)
    with pytest.raises(ValidationError):
        ForwardLatency(base_ms=-1, per_token_ms=0)


# --------------------------------------------------------------------------- modeled timing


@pytest.mark.parametrize("n_tokens", [1, 4, 12])
@pytest.mark.parametrize("all_rows", [False, True])
def test_forward_takes_the_modeled_time(n_tokens, all_rows):
    latency = ForwardLatency(base_ms=5.0, per_token_ms=1.0)
    model = SyntheticModel(pair(acceptance=0.7), "target", latency)
    expected = 5.0 + 1.0 * n_tokens
    assert latency.seconds(n_tokens) == pytest.approx(expected / 1000.0)
    elapsed = []
    for attempt in range(3):
        session = model.session(PLAIN)
        ids = [10 + attempt + i for i in range(n_tokens)]
        started = time.perf_counter()
        out = session.forward(ids, all_rows=all_rows)
        elapsed.append((time.perf_counter() - started) * 1000.0)
        assert out.shape == ((n_tokens, 1024) if all_rows else (1024,))
        assert session.processed == n_tokens
    assert min(elapsed) >= expected          # the modeled time is never cut short
    assert min(elapsed) < expected + 3.0     # and not overshot (loose: busy machine)


# --------------------------------------------------------------------------- TokenSequence


class CountingModel(SyntheticModel):
    """A zero-latency synthetic target whose sessions record forward/truncate calls."""

    def __init__(self, config: SyntheticPairConfig) -> None:
        super().__init__(config, "target", ForwardLatency(**ZERO))
        self.fed: list[list[int]] = []
        self.truncations: list[int] = []

    def session(self, sampling):
        session = super().session(sampling)
        forward, truncate = session.forward, session.truncate

        def counted_forward(ids, all_rows=False):
            self.fed.append(list(ids))
            return forward(ids, all_rows)

        def counted_truncate(length):
            self.truncations.append(length)
            truncate(length)

        session.forward, session.truncate = counted_forward, counted_truncate
        return session


@pytest.fixture
def model() -> CountingModel:
    return CountingModel(pair(acceptance=0.7, context_window=3))


def test_prefill_then_next_probs_feeds_only_unprocessed_tokens(model):
    seq = TokenSequence(model, [5, 6, 7, 8], PLAIN)
    assert seq.prompt_length == 4 and seq.generated == []
    seq.prefill()
    assert seq.model_session.processed == 4
    assert model.fed == [[5, 6, 7, 8]]
    kept = seq.next_probs()                       # nothing pending: the prefill's row, kept
    assert model.fed == [[5, 6, 7, 8]] and np.array_equal(kept, model.row((6, 7, 8)))
    seq.extend([9])
    row = seq.next_probs()
    assert model.fed[-1] == [9]
    assert seq.model_session.processed == 5
    assert np.array_equal(row, model.row((7, 8, 9)))   # context window 3
    seq.extend([10, 11])
    row = seq.next_probs()
    assert model.fed[-1] == [10, 11]
    assert seq.model_session.processed == 7
    assert np.array_equal(row, model.row((9, 10, 11)))
    assert seq.generated == [9, 10, 11]


def test_rewind_truncates_the_session_only_when_needed(model):
    seq = TokenSequence(model, [1, 2, 3], PLAIN)
    seq.prefill()
    seq.extend([4, 5, 6])                         # drafted, not yet processed
    seq.rewind(4)                                 # keep 4: session has processed 3 only
    assert seq.tokens == [1, 2, 3, 4]
    assert model.truncations == []
    assert seq.model_session.processed == 3
    seq.extend([7, 8])
    seq.next_probs()
    assert seq.model_session.processed == 6
    seq.rewind(4)                                 # processed 6 > 4: must forget
    assert model.truncations == [4]
    assert seq.tokens == [1, 2, 3, 4]
    assert seq.model_session.processed == 4
    seq.rewind(4)                                 # already consistent: no call
    assert model.truncations == [4]
    # after a rewind the next distribution is the one for the kept prefix
    seq.extend([9])
    assert np.array_equal(seq.next_probs(), model.row((3, 4, 9)))


@pytest.mark.parametrize("k", [0, 1, 3, 6])
def test_score_last_equals_token_by_token_rows(model, k):
    prompt = [11, 12, 13, 14]
    drafts = [20 + i for i in range(k)]
    seq = TokenSequence(model, prompt, PLAIN)
    seq.prefill()
    seq.extend([15] + drafts)                     # last committed token + k drafts
    rows = seq.score_last(k)
    assert rows.shape == (k + 1, model.vocab_size)
    assert seq.model_session.processed == len(prompt) + 1 + k

    reference = TokenSequence(model, prompt, PLAIN)
    reference.prefill()
    expected = []
    for token in [15] + drafts:
        reference.extend([token])
        expected.append(reference.next_probs())
    assert np.array_equal(rows, np.stack(expected))


def test_score_last_needs_enough_pending_tokens(model):
    seq = TokenSequence(model, [1, 2], PLAIN)
    seq.prefill()
    seq.extend([3, 4])
    with pytest.raises(RuntimeError, match="need 4"):
        seq.score_last(3)
    assert seq.model_session.processed == 2       # nothing was fed
    # the row before 3 is the prefill's, kept (draft-ahead's deferred bonus): only 3, 4 fed
    rows = seq.score_last(2)
    assert model.fed[-1] == [3, 4]
    assert np.array_equal(rows, np.stack([model.row(c) for c in ((1, 2), (1, 2, 3), (2, 3, 4))]))


def test_nothing_pending_and_no_kept_row_is_an_error(model):
    seq = TokenSequence(model, [1, 2, 3], PLAIN)
    seq.prefill()
    seq.extend([4])
    seq.next_probs()
    seq.rewind(3)                                 # processed 4 -> 3: the row after 4 is dropped
    with pytest.raises(RuntimeError, match="every token is processed"):
        seq.next_probs()


def test_empty_prompt_is_rejected(model):
    with pytest.raises(ValueError):
        TokenSequence(model, [], PLAIN)


# --------------------------------------------------------------------------- tokenizer


TEXTS = ["", "hello, world", "héllo wörld — ñ", "数学 と 日本語", "emoji 🚀🧪", "\x00\x01\x7f tabs\t\n"]


@pytest.mark.parametrize("reserved", [(0,), (0, 1, 2, 255, 300), (100,)])
def test_byte_tokenizer_round_trips_and_avoids_reserved_ids(reserved):
    tokenizer = ByteTokenizer(1024, reserved=reserved)
    assert len(set(tokenizer.byte_to_id)) == 256
    assert not set(tokenizer.byte_to_id) & set(reserved)
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert len(ids) == len(text.encode("utf-8"))
        assert not set(ids) & set(reserved)
        assert all(0 <= i < 1024 for i in ids)
        assert tokenizer.decode(ids) == text
    # reserved ids (EOS) are skipped on decode
    hello = tokenizer.encode("hi")
    assert tokenizer.decode([reserved[0]] + hello + [reserved[0]]) == "hi"


def test_byte_tokenizer_needs_256_usable_ids():
    assert len(ByteTokenizer(257, reserved=(0,)).byte_to_id) == 256
    with pytest.raises(ValueError):
        ByteTokenizer(256, reserved=(0,))


def test_build_models_uses_a_tokenizer_that_skips_eos():
    config = pair(acceptance=0.7, vocab_size=1024, eos_id=3)
    edge, cloud = build_models(config, "edge"), build_models(config, "cloud")
    assert edge.target is None and cloud.target is not None
    assert edge.draft.row((1, 2)).tolist() == cloud.draft.row((1, 2)).tolist()
    ids = edge.tokenizer.encode("".join(chr(c) for c in range(128)))
    assert 3 not in ids and len(ids) == 128


# --------------------------------------------------------------------------- the acceptance process


def accepted_per_cycle(decoding: str, acceptance, k: int, window: int, prompts: int = 12,
                       n_tokens: int = 320) -> list[list[int]]:
    """Drafts accepted in each full cycle of K, per prompt (the last, budget-cut cycle left
    out), from whole speculative generations on the synthetic pair (``acceptance``: one
    rate, or rates by position)."""
    law = ({"acceptance": acceptance} if np.isscalar(acceptance)
           else {"acceptance_by_position": acceptance})
    config = pair(seed=11, context_window=window, **law)
    draft = SyntheticModel(config, "draft", ForwardLatency(**ZERO))
    target = SyntheticModel(config, "target", ForwardLatency(**ZERO))
    rng = np.random.default_rng(5)
    runs = []
    for prompt in random_contexts(config.vocab_size, prompts, seed=99):
        commits = generate_locally(TokenSequence(target, list(prompt), PLAIN),
                                   TokenSequence(draft, list(prompt), PLAIN), k, decoding, rng,
                                   None, n_tokens)
        runs.append([commit.accepted for commit in commits if commit.drafted == k])
    return runs


@pytest.mark.parametrize("decoding, acceptance, window", [
    ("greedy", 0.7, 4), ("greedy", 0.5, 4), ("sampling", 0.7, 4),
    ("greedy", 0.7, 1), ("sampling", 0.7, 1)])    # window 1: greedy text loops within tokens
def test_acceptance_is_the_configured_iid_process(decoding, acceptance, window):
    """Per-token acceptance a, tokens per cycle truncated-geometric at K, and cycles independent
    of each other: what E[tau] = (1 - a^(K+1)) / (1 - a) assumes, in greedy and sampling mode,
    also where the contexts repeat."""
    k = 5
    runs = accepted_per_cycle(decoding, acceptance, k, window)
    counts = np.concatenate([np.asarray(run) for run in runs])
    n = len(counts)
    assert n > 1000
    # per token: accepted / (accepted + rejections) is a binomial share of the drafts tested
    accepted, rejections = int(counts.sum()), int((counts < k).sum())
    low, high = binomial_interval(accepted, accepted + rejections, confidence=0.999)
    assert low <= acceptance <= high, (accepted / (accepted + rejections), low, high)
    # per cycle: P(j accepted) = a^j (1 - a) for j < K, a^K for j = K
    law = np.array([acceptance ** j * (1 - acceptance) for j in range(k)] + [acceptance ** k])
    observed = np.bincount(counts, minlength=k + 1)
    assert chisquare(observed, law * n).pvalue > 0.001, (observed, np.round(law * n))
    tokens = counts + 1
    assert abs(tokens.mean() - expected_tokens_per_cycle(acceptance, k)) \
        < 3.3 * tokens.std() / math.sqrt(n)
    # and one cycle says nothing of the next (a per-context coin repeats in greedy loops)
    pairs = np.array([(a, b) for run in runs for a, b in zip(run, run[1:])])
    correlation = np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]
    assert abs(correlation) < 3.3 / math.sqrt(len(pairs)), correlation


def test_the_greedy_coin_follows_the_sequence_not_the_context():
    config = pair(acceptance=0.7, context_window=2)
    draft = SyntheticModel(config, "draft", ForwardLatency(**ZERO))
    # one context (7, 8) after many different prefixes: q's greedy choice varies with them
    agree = []
    for first in range(200):
        session = draft.session(PLAIN)
        q = session.forward([first + 300, 7, 8])
        p = draft.distributions.rows((7, 8))[0]
        agree.append(int(np.argmax(q)) == int(np.argmax(p)))
        session.truncate(1)                     # the chain is cut with the history
        assert np.array_equal(session.forward([7, 8]), q)
    low, high = binomial_interval(sum(agree), len(agree), confidence=0.999)
    assert low <= 0.7 <= high


HEAVY_HEAD = (0.9, 0.8, 0.65, 0.5, 0.35)


@pytest.mark.parametrize("decoding", ["greedy", "sampling"])
def test_acceptance_follows_the_configured_profile_by_position(decoding):
    """A draft at position i of a block is accepted with a_i given the ones before it were
    (the last rate past the profile's end): the law of tokens per cycle, chi-square."""
    k = 6
    runs = accepted_per_cycle(decoding, HEAVY_HEAD, k, window=4)
    counts = np.concatenate([np.asarray(run) for run in runs])
    n = len(counts)
    law = accepted_distribution(HEAVY_HEAD, k)
    observed = np.bincount(counts, minlength=k + 1)
    assert chisquare(observed, law * n).pvalue > 0.001, (observed, np.round(law * n))
    tokens = counts + 1
    assert abs(tokens.mean() - expected_tokens_per_cycle(HEAVY_HEAD, k)) \
        < 3.3 * tokens.std() / math.sqrt(n)
    # position by position, each rate a binomial share of the cycles that tested it
    for i, rate in enumerate(position_rates(HEAVY_HEAD, k)[:4], start=1):
        tested, kept = int((counts >= i - 1).sum()), int((counts >= i).sum())
        low, high = binomial_interval(kept, tested, confidence=0.999)
        assert low <= rate <= high, (i, kept / tested, rate)


def test_the_profile_is_validated_at_load():
    config = pair(acceptance_by_position=[0.9, 0.0, 1.0])
    assert config.acceptance is None and config.acceptance_law == (0.9, 0.0, 1.0)
    assert [config.rate_at(i) for i in (1, 2, 3, 7)] == [0.9, 0.0, 1.0, 1.0]
    assert pair().acceptance_law == 0.7                        # i.i.d. by default
    for bad in ([0.9, 1.2], [-0.1], []):
        with pytest.raises(ValidationError):
            pair(acceptance_by_position=bad)
    with pytest.raises(ValidationError, match="not both"):
        pair(acceptance=0.7, acceptance_by_position=[0.9])
    with pytest.raises(ValidationError, match="vocab_size"):
        pair(acceptance_by_position=[0.99, 0.05], vocab_size=300)
    # a resolved config (both keys, one None) loads back
    assert SyntheticPairConfig.model_validate(config.model_dump()) == config


def test_rows_outside_a_block_are_position_one_and_p_never_moves():
    config = pair(acceptance_by_position=[0.9, 0.2])
    dists = ContextDistributions(config)
    for context in random_contexts(config.vocab_size, 50):
        p1, q1 = dists.rows(context, position=1)
        p2, q2 = dists.rows(context, position=2)
        assert np.array_equal(p1, p2)
        assert float(np.minimum(p1, q1).sum(dtype=np.float64)) == pytest.approx(0.9, abs=1e-5)
        assert float(np.minimum(p2, q2).sum(dtype=np.float64)) == pytest.approx(0.2, abs=1e-5)
    session = SyntheticModel(config, "draft", ForwardLatency(**ZERO)).session(PLAIN)
    assert session.position(5) == 1
    session.start_block(4)
    assert [session.position(i) for i in (3, 4, 5, 9)] == [1, 1, 2, 6]
