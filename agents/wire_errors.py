"""The errors of the data plane, on the floor below everything that judges what a peer sent
(``protocol`` and its message schemas, ``codecs``), so that each of them can raise them."""

from __future__ import annotations


class ProtocolError(Exception):
    """A peer sent something that breaks the protocol."""


class ReceiveTimeout(ProtocolError):
    """Nothing arrived within the receive timeout."""


class MalformedMessage(ProtocolError):
    """A received message failed its checks before anything read it: which ``peer`` sent it
    (a ROUTER's receive fills it in) and the ``session`` and ``seq`` it named, where those
    were well-formed (else ``""`` and 0), so that an error can answer it."""

    def __init__(self, text: str, session: str = "", seq: int = 0) -> None:
        super().__init__(text)
        self.session, self.seq = session, seq
        self.peer: bytes | None = None


class PeerUnreachable(ProtocolError):
    """A ROUTER could not hand a message to its peer at once: the peer is gone, or has left
    so many messages unread that its queue is full."""
