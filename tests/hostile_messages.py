"""Structure-aware hostile messages for the cloud's data plane, as hypothesis strategies.

Each example is a valid message of one type (built the way the edge and the cloud build
theirs: real query settings, a real codec's arrays, ids in the vocabulary) with one typed
part replaced: a header key (``envelope``), a field of the type's schema or of its
``sampling``, a field dropped or one added (``fields``), or an array's name, dtype, shape,
frame length or contents (``arrays``).  ``TARGETS`` lists every part of every type, so a
suite (tests/test_wire_fuzz.py) or a benchmark (benchmarks/hostile_peers.py) can aim at each
in turn.  A ``draft`` or ``decode`` comes after a valid ``open`` of its session, so that its
fields and arrays reach the verifier and the decoder, not just the session lookup.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
import numpy as np
from hypothesis import strategies as st

from agents.codecs import CODEC_NAMES, get_codec
from agents.messages import SCHEMAS, WIRE_DTYPES
from agents.protocol import Message, encode
from agents.sampling import SamplingConfig

ENVELOPE_KEYS = ("type", "session", "seq", "sent_at", "fields", "arrays")
RAW_HEADERS = st.one_of(   # header frames no packer writes: garbage, or nesting 20,000 deep
    st.binary(max_size=300), st.integers(1, 20_000).map(lambda depth: b"\x91" * depth + b"\xc0"),
    st.integers(1, 20_000).map(lambda depth: b"\x81\xa1a" * depth + b"\xc0"))
ARRAY_PARTS = ("name", "dtype", "shape", "length", "contents")
SAMPLING_FIELDS = tuple(SamplingConfig.model_fields)
PROMPT_TOKENS = 6


def field_names(kind: str) -> tuple[str, ...]:
    schema = SCHEMAS[kind].fields
    return tuple(sorted(schema.__required_keys__ | schema.__optional_keys__))


def targets() -> list[tuple[str, str, str]]:
    """Every part a hostile message can aim at: (message type, part kind, part name)."""
    found = [("any", "envelope", key) for key in (*ENVELOPE_KEYS, "+key", "-key", "bytes")]
    for kind in SCHEMAS:
        dropped = ("-field",) if field_names(kind) else ()
        found += [(kind, "fields", name) for name in (*field_names(kind), "+field", *dropped)]
        if "sampling" in field_names(kind):
            found += [(kind, "fields", f"sampling.{name}") for name in SAMPLING_FIELDS]
        found += [(kind, "arrays", name) for name in SCHEMAS[kind].arrays]
    return found


TARGETS = targets()

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_edge_ints = st.sampled_from([-1, 0, 1, 63, 64, 65, 4095, 4096, 4097, 2**31 - 1, 2**31,
                              2**62, 2**63 - 1, 2**64 - 1, -2**63])


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


HOSTILE_VALUES = st.one_of(
    st.none(), st.booleans(), _edge_ints, st.integers(-2**63, 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True), _text,
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=200, max_size=5000),
    st.binary(max_size=40), st.lists(st.one_of(_edge_ints, _text), max_size=5),
    st.dictionaries(_text, st.one_of(_edge_ints, _text), max_size=4),
    st.integers(2, 500).map(_nested),   # msgpack packs at most 511 levels
    st.sampled_from(["ids", "topk", "cloud-spec", "greedy", "sampling", "draft", "open"]))


@dataclass(frozen=True)
class HostileMessage:
    """What a hostile peer sends: ``before`` (a valid ``open`` of the session, or nothing),
    then ``frames``, a message built as a ``kind``; ``target`` the part it aims at;
    ``sessions`` the names it may have opened (closed after it)."""

    kind: str
    target: tuple[str, str, str]
    before: list[bytes]
    frames: list[bytes]
    sessions: tuple[str, ...]


def _query_settings(draw, kind: str) -> dict:
    max_new_tokens = draw(st.integers(1, 8))
    sampling = SamplingConfig(decoding=draw(st.sampled_from(["greedy", "sampling"])))
    codecs = [name for name in CODEC_NAMES
              if sampling.decoding == "greedy" or get_codec(name).carries_draft_probs]
    fields = {"k": draw(st.integers(0, 6)), "max_new_tokens": max_new_tokens,
              "sampling": sampling.model_dump(),
              "codec": draw(st.sampled_from(codecs)), "seed": draw(st.integers(0, 2**32)),
              "strategy": draw(st.sampled_from(["cloud-only", "cloud-spec"]) if kind == "generate"
                               else st.sampled_from(["fixed-k", "nasd", "bandit"]))}
    if kind == "open" and draw(st.booleans()):
        fields["stream"] = draw(st.integers(0, max_new_tokens - 1))
    return fields


def _ids(draw, width: int, most: int) -> np.ndarray:
    return np.asarray(draw(st.lists(st.integers(0, width - 1), min_size=1, max_size=most)),
                      dtype=np.int32)


def _valid(draw, kind: str, session: str, width: int) -> tuple[Message, Message | None]:
    """A valid message of ``kind`` (with the ``open`` it needs first, or None)."""
    if kind in ("open", "generate"):
        return Message(kind, session, 0, _query_settings(draw, kind),
                       {"prompt": _ids(draw, width, PROMPT_TOKENS)}), None
    if kind in ("draft", "decode", "ping", "stop"):
        settings = {**_query_settings(draw, "open"), "max_new_tokens": 8}
        settings.pop("stream", None)
        prompt = _ids(draw, width, PROMPT_TOKENS)
        opening = Message("open", session, 0, settings, {"prompt": prompt})
        start = len(prompt) + 1
        if kind == "decode":
            return Message("decode", session, 1, {"tokens": draw(st.integers(1, 4))}), opening
        if kind in ("ping", "stop"):
            return Message(kind, session, 1), opening
        ids = _ids(draw, width, 4)
        rows = np.random.default_rng(draw(st.integers(0, 2**32))).dirichlet(
            np.full(width, 0.1), size=len(ids))
        premise = draw(st.sampled_from([{}, {"epoch": 0, "start": start,
                                             "ahead_follows": draw(st.booleans())}]))
        return Message("draft", session, 1, premise,
                       get_codec(settings["codec"]).encode(ids.tolist(), rows)), opening
    replies = {
        "close": {}, "opened": {"token": 3, "eos": False, "compute_s": 0.01},
        "verdict": {"accepted": 1, "token": 4, "residual": False, "finished": False,
                    "compute_s": 0.01},
        "tokens": {"finished": True, "eos": False, "compute_s": 0.0, "interval_s": 0.0,
                   "drafted": 0, "accepted": 0},
        "error": {"error": "no"}, "pong": {"compute_s": 0.0, "waited_at_most_s": 0.0}}
    arrays = {"tokens": {"ids": np.array([5], dtype=np.int32)},
              "verdict": {"p": np.full(width, 1.0 / width, dtype=np.float32)}}
    return Message(kind, session, 0, replies[kind], arrays.get(kind, {})), None


def _header_and_buffers(message: Message) -> tuple[dict, list[bytes]]:
    frames = [bytes(frame) for frame in encode(message)]
    return msgpack.unpackb(frames[0], raw=False), frames[1:]


def _hostile_array(draw, header: dict, buffers: list[bytes], name: str) -> None:
    """Aim at array ``name`` (added, with a fitting frame, where the message lacks it)."""
    specs = header["arrays"]
    index = next((i for i, spec in enumerate(specs) if spec[0] == name), None)
    if index is None:
        schema = SCHEMAS[header["type"]].arrays[name]
        shape = [draw(st.integers(0, 4)) for _ in range(schema.ndim)]
        specs.append([name, schema.dtypes[0], shape])
        buffers.append(bytes(int(np.prod(shape)) * WIRE_DTYPES[schema.dtypes[0]].itemsize))
        index = len(specs) - 1
    part = draw(st.sampled_from(ARRAY_PARTS))
    spec = specs[index]
    if part == "name":
        spec[0] = draw(st.one_of(HOSTILE_VALUES, st.sampled_from(sorted(
            {n for schema in SCHEMAS.values() for n in schema.arrays}))))
    elif part == "dtype":
        spec[1] = draw(st.one_of(HOSTILE_VALUES, st.sampled_from(
            [*WIRE_DTYPES, "int64", "object", "complex128", "<i4", "U4"])))
    elif part == "shape":
        spec[2] = draw(st.one_of(
            HOSTILE_VALUES, st.lists(st.one_of(_edge_ints, st.integers(-3, 70)), max_size=70),
            st.just([1] * 65), st.just([2**62, 4]), st.just([0, 2**62]),
            st.just([0, 2**31 - 1])))
    elif part == "length":
        buffers[index] = buffers[index][:draw(st.integers(0, len(buffers[index])))] \
            + bytes(draw(st.integers(0, 9)))
    else:
        dtype = WIRE_DTYPES[spec[1]]
        count = len(buffers[index]) // dtype.itemsize
        if dtype.kind == "f":
            values = draw(st.lists(st.floats(width=32 if dtype.itemsize < 8 else 64),
                                   min_size=count, max_size=count))
        else:
            values = draw(st.lists(st.one_of(_edge_ints, st.integers(-5, 2000)),
                                   min_size=count, max_size=count))
            values = [value % 2**32 - (2**32 if value % 2**32 >= 2**31 else 0)
                      for value in values]
        with np.errstate(all="ignore"):
            buffers[index] = np.asarray(values, dtype=np.float64 if dtype.kind == "f"
                                        else np.int64).astype(dtype).tobytes()


def _hostile_field(draw, header: dict, name: str) -> None:
    fields = header["fields"]
    if name == "+field":
        fields[draw(st.one_of(_text, st.sampled_from(["k", "tokens", "epoch", "sampling"])))] \
            = draw(HOSTILE_VALUES)
    elif name == "-field":
        if fields:
            del fields[draw(st.sampled_from(sorted(fields)))]
    elif name.startswith("sampling."):
        fields["sampling"][name.split(".", 1)[1]] = draw(HOSTILE_VALUES)
    else:
        fields[name] = draw(HOSTILE_VALUES)


@st.composite
def hostile_messages(draw, target: tuple[str, str, str], width: int, session: str
                     ) -> HostileMessage:
    """A message aimed at ``target`` (see ``TARGETS``) for a vocabulary of ``width``."""
    kind, part, name = target
    if kind == "any":
        kind = draw(st.sampled_from(sorted(SCHEMAS)))
    message, opening = _valid(draw, kind, session, width)
    header, buffers = _header_and_buffers(message)
    if part == "envelope":
        if name == "bytes":
            pass
        elif name == "+key":
            header[draw(_text.filter(lambda key: key not in ENVELOPE_KEYS))] = draw(HOSTILE_VALUES)
        elif name == "-key":
            del header[draw(st.sampled_from(ENVELOPE_KEYS))]
        else:
            header[name] = draw(st.one_of(HOSTILE_VALUES, st.sampled_from(sorted(SCHEMAS))))
    elif part == "fields":
        _hostile_field(draw, header, name)
    else:
        _hostile_array(draw, header, buffers, name)
    before = [] if opening is None else [bytes(frame) for frame in encode(opening)]
    if (part, name) == ("envelope", "bytes"):
        return HostileMessage(kind, target, before, [draw(RAW_HEADERS), *buffers],
                              (session,))
    named = header.get("session")
    sessions = (session, named) if isinstance(named, str) and named != session else (session,)
    return HostileMessage(kind, target, before, [msgpack.packb(header), *buffers], sessions)
