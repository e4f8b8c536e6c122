import numpy as np
import pytest
from scipy.stats import chisquare

from agents.verification import (
    Verdict,
    pad_to_width,
    residual_distribution,
    sample_token,
    verify_greedy,
    verify_sampling,
)

VOCAB = 8
SAMPLES = 20_000
SIGNIFICANCE = 0.01

# Context-independent target p and draft q: every position of every cycle uses
# the same rows, so a lossless verifier's output is i.i.d. p.
_setup_rng = np.random.default_rng(2024)
TARGET = _setup_rng.dirichlet(np.full(VOCAB, 4.0))
DRAFT = _setup_rng.dirichlet(np.full(VOCAB, 1.0))
DRAFT_CDF = np.cumsum(DRAFT)


def one_hot(index, width=VOCAB):
    row = np.zeros(width)
    row[index] = 1.0
    return row


def draft_tokens(k, rng):
    return np.minimum(np.searchsorted(DRAFT_CDF, rng.random(k), side="right"), VOCAB - 1)


def generate(verifier, k, length, rng):
    """The first ``length`` tokens of a sequence decoded by repeated draft/verify cycles."""
    draft_rows = np.tile(DRAFT, (k, 1))
    target_rows = np.tile(TARGET, (k + 1, 1))
    tokens = []
    while len(tokens) < length:
        drafts = draft_tokens(k, rng)
        verdict = verifier(drafts, draft_rows, target_rows, rng, None)
        tokens.extend(verdict.committed(drafts))
    return tokens[:length]


def first_token_pvalue(verifier, k, seed):
    rng = np.random.default_rng(seed)
    firsts = [generate(verifier, k, 1, rng)[0] for _ in range(SAMPLES)]
    counts = np.bincount(firsts, minlength=VOCAB)
    return chisquare(counts, SAMPLES * TARGET).pvalue


def verify_with_inverted_ratio(draft_ids, draft_probs, target_probs, rng, eos_id):
    """Broken on purpose: accepts with min(1, q/p) instead of min(1, p/q)."""
    for position, token in enumerate(draft_ids):
        if rng.random() * target_probs[position, token] < draft_probs[position, token]:
            continue
        residual = residual_distribution(target_probs[position], draft_probs[position])
        return Verdict(position, sample_token(residual, rng), False)
    return Verdict(len(draft_ids), sample_token(target_probs[-1], rng), False)


def verify_correcting_from_target(draft_ids, draft_probs, target_probs, rng, eos_id):
    """Broken on purpose: samples the correction from p instead of the residual."""
    for position, token in enumerate(draft_ids):
        if rng.random() * draft_probs[position, token] < target_probs[position, token]:
            continue
        return Verdict(position, sample_token(target_probs[position], rng), False)
    return Verdict(len(draft_ids), sample_token(target_probs[-1], rng), False)


# --- greedy -----------------------------------------------------------------


def test_greedy_accepts_all_and_adds_bonus():
    target = np.stack([one_hot(3), one_hot(5), one_hot(1)])
    verdict = verify_greedy(np.array([3, 5]), target, eos_id=7)
    assert verdict == Verdict(accepted=2, next_token=1, finished=False)
    assert verdict.committed(np.array([3, 5])) == [3, 5, 1]


def test_greedy_first_mismatch_is_corrected():
    target = np.stack([one_hot(3), one_hot(5), one_hot(1), one_hot(2)])
    verdict = verify_greedy(np.array([3, 4, 1]), target, eos_id=7)
    assert verdict == Verdict(accepted=1, next_token=5, finished=False)
    assert verdict.committed([3, 4, 1]) == [3, 5]


def test_greedy_accepted_eos_ends_without_bonus():
    target = np.stack([one_hot(3), one_hot(7), one_hot(1), one_hot(2)])
    verdict = verify_greedy(np.array([3, 7, 1]), target, eos_id=7)
    assert verdict == Verdict(accepted=2, next_token=None, finished=True)
    assert verdict.committed([3, 7, 1]) == [3, 7]


def test_greedy_eos_as_correction_finishes():
    target = np.stack([one_hot(7), one_hot(1)])
    assert verify_greedy(np.array([2]), target, eos_id=7) == Verdict(0, 7, True)


def test_greedy_eos_as_bonus_finishes():
    target = np.stack([one_hot(2), one_hot(7)])
    assert verify_greedy(np.array([2]), target, eos_id=7) == Verdict(1, 7, True)


def test_greedy_k0_takes_argmax():
    logits = np.array([[0.1, 2.0, -1.0, 0.5]])
    assert verify_greedy(np.array([], dtype=np.int64), logits, eos_id=None) == Verdict(0, 1, False)


