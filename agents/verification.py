"""Verification of drafted tokens: the accept/reject step of speculative decoding.

This module owns the rejection sampler (the role vLLM's rejection sampler
plays): given the drafted token ids, the target's next-token distribution at
every drafted position and, when sampling, the draft's distributions, it
decides how many drafted tokens to keep and which token the target adds after
them (the correction on a rejection, the bonus when every draft is kept).

``verify_sampling`` keeps the committed tokens distributed exactly as the
target would have sampled them (Leviathan et al. 2023, Chen et al. 2023);
``verify_greedy`` is its temperature-0 form.  With ``bonus=False`` (draft-ahead: the
draft side has already sent the next block, drafted on the premise that every draft of this
one is kept) a block kept whole gets no bonus token: the first draft of the next block takes
its place and is tested against the same target row, so every committed token is still an
accepted draft or a target sample.  Vocabularies of different width
(a draft and a target with slightly different embedding tables) are handled by
treating the missing tail of the narrower one as zero probability.

Pure: no I/O, no clocks; randomness comes only from the generator passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Verdict:
    """Outcome of verifying one cycle's drafts.

    ``accepted`` drafted tokens are kept (0..k).  ``next_token`` is the
    target's token after them: the correction on a rejection, the bonus when
    all k drafts were kept, and None when an accepted draft was EOS (the
    sequence ends there) or when all k were kept and the bonus was deferred to
    the next block (``bonus_deferred``).  ``finished`` is True when the
    committed tokens end with EOS.
    """

    accepted: int
    next_token: int | None
    finished: bool

    def committed(self, draft_ids) -> list[int]:
        """The tokens this cycle appends to the output, in order."""
        tokens = [int(token) for token in np.asarray(draft_ids)[: self.accepted]]
        if self.next_token is not None:
            tokens.append(self.next_token)
        return tokens

    def bonus_deferred(self, drafted: int) -> bool:
        """Whether this verdict on ``drafted`` drafts kept them all and committed nothing after
        them: the premise of a block drafted ahead on this one holds (draft-ahead)."""
        return self.accepted == drafted and self.next_token is None and not self.finished


def pad_to_width(rows: np.ndarray, width: int) -> np.ndarray:
    """Zero-pad the last axis of ``rows`` to ``width`` (returned unchanged if already that wide)."""
    rows = np.asarray(rows)
    current = rows.shape[-1]
    if current > width:
        raise ValueError(f"cannot pad rows of width {current} down to width {width}")
    if current == width:
        return rows
    padding = [(0, 0)] * (rows.ndim - 1) + [(0, width - current)]
    return np.pad(rows, padding)


def sample_token(probs: np.ndarray, rng: np.random.Generator) -> int:
    """Draw one index from ``probs`` by inverse CDF with a single uniform.

    ``probs`` need not sum to exactly 1 (float16 rows from the wire rarely
    do): the uniform is scaled by the actual total.  Zero-probability entries
    are never returned.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 1 or probs.size == 0:
        raise ValueError(f"probs must be a non-empty 1-D array, got shape {probs.shape}")
    if np.any(probs < 0):
        raise ValueError("probs must be non-negative")
    cdf = np.cumsum(probs)
    total = cdf[-1]
    if not (np.isfinite(total) and total > 0):
        raise ValueError(f"probs must have a positive finite sum, got {total}")
    index = int(np.searchsorted(cdf, rng.random() * total, side="right"))
    if index == probs.size:
        # u * total rounded up to total: the draw belongs to the last token that has mass.
        index = int(np.flatnonzero(probs)[-1])
    return index


