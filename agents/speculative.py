"""The steps of a speculation cycle, shared by the edge (fixed-K, NASD) and the
cloud (``cloud-spec`` and verifying edge drafts): pick a token, draft K
tokens, verify them against the target, commit the verdict on a sequence.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np

from agents.backends.base import TokenSequence
from agents.verification import Verdict, sample_token, verify_greedy, verify_sampling

Decoding = Literal["greedy", "sampling"]


def session_rng(seed: int, session: str, side: str) -> np.random.Generator:
    """A generator private to one side of one session, reproducible from the seed."""
    digest = hashlib.blake2b(f"{session}/{side}".encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "little")])


def choose_token(probs: np.ndarray, decoding: Decoding, rng: np.random.Generator) -> int:
    if decoding == "greedy":
        return int(np.argmax(probs))
    return sample_token(probs, rng)


def draft_tokens(sequence: TokenSequence, k: int, decoding: Decoding,
                 rng: np.random.Generator, eos_id: int | None) -> tuple[list[int], np.ndarray]:
    """Draft up to ``k`` tokens onto ``sequence`` (stopping after EOS); return ids and rows."""
    ids, rows = [], []
    for _ in range(k):
        probs = sequence.next_probs()
        token = choose_token(probs, decoding, rng)
        sequence.extend([token])
        ids.append(token)
        rows.append(probs)
        if token == eos_id:
            break
    if not rows:
        return ids, np.zeros((0, sequence.vocab_size), dtype=np.float32)
    return ids, np.stack(rows)


def verify_drafts(target: TokenSequence, draft_ids: list[int], draft_rows: np.ndarray | None,
                  decoding: Decoding, rng: np.random.Generator, eos_id: int | None) -> Verdict:
    """Score the drafts with the target, verify them, and commit the verdict on ``target``."""
    committed_length = len(target.tokens)
    target.extend(draft_ids)
    target_rows = target.score_last(len(draft_ids))
    if decoding == "greedy":
        verdict = verify_greedy(np.asarray(draft_ids), target_rows, eos_id)
    else:
        if draft_rows is None:
            raise ValueError("sampling verification needs the draft distributions")
        verdict = verify_sampling(np.asarray(draft_ids), draft_rows, target_rows, rng, eos_id)
    apply_verdict(target, committed_length, verdict)
    return verdict


def apply_verdict(sequence: TokenSequence, committed_length: int, verdict: Verdict) -> None:
    """Keep the accepted drafts after ``committed_length`` and add the correction or bonus."""
    sequence.rewind(committed_length + verdict.accepted)
    if verdict.next_token is not None:
        sequence.extend([verdict.next_token])
