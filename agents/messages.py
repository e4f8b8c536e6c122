"""What each message type may carry, declared once and checked on every receive before
anything reads it (``protocol.decode`` calls the checks here in order).

- the envelope (``check_envelope``): the header is a map of exactly the six keys; a known
  ``type``; ``session`` a string of at most ``MAX_SESSION_CHARS``; ``seq`` a non-negative
  int; ``sent_at`` a finite number; ``fields`` a map; ``arrays`` a list of specs;
- the arrays (``check_arrays``): per type, which names it may carry (each once), in which
  dtypes and with how many dimensions and rows (``ArraySchema``); every length an int in
  0..``MAX_DIMENSION``; the frame exactly as long as the shape says (sizes are Python
  ints: no product overflows);
- the fields (``check_fields``): per type a ``TypedDict`` validated strictly (no extra key,
  no bool for an int, no NaN or infinity, ranges as declared), which returns them typed
  (``sampling`` as a ``SamplingConfig``).

Every check is a pure function of the header and the frame lengths and raises
``MalformedMessage`` with a one-line reason, so a peer's bytes never reach numpy, a dict key
or an ``int()`` unchecked.  The ranges are the protocol's own (a block carries at most
``MAX_DRAFT_TOKENS`` drafts, a query at most ``MAX_NEW_TOKENS`` tokens); what one
deployment grants each peer (sessions, prompt length, token budget) is the cloud's
``agents.settings.CloudLimits``.
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Mapping, NamedTuple

import numpy as np
from pydantic import AfterValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError
from typing_extensions import NotRequired, TypedDict

from agents.codecs import get_codec
from agents.sampling import SamplingConfig
from agents.wire_errors import MalformedMessage
from nasd.latency.stages import STAGES

WIRE_DTYPES = {"int32": np.dtype(np.int32), "float16": np.dtype(np.float16),
               "float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}
HEADER_KEYS = frozenset(("type", "session", "seq", "sent_at", "fields", "arrays"))
MAX_SESSION_CHARS = 256
MAX_SEQ = 2**63 - 1
MAX_DRAFT_TOKENS = 64      # a K at most, on the wire and in a job (orchestrator/config/job.py)
MAX_NEW_TOKENS = 4096      # a query's max_new_tokens at most, on the wire and in a job
MAX_TOKEN_ID = 2**31 - 1   # ids travel as int32
MAX_DIMENSION = 2**31 - 1  # an array's length along any axis (numpy's byte sizes stay in int64)
MAX_SEED = 2**64 - 1
MAX_ERROR_CHARS = 4096
MAX_NAME_CHARS = 32        # a strategy's or codec's name

STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _known_codec(name: str) -> str:
    get_codec(name)
    return name


TokenId = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]
Budget = Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS)]
DraftCount = Annotated[int, Field(ge=0, le=MAX_DRAFT_TOKENS)]
Position = Annotated[int, Field(ge=0, le=MAX_SEQ)]
CodecName = Annotated[str, Field(max_length=MAX_NAME_CHARS), AfterValidator(_known_codec)]
Seconds = Annotated[float, Strict(), Field(ge=0)]
# device emulation: a pass an answer's work took, [stage index in STAGES, real, emulated and
# lasted seconds] (agents/backends/emulated.py wire_fields); msgpack hands it over as a list
PassTiming = Annotated[tuple[Annotated[int, Strict(), Field(ge=0, lt=len(STAGES))],
                             Seconds, Seconds, Seconds], Field(strict=False)]
PassTimings = Annotated[list[PassTiming], Field(max_length=MAX_NEW_TOKENS)]


class _QuerySettings(TypedDict):
    """What ``open`` and ``generate`` carry of the query: how to decode and how long."""
    __pydantic_config__ = STRICT  # type: ignore[misc]
    k: DraftCount
    max_new_tokens: Budget
    sampling: SamplingConfig
    codec: CodecName
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)]


class OpenFields(_QuerySettings):
    strategy: Annotated[str, Field(max_length=MAX_NAME_CHARS)]
    stream: NotRequired[Annotated[int, Field(ge=0, le=MAX_NEW_TOKENS)]]


class GenerateFields(_QuerySettings):
    strategy: Literal["cloud-only", "cloud-spec"]


class DraftFields(TypedDict):
    __pydantic_config__ = STRICT  # type: ignore[misc]
    correction: NotRequired[TokenId]
    epoch: NotRequired[Position]
    start: NotRequired[Position]
    ahead_follows: NotRequired[bool]


class DecodeFields(TypedDict):
    __pydantic_config__ = STRICT  # type: ignore[misc]
    tokens: Budget
    correction: NotRequired[TokenId]


class NoFields(TypedDict):
    __pydantic_config__ = STRICT  # type: ignore[misc]


class OpenedFields(TypedDict):
    __pydantic_config__ = STRICT  # type: ignore[misc]
    token: TokenId
    eos: bool
    compute_s: float
    stages: NotRequired[PassTimings]


class VerdictFields(TypedDict):
    __pydantic_config__ = STRICT  # type: ignore[misc]
    accepted: DraftCount
    token: Annotated[int, Field(ge=-1, le=MAX_TOKEN_ID)]   # -1: the edge samples it
    residual: bool
    finished: bool
    compute_s: float
    stages: NotRequired[PassTimings]


class TokensFields(TypedDict):
    __pydantic_config__ = STRICT  # type: ignore[misc]
    finished: bool
    eos: bool
    compute_s: float
    interval_s: float      # since the stream's previous message was sent (the first: since the request came)
    drafted: DraftCount
    accepted: DraftCount
    stages: NotRequired[PassTimings]


class PongFields(TypedDict):
    __pydantic_config__ = STRICT  # type: ignore[misc]
    compute_s: float
    waited_at_most_s: Annotated[float, Field(ge=0)]


class ErrorFields(TypedDict):
    __pydantic_config__ = STRICT  # type: ignore[misc]
    error: Annotated[str, Field(max_length=MAX_ERROR_CHARS)]


@dataclass(frozen=True)
class ArraySchema:
    """An array a message type may carry: its dtypes, its dimensions, and the most rows (its
    first dimension) it may have; None: only the message's size cap bounds them."""

    dtypes: tuple[str, ...]
    ndim: int
    max_rows: int | None = None


