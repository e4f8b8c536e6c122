"""Tokenizers: text to ids and back.

``ByteTokenizer`` serves backends without a vocabulary of their own (the
synthetic pair): one id per UTF-8 byte, skipping reserved ids such as EOS.
``HFTokenizer`` adapts a transformers tokenizer.
"""

from __future__ import annotations

from typing import Protocol, Sequence


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    def __init__(self, vocab_size: int, reserved: Sequence[int] = ()) -> None:
        usable = [i for i in range(vocab_size) if i not in set(reserved)]
        if len(usable) < 256:
            raise ValueError("a byte tokenizer needs at least 256 usable ids")
        self.byte_to_id = usable[:256]
        self.id_to_byte = {token: byte for byte, token in enumerate(self.byte_to_id)}

    def encode(self, text: str) -> list[int]:
        return [self.byte_to_id[b] for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        raw = bytes(self.id_to_byte[i] for i in ids if i in self.id_to_byte)
        return raw.decode("utf-8", errors="replace")


class HFTokenizer:
    """A transformers tokenizer behind the ``Tokenizer`` protocol."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)
