"""Wire protocol between edge and cloud: msgpack header plus raw numpy buffers.

A message is a ZeroMQ multipart: frame 0 is a msgpack map
``{type, session, seq, sent_at, fields, arrays}`` where ``arrays`` lists
``[name, dtype, shape]`` for each following frame, which holds that array's
raw bytes.  Never pickle; only the dtypes in ``WIRE_DTYPES`` cross the wire.
``decode`` checks every received message before anything reads it: the size
caps here, then the envelope, the arrays against their frames and the fields
against the schema of the message's type (``agents.messages``); what fails is
a ``MalformedMessage`` (the data plane's errors are ``agents.wire_errors``,
importable from here too).

``Channel`` wraps a ZeroMQ socket with these rules: every receive has a
timeout, every send and receive counts bytes as ZMTP puts them on the wire,
every send stamps ``sent_at``.  In sim mode a channel also holds each
received message until the sim link releases it (``shaping.simlink``),
without blocking: while one message is in flight the receiver may work, and
take the others as they come due.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack
import numpy as np
import zmq

from agents.messages import (MAX_ERROR_CHARS, MESSAGE_TYPES, WIRE_DTYPES, check_arrays,
                             check_envelope, check_fields)
from agents.wire_errors import (MalformedMessage, PeerUnreachable, ProtocolError,
                                 ReceiveTimeout)
from shaping.clock import SPIN_S, now, sleep_until
from shaping.link_model import zmtp_wire_bytes
from shaping.simlink import SimulatedDirection

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
HEADER_MAX_BYTES = 64 * 1024
MAX_SIM_LINK_PEERS = 256   # sim: the peers whose link models a channel keeps (about 3 KB each)
MAX_HELD_PER_PEER = 64     # sim: a peer's messages held in flight on its link model at most


@dataclass
class Message:
    type: str
    session: str
    seq: int = 0
    fields: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    sent_at: float = 0.0  # the sender's perf_counter when it handed the message over

    def __post_init__(self) -> None:
        if self.type not in MESSAGE_TYPES:
            raise ProtocolError(f"unknown message type {self.type!r}")


def encode(message: Message) -> list[bytes | memoryview]:
    """Frames for ``message``: the msgpack header, then one raw buffer per array."""
    specs, buffers = [], []
    for name, array in message.arrays.items():
        dtype_name = array.dtype.name
        if dtype_name not in WIRE_DTYPES:
            raise ProtocolError(f"array {name!r}: dtype {dtype_name} is not allowed on the wire")
        contiguous = np.ascontiguousarray(array)
        specs.append([name, dtype_name, list(contiguous.shape)])
        buffers.append(memoryview(contiguous).cast("B") if contiguous.size else b"")
    header = msgpack.packb({
        "type": message.type, "session": message.session, "seq": message.seq,
        "sent_at": message.sent_at, "fields": message.fields, "arrays": specs,
    })
    return [header, *buffers]


def decode(frames: list[bytes], max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """A received multipart message, every part checked before use (``agents.messages``):
    the size caps, the envelope, the arrays against their frames, the fields against the
    type's schema.  ``MalformedMessage`` says what failed."""
    if not frames:
        raise MalformedMessage("empty message")
    total = sum(len(frame) for frame in frames)
    if total > max_bytes:
        raise MalformedMessage(f"message of {total} bytes exceeds the cap of {max_bytes}")
    if len(frames[0]) > HEADER_MAX_BYTES:
        raise MalformedMessage(f"header of {len(frames[0])} bytes exceeds its cap of "
                               f"{HEADER_MAX_BYTES}")
    try:
        header = msgpack.unpackb(frames[0], raw=False, strict_map_key=True)
    except Exception as error:  # a peer's bytes: any failure to parse them is theirs
        raise MalformedMessage(f"malformed header: {type(error).__name__}") from None
    envelope = check_envelope(header)
    specs = check_arrays(envelope, [len(frame) for frame in frames[1:]])
    fields = check_fields(envelope)
    arrays = {spec.name: np.frombuffer(buffer, dtype=spec.dtype).reshape(spec.shape)
              for spec, buffer in zip(specs, frames[1:])}
    return Message(type=envelope.type, session=envelope.session, seq=envelope.seq,
                   fields=fields, arrays=arrays, sent_at=envelope.sent_at)


def error_message(session: str, seq: int, text: str) -> Message:
    return Message("error", session, seq, {"error": text[:MAX_ERROR_CHARS]})


