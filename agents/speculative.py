"""The steps of a speculation cycle, shared by the edge (fixed-K, NASD) and the
cloud (``cloud-spec`` and verifying edge drafts): pick a token, draft K
tokens through a payload codec, verify them against the target, commit the
verdict on a sequence.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from agents.backends.base import TokenSequence
from agents.codecs import DraftCodec, DraftPayload
from agents.sampling import Decoding
from agents.verification import (Verdict, accept_drafts, residual_distribution, sample_token,
                                 verify_greedy, verify_sampling)


def session_rng(seed: int, session: str, side: str) -> np.random.Generator:
    """A generator private to one side of one session, reproducible from the seed."""
    digest = hashlib.blake2b(f"{session}/{side}".encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "little")])


def choose_token(probs: np.ndarray, decoding: Decoding, rng: np.random.Generator) -> int:
    if decoding == "greedy":
        return int(np.argmax(probs))
    return sample_token(probs, rng)


@dataclass
class Drafts:
    ids: list[int]
    model_rows: np.ndarray     # the draft model's distributions (what codecs encode)
    sampled_rows: np.ndarray   # what each id was sampled from (the codec's distribution)


def draft_tokens(sequence: TokenSequence, k: int, decoding: Decoding, rng: np.random.Generator,
                 eos_id: int | None, codec: DraftCodec) -> Drafts:
    """Draft up to ``k`` tokens onto ``sequence`` (stopping after EOS)."""
    ids, model_rows, sampled_rows = [], [], []
    for _ in range(k):
        probs = sequence.next_probs()
        distribution = codec.distribution(probs)
        token = choose_token(distribution, decoding, rng)
        sequence.extend([token])
        ids.append(token)
        model_rows.append(probs)
        sampled_rows.append(distribution)
        if token == eos_id:
            break
    empty = np.zeros((0, sequence.vocab_size))
    return Drafts(ids, np.stack(model_rows) if ids else empty,
                  np.stack(sampled_rows) if ids else empty)


@dataclass(frozen=True)
class Verification:
    verdict: Verdict
    residual_row: np.ndarray | None = None  # q-scalar rejection: p_i, for the edge to sample from


def verify_drafts(target: TokenSequence, payload: DraftPayload, decoding: Decoding,
                  rng: np.random.Generator, eos_id: int | None) -> Verification:
    """Score the drafts with the target, verify them, and commit on ``target``.

    With a payload that carries only q_i(d_i) (``q-scalar``), a rejection
    leaves the correction to the edge: the verdict has no next token, the
    target row comes back in ``residual_row``, and the edge's choice arrives
    with its next message (``apply_correction``).
    """
    draft_ids = [int(t) for t in payload.ids]
    committed_length = len(target.tokens)
    target.extend(draft_ids)
    target_rows = target.score_last(len(draft_ids))
    residual_row = None
    if decoding == "greedy":
        verdict = verify_greedy(payload.ids, target_rows, eos_id)
    elif payload.rows is not None:
        verdict = verify_sampling(payload.ids, payload.rows, target_rows, rng, eos_id)
    else:
        accepted, ended = accept_drafts(payload.ids, payload.token_probs, target_rows, rng, eos_id)
        if ended or accepted < len(draft_ids):
            verdict = Verdict(accepted, None, ended)
            residual_row = None if ended else target_rows[accepted]
        else:
            bonus = sample_token(target_rows[accepted], rng)
            verdict = Verdict(accepted, bonus, bonus == eos_id)
    apply_verdict(target, committed_length, verdict)
    return Verification(verdict, residual_row)


def sample_correction(target_row: np.ndarray, sampled_row: np.ndarray,
                      rng: np.random.Generator) -> int:
    """The edge's half of a q-scalar rejection: a token from max(0, p - q), normalized."""
    return sample_token(residual_distribution(np.asarray(target_row, dtype=np.float64), sampled_row),
                        rng)


def apply_verdict(sequence: TokenSequence, committed_length: int, verdict: Verdict) -> None:
    """Keep the accepted drafts after ``committed_length`` and add the correction or bonus."""
    sequence.rewind(committed_length + verdict.accepted)
    if verdict.next_token is not None:
        sequence.extend([verdict.next_token])
