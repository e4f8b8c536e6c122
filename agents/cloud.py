"""The cloud agent: target model, verifier and streaming server.

Serves a ROUTER socket on the data plane and the control plane beside it.
A session belongs to the peer (ZeroMQ identity) that opened it: sessions are
keyed by (peer, name), so no other peer can name, verify on, decode on or
close it.  The edge names itself with a secret random identity
(``agents.security.new_routing_id``) that the ROUTER hands over to its newest
connection, so an edge that reconnects after a broken TCP connection keeps its
sessions.  With CURVE on (``agents.security``) every peer is also
authenticated: only the holder of the run's edge key gets a message through,
so the peer is the run's edge.  Per session it keeps the target's sequence (and, for
``cloud-spec``, its own draft's).  Messages it answers:

- ``open``: prefill the prompt, answer ``opened`` with the first token (and
  with ``stream: n``, go on decoding n more and stream them as ``tokens``:
  a stretch handed over before the first draft);
- ``draft``: verify the drafted tokens, answer ``verdict``.  Under draft-ahead
  a block carries its premise (``epoch``: the verdicts so far that did not keep
  their whole block with the bonus deferred; ``start``: the sequence length it
  was drafted from) and ``ahead_follows`` (a block drafted on the premise that
  this one is kept whole follows: keeping it whole commits no bonus, the next
  block's first draft is tested in its place).  A block whose epoch is not the
  session's is stale, drafted on a premise a verdict already broke: it is
  dropped unanswered (the edge knows which blocks it sent on that premise and
  waits for no answer to them), before anything it carries is looked at;
- ``decode``: a stretch the edge hands over (NASD's K = 0): decode that many
  tokens on the session and stream them as ``tokens`` messages;
- ``generate``: decode the whole answer here (plain or speculative) and
  stream ``tokens`` messages as tokens are committed (a session of its own,
  gone once the answer is);
- ``ping``: answer ``pong`` at once, between two commits of a stream too (the
  edge measures the link while the cloud decodes a stretch for it);
- ``stop``: end the session's stream with its next commit, whose ``tokens``
  says finished (the edge ends a stretch early once the link favours
  speculation again); nothing when the stream has ended already;
- ``close``: forget the session (and stop its stream).

``draft`` and ``decode`` first catch the session up with what the edge
committed that the cloud has not seen: the edge's q-scalar correction, then
the tokens of a stretch the edge's draft served alone (the edge-only cutoff).

Every answer carries ``compute_s``, the time from receiving the request to
sending the answer, which the edge subtracts to measure the network RTT.  A
stream's ``tokens`` messages also carry ``interval_s``, the wall time since the
stream's previous message: the cloud's step as the peer receives it, with the
serving loop's own turn between two commits (which ``compute_s`` leaves out).  Under
device emulation (``agents.backends.emulated``) it also carries ``stages``, the
passes it ran since the last answer, each with its real and emulated seconds.

What a peer gets is bounded (``agents.settings.CloudLimits``): its open
sessions, a prompt's tokens, a session's token budget (its ``max_new_tokens``:
no request may take the session past it), and its messages waiting to be
received; a session quiet for ``session_idle_s`` is forgotten.  Streams
(``decode``, ``generate``, ``open`` with ``stream``) advance one commit per
turn of the serving loop (``CloudAgent.turn``), between messages: a ``close``
stops one between two tokens, and a peer that is gone or leaves its replies
unread loses every session it holds at the first reply that cannot be handed
over; a turn answers up to 16 waiting messages between two commits of each
stream.  Nothing a peer sends ends the loop: a message that fails its checks
(``agents.messages``) or a request refused gets an ``error`` reply and is
counted (``CloudAgent.counts``, in the control plane's ``stats`` and the log).

Run as a process: ``python -m agents.cloud --settings FILE``.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import zmq
from pydantic import ValidationError

from agents.backends import HostModels
from agents.backends.emulated import wire_fields
from agents.backends.base import TokenSequence
from agents.codecs import DraftCodec, encode_target_row, get_codec
from agents.protocol import (Channel, MalformedMessage, Message, PeerUnreachable, ProtocolError,
                             ReceiveTimeout, error_message)
from agents.runtime import AgentRuntime, load_models, settings_from_argv, start_log
from agents.sampling import SamplingConfig
from agents.settings import AgentSettings, CloudLimits
from agents.speculative import (Commit, Verification, choose_token, decode_plainly,
                                generate_locally, session_rng, verify_drafts)
from shaping.clock import now

SessionKey = tuple[bytes, str]   # (the peer that opened it, the name it gave it)
IDLE_WAIT_S = 1.0        # how long the serving loop waits for a message with no stream to run
EXPIRY_EVERY_S = 1.0     # how often idle sessions are looked for
MESSAGES_PER_TURN = 16   # then every stream sends a commit: a flood of messages slows them only
#                          so much, and they slow the messages only by one commit each
LOGGED_REFUSALS = 50     # refusals logged one by one; after these, one line per 1000
log = logging.getLogger("cloud")


class OverLimit(ProtocolError):
    """A request beyond what the cloud grants a peer (``CloudLimits``)."""


@dataclass
class Stream:
    """Tokens the cloud sends as it commits them, one commit per turn of the serving loop:
    in answer to message ``seq``, ``finished`` once ``tokens`` are sent (or at EOS)."""

    commits: Iterator[Commit]
    tokens: int
    seq: int
    started: float     # when the work on the next message began (its ``compute_s``)
    sent: int = 0
    last_sent_at: float | None = None   # the previous message's send (None: the request's arrival)


@dataclass
class CloudSession:
    """One peer's session: the target's sequence and how to decode and verify on it, the
    token budget it opened with, when it last did anything, and its stream in progress.
    A ``generate`` session (``generated_by``: its strategy) ends with its stream."""

    target: TokenSequence
    sampling: SamplingConfig
    codec: DraftCodec
    rng: np.random.Generator
    max_new_tokens: int
    last_active: float
    generated_by: str | None = None
    stream: Stream | None = None
    awaiting_correction: bool = False  # q-scalar: the edge samples the correction
    epoch: int = 0      # draft-ahead: verdicts that did not keep their block whole, deferred
    dropped: int = 0    # draft-ahead: stale blocks dropped unanswered

    def within_budget(self, more: int) -> None:
        """Refuse a request that would take the session past its ``max_new_tokens``."""
        if len(self.target.generated) + more > self.max_new_tokens:
            raise OverLimit(f"{more} more tokens would take the session past the "
                            f"max_new_tokens of {self.max_new_tokens} it opened with "
                            f"({len(self.target.generated)} so far)")


def verdict_message(session: str, seq: int, verification: Verification,
                    received_at: float, passes: dict | None = None) -> Message:
    """The ``verdict`` answering a ``draft`` received at ``received_at``: the accepted
    count, the correction or bonus token (-1: the edge samples it from the target row
    that comes along), the compute time until now, and ``passes`` (device emulation:
    the passes it took, ``CloudAgent._passes``)."""
    verdict, residual_row = verification.verdict, verification.residual_row
    arrays = {} if residual_row is None else encode_target_row(residual_row)
    return Message("verdict", session, seq, {
        "accepted": verdict.accepted,
        "token": -1 if verdict.next_token is None else verdict.next_token,
        "residual": residual_row is not None, "finished": verdict.finished,
        "compute_s": now() - received_at, **(passes or {})}, arrays)


class CloudAgent:
    """The cloud's sessions and their work.  Its serving loop calls ``turn`` again and
    again, waiting up to ``wait_s`` for a message between turns."""

    def __init__(self, models: HostModels, channel: Channel,
                 limits: CloudLimits = CloudLimits()) -> None:
        if models.target is None:
            raise ValueError("the cloud needs a target model")
        self.models = models
        self.channel = channel
        self.limits = limits
        self.sessions: dict[SessionKey, CloudSession] = {}
        self.counts: Counter[str] = Counter()
        self.eos_id = models.target.eos_id
        self.width = models.target.vocab_size
        self.next_expiry = now() + EXPIRY_EVERY_S
        # when the loop last found no message waiting: one read later arrived after it
        self.looked_at = now()

    # -- the serving loop

    def wait_s(self, idle_s: float = IDLE_WAIT_S) -> float:
        """How long the loop may wait for a message before the next turn: not at all while
        a stream has tokens to send; in sim mode, no longer than until the next message
        held on its modeled link is due."""
        if any(s.stream is not None for s in self.sessions.values()):
            return 0.0
        due_in_s = self.channel.due_in_s()
        return idle_s if due_in_s is None else min(idle_s, max(due_in_s, 0.0))

    def turn(self, message_waiting: bool) -> None:
        """One turn: the waiting messages (up to ``MESSAGES_PER_TURN``; in sim mode those
        due) received and answered, every stream one commit further, idle sessions
        forgotten.  Nothing a peer sends raises out of it."""
        waiting = message_waiting or self.channel.poll(0)
        for _ in range(MESSAGES_PER_TURN if waiting else 0):
            self.receive()
            waiting = self.channel.poll(0)
            if not waiting:
                break
        if not waiting:
            self.looked_at = now()    # every message that had arrived by now is answered
        self.advance_streams()
        if now() >= self.next_expiry:
            self.expire_idle()

    def receive(self) -> None:
        """Receive one message and answer it; one that fails its checks is refused."""
        try:
            message, peer, _ = self.channel.recv(timeout_s=0)
        except ReceiveTimeout:
            return
        except MalformedMessage as error:
            self.counts["messages"] += 1
            self._refuse("malformed", error.peer, error.session, error.seq, error)
            return
        self.counts["messages"] += 1
        self.handle(message, peer, now())

    def _passes(self) -> dict:
        """Device emulation: the passes run since the last answer, as an answer carries them
        (nothing without emulation)."""
        return wire_fields(self.models.take_passes())

    def handle(self, message: Message, peer: bytes, received_at: float) -> None:
        """Answer one checked message; a refusal goes back as an ``error`` and ends the
        peer's session of that name (never another peer's: sessions are keyed by peer)."""
        key = (peer, message.session)
        try:
            if message.type == "open":
                self._open(key, message, received_at)
            elif message.type == "draft":
                self._verify(key, message, received_at)
            elif message.type == "decode":
                self._decode(key, message, received_at)
            elif message.type == "generate":
                self._generate(key, message, received_at)
            elif message.type == "ping":
                self._pong(key, message, received_at)
            elif message.type == "stop":
                self._stop(key)
            elif message.type == "close":
                self._close(key)
            else:
                raise ProtocolError(f"unexpected message type {message.type!r}")
        except PeerUnreachable as error:
            self._release_peer(peer, error)
        except Exception as error:  # noqa: BLE001: refused, whatever it was; the loop goes on
            self.sessions.pop(key, None)
            self._refuse(self._kind_of(error), peer, message.session, message.seq, error)

    def advance_streams(self) -> None:
        """Send each stream's next commit; a finished stream ends (and a ``generate``
        session with it)."""
        for key, session in list(self.sessions.items()):
            if session.stream is None or self.sessions.get(key) is not session:
                continue
            try:
                self._stream_step(key, session)
            except PeerUnreachable as error:
                self._release_peer(key[0], error)
            except Exception as error:  # noqa: BLE001: the stream ends, the loop goes on
                self.sessions.pop(key, None)
                self._refuse(self._kind_of(error), key[0], key[1], session.stream.seq, error)

    def expire_idle(self) -> None:
        """Forget every session quiet for longer than ``session_idle_s`` (not streaming)."""
        self.next_expiry = now() + EXPIRY_EVERY_S
        quiet_since = now() - self.limits.session_idle_s
        for key in [key for key, session in self.sessions.items()
                    if session.stream is None and session.last_active < quiet_since]:
            del self.sessions[key]
            self.counts["sessions_expired"] += 1
            log.info("session %s of peer %s expired: quiet for over %.0f s", key[1],
                     key[0].hex(), self.limits.session_idle_s)

    def stats(self) -> dict:
        """What the data plane saw: messages, refusals by kind, sessions now."""
        return {"counts": dict(self.counts), "sessions": len(self.sessions),
                "peers": len({peer for peer, _ in self.sessions})}

    # -- refusals

    @staticmethod
    def _kind_of(error: Exception) -> str:
        if isinstance(error, OverLimit):
            return "over_limit"
        if isinstance(error, (ProtocolError, ValueError, ValidationError)):
            return "refused"
        log.error("internal error on a peer's request", exc_info=error)
        return "internal_errors"

    def _refuse(self, kind: str, peer: bytes | None, session: str, seq: int,
                error: Exception) -> None:
        """Count a refusal of ``kind``, log it (the first ``LOGGED_REFUSALS``, then one line
        per 1000) and answer the peer with an ``error``."""
        self.counts[kind] += 1
        refusals = sum(self.counts[k] for k in ("malformed", "refused", "over_limit",
                                                 "internal_errors"))
        if refusals <= LOGGED_REFUSALS:
            log.warning("peer %s, session %r: %s: %s: %s", peer.hex() if peer else "?",
                        session, kind, type(error).__name__, error)
        elif refusals % 1000 == 0:
            log.warning("%d refusals so far (%s)", refusals, dict(self.counts))
        if peer is None:
            return
        try:
            self.channel.send(error_message(session, seq, f"{type(error).__name__}: {error}"),
                              peer)
        except PeerUnreachable as unreachable:
            self._release_peer(peer, unreachable)

    def _release_peer(self, peer: bytes, why: PeerUnreachable) -> None:
        """The peer is gone or reads nothing: its sessions (and their streams) end."""
        self.counts["unanswerable"] += 1
        mine = [key for key in self.sessions if key[0] == peer]
        for key in mine:
            del self.sessions[key]
        if mine:
            self.counts["peers_released"] += 1
            log.info("%s: its %d sessions end", why, len(mine))

    # -- sessions

    def _admit(self, key: SessionKey, prompt_tokens: int, max_new_tokens: int) -> None:
        """Room for a new session ``key`` (one of the peer's of the same name is replaced)."""
        limits = self.limits
        if prompt_tokens > limits.prompt_tokens:
            raise OverLimit(f"a prompt of {prompt_tokens} tokens; the cloud takes at most "
                            f"{limits.prompt_tokens}")
        if max_new_tokens > limits.max_new_tokens:
            raise OverLimit(f"max_new_tokens {max_new_tokens}; the cloud grants at most "
                            f"{limits.max_new_tokens}")
        self.sessions.pop(key, None)
        held = sum(1 for peer, _ in self.sessions if peer == key[0])
        if held >= limits.sessions_per_peer:
            raise OverLimit(f"this peer holds {held} open sessions, the most the cloud "
                            f"grants one peer")
        if len(self.sessions) >= limits.sessions:
            raise OverLimit(f"the cloud holds {len(self.sessions)} open sessions, its most")

    def _session(self, key: SessionKey) -> CloudSession:
        """The peer's open session ``key``, not streaming, marked active."""
        session = self.sessions.get(key)
        if session is None:
            raise ProtocolError(f"no open session {key[1]!r} of this peer")
        if session.stream is not None:
            raise ProtocolError(f"session {key[1]!r} is streaming tokens")
        session.last_active = now()
        return session

    def _pong(self, key: SessionKey, message: Message, received_at: float) -> None:
        """Answer a ``ping`` on one of the peer's sessions at once (also while it streams),
        saying how long it may have waited unread (``waited_at_most_s``: since the loop last
        found no message waiting; a step of a stream may have run meanwhile)."""
        if key not in self.sessions:
            raise ProtocolError(f"no open session {key[1]!r} of this peer")
        self.channel.send(Message("pong", key[1], message.seq, {
            "compute_s": now() - received_at,
            "waited_at_most_s": max(received_at - self.looked_at, 0.0)}), key[0])

    def _stop(self, key: SessionKey) -> None:
        """End the session's stream with its next commit (nothing when it has ended)."""
        session = self.sessions.get(key)
        if session is None:
            raise ProtocolError(f"no open session {key[1]!r} of this peer")
        if session.stream is not None:
            session.stream.tokens = min(session.stream.tokens, session.stream.sent + 1)

    def _close(self, key: SessionKey) -> None:
        closed = self.sessions.pop(key, None)
        if closed is None:
            raise ProtocolError(f"no open session {key[1]!r} of this peer")
        log.info("session %s closed%s%s", key[1], f" ({closed.dropped} stale blocks dropped)"
                 if closed.dropped else "", " (its stream stopped)" if closed.stream else "")

    def _prompt(self, message: Message) -> list[int]:
        prompt = message.arrays.get("prompt")
        if prompt is None or len(prompt) == 0:
            raise ProtocolError("a non-empty 'prompt' array is required")
        if prompt.min() < 0 or prompt.max() >= self.width:
            raise ProtocolError("prompt ids outside the vocabulary")
        return prompt.tolist()

    def _new_session(self, key: SessionKey, message: Message, received_at: float,
                     generated_by: str | None = None) -> CloudSession:
        """A session for the ``open`` or ``generate`` ``message``, admitted and kept."""
        fields = message.fields
        prompt = self._prompt(message)
        self._admit(key, len(prompt), fields["max_new_tokens"])
        sampling = fields["sampling"]
        session = CloudSession(TokenSequence(self.models.target, prompt, sampling), sampling,
                               get_codec(fields["codec"]),
                               session_rng(fields["seed"], key[1], "cloud"),
                               fields["max_new_tokens"], received_at, generated_by)
        self.sessions[key] = session
        return session

    def _open(self, key: SessionKey, message: Message, received_at: float) -> None:
        stream = message.fields.get("stream", 0)
        session = self._new_session(key, message, received_at)
        session.within_budget(1 + stream)
        target, sampling = session.target, session.sampling
        token = choose_token(target.next_probs(), sampling.decoding, session.rng)
        target.extend([token])
        log.info("session %s opened: %d prompt tokens, codec %s, %s decoding", key[1],
                 target.prompt_length, session.codec.name, sampling.decoding)
        self.channel.send(Message("opened", key[1], message.seq, {
            "token": token, "eos": token == self.eos_id,
            "compute_s": now() - received_at, **self._passes()}), key[0])
        if token != self.eos_id and stream:
            self._stream_plainly(session, stream, message.seq, now())

    def _caught_up(self, key: SessionKey, message: Message) -> CloudSession:
        """The message's session, with the edge's correction and cutoff tokens committed."""
        session = self._session(key)
        if session.awaiting_correction:
            correction = message.fields.get("correction")
            if correction is None or correction >= self.width:
                raise ProtocolError("expected the edge's correction token after a q-scalar rejection")
            session.within_budget(1)
            session.target.extend([correction])
            session.awaiting_correction = False
        served = message.arrays.get("served")
        if served is not None:
            if len(served) and (served.min() < 0 or served.max() >= self.width):
                raise ProtocolError("'served' must hold ids in the vocabulary")
            session.within_budget(len(served))
            session.target.extend(served.tolist())
        return session

    def _verify(self, key: SessionKey, message: Message, received_at: float) -> None:
        fields = message.fields
        if "epoch" in fields and self._stale(key, fields["epoch"]):
            return
        session = self._caught_up(key, message)
        if "start" in fields and fields["start"] != len(session.target.tokens):
            raise ProtocolError(f"a block drafted from length {fields['start']} in epoch "
                                f"{session.epoch}, where the session has "
                                f"{len(session.target.tokens)} tokens")
        payload = session.codec.decode(message.arrays, self.width)
        session.within_budget(len(payload.ids) + 1)
        verification = verify_drafts(session.target, payload, session.sampling.decoding,
                                     session.rng, self.eos_id,
                                     bonus=not fields.get("ahead_follows", False))
        session.awaiting_correction = verification.residual_row is not None
        if not verification.verdict.bonus_deferred(len(payload.ids)):
            session.epoch += 1
        self.channel.send(verdict_message(key[1], message.seq, verification, received_at,
                                          self._passes()), key[0])

    def _stale(self, key: SessionKey, epoch: int) -> bool:
        """Whether a draft-ahead block was drafted on a premise a verdict has broken (its
        epoch is behind the session's); such a block is counted and dropped unanswered."""
        session = self._session(key)
        if epoch > session.epoch:
            raise ProtocolError(f"a block of epoch {epoch}, where the session is in epoch "
                                f"{session.epoch}")
        if epoch == session.epoch:
            return False
        session.dropped += 1
        return True

    def _decode(self, key: SessionKey, message: Message, received_at: float) -> None:
        """Decode the stretch the edge handed over (``tokens`` long), streaming each token."""
        session = self._caught_up(key, message)
        tokens = message.fields["tokens"]
        session.within_budget(tokens)
        self._stream_plainly(session, tokens, message.seq, received_at)

    def _stream_plainly(self, session: CloudSession, tokens: int, seq: int,
                        started: float) -> None:
        decoded = decode_plainly(session.target, tokens, session.sampling.decoding, session.rng,
                                 self.eos_id)
        session.stream = Stream((Commit([token]) for token in decoded), tokens, seq, started)

    def _generate(self, key: SessionKey, message: Message, received_at: float) -> None:
        """Decode here and stream each commit; cloud-spec drafts with the cloud's draft model."""
        fields = message.fields
        strategy, max_new_tokens = fields["strategy"], fields["max_new_tokens"]
        session = self._new_session(key, message, received_at, generated_by=strategy)
        draft = TokenSequence(self.models.draft, session.target.tokens, session.sampling) \
            if strategy == "cloud-spec" else None
        session.stream = Stream(generate_locally(
            session.target, draft, fields["k"], session.sampling.decoding, session.rng,
            self.eos_id, max_new_tokens), max_new_tokens, message.seq, received_at)

    def _stream_step(self, key: SessionKey, session: CloudSession) -> None:
        """Send the stream's next commit as a ``tokens`` message; the last says ``finished``
        (after EOS, or once ``tokens`` tokens are sent)."""
        stream = session.stream
        commit = next(stream.commits, None)
        finished = commit is None
        if commit is not None:
            stream.sent += len(commit.tokens)
            eos = commit.tokens[-1] == self.eos_id
            finished = eos or stream.sent >= stream.tokens
            sent_at = now()
            self.channel.send(Message("tokens", key[1], stream.seq, {
                "finished": finished, "eos": eos, "compute_s": sent_at - stream.started,
                "interval_s": sent_at - (stream.last_sent_at or stream.started),
                "drafted": commit.drafted, "accepted": commit.accepted, **self._passes()},
                {"ids": np.asarray(commit.tokens, dtype=np.int32)}), key[0])
            stream.last_sent_at = sent_at
            stream.started = session.last_active = now()
        if finished:
            session.stream = None
            if session.generated_by is not None:
                del self.sessions[key]
                log.info("session %s: %s generated %d tokens", key[1], session.generated_by,
                         len(session.target.generated))


def serve(settings: AgentSettings) -> int:
    start_log("cloud", settings)
    runtime = AgentRuntime(settings, zmq.ROUTER, side="cloud")
    agent = CloudAgent(load_models(settings.model_pair, "cloud", log, settings.emulation),
                       runtime.channel, settings.cloud_limits)
    handlers = runtime.handlers(agent_stats=agent.stats)
    poller = zmq.Poller()
    poller.register(runtime.socket, zmq.POLLIN)
    poller.register(runtime.control.socket, zmq.POLLIN)
    try:
        while True:
            ready = dict(poller.poll(int(agent.wait_s() * 1000)))
            agent.turn(runtime.socket in ready)
            if runtime.control.socket in ready and runtime.control.serve_one(handlers) == "stop":
                log.info("stopped by the orchestrator; data plane: %s", agent.stats())
                return 0
    finally:
        runtime.close()


def main(argv: list[str] | None = None) -> int:
    return serve(settings_from_argv(argv, "Cloud agent (started by the orchestrator)"))


if __name__ == "__main__":
    sys.exit(main())
