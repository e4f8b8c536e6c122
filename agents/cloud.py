"""The cloud agent: target model, verifier and streaming server.

Serves a ROUTER socket on the data plane and the control plane beside it.
Per session it keeps the target's sequence (and, for ``cloud-spec``, its own
draft's).  Messages it answers:

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
  stream ``tokens`` messages as tokens are committed;
- ``close``: forget the session.

``draft`` and ``decode`` first catch the session up with what the edge
committed that the cloud has not seen: the edge's q-scalar correction, then
the tokens of a stretch the edge's draft served alone (the edge-only cutoff).

Every answer carries ``compute_s``, the time from receiving the request to
sending the answer, which the edge subtracts to measure the network RTT.  Under
device emulation (``agents.backends.emulated``) it also carries ``stages``, the
passes it ran since the last answer, each with its real and emulated seconds.

Run as a process: ``python -m agents.cloud --settings FILE``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import zmq
from pydantic import ValidationError

from agents.backends import HostModels
from agents.backends.emulated import wire_fields
from agents.backends.base import TokenSequence
from agents.codecs import DraftCodec, encode_target_row, get_codec
from agents.protocol import Channel, Message, ProtocolError, ReceiveTimeout, error_message
from agents.runtime import AgentRuntime, load_models, settings_from_argv, start_log
from agents.settings import AgentSettings
from agents.sampling import SamplingConfig
from agents.speculative import (Commit, Verification, choose_token, decode_plainly,
                                generate_locally, session_rng, verify_drafts)
from shaping.clock import now

MAX_SESSIONS = 64
MAX_STRETCH_TOKENS = 4096   # a job's max_new_tokens at most
log = logging.getLogger("cloud")


@dataclass
class VerifySession:
    target: TokenSequence
    sampling: SamplingConfig
    codec: DraftCodec
    rng: np.random.Generator
    awaiting_correction: bool = False  # q-scalar: the edge samples the correction
    epoch: int = 0      # draft-ahead: verdicts that did not keep their block whole, deferred
    dropped: int = 0    # draft-ahead: stale blocks dropped unanswered


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
    def __init__(self, models: HostModels, channel: Channel) -> None:
        if models.target is None:
            raise ValueError("the cloud needs a target model")
        self.models = models
        self.channel = channel
        self.sessions: dict[str, VerifySession] = {}
        self.eos_id = models.target.eos_id
        self.width = models.target.vocab_size

    def _passes(self) -> dict:
        """Device emulation: the passes run since the last answer, as an answer carries them
        (nothing without emulation)."""
        return wire_fields(None if self.models.ledger is None else self.models.ledger.take())

    def handle(self, message: Message, peer: bytes, received_at: float) -> None:
        """Answer one data-plane message; protocol errors go back as ``error``."""
        try:
            if message.type == "open":
                self._open(message, peer, received_at)
            elif message.type == "draft":
                self._verify(message, peer, received_at)
            elif message.type == "decode":
                self._decode(message, peer, received_at)
            elif message.type == "generate":
                self._generate(message, peer, received_at)
            elif message.type == "close":
                closed = self.sessions.pop(message.session, None)
                if closed is not None:
                    log.info("session %s closed%s", message.session, f" ({closed.dropped} "
                             "stale blocks dropped)" if closed.dropped else "")
            else:
                raise ProtocolError(f"unexpected message type {message.type!r}")
        except (ProtocolError, ValueError, KeyError, ValidationError) as error:
            self.sessions.pop(message.session, None)
            log.warning("session %s: %s answered with an error: %s: %s", message.session,
                        message.type, type(error).__name__, error)
            self.channel.send(error_message(message.session, message.seq,
                                            f"{type(error).__name__}: {error}"), peer)

    @staticmethod
    def _settings(message: Message) -> tuple[SamplingConfig, DraftCodec, int, int]:
        fields = message.fields
        sampling = SamplingConfig.model_validate(fields["sampling"])
        return sampling, get_codec(fields["codec"]), int(fields["max_new_tokens"]), int(fields["seed"])

    def _prompt(self, message: Message) -> list[int]:
        prompt = message.arrays.get("prompt")
        if prompt is None or prompt.ndim != 1 or len(prompt) == 0:
            raise ProtocolError("a non-empty 1-d 'prompt' array is required")
        if prompt.min() < 0 or prompt.max() >= self.width:
            raise ProtocolError("prompt ids outside the vocabulary")
        return prompt.tolist()

    def _open(self, message: Message, peer: bytes, received_at: float) -> None:
        sampling, codec, _, seed = self._settings(message)
        stream = self._stretch_tokens(message, "stream", minimum=0)
        if len(self.sessions) >= MAX_SESSIONS:
            raise ProtocolError(f"more than {MAX_SESSIONS} open sessions")
        target = TokenSequence(self.models.target, self._prompt(message), sampling)
        rng = session_rng(seed, message.session, "cloud")
        token = choose_token(target.next_probs(), sampling.decoding, rng)
        target.extend([token])
        self.sessions[message.session] = VerifySession(target, sampling, codec, rng)
        log.info("session %s opened: %d prompt tokens, codec %s, %s decoding",
                 message.session, target.prompt_length, codec.name, sampling.decoding)
        self.channel.send(Message("opened", message.session, message.seq, {
            "token": token, "eos": token == self.eos_id,
            "compute_s": now() - received_at, **self._passes()}), peer)
        if token != self.eos_id and stream:
            self._decode(message, peer, now(), "stream")

    @staticmethod
    def _stretch_tokens(message: Message, field: str, minimum: int = 1) -> int:
        tokens = message.fields.get(field, 0)
        if not isinstance(tokens, int) or not minimum <= tokens <= MAX_STRETCH_TOKENS:
            raise ProtocolError(f"{field!r} must be an integer in {minimum}..{MAX_STRETCH_TOKENS}")
        return tokens

    def _caught_up(self, message: Message) -> VerifySession:
        """The message's session, with the edge's correction and cutoff tokens committed."""
        session = self.sessions.get(message.session)
        if session is None:
            raise ProtocolError(f"no open session {message.session!r}")
        if session.awaiting_correction:
            correction = message.fields.get("correction")
            if not isinstance(correction, int) or not 0 <= correction < self.width:
                raise ProtocolError("expected the edge's correction token after a q-scalar rejection")
            session.target.extend([correction])
            session.awaiting_correction = False
        served = message.arrays.get("served")
        if served is not None:
            if served.ndim != 1 or (len(served) and (served.min() < 0 or served.max() >= self.width)):
                raise ProtocolError("'served' must be a 1-d array of ids in the vocabulary")
            session.target.extend(served.tolist())
        return session

    def _verify(self, message: Message, peer: bytes, received_at: float) -> None:
        fields = message.fields
        if "epoch" in fields and self._stale(message):
            return
        session = self._caught_up(message)
        if "start" in fields and fields["start"] != len(session.target.tokens):
            raise ProtocolError(f"a block drafted from length {fields['start']} in epoch "
                                f"{session.epoch}, where the session has "
                                f"{len(session.target.tokens)} tokens")
        payload = session.codec.decode(message.arrays, self.width)
        verification = verify_drafts(session.target, payload, session.sampling.decoding,
                                     session.rng, self.eos_id,
                                     bonus=not fields.get("ahead_follows", False))
        session.awaiting_correction = verification.residual_row is not None
        if not verification.verdict.bonus_deferred(len(payload.ids)):
            session.epoch += 1
        self.channel.send(verdict_message(message.session, message.seq, verification,
                                          received_at, self._passes()), peer)

    def _stale(self, message: Message) -> bool:
        """Whether a draft-ahead block was drafted on a premise a verdict has broken (its
        epoch is behind the session's); such a block is counted and dropped unanswered."""
        session = self.sessions.get(message.session)
        if session is None:
            raise ProtocolError(f"no open session {message.session!r}")
        epoch = message.fields["epoch"]
        if not isinstance(epoch, int) or not 0 <= epoch <= session.epoch:
            raise ProtocolError(f"a block of epoch {epoch!r}, where the session is in epoch "
                                f"{session.epoch}")
        if epoch == session.epoch:
            return False
        session.dropped += 1
        return True

    def _decode(self, message: Message, peer: bytes, received_at: float,
                field: str = "tokens") -> None:
        """Decode the stretch the edge handed over (``field`` of the message tokens long),
        streaming each token."""
        session = self._caught_up(message)
        tokens = self._stretch_tokens(message, field)
        decoded = decode_plainly(session.target, tokens, session.sampling.decoding, session.rng,
                                 self.eos_id)
        self._stream((Commit([token]) for token in decoded), tokens, message, peer, received_at)

    def _stream(self, commits: Iterator[Commit], tokens: int, message: Message, peer: bytes,
                started: float) -> None:
        """Send each commit as a ``tokens`` message as it is made; the last says ``finished``
        (after EOS, or once ``tokens`` tokens are sent)."""
        sent = 0
        for commit in commits:
            sent += len(commit.tokens)
            eos = commit.tokens[-1] == self.eos_id
            sent_at = now()
            self.channel.send(Message("tokens", message.session, message.seq, {
                "finished": eos or sent >= tokens, "eos": eos, "compute_s": sent_at - started,
                "drafted": commit.drafted, "accepted": commit.accepted, **self._passes()},
                {"ids": np.asarray(commit.tokens, dtype=np.int32)}), peer)
            started = now()

    def _generate(self, message: Message, peer: bytes, received_at: float) -> None:
        """Decode here and stream each commit; cloud-spec drafts with the cloud's draft model."""
        sampling, _, max_new_tokens, seed = self._settings(message)
        strategy, k = message.fields["strategy"], int(message.fields["k"])
        prompt = self._prompt(message)
        rng = session_rng(seed, message.session, "cloud")
        target = TokenSequence(self.models.target, prompt, sampling)
        draft = TokenSequence(self.models.draft, prompt, sampling) if strategy == "cloud-spec" \
            else None
        self._stream(generate_locally(target, draft, k, sampling.decoding, rng, self.eos_id,
                                      max_new_tokens), max_new_tokens, message, peer, received_at)
        log.info("session %s: %s generated %d tokens", message.session, strategy,
                 len(target.generated))


def serve(settings: AgentSettings) -> int:
    start_log("cloud", settings)
    runtime = AgentRuntime(settings, zmq.ROUTER, side="cloud")
    channel = runtime.channel
    agent = CloudAgent(load_models(settings.model_pair, "cloud", log, settings.emulation), channel)
    handlers = runtime.handlers()
    poller = zmq.Poller()
    poller.register(runtime.socket, zmq.POLLIN)
    poller.register(runtime.control.socket, zmq.POLLIN)
    try:
        while True:
            ready = dict(poller.poll(1000))
            if runtime.socket in ready:
                try:
                    message, peer, _ = channel.recv(timeout_s=0)
                except ReceiveTimeout:
                    continue
                except ProtocolError as error:
                    log.warning("dropped a malformed message: %s", error)
                    continue
                agent.handle(message, peer, now())
            if runtime.control.socket in ready and runtime.control.serve_one(handlers) == "stop":
                log.info("stopped by the orchestrator")
                return 0
    finally:
        runtime.close()


def main(argv: list[str] | None = None) -> int:
    return serve(settings_from_argv(argv, "Cloud agent (started by the orchestrator)"))


if __name__ == "__main__":
    sys.exit(main())
