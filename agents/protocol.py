"""Wire protocol between edge and cloud: msgpack header plus raw numpy buffers.

A message is a ZeroMQ multipart: frame 0 is a msgpack map
``{type, session, seq, sent_at, fields, arrays}`` where ``arrays`` lists
``[name, dtype, shape]`` for each following frame, which holds that array's
raw bytes.  Never pickle; only the dtypes in ``WIRE_DTYPES`` cross the wire;
every received message is checked against a size cap and its declared shapes.

``Channel`` wraps a ZeroMQ socket with these rules: every receive has a
timeout, every send and receive counts bytes as ZMTP puts them on the wire,
every send stamps ``sent_at``.  In sim mode a channel also holds each
received message until the sim link releases it (``shaping.simlink``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack
import numpy as np
import zmq

from shaping.clock import now, sleep_until
from shaping.link_model import zmtp_wire_bytes
from shaping.simlink import SimulatedDirection

MESSAGE_TYPES = ("open", "opened", "draft", "verdict", "decode", "generate", "tokens", "close",
                 "error")
WIRE_DTYPES = {"int32": np.int32, "float16": np.float16, "float32": np.float32, "float64": np.float64}
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
HEADER_MAX_BYTES = 64 * 1024


class ProtocolError(Exception):
    """A peer sent something that breaks the protocol."""


class ReceiveTimeout(ProtocolError):
    """Nothing arrived within the receive timeout."""


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
    """Parse and check a received multipart message."""
    if not frames:
        raise ProtocolError("empty message")
    total = sum(len(frame) for frame in frames)
    if total > max_bytes:
        raise ProtocolError(f"message of {total} bytes exceeds the cap of {max_bytes}")
    if len(frames[0]) > HEADER_MAX_BYTES:
        raise ProtocolError("header exceeds its size cap")
    try:
        header = msgpack.unpackb(frames[0], raw=False, strict_map_key=True)
        kind, session, seq = header["type"], header["session"], header["seq"]
        fields, specs, sent_at = header["fields"], header["arrays"], float(header["sent_at"])
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as error:
        raise ProtocolError(f"malformed header: {error}") from None
    if not isinstance(fields, dict) or not isinstance(specs, list):
        raise ProtocolError("malformed header: fields must be a map, arrays a list")
    if len(specs) != len(frames) - 1:
        raise ProtocolError(f"header lists {len(specs)} arrays, message has {len(frames) - 1}")
    arrays = {}
    for spec, buffer in zip(specs, frames[1:]):
        try:
            name, dtype_name, shape = spec
            dtype = np.dtype(WIRE_DTYPES[dtype_name])
            shape = tuple(int(n) for n in shape)
        except (KeyError, ValueError, TypeError):
            raise ProtocolError(f"bad array spec {spec!r}") from None
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if any(n < 0 for n in shape) or expected != len(buffer):
            raise ProtocolError(f"array {name!r}: {len(buffer)} bytes do not match shape {shape}")
        arrays[name] = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    return Message(type=kind, session=session, seq=seq, fields=fields, arrays=arrays,
                   sent_at=sent_at)


def error_message(session: str, seq: int, text: str) -> Message:
    return Message("error", session, seq, {"error": text})


class Channel:
    """One end of the data plane: a DEALER (edge) or ROUTER (cloud) with timeouts.

    A ROUTER channel prepends the peer identity to every message; ``recv``
    returns it as ``peer`` and ``send`` takes it back, so the cloud can serve
    several edges.

    ``sim_link``, in sim mode, makes the link model for each peer's stream
    (one per edge on a ROUTER); every received message is then held until
    that model delivers it.  ``restart_timeline`` moves the origin of the
    profile's timeline for every stream, also those of peers yet to come.
    """

    def __init__(self, socket: zmq.Socket, receive_timeout_s: float,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 sim_link: Callable[[int], SimulatedDirection] | None = None) -> None:
        self.socket = socket
        self.receive_timeout_s = receive_timeout_s
        self.max_message_bytes = max_message_bytes
        self.is_router = socket.type == zmq.ROUTER
        socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        socket.setsockopt(zmq.LINGER, 0)
        self.bytes_sent = 0
        self.bytes_received = 0
        self.sim_link = sim_link
        self.sim_links: dict[bytes | None, SimulatedDirection] = {}
        self.timeline_started_at: float | None = None   # None: where the settings say

    def send(self, message: Message, peer: bytes | None = None) -> int:
        """Send ``message``; return its size on the wire in bytes."""
        message.sent_at = now()
        frames = encode(message)
        size = zmtp_wire_bytes(frames)
        if self.is_router:
            if peer is None:
                raise ProtocolError("a ROUTER channel needs the peer to send to")
            frames = [peer, *frames]
        self.socket.send_multipart(frames, copy=False)
        self.bytes_sent += size
        return size

    def poll(self, timeout_s: float) -> bool:
        return bool(self.socket.poll(max(0, int(timeout_s * 1000))))

    def recv(self, timeout_s: float | None = None) -> tuple[Message, bytes | None, int]:
        """Next message, its peer (ROUTER only) and its size on the wire."""
        deadline = time.monotonic() + (self.receive_timeout_s if timeout_s is None else timeout_s)
        while not self.socket.poll(max(0, int((deadline - time.monotonic()) * 1000)) + 1):
            if time.monotonic() >= deadline:
                raise ReceiveTimeout(
                    f"no message within {self.receive_timeout_s if timeout_s is None else timeout_s:.1f} s")
        frames = self.socket.recv_multipart(copy=True)
        peer = None
        if self.is_router:
            peer, frames = frames[0], frames[1:]
        message = decode(frames, self.max_message_bytes)
        size = zmtp_wire_bytes(frames)
        self.bytes_received += size
        if self.sim_link is not None:
            sleep_until(self._link_for(peer).deliver_at(message.sent_at, size))
        return message, peer, size

    def _link_for(self, peer: bytes | None) -> SimulatedDirection:
        link = self.sim_links.get(peer)
        if link is None:
            link = self.sim_links[peer] = self.sim_link(len(self.sim_links))
            if self.timeline_started_at is not None:
                link.restart_timeline(self.timeline_started_at)
        return link

    def restart_timeline(self, started_at: float) -> None:
        """The sim link's timeline starts again at ``started_at`` (``perf_counter``)."""
        if self.sim_link is None:
            raise ProtocolError("only a sim link has a timeline in the agent")
        self.timeline_started_at = started_at
        for link in self.sim_links.values():
            link.restart_timeline(started_at)

    def link_stats(self) -> dict | None:
        """Counters of the sim link (summed over peers); None outside sim mode."""
        if self.sim_link is None:
            return None
        totals: dict[str, int] = {}
        for link in self.sim_links.values():
            for key, value in link.stats().items():
                totals[key] = totals.get(key, 0) + value
        return totals