class Channel:
    """One end of the data plane: a DEALER (edge) or ROUTER (cloud) with timeouts.

    A ROUTER channel prepends the peer identity to every message; ``recv``
    returns it as ``peer`` and ``send`` takes it back, so the cloud can serve
    several edges.  It hands an identity over to the peer's newest connection
    (``ROUTER_HANDOVER``): an edge that names its DEALER
    (``agents.security.new_routing_id``) and reconnects is the same peer.
    A ROUTER never waits on a peer: a message it cannot hand
    over at once (the peer is gone, or has left ``SNDHWM`` messages unread)
    raises ``PeerUnreachable``; ``peer_queue_messages`` caps how many of each
    peer's messages wait to be received (``RCVHWM``: beyond it ZeroMQ stops
    reading that peer).

    ``sim_link``, in sim mode, makes the link model for each peer's stream
    (one per edge on a ROUTER); every received message is then held until
    that model delivers it, as sent no earlier than the link came up and no
    later than now, whatever the peer stamped.  Held messages wait beside the
    receiver, not in its way: ``recv`` returns the first one due (waiting for
    it only as long as its timeout allows), ``due_in_s`` says when the next
    one is, so that a cloud streaming to one peer keeps streaming while
    another peer's message crosses its modeled link.  A peer may have
    ``peer_queue_messages`` (default ``MAX_HELD_PER_PEER``) messages held;
    one more is refused (``MalformedMessage``).  The models of the
    ``MAX_SIM_LINK_PEERS`` peers heard from last are kept (a returning peer
    gets a new one; ``link_stats`` keeps counting the retired).
    ``restart_timeline`` moves the origin of the profile's timeline for every
    stream, also those of peers yet to come.
    """

    def __init__(self, socket: zmq.Socket, receive_timeout_s: float,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 sim_link: Callable[[int], SimulatedDirection] | None = None,
                 peer_queue_messages: int | None = None) -> None:
        self.socket = socket
        self.receive_timeout_s = receive_timeout_s
        self.max_message_bytes = max_message_bytes
        self.is_router = socket.type == zmq.ROUTER
        socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        socket.setsockopt(zmq.LINGER, 0)
        if self.is_router:
            socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
            socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
            if peer_queue_messages is not None:
                socket.setsockopt(zmq.RCVHWM, peer_queue_messages)
        self.bytes_sent = 0
        self.bytes_received = 0
        self.sim_link = sim_link
        self.sim_links: OrderedDict[bytes | None, SimulatedDirection] = OrderedDict()
        self.sim_links_made = 0
        self.retired_link_stats: dict[str, int] = {}
        # sim: received messages in flight on their link model, by when each is due
        self.held: list[tuple[float, int, Message, bytes | None, int]] = []
        self.held_by_peer: Counter[bytes | None] = Counter()
        self.held_per_peer = peer_queue_messages or MAX_HELD_PER_PEER
        self.refused: MalformedMessage | None = None   # sim: read, failed, not yet raised
        self._arrivals = itertools.count()
        self.timeline_started_at: float | None = None   # None: where the settings say

    def send(self, message: Message, peer: bytes | None = None) -> int:
        """Send ``message``; return its size on the wire in bytes."""
        message.sent_at = now()
        frames = encode(message)
        size = zmtp_wire_bytes(frames)
        if self.is_router:
            if peer is None:
                raise ProtocolError("a ROUTER channel needs the peer to send to")
            try:
                self.socket.send_multipart([peer, *frames], flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                raise PeerUnreachable(f"peer {peer.hex()} leaves its messages unread") from None
            except zmq.ZMQError as error:
                if error.errno != zmq.EHOSTUNREACH:
                    raise
                raise PeerUnreachable(f"peer {peer.hex()} is gone") from None
        else:
            self.socket.send_multipart(frames, copy=False)
        self.bytes_sent += size
        return size

    def poll(self, timeout_s: float) -> bool:
        """Whether a message can be received within ``timeout_s`` (sim: one held is due by
        then; a message that has arrived but is still in flight does not count)."""
        if self.sim_link is None:
            return bool(self.socket.poll(max(0, int(timeout_s * 1000))))
        self._hold_arrived()
        return self.refused is not None or (bool(self.held)
                                            and self.held[0][0] <= now() + timeout_s)

    def held_until(self) -> float | None:
        """Sim: when the last message held on its link model is due (``perf_counter``; None:
        none is held, and outside sim mode)."""
        if self.sim_link is None:
            return None
        self._hold_arrived()
        return max(held[0] for held in self.held) if self.held else None

    def due_in_s(self) -> float | None:
        """Sim: seconds until the next held message is due (0 or less: due now); None when
        none is held (and outside sim mode)."""
        return self.held[0][0] - now() if self.held else None

    def recv(self, timeout_s: float | None = None) -> tuple[Message, bytes | None, int]:
        """Next message, its peer (ROUTER only) and its size on the wire; a message that
        fails its checks raises ``MalformedMessage``, which names the peer.  Sim: the
        first held message that is due, waited for up to the timeout."""
        limit = self.receive_timeout_s if timeout_s is None else timeout_s
        deadline = now() + limit
        if self.sim_link is None:
            while not self.socket.poll(max(0, int((deadline - now()) * 1000)) + 1):
                if now() >= deadline:
                    raise ReceiveTimeout(f"no message within {limit:.1f} s")
            return self._read(self.socket.recv_multipart(copy=True))
        while True:
            self._hold_arrived()
            if self.refused is not None:
                refused, self.refused = self.refused, None
                raise refused
            due = self.held[0][0] if self.held else None
            if due is not None and due <= now():
                _, _, message, peer, size = heapq.heappop(self.held)
                self.held_by_peer[peer] -= 1
                if not self.held_by_peer[peer]:
                    del self.held_by_peer[peer]
                return message, peer, size
            if due is not None and due <= deadline:
                # wake for a message arriving meanwhile (another peer's may be due sooner)
                if not self.socket.poll(max(0, int((due - now() - SPIN_S) * 1000))):
                    sleep_until(due)
                continue
            if now() >= deadline:
                raise ReceiveTimeout(f"no message within {limit:.1f} s")
            self.socket.poll(max(0, int((deadline - now()) * 1000)) + 1)

    def _read(self, frames: list[bytes]) -> tuple[Message, bytes | None, int]:
        """A received multipart, checked: the message, its peer (ROUTER) and its size."""
        peer = None
        if self.is_router:
            peer, frames = frames[0], frames[1:]
        try:
            message = decode(frames, self.max_message_bytes)
        except MalformedMessage as error:
            error.peer = peer
            raise
        size = zmtp_wire_bytes(frames)
        self.bytes_received += size
        return message, peer, size

    def _hold_arrived(self) -> None:
        """Sim: take the messages waiting in the socket, each held until its link model
        delivers it; one that fails its checks (or is one more than its peer may have in
        flight) waits in ``refused`` for the next ``recv`` to raise, and the rest wait in
        the socket until then."""
        while self.refused is None:
            try:
                frames = self.socket.recv_multipart(flags=zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            try:
                message, peer, size = self._read(frames)
            except MalformedMessage as error:
                self.refused = error
                return
            if self.held_by_peer[peer] >= self.held_per_peer:
                self.refused = MalformedMessage(
                    f"more than {self.held_per_peer} messages in flight", message.session,
                    message.seq)
                self.refused.peer = peer
                return
            link = self._link_for(peer)
            read_at = now()
            sent_at = min(max(message.sent_at, link.started_at), read_at)
            # due when its link model delivers it (in order, per peer); one already due is
            # due as it is read, so those are taken in the order they came
            due = max(link.deliver_at(sent_at, size), read_at)
            heapq.heappush(self.held, (due, next(self._arrivals), message, peer, size))
            self.held_by_peer[peer] += 1

    def _link_for(self, peer: bytes | None) -> SimulatedDirection:
        link = self.sim_links.get(peer)
        if link is not None:
            self.sim_links.move_to_end(peer)
            return link
        link = self.sim_links[peer] = self.sim_link(self.sim_links_made)
        self.sim_links_made += 1
        if self.timeline_started_at is not None:
            link.restart_timeline(self.timeline_started_at)
        if len(self.sim_links) > MAX_SIM_LINK_PEERS:
            _, retired = self.sim_links.popitem(last=False)
            self.retired_link_stats = _summed([self.retired_link_stats, retired.stats()])
        return link

    def restart_timeline(self, started_at: float) -> None:
        """The sim link's timeline starts again at ``started_at`` (``perf_counter``)."""
        if self.sim_link is None:
            raise ProtocolError("only a sim link has a timeline in the agent")
        self.timeline_started_at = started_at
        for link in self.sim_links.values():
            link.restart_timeline(started_at)

    def link_stats(self) -> dict | None:
        """Counters of the sim link (summed over peers, retired ones too); None outside sim
        mode."""
        if self.sim_link is None:
            return None
        return _summed([self.retired_link_stats,
                        *(link.stats() for link in self.sim_links.values())])


def _summed(counters: list[dict[str, int]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for counter in counters:
        for key, value in counter.items():
            totals[key] = totals.get(key, 0) + value
    return totals
