"""Bytes one speculation cycle puts on the wire for a payload codec: the ``draft`` message
of K drafts (up) and the ``verdict`` answering it (down; under ``q-scalar`` after a
rejection it also carries the target row, dense or, for a truncated target, sparse),
encoded by the agents' own codecs and protocol, ZMTP framing included: what
``shaping.link_model.transmit_s`` takes.  The budget guardrail's network term
(``orchestrator.config.guardrail``) and ``benchmarks/codec_bytes.py`` read them from here.
"""

from __future__ import annotations

import numpy as np

from agents.codecs import encode_target_row, get_codec
from agents.protocol import Message, encode
from shaping.link_model import zmtp_wire_bytes

# a verdict's fields as the cloud sends them (``agents.cloud.verdict_message``)
VERDICT = {"accepted": 2, "token": 17, "residual": False, "finished": False, "compute_s": 0.0123}


def message_bytes(message: Message) -> int:
    return zmtp_wire_bytes(encode(message))


def draft_message(codec_name: str, k: int, vocab: int,
                  rng: np.random.Generator) -> tuple[Message, np.ndarray]:
    """A ``draft`` of ``k`` tokens as ``codec_name`` sends it, for a vocabulary of ``vocab``
    (rows of a peaked Dirichlet, each drafting its argmax), and the draft's rows."""
    rows = rng.dirichlet(np.full(vocab, 0.05), size=k).astype(np.float32)
    ids = [int(np.argmax(row)) for row in rows]
    return Message("draft", "edge/q1/0", 7, {}, get_codec(codec_name).encode(ids, rows)), rows


def cycle_bytes(codec_name: str, k: int, vocab: int,
                rng: np.random.Generator | None = None) -> dict[str, int]:
    """``up`` and ``down`` of one cycle; for ``q-scalar`` also ``down_rejected`` (the verdict
    with the target row, dense) and ``down_rejected_top50`` (sparse: a target truncated to
    its top 50)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    draft, rows = draft_message(codec_name, k, vocab, rng)
    sizes = {"up": message_bytes(draft),
             "down": message_bytes(Message("verdict", "edge/q1/0", 7, VERDICT))}
    if codec_name == "q-scalar":
        residual = {**VERDICT, "token": -1, "residual": True}
        sizes["down_rejected"] = message_bytes(Message("verdict", "edge/q1/0", 7, residual,
                                                       encode_target_row(rows[0])))
        truncated = np.where(rows[0] >= np.sort(rows[0])[-50], rows[0], 0)  # top-k 50
        sizes["down_rejected_top50"] = message_bytes(Message("verdict", "edge/q1/0", 7, residual,
                                                             encode_target_row(truncated)))
    return sizes
