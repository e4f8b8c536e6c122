"""Payload codecs: what the edge sends with its drafted tokens.

A codec turns drafted ids (and the draft distributions they were sampled
from) into named arrays for a ``draft`` message, and back.  Every codec is
exact: the verifier sees the same numbers the draft used.

- ``ids``: greedy decoding; the ids alone.
- ``full32``: ids plus whole float32 draft rows, for sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agents.protocol import ProtocolError


@dataclass(frozen=True)
class DraftCodec:
    name: str
    row_dtype: type | None      # None: the codec carries ids only (greedy)

    @property
    def carries_draft_probs(self) -> bool:
        return self.row_dtype is not None

    def encode(self, ids: np.ndarray, draft_rows: np.ndarray | None) -> dict[str, np.ndarray]:
        arrays = {"ids": np.asarray(ids, dtype=np.int32)}
        if self.carries_draft_probs:
            if draft_rows is None or len(draft_rows) != len(ids):
                raise ValueError(f"codec {self.name} needs one draft row per drafted id")
            arrays["q"] = np.asarray(draft_rows, dtype=self.row_dtype)
        return arrays

    def decode(self, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        ids = arrays.get("ids")
        if ids is None or ids.ndim != 1:
            raise ProtocolError(f"codec {self.name}: a 1-d 'ids' array is required")
        if not self.carries_draft_probs:
            return ids, None
        rows = arrays.get("q")
        if rows is None or rows.ndim != 2 or len(rows) != len(ids):
            raise ProtocolError(f"codec {self.name}: 'q' must hold one row per drafted id")
        return ids, rows.astype(np.float32)


CODECS = {codec.name: codec for codec in (
    DraftCodec("ids", None),
    DraftCodec("full32", np.float32),
)}
