"""Wire protocol: framing, checks on what arrives, timeouts, and the sim-link hold."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq

from agents import protocol
from agents.protocol import (Channel, MalformedMessage, Message, ProtocolError, ReceiveTimeout,
                             decode, encode)
from shaping.clock import now
from shaping.link_model import zmtp_wire_bytes
from shaping.profile import ProfileFile, resolve
from shaping.simlink import SimLinkSettings, SimulatedDirection
from tests.loaded_host import late_allowance_ms


def test_round_trip_keeps_fields_arrays_and_dtypes():
    arrays = {"ids": np.array([3, 1, 4], dtype=np.int32),
              "q": np.random.default_rng(0).random((3, 7)).astype(np.float16),
              "served": np.ones(2, dtype=np.int32)}
    fields = {"epoch": 3, "start": 10, "ahead_follows": True, "correction": 5}
    message = Message("draft", "s/1", 9, fields, arrays, sent_at=12.5)
    back = decode(encode(message))
    assert (back.type, back.session, back.seq, back.fields, back.sent_at) == \
        ("draft", "s/1", 9, fields, 12.5)
    for name, array in arrays.items():
        assert back.arrays[name].dtype == array.dtype
        np.testing.assert_array_equal(back.arrays[name], array)


def test_empty_arrays_round_trip():
    back = decode(encode(Message("draft", "s", arrays={"ids": np.zeros(0, dtype=np.int32),
                                                       "q": np.zeros((0, 8), dtype=np.float32)})))
    assert back.arrays["q"].shape == (0, 8)


def test_no_pickle_and_only_wire_dtypes():
    with pytest.raises(ProtocolError, match="int64"):
        encode(Message("draft", "s", arrays={"q": np.zeros(3, dtype=np.int64)}))
    with pytest.raises(ProtocolError, match="object"):
        encode(Message("draft", "s", arrays={"q": np.array([object()])}))


def test_unknown_message_type_is_refused():
    with pytest.raises(ProtocolError, match="unknown message type"):
        Message("exec", "s")


@pytest.mark.parametrize("frames, complaint", [
    ([], "empty"),
    ([b"\xc1not msgpack"], "malformed header"),
    ([msgpack.packb({"type": "draft"})], "the header must be a map of exactly"),
    ([msgpack.packb({"type": "draft", "session": "s", "seq": 0, "sent_at": 0, "fields": {},
                     "arrays": [["ids", "int32", [4]]]})], "lists 1 arrays, the message has 0"),
    ([msgpack.packb({"type": "draft", "session": "s", "seq": 0, "sent_at": 0, "fields": {},
                     "arrays": [["ids", "int32", [4]]]}), b"\0" * 12], "do not match shape"),
    ([msgpack.packb({"type": "draft", "session": "s", "seq": 0, "sent_at": 0, "fields": {},
                     "arrays": [["ids", "int64", [1]]]}), b"\0" * 8], "dtype 'int64' is not one of int32"),
])
def test_malformed_messages_are_refused(frames, complaint):
    with pytest.raises(ProtocolError, match=complaint):
        decode(frames)


def test_size_cap():
    frames = encode(Message("draft", "s", arrays={"served": np.zeros(1000, dtype=np.int32)}))
    assert decode(frames, max_bytes=5000).arrays["served"].shape == (1000,)
    with pytest.raises(ProtocolError, match="exceeds the cap"):
        decode(frames, max_bytes=3000)


def test_zmtp_wire_bytes_counts_frame_headers():
    assert zmtp_wire_bytes([b"x" * 10, b"y" * 255, b"z" * 256]) == 12 + 257 + 265


@pytest.fixture
def pair():
    context = zmq.Context()
    router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    yield router, dealer
    router.close(0)
    dealer.close(0)
    context.term()


def test_channel_routes_replies_and_counts_bytes(pair):
    router, dealer = pair
    cloud, edge = Channel(router, 2.0), Channel(dealer, 2.0)
    sent = edge.send(Message("decode", "a", 1, {"tokens": 3},
                             {"served": np.arange(5, dtype=np.int32)}))
    message, peer, size = cloud.recv()
    assert (message.type, message.fields, size) == ("decode", {"tokens": 3}, sent)
    assert message.sent_at <= now()
    opened = {"token": 7, "eos": False, "compute_s": 0.001}
    cloud.send(Message("opened", "a", 1, opened), peer)
    reply, _, _ = edge.recv()
    assert reply.fields == opened
    assert edge.bytes_sent == cloud.bytes_received == sent
    with pytest.raises(ProtocolError, match="peer"):
        cloud.send(Message("opened", "a"))


def test_receive_times_out(pair):
    _, dealer = pair
    channel = Channel(dealer, 0.2)
    started = time.monotonic()
    with pytest.raises(ReceiveTimeout):
        channel.recv()
    assert 0.19 <= time.monotonic() - started < 1.0


def test_oversized_message_never_reaches_the_application():
    """As in the agents, the cap is set before connecting: ZeroMQ drops the peer."""
    context = zmq.Context()
    router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    try:
        cloud, edge = Channel(router, 0.5, max_message_bytes=10_000), Channel(dealer, 0.5)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        edge.send(Message("draft", "a", arrays={"served": np.zeros(4000, dtype=np.int32)}))
        with pytest.raises(ReceiveTimeout):
            cloud.recv()
    finally:
        router.close(0)
        dealer.close(0)
        context.term()


def test_sim_link_holds_each_message_for_the_modeled_delay(pair):
    router, dealer = pair
    profile = resolve(ProfileFile(rtt_ms=40), "t")
    settings = SimLinkSettings(profile=profile, seed=0, started_at=now())
    cloud = Channel(router, 2.0, sim_link=lambda stream: SimulatedDirection(settings, "uplink", stream))
    edge = Channel(dealer, 2.0)
    delays = []
    for seq in range(20):
        edge.send(Message("draft", "a", seq, arrays={"ids": np.arange(5, dtype=np.int32)}))
        message, _, _ = cloud.recv()
        delays.append(now() - message.sent_at)
    # never early; late only as a loaded host's scheduler makes it (the tight figure is
    # benchmarks/sim_fidelity.py's)
    assert min(delays) >= 0.020
    assert np.median(delays) * 1000 - 20.0 < late_allowance_ms(20.0)
    assert cloud.link_stats()["messages"] == 20


def test_a_message_in_flight_on_the_sim_link_does_not_block_the_receiver(pair):
    """A cloud holding one peer's message for its 100 ms one-way delay can still work: a
    receive with no time to wait returns at once, ``due_in_s`` says when the message is
    due, and a receive that may wait returns it then; a peer with more messages held than
    it may have in flight is refused."""
    router, dealer = pair
    profile = resolve(ProfileFile(rtt_ms=200), "t")
    settings = SimLinkSettings(profile=profile, seed=0, started_at=now())
    cloud = Channel(router, 2.0, sim_link=lambda stream: SimulatedDirection(settings, "uplink", stream),
                    peer_queue_messages=3)
    edge = Channel(dealer, 2.0)
    edge.send(Message("draft", "a", 1, arrays={"ids": np.arange(5, dtype=np.int32)}))
    time.sleep(0.01)
    started = now()
    with pytest.raises(ReceiveTimeout):
        cloud.recv(timeout_s=0)
    assert now() - started < 0.05 and not cloud.poll(0)
    assert 0.05 < cloud.due_in_s() <= 0.1
    message, _, _ = cloud.recv()
    assert message.seq == 1 and 0.1 <= now() - message.sent_at < 0.15
    assert cloud.due_in_s() is None
    for seq in range(4):
        edge.send(Message("ping", "a", seq))
    edge.socket.send_multipart([b"not msgpack"])
    time.sleep(0.01)
    assert cloud.poll(0)       # a refusal is ready at once, held messages or not
    with pytest.raises(MalformedMessage, match="more than 3 messages in flight"):
        cloud.recv(timeout_s=0)
    assert cloud.poll(0)       # the malformed one came after it
    with pytest.raises(MalformedMessage, match="malformed header"):
        cloud.recv(timeout_s=0)


def test_a_restarted_timeline_holds_for_streams_yet_to_come(pair):
    """The cloud's link model for an edge is made at its first message: a restart before
    then still counts; only a sim link has a timeline in the agent."""
    router, dealer = pair
    profile = resolve(ProfileFile(rtt_ms=10, schedule={"steps": [{"at_s": 0.4, "rtt_ms": 200}]}),
                      "t")
    settings = SimLinkSettings(profile=profile, seed=0, started_at=now() - 10.0)
    cloud = Channel(router, 2.0, sim_link=lambda stream: SimulatedDirection(settings, "uplink", stream))
    edge = Channel(dealer, 2.0)
    origin = now()
    cloud.restart_timeline(origin)
    edge.send(Message("draft", "a", arrays={"ids": np.arange(5, dtype=np.int32)}))
    message, peer, _ = cloud.recv()
    assert now() - message.sent_at >= 0.005
    link = cloud.sim_links[peer]      # in the initial state (5 ms), not the 100 ms it was in
    assert link.deliver_at(origin + 0.3, 64) - (origin + 0.3) == pytest.approx(0.005)
    assert link.deliver_at(origin + 0.5, 64) - (origin + 0.5) == pytest.approx(0.100)
    with pytest.raises(ProtocolError, match="sim link"):
        edge.restart_timeline(now())


def test_sim_link_models_are_kept_for_the_latest_peers_only(pair, monkeypatch):
    """Per-peer state in sim mode is bounded: past ``MAX_SIM_LINK_PEERS`` the peer heard from
    longest ago loses its link model (its counters stay in ``link_stats``)."""
    monkeypatch.setattr(protocol, "MAX_SIM_LINK_PEERS", 3)
    router, _ = pair
    profile = resolve(ProfileFile(rtt_ms=2), "t")
    settings = SimLinkSettings(profile=profile, seed=0, started_at=now())
    cloud = Channel(router, 2.0, sim_link=lambda stream: SimulatedDirection(settings, "uplink", stream))
    endpoint = router.getsockopt(zmq.LAST_ENDPOINT).decode()
    peers = []
    for _ in range(5):
        dealer = router.context.socket(zmq.DEALER)
        dealer.connect(endpoint)
        peers.append(dealer)
        Channel(dealer, 2.0).send(Message("close", "s"))
        cloud.recv()
    try:
        assert len(cloud.sim_links) == 3 and cloud.sim_links_made == 5
        assert cloud.link_stats()["messages"] == 5
    finally:
        for dealer in peers:
            dealer.close(0)


def test_a_peers_sent_at_is_taken_no_later_than_now_nor_earlier_than_the_link(pair):
    """In sim mode the cloud holds a message until the link model delivers it: a sent_at in
    the far future counts as now (one way later it is delivered), one before the link came up
    as that instant (delivered at once); neither upsets the model for what follows."""
    router, dealer = pair
    settings = SimLinkSettings(profile=resolve(ProfileFile(rtt_ms=20), "t"), seed=0,
                               started_at=now())
    cloud = Channel(router, 2.0, sim_link=lambda stream: SimulatedDirection(settings, "uplink", stream))
    edge = Channel(dealer, 2.0)
    header = msgpack.unpackb(encode(Message("close", "s"))[0])
    for forged, waits in ((now() + 3600.0, True), (1e300, True), (-1e300, False), (0.0, False),
                          (None, True)):
        started = now()
        if forged is None:
            edge.send(Message("close", "s"))
        else:
            dealer.send_multipart([msgpack.packb({**header, "sent_at": forged})])
        cloud.recv()
        assert (0.009 < now() - started < 0.1) if waits else (now() - started < 0.009)
