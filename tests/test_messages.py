"""The per-type message schemas (``agents.messages``) as ``protocol.decode`` applies them: what
every real sender puts on the wire passes, and each kind of bad header, array or field is
refused with a one-line reason before anything reads it."""

from __future__ import annotations

import numpy as np
import pytest

from agents.cloud import verdict_message
from agents.codecs import encode_target_row, get_codec
from agents.wire_errors import ProtocolError
from agents.edge import draft_message
from agents.messages import MAX_DRAFT_TOKENS, MAX_SESSION_CHARS, SCHEMAS
from agents.protocol import MalformedMessage, Message, decode, encode, error_message
from agents.sampling import SamplingConfig
from agents.speculative import Drafts, Verification
from agents.verification import Verdict
from tests.cloud_process import raw_frames

QUERY = {"strategy": "fixed-k", "k": 5, "max_new_tokens": 16,
         "sampling": SamplingConfig().model_dump(), "codec": "ids", "seed": 0}
PROMPT = {"prompt": np.arange(1, 6, dtype=np.int32)}


def round_trip(message: Message) -> Message:
    return decode([bytes(frame) for frame in encode(message)])


@pytest.mark.parametrize("codec", ["ids", "q-scalar", "topk", "topk3", "full16", "full32"])
def test_every_codecs_draft_passes(codec):
    rows = np.random.default_rng(0).dirichlet(np.ones(40), size=4)
    drafts = Drafts(ids=[3, 1, 4, 1], model_rows=rows, sampled_rows=rows)
    message = draft_message("fixed-k4/q/0", 3, get_codec(codec), drafts, {"correction": 7},
                            {"served": np.array([9, 9], dtype=np.int32)},
                            {"epoch": 1, "start": 12, "ahead_follows": False})
    back = round_trip(message)
    assert back.fields == message.fields
    assert set(back.arrays) == set(message.arrays)


@pytest.mark.parametrize("codec, array", [("full32", "q"), ("full16", "q"), ("topk", "top_probs"),
                                           ("q-scalar", "q_ids")])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -0.25])
def test_a_draft_probability_that_is_no_probability_is_refused(codec, array, bad):
    """The schema checks an array's shape, not its numbers: a NaN, infinite or negative
    draft probability passed the old checks (normalization divided it into NaN rows, and
    NaN slipped through q-scalar's range test)."""
    rows = np.random.default_rng(0).dirichlet(np.ones(40), size=3)
    drafts = Drafts(ids=[3, 1, 4], model_rows=rows, sampled_rows=rows)
    arrays = get_codec(codec).encode(drafts.ids, rows)
    arrays[array] = arrays[array].copy()
    arrays[array].flat[1] = bad
    with pytest.raises(ProtocolError, match="finite and non-negative|must lie in"):
        get_codec(codec).decode(arrays, 40)


def test_what_the_cloud_and_edge_send_passes():
    row = np.zeros(300)
    row[[4, 8]] = 0.5
    verdicts = [verdict_message("s", 1, Verification(Verdict(2, 5, False)), 0.0),
                verdict_message("s", 1, Verification(Verdict(0, None, False), row), 0.0),
                verdict_message("s", 1, Verification(Verdict(0, None, False), np.ones(300)),
                                0.0)]
    assert set(encode_target_row(row)) == {"p_ids", "p_values"}
    for message in [*verdicts,
                    Message("open", "s", 0, {**QUERY, "stream": 3}, PROMPT),
                    Message("generate", "s", 0, {**QUERY, "strategy": "cloud-spec"}, PROMPT),
                    Message("decode", "s", 2, {"tokens": 8, "correction": 1}),
                    Message("close", "s"),
                    Message("opened", "s", 0, {"token": 3, "eos": False, "compute_s": 0.01}),
                    Message("tokens", "s", 0, {"finished": True, "eos": False, "compute_s": 0.0,
                                               "interval_s": 0.0, "drafted": 0, "accepted": 0},
                            {"ids": np.array([5], dtype=np.int32)}),
                    error_message("s", 0, "x" * 10_000)]:
        back = round_trip(message)
        assert back.type == message.type
        assert set(back.arrays) == set(message.arrays)
    assert isinstance(round_trip(Message("open", "s", 0, QUERY, PROMPT)).fields["sampling"],
                      SamplingConfig)


def refusal(frames: list[bytes]) -> str:
    with pytest.raises(MalformedMessage) as caught:
        decode(frames)
    text = str(caught.value)
    assert "\n" not in text and len(text) < 400
    return text


@pytest.mark.parametrize("header_change, complaint", [
    ({"session": {"a": 1}}, "session must be a string"),
    ({"session": "s" * (MAX_SESSION_CHARS + 1)}, "session must be a string of at most"),
    ({"seq": -1}, "seq must be an integer"),
    ({"seq": True}, "seq must be an integer"),
    ({"seq": 1.5}, "seq must be an integer"),
    ({"sent_at": 1e400}, "sent_at must be a finite number"),
    ({"sent_at": float("nan")}, "sent_at must be a finite number"),
    ({"sent_at": "now"}, "sent_at must be a finite number"),
    ({"kind": "exec"}, "unknown message type 'exec'"),
    ({"kind": ["draft"]}, "unknown message type"),
    ({"fields": [1]}, "fields must be a map"),
])
def test_a_bad_envelope_is_refused(header_change, complaint):
    assert complaint in refusal(raw_frames(**{"kind": "close", **header_change}))


def test_an_envelope_with_a_key_too_many_or_too_few_is_refused():
    import msgpack
    for header in ({"type": "close", "session": "s", "seq": 0, "sent_at": 0.0, "fields": {},
                    "arrays": [], "extra": 1},
                   {"type": "close", "session": "s", "seq": 0, "fields": {}, "arrays": []},
                   [1, 2, 3], "close"):
        assert "the header must be a map of exactly" in refusal([msgpack.packb(header)])


