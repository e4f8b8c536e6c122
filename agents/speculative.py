"""The steps of a speculation cycle, shared by the edge (fixed-K, NASD) and the
cloud (``cloud-spec`` and verifying edge drafts): pick a token, draft K
tokens through a payload codec, verify them against the target, commit the
verdict on a sequence (``settle_verdict``: the draft side's half, the q-scalar
correction included; a verdict that kept its whole block and deferred the bonus
to a block drafted ahead leaves the sequence as it is); plain decoding
(``decode_plainly``: the cloud's streams and hand-offs, edge-only and the
edge's cutoff stretches); and
``generate_locally``, the whole decoding loop when both models are in one
process (the cloud's ``generate``, the pair trainer's acceptance measurement).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from agents.backends.base import TokenSequence
from agents.codecs import DraftCodec, DraftPayload, get_codec
from agents.sampling import Decoding
from agents.verification import (Verdict, accept_drafts, pad_to_width, residual_distribution,
                                 sample_token, verify_greedy, verify_sampling)


def session_rng(seed: int, session: str, side: str) -> np.random.Generator:
    """A generator private to one side of one session, reproducible from the seed."""
    digest = hashlib.blake2b(f"{session}/{side}".encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "little")])


def choose_token(probs: np.ndarray, decoding: Decoding, rng: np.random.Generator) -> int:
    if decoding == "greedy":
        return int(np.argmax(probs))
    return sample_token(probs, rng)


def decode_plainly(sequence: TokenSequence, tokens: int, decoding: Decoding,
                   rng: np.random.Generator, eos_id: int | None) -> Iterator[int]:
    """Decode up to ``tokens`` tokens onto ``sequence``, one forward each, yielding each
    token once it is on the sequence; stops after EOS."""
    for _ in range(tokens):
        token = choose_token(sequence.next_probs(), decoding, rng)
        sequence.extend([token])
        yield token
        if token == eos_id:
            return


@dataclass
class Drafts:
    ids: list[int]
    model_rows: np.ndarray     # the draft model's distributions (what codecs encode)
    sampled_rows: np.ndarray   # what each id was sampled from (the codec's distribution)

    def ends_on(self, eos_id: int | None) -> bool:
        """Whether the block ends with ``eos_id``: the draft proposed the answer's end."""
        return bool(self.ids) and eos_id is not None and self.ids[-1] == eos_id


def draft_tokens(sequence: TokenSequence, k: int, decoding: Decoding, rng: np.random.Generator,
                 eos_id: int | None, codec: DraftCodec, confidence_floor: float = 0.0) -> Drafts:
    """Draft up to ``k`` tokens onto ``sequence`` (stopping after EOS), as one block.

    ``confidence_floor``: the early stop on the draft's own confidence (training-free, as
    SpecDec++ and AdaEDL stop on theirs): after the first draft, stop before a position whose
    likeliest token the draft gives less than this probability, since a draft it is unsure of
    is unlikely to be accepted; ``k`` stays the ceiling."""
    sequence.start_block()
    ids, model_rows, sampled_rows = [], [], []
    for _ in range(k):
        probs = sequence.next_probs()
        distribution = codec.distribution(probs)
        if ids and distribution.max() < confidence_floor:
            break
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
                  rng: np.random.Generator, eos_id: int | None,
                  bonus: bool = True) -> Verification:
    """Score the drafts with the target, verify them, and commit on ``target``.

    With a payload that carries only q_i(d_i) (``q-scalar``), a rejection
    leaves the correction to the edge: the verdict has no next token, the
    target row comes back in ``residual_row``, and the edge's choice arrives
    with its next message (the cloud's ``_caught_up``).  ``bonus=False``
    (draft-ahead: a block drafted on the premise that this one is kept whole
    follows): keeping every draft commits no bonus; the next block's first
    draft is tested against the target row after them, which ``target`` keeps
    (``TokenSequence.score_last``).
    """
    draft_ids = [int(t) for t in payload.ids]
    committed_length = len(target.tokens)
    target.extend(draft_ids)
    target_rows = target.score_last(len(draft_ids))
    residual_row = None
    if decoding == "greedy":
        verdict = verify_greedy(payload.ids, target_rows, eos_id, bonus)
    elif payload.rows is not None:
        verdict = verify_sampling(payload.ids, payload.rows, target_rows, rng, eos_id, bonus)
    else:
        accepted, ended = accept_drafts(payload.ids, payload.token_probs, target_rows, rng, eos_id)
        if ended or accepted < len(draft_ids):
            verdict = Verdict(accepted, None, ended)
            residual_row = None if ended else target_rows[accepted]
        elif not bonus:
            verdict = Verdict(accepted, None, False)
        else:
            token = sample_token(target_rows[accepted], rng)
            verdict = Verdict(accepted, token, token == eos_id)
    apply_verdict(target, committed_length, verdict)
    return Verification(verdict, residual_row)


