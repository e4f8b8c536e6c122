"""The cloud against hostile and careless peers, as a real process: single messages that
used to crash it, denial of service without a crash, and sessions bound to their peer."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from agents.protocol import Message, ReceiveTimeout, encode
from agents.settings import CloudLimits
from shaping.clock import now
from tests.cloud_process import cloud_process, raw_frames

SAMPLING = {"decoding": "greedy", "temperature": 1.0, "top_k": 0, "top_p": 1.0}
OPEN_FIELDS = {"strategy": "fixed-k", "k": 5, "max_new_tokens": 8, "sampling": SAMPLING,
               "codec": "ids", "seed": 0}
PROMPT = (["prompt", "int32", [3]], b"\x01\x00\x00\x00" * 3)


def open_frames(session: object = "s", **fields: object) -> list[bytes]:
    spec, buffer = PROMPT
    return raw_frames("open", session, fields={**OPEN_FIELDS, **fields}, arrays=[spec],
                      buffers=(buffer,))


def generate_frames(**fields: object) -> list[bytes]:
    spec, buffer = PROMPT
    return raw_frames("generate", "g", fields={**OPEN_FIELDS, "strategy": "cloud-only", **fields},
                      arrays=[spec], buffers=(buffer,))


# The single messages that crashed the cloud in the trial (issue 14).
CRASHERS = {
    "65-dimension array": raw_frames("draft", arrays=[["ids", "int32", [1] * 65]],
                                     buffers=(b"\0" * 4,)),
    "shape [2**62, 4], empty frame": raw_frames("draft", arrays=[["q", "float32", [2**62, 4]]],
                                                buffers=(b"",)),
    "array name a list": raw_frames("draft", arrays=[[["ids"], "int32", [1]]],
                                    buffers=(b"\0" * 4,)),
    "open with a map as session": open_frames(session={"a": 1}),
    "codec 5": open_frames(codec=5),
    "max_new_tokens [1]": generate_frames(max_new_tokens=[1]),
    "k [1]": generate_frames(k=[1]),
    "sent_at 1e30": raw_frames("close", sent_at=1e30),
    # found while writing the schema: numpy refuses a zero-row array of a huge width
    "shape [0, 2**62], empty frame": raw_frames("draft", arrays=[["q", "float32", [0, 2**62]]],
                                                buffers=(b"",)),
}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    with cloud_process(tmp_path_factory.mktemp("cloud"), rtt_ms=2.0) as cloud:
        yield cloud


@pytest.mark.parametrize("name", sorted(CRASHERS))
def test_one_message_does_not_crash_the_cloud(cloud, name):
    if not cloud.alive():
        pytest.fail("an earlier message killed the cloud")
    attacker = cloud.peer()
    attacker.socket.send_multipart(CRASHERS[name])
    record = cloud.legit_query()
    assert cloud.alive()
    assert record.n_tokens == 12


def test_an_error_left_on_an_earlier_session_is_not_taken_for_the_next_query(cloud):
    """After a failed query the edge closes its session, which the cloud may already have
    dropped: the error answering that close waits on the edge's socket, and the next query
    on the same edge must not read it as its own."""
    peer = cloud.peer()
    peer.send(Message("close", "earlier/q/0"))
    time.sleep(0.2)
    assert peer.poll(0)                  # the error is waiting
    assert cloud.legit_query(peer=peer).n_tokens == 12


def test_a_far_future_sent_at_does_not_stall_the_cloud(cloud):
    attacker = cloud.peer()
    attacker.socket.send_multipart(raw_frames("close", sent_at=now() + 3600.0))
    started = now()
    assert cloud.legit_query().n_tokens == 12
    assert now() - started < 5.0


def test_a_forged_close_from_another_peer_is_refused_and_the_run_goes_on(cloud):
    """Sessions are named ``label/query_id/repetition``, easy to guess: a peer that closes
    the legitimate edge's session all through its query gets an error each time, and the
    query decodes what it decodes unattacked."""
    unattacked = cloud.legit_query(query_id="reference").output_ids
    done, forged = threading.Event(), []

    def forge_closes() -> None:
        forger = cloud.peer()
        while not done.is_set():
            forger.send(Message("close", "legit/attacked/0"))
            forged.append(1)
            time.sleep(0.002)
        while True:
            try:
                reply, _, _ = forger.recv(timeout_s=1.0)
            except ReceiveTimeout:
                return
            assert reply.type == "error" and "no open session" in reply.fields["error"]
            forged.append(-1)

    before = cloud.counts().get("refused", 0)
    attacker = threading.Thread(target=forge_closes)
    attacker.start()
    try:
        record = cloud.legit_query(query_id="attacked")
    finally:
        done.set()
        attacker.join()
    sent, answered = forged.count(1), forged.count(-1)
    assert sent > 10 and answered == sent
    assert record.output_ids == unattacked
    assert cloud.counts()["refused"] - before == sent


def test_no_peer_can_touch_another_peers_session(cloud):
    owner, other = cloud.peer(), cloud.peer()
    owner.socket.send_multipart(open_frames(session="mine"))
    opened, _, _ = owner.recv()
    assert opened.type == "opened"
    draft = Message("draft", "mine", 1, {}, {"ids": np.array([opened.fields["token"]],
                                                             dtype=np.int32)})
    for forged in (Message("close", "mine"), draft, Message("decode", "mine", 1, {"tokens": 2})):
        other.send(forged)
        reply, _, _ = other.recv()
        assert reply.type == "error" and "no open session 'mine' of this peer" in \
            reply.fields["error"]
    owner.send(draft)
    verdict, _, _ = owner.recv()
    assert verdict.type == "verdict"
    owner.send(Message("close", "mine"))


def test_a_close_stops_a_generate_between_tokens(cloud):
    """The synthetic target takes 30 ms a token: 100 tokens would take 3 s."""
    peer = cloud.peer()
    peer.socket.send_multipart(generate_frames(max_new_tokens=100))
    for _ in range(2):
        assert peer.recv()[0].type == "tokens"
    peer.send(Message("close", "g"))
    late = 0
    with pytest.raises(ReceiveTimeout):
        while True:
            reply, _, _ = peer.recv(timeout_s=0.5)
            late += 1
            assert reply.type == "tokens" and not reply.fields["finished"]
    assert late <= 2 and cloud.sessions() == 0
    assert "session g closed (its stream stopped)" in cloud.log()


def test_a_peer_that_vanishes_releases_its_generate(cloud):
    peer = cloud.peer()
    released = cloud.counts().get("peers_released", 0)
    peer.socket.send_multipart(generate_frames(max_new_tokens=100))
    assert peer.recv()[0].type == "tokens"
    peer.socket.close(linger=0)
    deadline = now() + 2.0
    while cloud.counts().get("peers_released", 0) == released and now() < deadline:
        time.sleep(0.05)
    assert cloud.counts()["peers_released"] == released + 1 and cloud.sessions() == 0


def test_a_long_generate_does_not_hold_up_another_peers_query(cloud):
    """Streams advance a commit per turn of the loop, between other peers' messages."""
    peer = cloud.peer()
    peer.socket.send_multipart(generate_frames(max_new_tokens=100))
    started = now()
    assert cloud.legit_query(max_new_tokens=6).n_tokens == 6
    assert now() - started < 2.5      # alone, the generate takes 3 s
    tokens = 0
    while True:
        reply, _, _ = peer.recv()
        tokens += len(reply.arrays["ids"])
        if reply.fields["finished"]:
            break
    assert tokens == 100


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    limits = CloudLimits(sessions_per_peer=2, sessions=3, prompt_tokens=50, max_new_tokens=100,
                         session_idle_s=1.0)
    with cloud_process(tmp_path_factory.mktemp("limited"), limits=limits) as cloud:
        yield cloud