@pytest.mark.parametrize("specs, buffers, complaint", [
    ([["ids", "int32", [1] * 65]], (b"\0" * 4,), "shape must list 1 lengths in 0..2147483647"),
    ([["q", "float32", [2**62, 4]]], (b"",), "shape must list 2 lengths in 0..2147483647"),
    ([["q", "float32", [65, 0]]], (b"",), "65 rows, more than 64"),
    ([["served", "int32", [5000]]], (b"",), "5000 rows, more than 4096"),
    ([["q", "float32", [4, 2**30]]], (b"",), "0 bytes do not match shape [4, 1073741824]"),
    ([["q", "float32", [0, 2**31 - 1]]], (b"",), None),   # 0 rows of a wide row: empty, fine
    ([["q", "float32", [0, 2**62]]], (b"",), "lengths in 0..2147483647"),
    ([[["ids"], "int32", [1]]], (b"\0" * 4,), "no array ['ids'] in this message type"),
    ([["p", "float32", [1]]], (b"\0" * 4,), "no array 'p' in this message type"),
    ([["ids", "int32", [1]], ["ids", "int32", [1]]], (b"\0" * 4,) * 2, "given twice"),
    ([["ids", "float32", [1]]], (b"\0" * 4,), "dtype 'float32' is not one of int32"),
    ([["ids", "int32", [-1]]], (b"",), "shape must list 1 lengths in 0..2147483647"),
    ([["ids", "int32", [True]]], (b"\0" * 4,), "shape must list 1 lengths in 0..2147483647"),
    ([["ids", "int32", "1"]], (b"\0" * 4,), "shape must list 1 lengths in 0..2147483647"),
    ([["ids", "int32"]], (b"\0" * 4,), "an array spec must be [name, dtype, shape]"),
    ([["ids", "int32", [2]]], (b"\0" * 4,), "4 bytes do not match shape [2]"),
    ([["ids", "int32", [MAX_DRAFT_TOKENS + 1]]], (b"\0" * 4 * (MAX_DRAFT_TOKENS + 1),),
     "65 rows, more than 64"),
    ([], (b"\0" * 4,), "the header lists 0 arrays, the message has 1"),
])
def test_bad_arrays_are_refused_before_numpy_sees_them(specs, buffers, complaint):
    frames = raw_frames("draft", arrays=specs, buffers=buffers)
    if complaint is None:
        assert decode(frames).arrays["q"].shape == (0, 2**31 - 1)
    else:
        assert complaint in refusal(frames)


@pytest.mark.parametrize("kind, change, complaint", [
    ("open", {"codec": 5}, "codec: Input should be a valid string"),
    ("open", {"codec": "bogus"}, "unknown codec 'bogus'"),
    ("open", {"max_new_tokens": [1]}, "max_new_tokens: Input should be a valid integer"),
    ("open", {"max_new_tokens": True}, "max_new_tokens: Input should be a valid integer"),
    ("open", {"max_new_tokens": 10**9}, "less than or equal to 4096"),
    ("open", {"k": [1]}, "k: Input should be a valid integer"),
    ("open", {"seed": -1}, "seed: Input should be greater than or equal to 0"),
    ("open", {"sampling": {"decoding": "beam"}}, "sampling.decoding"),
    ("open", {"sampling": {"temperature": float("inf")}}, "sampling.temperature"),
    ("open", {"stream": -1}, "stream"),
    ("open", {"extra": 1}, "extra: Extra inputs are not permitted"),
    ("open", {"codec": None}, "codec"),
    ("generate", {"strategy": "fixed-k"}, "strategy: Input should be 'cloud-only' or"),
    ("generate", {"k": 65}, "k: Input should be less than or equal to 64"),
])
def test_bad_query_fields_are_refused(kind, change, complaint):
    fields = {**QUERY, **({"strategy": "cloud-only"} if kind == "generate" else {})}
    fields = {key: value for key, value in {**fields, **change}.items() if value is not None}
    if "sampling" in change:
        fields["sampling"] = {**QUERY["sampling"], **change["sampling"]}
    frames = raw_frames(kind, fields=fields, arrays=[["prompt", "int32", [1]]],
                        buffers=(b"\1\0\0\0",))
    assert complaint in refusal(frames)


@pytest.mark.parametrize("kind, fields, complaint", [
    ("draft", {"epoch": -1}, "epoch"),
    ("draft", {"correction": 2**31}, "correction"),
    ("draft", {"ahead_follows": 1}, "ahead_follows: Input should be a valid boolean"),
    ("decode", {}, "tokens: Field required"),
    ("decode", {"tokens": 0}, "tokens: Input should be greater than or equal to 1"),
    ("close", {"why": "x"}, "why: Extra inputs are not permitted"),
    ("verdict", {"accepted": 1, "token": -2, "residual": False, "finished": False,
                 "compute_s": 0.0}, "token"),
    ("opened", {"token": 1, "eos": False, "compute_s": float("nan")}, "compute_s"),
    ("error", {"error": 5}, "error: Input should be a valid string"),
    ("pong", {"compute_s": float("inf")}, "compute_s"),
    ("ping", {"at": 1.0}, "at: Extra inputs are not permitted"),
])
def test_bad_fields_of_other_types_are_refused(kind, fields, complaint):
    assert complaint in refusal(raw_frames(kind, fields=fields))


def test_every_message_type_has_a_schema():
    assert set(SCHEMAS) == {"open", "opened", "draft", "verdict", "decode", "generate",
                            "tokens", "close", "error", "ping", "pong", "stop"}