# what verification answers for a block of drafts: the verdict, and where the codec left the
# correction to the draft side (q-scalar), the target row to sample it from (the verdict's
# next token is then None)
Verify = Callable[[Drafts], tuple[Verdict, "np.ndarray | None"]]


def speculation_step(draft: TokenSequence, k: int, decoding: Decoding, rng: np.random.Generator,
                     eos_id: int | None, codec: DraftCodec, verify: Verify,
                     confidence_floor: float = 0.0) -> tuple[Drafts, Verdict]:
    """One speculation cycle on the draft's side, wherever the target is: draft up to ``k``
    tokens on ``draft``, have ``verify`` judge them (the cloud over the wire, or a target in
    this process), sample the correction from the target row it returns when the codec left
    that to the draft side, and commit the verdict on ``draft``.  The one cycle loop body of
    the edge, ``generate_locally`` and ``orchestrator calibrate``.  ``confidence_floor``: the
    draft's early stop (``draft_tokens``)."""
    committed_length = len(draft.tokens)
    drafts = draft_tokens(draft, k, decoding, rng, eos_id, codec, confidence_floor)
    verdict, target_row = verify(drafts)
    return drafts, settle_verdict(draft, committed_length, drafts, verdict, target_row, rng,
                                  eos_id)


def settle_verdict(draft: TokenSequence, committed_length: int, drafts: Drafts, verdict: Verdict,
                   target_row: np.ndarray | None, rng: np.random.Generator,
                   eos_id: int | None) -> Verdict:
    """The draft side's half of a verdict on ``drafts`` (drafted on ``draft`` from
    ``committed_length`` on): sample the correction from ``target_row`` where the codec left
    it to this side (q-scalar), then commit (``apply_verdict``: keep the accepted drafts,
    drop everything after them, add the correction or bonus).  A verdict that kept the whole
    block with its bonus deferred (``Verdict.bonus_deferred``) leaves ``draft`` as it is: the
    blocks drafted ahead on it stay.  Returns the verdict with the correction in it."""
    if target_row is not None:
        token = sample_correction(target_row, drafts.sampled_rows[verdict.accepted], rng)
        verdict = Verdict(verdict.accepted, token, verdict.finished or token == eos_id)
    if not verdict.bonus_deferred(len(drafts.ids)):
        apply_verdict(draft, committed_length, verdict)
    return verdict


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


@dataclass(frozen=True)
class Commit:
    tokens: list[int]   # appended to the output by this step
    drafted: int = 0    # drafts tested in this step (0: a plain target step)
    accepted: int = 0


def generate_locally(target: TokenSequence, draft: TokenSequence | None, k: int,
                     decoding: Decoding, rng: np.random.Generator, eos_id: int | None,
                     max_new_tokens: int) -> Iterator[Commit]:
    """Decode with both models in this process, yielding each commit as it is made.

    Without ``draft``, plain decoding: one target token a step.  With it,
    speculation: the target picks the first token, then each cycle drafts up
    to ``k`` tokens (fewer near ``max_new_tokens``, so the correction or bonus
    still fits), verifies them on the draft's own rows and commits the verdict
    on both sequences.  Stops after EOS or ``max_new_tokens`` tokens.
    """
    if draft is None:
        yield from (Commit([token]) for token in
                    decode_plainly(target, max_new_tokens, decoding, rng, eos_id))
        return
    in_process = get_codec("full32")  # no wire between the models: the draft rows as they are
    draft.prefill()
    first = next(decode_plainly(target, 1, decoding, rng, eos_id))
    draft.extend([first])
    yield Commit([first])
    def verify(drafts: Drafts) -> tuple[Verdict, None]:
        payload = DraftPayload(np.asarray(drafts.ids, dtype=np.int64),
                               pad_to_width(drafts.sampled_rows, target.vocab_size), None)
        return verify_drafts(target, payload, decoding, rng, eos_id).verdict, None

    while target.generated[-1] != eos_id and len(target.generated) < max_new_tokens:
        committed_length = len(target.tokens)
        remaining = max_new_tokens - len(target.generated)
        drafts, verdict = speculation_step(draft, min(k, remaining - 1), decoding, rng, eos_id,
                                           in_process, verify)
        yield Commit(target.tokens[committed_length:], len(drafts.ids), verdict.accepted)