def refusal(peer, frames: list[bytes]) -> str:
    peer.socket.send_multipart(frames)
    reply, _, _ = peer.recv()
    assert reply.type == "error"
    return reply.fields["error"]


def test_each_limit_is_refused_with_an_error_naming_it(limited):
    first, second, third = limited.peer(), limited.peer(), limited.peer()
    for name in ("a", "b"):
        first.socket.send_multipart(open_frames(session=name))
        assert first.recv()[0].type == "opened"
    assert "OverLimit: this peer holds 2 open sessions, the most the cloud grants one peer" \
        in refusal(first, open_frames(session="c"))
    second.socket.send_multipart(open_frames(session="a"))
    assert second.recv()[0].type == "opened"
    assert "OverLimit: the cloud holds 3 open sessions, its most" in \
        refusal(third, open_frames(session="a"))
    for peer, name in ((first, "a"), (first, "b"), (second, "a")):
        peer.send(Message("close", name))
    long_prompt = raw_frames("open", "p", fields=OPEN_FIELDS,
                             arrays=[["prompt", "int32", [51]]], buffers=(b"\1\0\0\0" * 51,))
    assert "a prompt of 51 tokens; the cloud takes at most 50" in refusal(third, long_prompt)
    assert "max_new_tokens 101; the cloud grants at most 100" in \
        refusal(third, open_frames(max_new_tokens=101))
    third.socket.send_multipart(open_frames(session="budget", max_new_tokens=4))
    assert third.recv()[0].type == "opened"
    assert "OverLimit: 10 more tokens would take the session past the max_new_tokens of 4" \
        in refusal(third, encode(Message("decode", "budget", 1, {"tokens": 10})))
    assert limited.legit_query(max_new_tokens=8).n_tokens == 8


def test_a_quiet_session_expires(limited):
    peer = limited.peer()
    peer.socket.send_multipart(open_frames(session="quiet"))
    assert peer.recv()[0].type == "opened"
    expired = limited.counts().get("sessions_expired", 0)
    time.sleep(2.2)
    assert limited.counts()["sessions_expired"] == expired + 1
    peer.send(Message("close", "quiet"))
    assert "no open session 'quiet'" in peer.recv()[0].fields["error"]