def residual_distribution(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """normalize(max(0, p - q)): what a rejected position is resampled from.

    ``p`` (target) and ``q`` (draft) may differ in width; the narrower is
    zero-padded.  When the residual has no mass (p <= q everywhere, in exact
    arithmetic only when p == q, where a rejection cannot happen) this falls
    back to ``p`` so that float noise can never produce an empty distribution.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.ndim != 1 or q.ndim != 1:
        raise ValueError(f"p and q must be 1-D, got shapes {p.shape} and {q.shape}")
    width = max(p.size, q.size)
    p = pad_to_width(p, width)
    q = pad_to_width(q, width)
    residual = np.maximum(p - q, 0.0)
    residual_mass = residual.sum()
    if residual_mass > 0:
        return residual / residual_mass
    target_mass = p.sum()
    if not target_mass > 0:
        raise ValueError("target distribution has no mass")
    return p / target_mass


def verify_greedy(
    draft_ids: np.ndarray, target_probs: np.ndarray, eos_id: int | None, bonus: bool = True
) -> Verdict:
    """Greedy verification: keep drafts while each equals the target's argmax.

    ``target_probs`` has shape (k+1, V): row i is the target's next-token
    distribution before draft i, row k the one after all drafts.  Logits work
    as well, since only the argmax is used.  A draft id beyond V has zero
    target probability and is therefore rejected.  ``bonus=False``: all k kept
    commit no bonus (it is deferred to the next block).
    """
    draft_ids = _validated_draft_ids(draft_ids)
    k = draft_ids.size
    target_probs = _validated_rows(target_probs, k + 1, k, "target_probs")
    target_choices = np.argmax(target_probs, axis=1)
    for position, token in enumerate(draft_ids):
        if token != target_choices[position]:
            correction = int(target_choices[position])
            return Verdict(position, correction, correction == eos_id)
        if token == eos_id:
            return Verdict(position + 1, None, True)
    if not bonus:
        return Verdict(k, None, False)
    bonus_token = int(target_choices[k])
    return Verdict(k, bonus_token, bonus_token == eos_id)


def accept_drafts(
    draft_ids: np.ndarray,
    draft_token_probs: np.ndarray,
    target_probs: np.ndarray,
    rng: np.random.Generator,
    eos_id: int | None,
) -> tuple[int, bool]:
    """The accept tests alone: how many drafts are kept, and whether the last kept is EOS.

    ``draft_token_probs[i]`` is q_i(d_i), the probability the draft gave its
    own token i: the tests need nothing else from the draft, which is what
    lets the ``q-scalar`` codec send one number per drafted token.  Draws one
    uniform per tested token, in order.
    """
    draft_ids = _validated_draft_ids(draft_ids)
    k = draft_ids.size
    target_probs = _validated_rows(target_probs, k + 1, k, "target_probs")
    draft_token_probs = np.asarray(draft_token_probs, dtype=np.float64)
    if draft_token_probs.shape != (k,):
        raise ValueError(f"draft_token_probs must have shape ({k},), got {draft_token_probs.shape}")
    target_width = target_probs.shape[1]
    for position, token in enumerate(draft_ids):
        p_token = float(target_probs[position, token]) if token < target_width else 0.0
        # u < p/q written without the division, so q == 0 accepts iff p > 0.
        if not rng.random() * draft_token_probs[position] < p_token:
            return position, False
        if token == eos_id:
            return position + 1, True
    return k, False


def verify_sampling(
    draft_ids: np.ndarray,
    draft_probs: np.ndarray,
    target_probs: np.ndarray,
    rng: np.random.Generator,
    eos_id: int | None,
    bonus: bool = True,
) -> Verdict:
    """Lossless speculative sampling (rejection sampling against the target).

    ``draft_probs`` has shape (k, Vq): row i is the distribution draft i was
    sampled from.  ``target_probs`` has shape (k+1, Vp) as in
    ``verify_greedy``.  Draft i is kept with probability min(1, p_i(d)/q_i(d));
    the first rejection is replaced by a sample from the residual
    normalize(max(0, p_i - q_i)); if all k are kept a bonus is sampled from
    p_k (with ``bonus=False``, none: it is deferred to the next block).  An
    accepted EOS ends the sequence: nothing after it is tested or sampled.
    """
    draft_ids = _validated_draft_ids(draft_ids)
    k = draft_ids.size
    target_probs = _validated_rows(target_probs, k + 1, k, "target_probs")
    draft_probs = _validated_rows(draft_probs, k, k, "draft_probs")
    if k and draft_ids.max() >= draft_probs.shape[1]:
        raise ValueError(
            f"draft id {int(draft_ids.max())} is outside the draft vocabulary "
            f"of width {draft_probs.shape[1]}"
        )
    accepted, ended_on_eos = accept_drafts(
        draft_ids, draft_probs[np.arange(k), draft_ids], target_probs, rng, eos_id)
    if ended_on_eos:
        return Verdict(accepted, None, True)
    if accepted < k:
        correction = sample_token(
            residual_distribution(target_probs[accepted], draft_probs[accepted]), rng)
        return Verdict(accepted, correction, correction == eos_id)
    if not bonus:
        return Verdict(k, None, False)
    bonus_token = sample_token(target_probs[k], rng)
    return Verdict(k, bonus_token, bonus_token == eos_id)


def _validated_draft_ids(draft_ids) -> np.ndarray:
    draft_ids = np.asarray(draft_ids)
    if draft_ids.ndim != 1:
        raise ValueError(f"draft_ids must be 1-D, got shape {draft_ids.shape}")
    if draft_ids.size == 0:
        return draft_ids.astype(np.int64)
    if not np.issubdtype(draft_ids.dtype, np.integer):
        raise ValueError(f"draft_ids must be integers, got dtype {draft_ids.dtype}")
    if draft_ids.min() < 0:
        raise ValueError(f"draft_ids must be non-negative, got {int(draft_ids.min())}")
    return draft_ids


def _validated_rows(probs, expected_rows: int, drafted: int, name: str) -> np.ndarray:
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[0] != expected_rows:
        raise ValueError(
            f"{name} must have shape ({expected_rows}, vocab) for {drafted} drafted "
            f"tokens, got shape {probs.shape}"
        )
    if expected_rows and probs.shape[1] == 0:
        raise ValueError(f"{name} has an empty vocabulary axis")
    return probs
