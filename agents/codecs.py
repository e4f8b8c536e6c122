"""Payload codecs: what the edge sends with its drafted tokens, and what the
verifier rebuilds from it.

Every codec is exact, not an approximation: ``distribution`` is the
distribution the draft actually samples from, and it is a deterministic
function of what goes on the wire, so the verifier rebuilds the very same
numbers (in float64) from the message.

- ``ids``: greedy decoding; the ids alone.
- ``q-scalar``: ids plus q_i(d_i) per drafted token (float64); the cloud runs
  the accept tests, and on a rejection answers with the target row p_i so the
  edge samples the residual max(0, p_i - q_i) itself.
- ``topk`` (``topkN``, default N = 8): the draft samples from its top-N
  truncated distribution, so N (id, prob) pairs per position say everything.
- ``full16`` / ``full32``: whole vocabulary rows; with full16 the draft
  samples from the float16-rounded row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from agents.wire_errors import ProtocolError

TOPK_DEFAULT = 8


def normalized(rows: np.ndarray) -> np.ndarray:
    """Rows as float64 summing to one (the form both sides sample and test on); a row with a
    negative, NaN or infinite entry, or no mass, is refused (a peer's bytes may hold any)."""
    rows = np.asarray(rows, dtype=np.float64)
    if not np.all(np.isfinite(rows)) or np.any(rows < 0):
        raise ProtocolError("a draft distribution must be finite and non-negative")
    totals = rows.sum(axis=-1, keepdims=True)
    if np.any(totals <= 0):
        raise ProtocolError("a draft distribution has no mass")
    return rows / totals


@dataclass(frozen=True)
class DraftPayload:
    ids: np.ndarray
    rows: np.ndarray | None          # (k, V) float64 draft distributions, where the codec carries them
    token_probs: np.ndarray | None   # (k,) q_i(d_i), where the codec carries only those


class DraftCodec:
    """Base: the ids alone (greedy)."""

    name = "ids"
    carries_draft_probs = False

    def distribution(self, probs: np.ndarray) -> np.ndarray:
        """What the draft samples from, given its model's distribution ``probs``."""
        return normalized(probs)

    def encode(self, ids: list[int], probs: np.ndarray) -> dict[str, np.ndarray]:
        """Arrays for a ``draft`` message; ``probs`` are the model's rows, one per id."""
        return {"ids": np.asarray(ids, dtype=np.int32)}

    def decode(self, arrays: dict[str, np.ndarray], width: int) -> DraftPayload:
        return DraftPayload(self._ids(arrays, width), None, None)

    def _ids(self, arrays: dict[str, np.ndarray], width: int) -> np.ndarray:
        ids = arrays.get("ids")
        if ids is None or ids.ndim != 1:
            raise ProtocolError(f"codec {self.name}: a 1-d 'ids' array is required")
        if len(ids) and (ids.min() < 0 or ids.max() >= width):
            raise ProtocolError("drafted ids outside the vocabulary")
        return ids

    @staticmethod
    def _array(arrays: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
        array = arrays.get(name)
        if array is None or array.shape != shape:
            raise ProtocolError(f"'{name}' must have shape {shape}")
        return array


class FullRowsCodec(DraftCodec):
    carries_draft_probs = True

    def __init__(self, name: str, dtype: type) -> None:
        self.name, self.dtype = name, dtype

    def distribution(self, probs):
        return normalized(np.asarray(probs).astype(self.dtype))

    def encode(self, ids, probs):
        return {**super().encode(ids, probs), "q": np.asarray(probs).astype(self.dtype)}

    def decode(self, arrays, width):
        ids = self._ids(arrays, width)
        rows = arrays.get("q")
        if rows is None or rows.ndim != 2 or len(rows) != len(ids) or rows.shape[1] > width:
            raise ProtocolError(f"codec {self.name}: 'q' must hold one row per drafted id")
        padded = np.zeros((len(ids), width), dtype=np.float64)
        padded[:, :rows.shape[1]] = normalized(rows) if len(ids) else rows
        return DraftPayload(ids, padded, None)


class TopKCodec(DraftCodec):
    carries_draft_probs = True

    def __init__(self, n: int) -> None:
        self.n = n
        self.name = "topk" if n == TOPK_DEFAULT else f"topk{n}"

    def _top(self, probs: np.ndarray) -> np.ndarray:
        return np.argsort(-np.asarray(probs), axis=-1, kind="stable")[..., :self.n]

    def distribution(self, probs):
        probs = np.asarray(probs)
        truncated = np.zeros(probs.shape, dtype=np.float64)
        top = self._top(probs)
        np.put_along_axis(truncated, top, np.take_along_axis(probs, top, -1).astype(np.float32), -1)
        return normalized(truncated)

    def encode(self, ids, probs):
        probs = np.asarray(probs)
        top = self._top(probs)
        return {**super().encode(ids, probs), "top_ids": top.astype(np.int32),
                "top_probs": np.take_along_axis(probs, top, -1).astype(np.float32)}

    def decode(self, arrays, width):
        ids = self._ids(arrays, width)
        shape = (len(ids), min(self.n, width))
        top_ids, top_probs = self._array(arrays, "top_ids", shape), self._array(arrays, "top_probs", shape)
        if len(ids) and (top_ids.min() < 0 or top_ids.max() >= width):
            raise ProtocolError("top ids outside the vocabulary")
        rows = np.zeros((len(ids), width), dtype=np.float64)
        np.put_along_axis(rows, top_ids.astype(np.int64), top_probs, -1)
        return DraftPayload(ids, normalized(rows) if len(ids) else rows, None)


class QScalarCodec(DraftCodec):
    name = "q-scalar"
    carries_draft_probs = True

    def encode(self, ids, probs):
        chosen = [self.distribution(row)[token] for token, row in zip(ids, probs)]
        return {**super().encode(ids, probs), "q_ids": np.asarray(chosen, dtype=np.float64)}

    def decode(self, arrays, width):
        ids = self._ids(arrays, width)
        token_probs = self._array(arrays, "q_ids", (len(ids),))
        if not np.all((token_probs > 0) & (token_probs <= 1)):     # NaN fails it too
            raise ProtocolError("q_ids must lie in (0, 1]")
        return DraftPayload(ids, None, token_probs)


def encode_target_row(row: np.ndarray) -> dict[str, np.ndarray]:
    """A target row for the edge (q-scalar rejection): float32 values, sparse when
    that is smaller (top-k / top-p leave most of a large vocabulary at zero)."""
    row = np.asarray(row, dtype=np.float32)
    support = np.flatnonzero(row)
    if len(support) * 8 < row.size * 4:
        return {"p_ids": support.astype(np.int32), "p_values": row[support]}
    return {"p": row}


def decode_target_row(arrays: dict[str, np.ndarray], width: int) -> np.ndarray:
    if "p" in arrays:
        row = arrays["p"]
        if row.ndim != 1 or row.size > width:
            raise ProtocolError("'p' must be one row no wider than the vocabulary")
        return np.pad(row.astype(np.float64), (0, width - row.size))
    ids, values = arrays.get("p_ids"), arrays.get("p_values")
    if ids is None or values is None or ids.shape != values.shape or ids.ndim != 1:
        raise ProtocolError("a target row needs 'p', or 'p_ids' and 'p_values' of one shape")
    if len(ids) and (ids.min() < 0 or ids.max() >= width):
        raise ProtocolError("target row ids outside the vocabulary")
    row = np.zeros(width, dtype=np.float64)
    row[ids.astype(np.int64)] = values
    return row


CODEC_NAMES = ("ids", "q-scalar", "topk", "full16", "full32")


def get_codec(name: str) -> DraftCodec:
    """The codec called ``name`` (``topkN`` for another N); ValueError when unknown."""
    if name == "ids":
        return DraftCodec()
    if name == "q-scalar":
        return QScalarCodec()
    if name in ("full16", "full32"):
        return FullRowsCodec(name, np.float16 if name == "full16" else np.float32)
    match = re.fullmatch(r"topk(\d*)", name)
    if match and (not match.group(1) or 1 <= int(match.group(1)) <= 4096):
        return TopKCodec(int(match.group(1) or TOPK_DEFAULT))
    raise ValueError(f"unknown codec {name!r}; one of {', '.join(CODEC_NAMES)} (or topkN)")
