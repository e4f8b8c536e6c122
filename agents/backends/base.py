"""What every model backend provides: a session that feeds tokens and rewinds.

A ``ModelSession`` is one sequence's state inside a model (for a transformer,
its KV cache).  ``forward`` appends tokens and returns the next-token
distributions after them, already transformed by the decoding settings (so
verification sees exactly what sampling used); ``truncate`` drops everything
after a length; ``start_block`` says that the tokens from a length on are one
speculation cycle's drafts (only a backend whose rows depend on the position
in the block, the synthetic pair's per-position acceptance, uses it).
``TokenSequence`` keeps the committed tokens beside the
session and feeds only what the session has not processed yet, which is how
both the draft and the target avoid recomputing the prefix; it also keeps the
last row a forward returned (the distribution after everything processed), so
a verifier scoring drafts appended right after a block it already scored
(draft-ahead's deferred bonus) reuses that row instead of recomputing it.
"""

from __future__ import annotations

from typing import Literal, Protocol, Sequence

import numpy as np

from agents.sampling import SamplingConfig

Host = Literal["edge", "cloud"]   # which agent a model runs in


class ModelSession(Protocol):
    processed: int

    def forward(self, ids: Sequence[int], all_rows: bool = False) -> np.ndarray:
        """Append ``ids``; return the next-token distribution after the last one
        (shape ``(V,)``) or after each of them (``(len(ids), V)``)."""

    def truncate(self, length: int) -> None:
        """Forget every processed token from position ``length`` on."""

    def start_block(self, length: int) -> None:
        """The tokens from index ``length`` on are drafted as one block: the rows that
        predict them are its positions 1, 2, ..."""


class LanguageModel(Protocol):
    vocab_size: int          # width of the rows forward returns (a pair shares one width)
    eos_id: int | None

    def session(self, sampling: SamplingConfig) -> ModelSession: ...


class TokenSequence:
    """Committed (and tentatively drafted) tokens of one sequence over a model session."""

    def __init__(self, model: LanguageModel, prompt_ids: Sequence[int],
                 sampling: SamplingConfig) -> None:
        if len(prompt_ids) == 0:
            raise ValueError("a prompt needs at least one token")
        self.model_session = model.session(sampling)
        self.vocab_size = model.vocab_size
        self.tokens: list[int] = [int(t) for t in prompt_ids]
        self.prompt_length = len(self.tokens)
        # the distribution after every processed token, as the last forward returned it
        self.processed_row: np.ndarray | None = None

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_length:]

    def _pending(self) -> list[int]:
        return self.tokens[self.model_session.processed:]

    def next_probs(self) -> np.ndarray:
        """The next-token distribution after every token so far (the kept row when every
        token is processed: after a block kept whole with its bonus deferred)."""
        pending = self._pending()
        if not pending:
            if self.processed_row is None:
                raise RuntimeError("every token is processed: rewind before asking again")
            return self.processed_row
        self.processed_row = self.model_session.forward(pending)
        return self.processed_row

    def prefill(self) -> None:
        """Process every pending token (the prompt) without asking for a distribution."""
        self.next_probs()

    def score_last(self, k: int) -> np.ndarray:
        """Distributions before each of the last ``k`` tokens and after them: ``(k+1, V)``.
        The row before the first of them comes from the forward that processed the token
        before it when that one is already processed (the kept row), else from this one."""
        pending = self._pending()
        reuse = len(pending) == k and k > 0 and self.processed_row is not None
        if len(pending) < k + 1 and not reuse:
            raise RuntimeError(f"need {k + 1} unprocessed tokens to score {k} drafts")
        rows = self.model_session.forward(pending, all_rows=True)
        scored = np.concatenate([self.processed_row[None], rows]) if reuse else rows[-(k + 1):]
        self.processed_row = rows[-1]
        return scored

    def start_block(self) -> None:
        """The next tokens drafted onto this sequence form one speculation block."""
        self.model_session.start_block(len(self.tokens))
        self.processed_row = None   # a backend's rows may depend on the block: not reused

    def extend(self, ids: Sequence[int]) -> None:
        self.tokens.extend(int(t) for t in ids)

    def rewind(self, length: int) -> None:
        """Keep the first ``length`` tokens; the session forgets the rest."""
        del self.tokens[length:]
        if self.model_session.processed > length:
            self.model_session.truncate(length)
            self.processed_row = None