def test_greedy_draft_beyond_target_vocabulary_is_rejected():
    target = np.stack([one_hot(2, width=4), one_hot(1, width=4)])
    assert verify_greedy(np.array([6]), target, eos_id=None) == Verdict(0, 2, False)


# --- sampling: losslessness -------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3])
def test_sampling_first_committed_token_follows_target(k):
    assert first_token_pvalue(verify_sampling, k, seed=100 + k) > SIGNIFICANCE


@pytest.mark.parametrize("k", [2, 3])
def test_sampling_first_two_tokens_jointly_follow_target(k):
    rng = np.random.default_rng(300 + k)
    pairs = np.array([generate(verify_sampling, k, 2, rng) for _ in range(SAMPLES)])
    counts = np.bincount(pairs[:, 0] * VOCAB + pairs[:, 1], minlength=VOCAB * VOCAB)
    expected = SAMPLES * np.outer(TARGET, TARGET).ravel()
    assert chisquare(counts, expected).pvalue > SIGNIFICANCE


@pytest.mark.parametrize("broken", [verify_with_inverted_ratio, verify_correcting_from_target])
def test_broken_verifiers_fail_the_same_test(broken):
    assert first_token_pvalue(broken, k=1, seed=101) < SIGNIFICANCE


def test_sampling_acceptance_rate_is_overlap_of_p_and_q():
    rng = np.random.default_rng(5)
    draft_rows, target_rows = DRAFT[None, :], np.tile(TARGET, (2, 1))
    accepted = sum(
        verify_sampling(draft_tokens(1, rng), draft_rows, target_rows, rng, None).accepted
        for _ in range(SAMPLES)
    )
    expected_rate = np.minimum(TARGET, DRAFT).sum()
    standard_error = np.sqrt(expected_rate * (1 - expected_rate) / SAMPLES)
    assert abs(accepted / SAMPLES - expected_rate) < 4 * standard_error


def test_sampling_k0_samples_from_row_zero():
    rng = np.random.default_rng(6)
    empty_drafts = np.empty((0, VOCAB))
    tokens = [
        verify_sampling([], empty_drafts, TARGET[None, :], rng, None).next_token
        for _ in range(SAMPLES)
    ]
    assert chisquare(np.bincount(tokens, minlength=VOCAB), SAMPLES * TARGET).pvalue > SIGNIFICANCE


# --- sampling: deterministic cases and EOS ----------------------------------


def test_sampling_identical_distributions_accept_everything():
    rng = np.random.default_rng(7)
    target = np.stack([one_hot(2), one_hot(4), one_hot(6), one_hot(1)])
    verdict = verify_sampling(np.array([2, 4, 6]), target[:3], target, rng, eos_id=None)
    assert verdict == Verdict(accepted=3, next_token=1, finished=False)


def test_sampling_zero_target_probability_is_rejected_and_corrected_from_residual():
    rng = np.random.default_rng(8)
    draft = np.array([[0.5, 0.5, 0.0, 0.0]])
    target = np.array([[0.0, 0.5, 0.5, 0.0], [0.25] * 4])
    verdict = verify_sampling(np.array([0]), draft, target, rng, eos_id=None)
    assert verdict == Verdict(accepted=0, next_token=2, finished=False)


def test_sampling_accepted_eos_stops_without_further_tests_or_bonus():
    rng = np.random.default_rng(9)
    rows = np.stack([one_hot(3), one_hot(7), one_hot(1), one_hot(1)])
    verdict = verify_sampling(np.array([3, 7, 1]), rows[:3], rows, rng, eos_id=7)
    assert verdict == Verdict(accepted=2, next_token=None, finished=True)
    untouched = np.random.default_rng(9)
    untouched.random(2)
    assert rng.random() == untouched.random(), "exactly two accept tests were drawn"


def test_sampling_eos_correction_finishes():
    rng = np.random.default_rng(10)
    verdict = verify_sampling(
        np.array([2]), one_hot(2)[None, :], np.stack([one_hot(7), one_hot(1)]), rng, eos_id=7
    )
    assert verdict == Verdict(accepted=0, next_token=7, finished=True)


def test_sampling_eos_bonus_finishes():
    rng = np.random.default_rng(11)
    verdict = verify_sampling(
        np.array([2]), one_hot(2)[None, :], np.stack([one_hot(2), one_hot(7)]), rng, eos_id=7
    )
    assert verdict == Verdict(accepted=1, next_token=7, finished=True)