@dataclass(frozen=True)
class MessageSchema:
    """A message type's fields (a ``TypedDict``, validated through ``adapter``) and arrays."""

    fields: type
    arrays: Mapping[str, ArraySchema]
    adapter: TypeAdapter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "adapter", TypeAdapter(self.fields))


PROMPT = {"prompt": ArraySchema(("int32",), 1)}
SERVED = {"served": ArraySchema(("int32",), 1, MAX_NEW_TOKENS)}   # tokens the draft served alone
SCHEMAS: dict[str, MessageSchema] = {
    "open": MessageSchema(OpenFields, PROMPT),
    "generate": MessageSchema(GenerateFields, PROMPT),
    "draft": MessageSchema(DraftFields, {
        "ids": ArraySchema(("int32",), 1, MAX_DRAFT_TOKENS),
        "q": ArraySchema(("float16", "float32"), 2, MAX_DRAFT_TOKENS),
        "top_ids": ArraySchema(("int32",), 2, MAX_DRAFT_TOKENS),
        "top_probs": ArraySchema(("float32",), 2, MAX_DRAFT_TOKENS),
        "q_ids": ArraySchema(("float64",), 1, MAX_DRAFT_TOKENS), **SERVED}),
    "decode": MessageSchema(DecodeFields, SERVED),
    "close": MessageSchema(NoFields, {}),
    "ping": MessageSchema(NoFields, {}),
    "stop": MessageSchema(NoFields, {}),
    "pong": MessageSchema(PongFields, {}),
    "opened": MessageSchema(OpenedFields, {}),
    "verdict": MessageSchema(VerdictFields, {
        "p": ArraySchema(("float32",), 1), "p_ids": ArraySchema(("int32",), 1),
        "p_values": ArraySchema(("float32",), 1)}),
    "tokens": MessageSchema(TokensFields, {
        "ids": ArraySchema(("int32",), 1, MAX_DRAFT_TOKENS + 1)}),
    "error": MessageSchema(ErrorFields, {}),
}
MESSAGE_TYPES = tuple(SCHEMAS)


class Envelope(NamedTuple):
    type: str
    session: str
    seq: int
    sent_at: float
    fields: dict
    array_specs: list


class ArraySpec(NamedTuple):
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]


def _is_int(value: object) -> bool:
    return type(value) is int   # not bool


