"""Structure-aware fuzzing of the cloud's data plane (issue 14): hostile messages aimed at
every typed part of every message type (``tests.hostile_messages.TARGETS``) go to a real
cloud agent serving a real ROUTER socket in this process (``tests.inproc_agents``), as many
peers would send them.  After each message the cloud must be serving, must have refused it
on purpose (no internal error), and every reply it sent must pass the schema; after each
target a legitimate query must still decode the target's own greedy answer."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings

from agents.backends.synthetic import SyntheticPairConfig
from agents.edge import EdgeAgent, QueryRequest
from agents.protocol import Message, ReceiveTimeout
from agents.settings import CloudLimits
from agents.backends import build_models
from tests.hostile_messages import TARGETS, HostileMessage, hostile_messages
from tests.inproc_agents import ServedCloud, served_cloud

PAIR = SyntheticPairConfig(acceptance=0.7, latency={
    side: {"base_ms": 0.0, "per_token_ms": 0.0}
    for side in ("edge_draft", "cloud_draft", "cloud_target")})
# a fuzzed valid generate may ask for up to this many tokens; the rest is refused
LIMITS = CloudLimits(max_new_tokens=64)
EXAMPLES_PER_TARGET = 25
_probes = itertools.count()


@pytest.fixture(scope="module")
def cloud():
    with served_cloud(PAIR, LIMITS) as cloud:
        yield cloud


@pytest.fixture(scope="module")
def legit(cloud):
    """A legitimate query and the answer it gets from an unharmed cloud."""
    edge = EdgeAgent(build_models(PAIR, "edge"), cloud.peer())
    request = QueryRequest(strategy="fixed-k", label="legit", k=4, query_id="q",
                           prompt="What is 12 + 30?", max_new_tokens=24)
    return edge, request, edge.run_query(request)[0].output_ids


def send_and_settle(cloud: ServedCloud, peer, message: HostileMessage) -> list[Message]:
    """Send ``message`` (after its ``open``), close what it may have opened, and wait until
    the cloud has answered all of it (a probe: a close of a session never opened, answered
    by an error, after everything before it); the replies, each checked by the schema."""
    probe = f"probe/{next(_probes)}"
    for frames in (message.before, message.frames):
        if frames:
            peer.socket.send_multipart(frames)
    for session in (*message.sessions, probe):
        peer.send(Message("close", session))
    replies = []
    while True:
        try:
            reply, _, _ = peer.recv()
        except ReceiveTimeout:
            raise AssertionError(f"the cloud did not answer {message.target}") from None
        replies.append(reply)
        if reply.session == probe:
            assert reply.type == "error"
            return replies


@pytest.mark.parametrize("target", TARGETS, ids=lambda target: ".".join(target))
def test_hostile_messages_are_refused_and_the_cloud_keeps_serving(cloud, legit, target):
    peer = cloud.peer()

    @settings(max_examples=EXAMPLES_PER_TARGET, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(message=hostile_messages(target, PAIR.vocab_size, f"fuzz/{'.'.join(target)}"))
    def refused(message: HostileMessage) -> None:
        send_and_settle(cloud, peer, message)
        assert cloud.alive()
        assert cloud.agent.counts["internal_errors"] == 0

    refused()
    edge, request, expected = legit
    assert edge.run_query(request)[0].output_ids == expected
    assert cloud.alive() and cloud.agent.counts["internal_errors"] == 0