def test_sampling_zero_draft_probability_accepts_iff_target_has_mass():
    draft = np.array([[1.0, 0.0, 0.0]])
    target = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    rng = np.random.default_rng(12)
    assert verify_sampling(np.array([1]), draft, target, rng, None) == Verdict(1, 0, False)
    assert verify_sampling(np.array([2]), draft, target, rng, None) == Verdict(0, 1, False)


# --- vocabularies of different width ----------------------------------------


def test_pad_to_width_appends_zero_columns():
    rows = np.array([[0.5, 0.5], [1.0, 0.0]])
    padded = pad_to_width(rows, 4)
    assert padded.shape == (2, 4)
    np.testing.assert_array_equal(padded[:, 2:], 0.0)
    np.testing.assert_array_equal(padded[:, :2], rows)
    assert pad_to_width(rows, 2) is rows
    with pytest.raises(ValueError, match="width"):
        pad_to_width(rows, 1)


def test_target_wider_than_draft_can_correct_into_extra_tokens():
    rng = np.random.default_rng(13)
    draft = np.full((1, 8), 1 / 8)
    target = np.stack([one_hot(9, width=10), one_hot(0, width=10)])
    assert verify_sampling(np.array([3]), draft, target, rng, None) == Verdict(0, 9, False)


def test_draft_wider_than_target_rejects_tokens_the_target_lacks():
    rng = np.random.default_rng(14)
    draft = one_hot(9, width=10)[None, :]
    target = np.stack([one_hot(4), one_hot(0)])
    assert verify_sampling(np.array([9]), draft, target, rng, None) == Verdict(0, 4, False)


def test_residual_distribution_pads_and_normalises():
    residual = residual_distribution(np.array([0.2, 0.3, 0.5]), np.array([0.5, 0.5]))
    np.testing.assert_allclose(residual, [0.0, 0.0, 1.0])
    residual = residual_distribution(np.array([0.6, 0.4]), np.array([0.3, 0.3, 0.4]))
    np.testing.assert_allclose(residual, [0.75, 0.25, 0.0])


def test_residual_distribution_falls_back_to_target_when_empty():
    p = np.array([0.25, 0.75])
    np.testing.assert_allclose(residual_distribution(p, p), p)


# --- sample_token -----------------------------------------------------------


def test_sample_token_tolerates_sums_slightly_off_one():
    rng = np.random.default_rng(15)
    probs = TARGET.astype(np.float16)
    tokens = [sample_token(probs, rng) for _ in range(SAMPLES)]
    expected = SAMPLES * probs.astype(np.float64) / probs.astype(np.float64).sum()
    assert chisquare(np.bincount(tokens, minlength=VOCAB), expected).pvalue > SIGNIFICANCE


class _LargestUniform:
    def random(self):
        return np.nextafter(1.0, 0.0)


def test_sample_token_never_returns_zero_probability_tail():
    probs = np.array([0.3, 0.3, 0.4 + 1e-12, 0.0, 0.0])
    assert sample_token(probs, _LargestUniform()) == 2


def test_sample_token_rejects_invalid_rows():
    rng = np.random.default_rng(16)
    for bad in (np.zeros(3), np.array([0.5, -0.1, 0.6]), np.array([]), np.ones((2, 2))):
        with pytest.raises(ValueError):
            sample_token(bad, rng)


# --- shape validation -------------------------------------------------------


def uniform_rows(count):
    return np.full((count, 4), 0.25)


@pytest.mark.parametrize(
    "draft_ids, draft_probs, target_probs, message",
    [
        (np.array([1, 2]), uniform_rows(2), uniform_rows(2), "target_probs must have shape"),
        (np.array([1, 2]), uniform_rows(1), uniform_rows(3), "draft_probs must have shape"),
        (np.array([[1, 2]]), uniform_rows(2), uniform_rows(3), "1-D"),
        (np.array([1.0, 2.0]), uniform_rows(2), uniform_rows(3), "integers"),
        (np.array([-1, 2]), uniform_rows(2), uniform_rows(3), "non-negative"),
        (np.array([1, 5]), uniform_rows(2), uniform_rows(3), "outside the draft vocabulary"),
        (np.array([1]), uniform_rows(1), uniform_rows(1)[0], "target_probs must have shape"),
    ],
)
def test_sampling_rejects_bad_shapes(draft_ids, draft_probs, target_probs, message):
    with pytest.raises(ValueError, match=message):
        verify_sampling(draft_ids, draft_probs, target_probs, np.random.default_rng(0), None)


def test_greedy_rejects_bad_shapes():
    with pytest.raises(ValueError, match="target_probs must have shape"):
        verify_greedy(np.array([1, 2]), np.ones((2, 4)), None)