def check_envelope(header: object) -> Envelope:
    """The header's six keys, each checked; ``MalformedMessage`` names the first bad one
    (and carries the session and seq once they are known to be good)."""
    if not isinstance(header, dict) or header.keys() != HEADER_KEYS:
        raise MalformedMessage(f"the header must be a map of exactly {sorted(HEADER_KEYS)}")
    kind, session, seq = header["type"], header["session"], header["seq"]
    if not isinstance(session, str) or len(session) > MAX_SESSION_CHARS:
        raise MalformedMessage(f"session must be a string of at most {MAX_SESSION_CHARS} "
                               f"characters, not {_shown(session)}")
    if not _is_int(seq) or not 0 <= seq <= MAX_SEQ:
        raise MalformedMessage(f"seq must be an integer in 0..{MAX_SEQ}, not {_shown(seq)}",
                               session)
    if not isinstance(kind, str) or kind not in SCHEMAS:
        raise MalformedMessage(f"unknown message type {_shown(kind)}", session, seq)
    sent_at = header["sent_at"]
    if type(sent_at) not in (int, float) or not math.isfinite(sent_at):
        raise MalformedMessage(f"sent_at must be a finite number, not {_shown(sent_at)}",
                               session, seq)
    fields, specs = header["fields"], header["arrays"]
    if not isinstance(fields, dict) or not isinstance(specs, list):
        raise MalformedMessage("fields must be a map and arrays a list", session, seq)
    return Envelope(kind, session, seq, float(sent_at), fields, specs)


def check_arrays(envelope: Envelope, frame_lengths: list[int]) -> list[ArraySpec]:
    """The array specs of ``envelope`` against its type's schema and the frames that follow."""
    allowed = SCHEMAS[envelope.type].arrays
    specs = envelope.array_specs

    def refuse(text: str) -> MalformedMessage:
        return MalformedMessage(f"{envelope.type}: {text}", envelope.session, envelope.seq)

    if len(specs) != len(frame_lengths):
        raise refuse(f"the header lists {len(specs)} arrays, the message has "
                     f"{len(frame_lengths)}")
    checked: list[ArraySpec] = []
    for spec, length in zip(specs, frame_lengths):
        if not isinstance(spec, list) or len(spec) != 3:
            raise refuse(f"an array spec must be [name, dtype, shape], not {_shown(spec)}")
        name, dtype_name, shape = spec
        if not isinstance(name, str) or name not in allowed:
            raise refuse(f"no array {_shown(name)} in this message type (it may carry "
                         f"{', '.join(allowed) or 'none'})")
        if any(name == other.name for other in checked):
            raise refuse(f"array {name!r} given twice")
        schema = allowed[name]
        if not isinstance(dtype_name, str) or dtype_name not in schema.dtypes:
            raise refuse(f"array {name!r}: dtype {_shown(dtype_name)} is not one of "
                         f"{', '.join(schema.dtypes)}")
        if not isinstance(shape, list) or len(shape) != schema.ndim \
                or not all(_is_int(n) and 0 <= n <= MAX_DIMENSION for n in shape):
            raise refuse(f"array {name!r}: the shape must list {schema.ndim} lengths in "
                         f"0..{MAX_DIMENSION}, not {_shown(shape)}")
        if schema.max_rows is not None and shape[0] > schema.max_rows:
            raise refuse(f"array {name!r}: {shape[0]} rows, more than {schema.max_rows}")
        dtype = WIRE_DTYPES[dtype_name]
        if math.prod(shape) * dtype.itemsize != length:
            raise refuse(f"array {name!r}: {length} bytes do not match shape {shape}")
        checked.append(ArraySpec(name, dtype, tuple(shape)))
    return checked


def check_fields(envelope: Envelope) -> dict[str, Any]:
    """The fields of ``envelope``, validated against its type's schema and typed by it."""
    try:
        return SCHEMAS[envelope.type].adapter.validate_python(envelope.fields)
    except ValidationError as error:
        raise MalformedMessage(f"{envelope.type}: {one_line(error)}", envelope.session,
                               envelope.seq) from None


def one_line(error: ValidationError, most: int = 3) -> str:
    """A validation error in one line: each field's path and complaint, the first ``most``."""
    problems = [f"{'.'.join(str(part) for part in problem['loc']) or 'fields'}: "
                f"{problem['msg']}" for problem in error.errors(include_url=False)]
    more = f" (and {len(problems) - most} more)" if len(problems) > most else ""
    return "; ".join(problems[:most]) + more


def _shown(value: object) -> str:
    """A peer's value for an error line: short however large or deep it is."""
    return _SHORT_REPR.repr(value)


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxstring, _SHORT_REPR.maxother = 2, 40, 40
_SHORT_REPR.maxlist = _SHORT_REPR.maxdict = 4
