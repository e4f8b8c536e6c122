"""The cloud against hostile and careless peers, as a real process: single messages that
used to crash it, denial of service without a crash, and sessions bound to their peer."""

from __future__ import annotations

import pytest

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


def test_a_far_future_sent_at_does_not_stall_the_cloud(cloud):
    attacker = cloud.peer()
    attacker.socket.send_multipart(raw_frames("close", sent_at=now() + 3600.0))
    started = now()
    assert cloud.legit_query().n_tokens == 12
    assert now() - started < 5.0
