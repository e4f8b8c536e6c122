"""The edge agent: runs one query at a time under a strategy and measures it.

Strategies on the edge side:

- ``edge-only``: the draft model decodes alone, no network.
- ``cloud-only`` / ``cloud-spec``: the prompt goes up once and the cloud
  streams tokens back (plain decoding, or speculation inside the cloud).
- ``fixed-k``, ``nasd``, ``hf-heuristic``, ``bandit``: the edge drafts K tokens
  per cycle and the cloud verifies them (one round trip per cycle).  The K of
  each cycle comes from the strategy's ``nasd.policy.KPolicy``, which sees
  every finished cycle; one policy serves all queries of a strategy run.
- draft-ahead (``fixed-k`` and ``nasd`` with ``draft_ahead`` D > 0): while a
  verdict is in flight the edge drafts and sends the next blocks, up to D of
  them beyond the oldest, each on the premise that every block before it is
  kept whole (``EdgeAgent._pipeline``).  A block followed by one drafted on
  it says so (``ahead_follows``): kept whole, it commits no bonus, and the next
  block's first draft, the draft's own token at that position, is tested in
  the bonus's place, so the output stays the target's.  A verdict that does
  not keep its block whole (a rejection, a bonus, an EOS) ends the epoch: the
  edge commits it, rolls its draft back (the blocks after it with it), counts
  those blocks dropped (the cloud drops them unanswered: each carries the
  epoch it was drafted in) and starts again from the corrected context.

Run as a process: ``python -m agents.edge --settings FILE``; the orchestrator
sends ``query`` requests over the control plane and gets the records back.
"""

from __future__ import annotations

import logging
import math
import sys
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Sequence, get_args

import numpy as np
import zmq
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agents.backends import HostModels
from agents.backends.base import TokenSequence
from agents.backends.emulated import PassTiming, StageTally, read_passes, real_seconds
from agents.codecs import DraftCodec, decode_target_row, get_codec
from agents.protocol import Channel, Message, ProtocolError, ReceiveTimeout
from agents.records import CycleRecord, QueryRecord, decode_rate
from agents.runtime import AgentRuntime, load_models, settings_from_argv, start_log
from agents.sampling import SamplingConfig
from agents.speculative import (Drafts, decode_plainly, draft_tokens, session_rng, settle_verdict,
                                speculation_step)
from agents.verification import Verdict
from nasd.estimator import Calibration
from nasd.policy import (DEFAULT_K_MAX, DEFAULT_K_MIN, EWMA, HAND_OFF, MEAN, POLICY_NAMES,
                         KPolicy, PolicyName, make_policy)
from nasd.table import RttTable
from shaping.clock import now

StrategyName = Literal["cloud-only", "cloud-spec", "edge-only", PolicyName]
STRATEGY_NAMES: tuple[str, ...] = get_args(StrategyName)
AHEAD_STRATEGIES = ("fixed-k", "nasd")   # the strategies that can draft ahead
MAX_DRAFT_AHEAD = 16
PING_EVERY_S = 0.05       # a stretch the cloud decodes: how often, on average, the edge pings
PINGS_KEPT = 5            # the link's RTT in a stretch: from the last pings that agree
log = logging.getLogger("edge")


def link_rtt_bounds(pings: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Where the link's round trip lies, from pings, oldest first, each (its round trip
    less the cloud's time answering it, the longest it may have waited unread at the
    cloud): each brackets the RTT in [round trip - wait, round trip].  The brackets of the
    newest pings, as far back as they overlap (an older one that does not was taken before
    the link changed), intersected."""
    low, high = 0.0, math.inf
    for round_trip, waited in reversed(pings):
        if round_trip < low or round_trip - waited > high:
            break
        low, high = max(low, round_trip - waited), min(high, round_trip)
    return low, high


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    strategy: StrategyName
    label: str
    k: int | None = Field(default=None, ge=0)
    k_min: int = Field(default=DEFAULT_K_MIN, ge=1)   # adaptive K policies: the range of K
    k_max: int = Field(default=DEFAULT_K_MAX, ge=1)
    edge_only_cutoff: bool = False   # nasd: may serve stretches with the draft alone (lossy)
    # nasd: stop drafting before a position whose likeliest draft token is less likely
    confidence_floor: float = Field(default=0.0, ge=0.0, le=1.0)
    rtt_estimate: str = EWMA     # nasd: the RTT it decides on (ewma, or pNN)
    objective: str = MEAN        # nasd: what K optimises (mean, or pNN of the decode time)
    objective_tokens: int = Field(default=64, gt=0)   # nasd: of a query this long (the job's)
    # fixed-k, nasd: blocks in flight beyond the oldest unanswered one (0: no draft-ahead)
    draft_ahead: int = Field(default=0, ge=0, le=MAX_DRAFT_AHEAD)
    query_id: str
    repetition: int = 0
    prompt: str
    max_new_tokens: int = Field(gt=0)
    sampling: SamplingConfig = SamplingConfig()
    codec: str = "ids"
    seed: int = 0
    answer: str | None = None   # expected answer, when the prompt set has one (for accuracy)
    # the perf_counter instant the link's timeline started again for this query (None: a
    # static profile); the record gives it relative to the query's submit
    timeline_started_at: float | None = None
    nasd_rtt_table: RttTable | None = None        # nasd: K looked up for its RTT estimate
    nasd_calibration: Calibration | None = None   # nasd: the stage model it starts from

    @field_validator("codec")
    @classmethod
    def _known_codec(cls, name: str) -> str:
        get_codec(name)
        return name

    @model_validator(mode="after")
    def _ahead_strategy(self) -> "QueryRequest":
        if self.draft_ahead and self.strategy not in AHEAD_STRATEGIES:
            raise ValueError(f"draft_ahead: only {' and '.join(AHEAD_STRATEGIES)} draft "
                             f"ahead, not {self.strategy}")
        return self


def draft_message(session: str, seq: int, codec: DraftCodec, drafts: Drafts,
                  catch_up_fields: dict | None = None,
                  catch_up_arrays: dict | None = None, premise: dict | None = None) -> Message:
    """A cycle's ``draft`` message: the drafts through the codec, what the cloud has yet
    to hear of (``SpeculationQuery.catch_up_fields``/``_arrays``: a q-scalar correction,
    tokens the draft served alone), and under draft-ahead the block's ``premise``
    (``Block.premise``: its epoch and start, and whether a block drafted on it follows)."""
    return Message("draft", session, seq, {**(catch_up_fields or {}), **(premise or {})},
                   {**codec.encode(drafts.ids, drafts.model_rows), **(catch_up_arrays or {})})


def read_verdict(reply: Message, width: int) -> tuple[Verdict, np.ndarray | None]:
    """A ``verdict`` message as ``speculation_step`` takes it: the verdict, and the target row
    the edge samples the correction from where the cloud left that to it (q-scalar)."""
    fields = reply.fields
    token = None if fields["token"] < 0 else fields["token"]
    target_row = decode_target_row(reply.arrays, width) if fields["residual"] else None
    return Verdict(fields["accepted"], token, fields["finished"]), target_row


class EdgeAgent:
    def __init__(self, models: HostModels, channel: Channel,
                 policy_for: Callable[..., KPolicy] = make_policy) -> None:
        """``policy_for(strategy, k, k_min, k_max, **options)`` makes a strategy run's K
        policy (``nasd.policy.make_policy``'s signature)."""
        self.models = models
        self.channel = channel
        self.policy_for = policy_for
        self.policies: dict[tuple, KPolicy] = {}  # one per strategy run, across its queries
        self.ping_jitter = np.random.default_rng()   # when to ping; never the tokens' draws

    def policy(self, request: QueryRequest) -> KPolicy:
        key = (request.label, request.strategy, request.k, request.k_min, request.k_max,
               request.edge_only_cutoff, request.rtt_estimate, request.objective,
               request.objective_tokens, request.draft_ahead)
        if key not in self.policies:
            self.policies[key] = self.policy_for(
                request.strategy, request.k, request.k_min, request.k_max,
                edge_only_cutoff=request.edge_only_cutoff, table=request.nasd_rtt_table,
                calibration=request.nasd_calibration, rtt_estimate=request.rtt_estimate,
                objective=request.objective, objective_tokens=request.objective_tokens,
                draft_ahead=request.draft_ahead)
        return self.policies[key]

    def run_query(self, request: QueryRequest) -> tuple[QueryRecord, list[CycleRecord]]:
        session = f"{request.label}/{request.query_id}/{request.repetition}"
        prompt_ids = self.models.tokenizer.encode(request.prompt)
        if not prompt_ids:
            raise ValueError(f"query {request.query_id}: empty prompt")
        self.models.take_passes()    # device emulation: a query cut short leaves none to this one
        if request.strategy == "edge-only":
            return self._edge_only(request, session, prompt_ids)
        if request.strategy in ("cloud-only", "cloud-spec"):
            return self._cloud_streamed(request, session, prompt_ids)
        assert request.strategy in POLICY_NAMES, request.strategy
        return self._speculative(request, session, prompt_ids, self.policy(request))

    def _record(self, request: QueryRequest, prompt_ids: list[int], output: list[int],
                token_times: list[float], t_submit: float, t_first: float, t_last: float,
                eos: bool) -> QueryRecord:
        """The query's record; ``token_times``: the instant the edge held each output token."""
        if len(token_times) != len(output):
            raise RuntimeError(f"{len(output)} tokens but {len(token_times)} arrival times")
        rate, decode_s = decode_rate(len(output), t_first, t_last)
        return QueryRecord(
            label=request.label, strategy=request.strategy, k=request.k,
            draft_ahead=request.draft_ahead, query_id=request.query_id,
            repetition=request.repetition, prompt_tokens=len(prompt_ids), n_tokens=len(output),
            ttft_s=t_first - t_submit, e2e_s=t_last - t_submit, tokens_per_s=rate,
            decode_s=decode_s, finished_by_eos=eos, output_ids=list(output),
            token_times_s=[round(t - t_submit, 6) for t in token_times],
            output_text=self.models.tokenizer.decode(output), answer=request.answer,
            timeline_start_s=None if request.timeline_started_at is None
            else request.timeline_started_at - t_submit)

    def _no_passes(self) -> list[PassTiming] | None:
        """Device emulation: the passes of a side that ran none ([]; None without)."""
        return None if self.models.ledger is None else []

    def _emulated_stages(self, tally: StageTally) -> dict | None:
        """A query's ``emulated_stages`` from its passes (None without device emulation)."""
        return None if self.models.ledger is None else tally.as_dict()

    def _edge_only(self, request, session, prompt_ids):
        rng = session_rng(request.seed, session, "edge")
        eos_id = self.models.draft.eos_id
        t_submit = now()
        sequence = TokenSequence(self.models.draft, prompt_ids, request.sampling)
        t_first = t_last = t_submit
        first_s = 0.0
        token_times = []
        for _ in decode_plainly(sequence, request.max_new_tokens, request.sampling.decoding, rng,
                                eos_id):
            t_last = now()     # each step: the draft's forward and its choice of token
            token_times.append(t_last)
            if len(sequence.generated) == 1:
                t_first, first_s = t_last, t_last - t_submit
        compute_s = t_last - t_submit
        output = sequence.generated
        record = self._record(request, prompt_ids, output, token_times, t_submit, t_first,
                              t_last, bool(output) and output[-1] == eos_id)
        record.edge_compute_s, record.edge_first_s = compute_s, first_s
        tally = StageTally()
        tally.add(self.models.take_passes())
        record.emulated_stages = self._emulated_stages(tally)
        return record, []

    def _receive(self, session: str) -> tuple[Message, int]:
        """The cloud's next message on ``session`` and its size, past answers to pings of a
        stretch that ended before they came back and errors on another session (an earlier
        query's: the close after its failure may have found nothing left to close)."""
        while True:
            reply, _, size = self.channel.recv()
            if not self._stale(reply, session):
                return reply, size

    @staticmethod
    def _stale(reply: Message, session: str) -> bool:
        """A pong (its stretch has ended) or an error on another session: nothing to answer."""
        return reply.type == "pong" or (reply.type == "error" and reply.session != session)

    def _exchange(self, message: Message, expect: str) -> tuple[Message, int, int, float, float]:
        """Send, await the answer of type ``expect``; return it, bytes up/down and both instants."""
        t_send = now()
        bytes_up = self.channel.send(message)
        reply, bytes_down = self._receive(message.session)
        t_reply = now()
        self._check(reply, message, expect)
        return reply, bytes_up, bytes_down, t_send, t_reply

    @staticmethod
    def _check(reply: Message, sent: Message, expect: str) -> None:
        if reply.type == "error":
            raise ProtocolError(f"cloud error: {reply.fields.get('error')}")
        if reply.type != expect or reply.session != sent.session:
            raise ProtocolError(f"expected {expect} for {sent.session}, got {reply.type} "
                                f"for {reply.session}")

    def _generate_fields(self, request: QueryRequest) -> dict:
        return {"strategy": request.strategy, "k": request.k or 0,
                "max_new_tokens": request.max_new_tokens,
                "sampling": request.sampling.model_dump(), "codec": request.codec,
                "seed": request.seed}

    def _token_stream(self, message: Message) -> Iterator[tuple[Message, int, float]]:
        """The ``tokens`` replies the cloud streams for ``message``, each with its size and
        when it arrived, up to the one that says finished."""
        while True:
            reply, size = self._receive(message.session)
            received_at = now()
            self._check(reply, message, "tokens")
            yield reply, size, received_at
            if reply.fields["finished"]:
                return

    def _cloud_streamed(self, request, session, prompt_ids):
        message = Message("generate", session, 0, self._generate_fields(request),
                          {"prompt": np.asarray(prompt_ids, dtype=np.int32)})
        t_submit = now()
        record_up = self.channel.send(message)
        stream = CloudStream(self._no_passes())
        for reply, size, arrived in self._token_stream(message):
            stream.add(reply, size, arrived)
        record = self._record(request, prompt_ids, stream.ids, stream.arrivals, t_submit,
                              stream.first_arrival, stream.last_arrival, stream.eos)
        record.bytes_up, record.bytes_down = record_up, stream.bytes_down
        record.cloud_compute_s = stream.compute_s
        # the first message's interval holds the prefill: the stream's step is the rest
        record.cloud_first_s = stream.first_compute_s
        record.cloud_stream_s = stream.wall_s - stream.first_wall_s
        record.drafted, record.accepted = stream.drafted, stream.accepted
        record.rejections = stream.rejections
        tally = StageTally()
        tally.add(stream.passes)
        record.emulated_stages = self._emulated_stages(tally)
        return record, []

    def _speculative(self, request, session, prompt_ids, policy: KPolicy):
        """Cycles until the answer is complete: each the policy's K drafted and verified, or,
        when the policy answers ``HAND_OFF``, a stretch served without drafts.  A stretch
        for the cloud decided before the prompt goes up rides on the ``open`` (as
        cloud-only's stream: its round trip is in the TTFT, not paid again)."""
        query = SpeculationQuery(request, session, prompt_ids, self.models, policy)
        decision = (policy.next_k(), policy.rtt_estimate_ms)
        opening = policy.stretch.tokens if decision[0] == HAND_OFF \
            and policy.stretch.served_by == "cloud" else 0
        stream = max(min(opening, request.max_new_tokens) - 1, 0)   # after the first token
        query.t_submit = t_start = now()
        message = Message("open", session, 0, {**self._generate_fields(request), "stream": stream},
                          {"prompt": np.asarray(prompt_ids, dtype=np.int32)})
        self.channel.send(message)
        query.draft.prefill()  # overlaps with the upload and the cloud's prefill
        query.stages.add(self.models.take_passes())
        opened, bytes_down = self._receive(session)
        query.t_first = query.t_last = now()
        self._check(opened, message, "opened")
        query.stages.add(read_passes(opened.fields))
        query.draft.extend([opened.fields["token"]])
        query.token_times.append(query.t_first)
        query.finished = query.eos = opened.fields["eos"]
        network_s = query.t_first - query.t_submit - opened.fields["compute_s"]
        try:
            if stream and not query.finished:
                measured = self._streamed(query, message, query.t_first, rtt_s=network_s)
                measured.update(t_network=measured["t_network"] + network_s)
                self._cycle(query, decision, t_start, measured)
                decision = None
            elif policy.observe_round_trip(network_s, query.t_first - query.t_submit):
                decision = None     # taken before the open measured the link: again on it
            while not query.finished and query.remaining > 0:
                decision = decision or (policy.next_k(), policy.rtt_estimate_ms)
                t_start = now()
                if decision[0] != HAND_OFF and request.draft_ahead:
                    decision = self._pipeline(query, decision)
                    continue
                if decision[0] != HAND_OFF:
                    measured = self._speculation_cycle(query, min(decision[0],
                                                                  query.remaining - 1))
                elif policy.stretch.served_by == "cloud":
                    measured = self._cloud_stretch(query, min(policy.stretch.tokens,
                                                              query.remaining))
                else:
                    measured = self._edge_stretch(query, min(policy.stretch.tokens,
                                                             query.remaining))
                self._cycle(query, decision, t_start, measured)
                decision = None
        finally:
            self.channel.send(Message("close", session))
        return query.record(self, opened, bytes_down), query.cycles

    @staticmethod
    def _cycle(query: SpeculationQuery, decision: tuple[int, float | None], t_start: float,
               measured: dict) -> None:
        """Record a finished cycle or stretch and hand it to the policy (not a block dropped
        unverified: it served nothing).  ``measured`` holds the cycle record's fields, and
        the passes of its drafting (``draft_passes``, this host's) and of its verification
        or stretch (``verify_passes``, the cloud's), None without device emulation: their
        real time goes beside the emulated one, and they count in the query's totals.  A
        stretch's ``arrivals`` say when each of its tokens reached the edge; a cycle's
        tokens all arrived with its verdict (``query.t_last``)."""
        request = query.request
        draft_passes, verify_passes = measured.pop("draft_passes"), measured.pop("verify_passes")
        query.token_times.extend(measured.pop("arrivals", None)
                                 or [query.t_last] * measured["tokens"])
        query.stages.add(draft_passes)
        query.stages.add(verify_passes)
        measured.update(t_draft_real=real_seconds(measured["t_draft"], draft_passes),
                        t_verify_real=real_seconds(measured["t_verify"], verify_passes))
        cycle = CycleRecord(
            label=request.label, strategy=request.strategy, query_id=request.query_id,
            repetition=request.repetition, cycle=len(query.cycles) + 1, policy_k=decision[0],
            nasd_rtt_estimate_ms=decision[1], t_start=t_start - query.t_submit,
            t_cycle=query.t_last - t_start, **measured)
        query.cycles.append(cycle)
        if cycle.served_by != "dropped":
            query.policy.observe(cycle)

    def _pipeline(self, query: SpeculationQuery, decision: tuple[int, float | None]
                  ) -> tuple[int, float | None] | None:
        """Draft-ahead, one epoch: blocks of the policy's K, up to ``draft_ahead`` of them in
        flight beyond the oldest unanswered one, each drafted on the premise that the ones
        before it are kept whole; each verdict committed as it comes, in order.  The epoch
        ends at the first verdict that does not keep its block whole with the bonus deferred
        (the blocks after it are dropped: the cloud answers none of them), or once the
        blocks drain: the token budget leaves no room for another, or the policy handed
        off.  Returns a decision taken but not served (a hand-off, or the K of a block the
        epoch ended before), or None.

        The edge drafts the window's blocks back to back and waits for the oldest verdict
        only when the window is full (or no block may follow), so a window that holds more
        than a round trip of drafting delays the first verdict's handling."""
        in_flight: deque[Block] = deque()
        while True:
            while decision is not None and decision[0] != HAND_OFF \
                    and len(in_flight) <= query.request.draft_ahead:
                block = self._send_block(query, decision, ahead=bool(in_flight))
                in_flight.append(block)
                decision = (query.policy.next_k(), query.policy.rtt_estimate_ms) \
                    if block.premise["ahead_follows"] else None
            if not in_flight:
                return decision
            block = in_flight.popleft()
            if not self._block_verdict(query, block):
                query.epoch += 1
                for stale in in_flight:
                    self._cycle(query, stale.decision, stale.t_start, dict(
                        k=len(stale.drafts.ids), accepted=0, tokens=0, rtt_ms=math.nan,
                        bytes_up=stale.bytes_up, bytes_down=0, t_draft=stale.t_draft,
                        t_verify=0.0, t_network=0.0, served_by="dropped", ahead=True,
                        draft_passes=stale.draft_passes, verify_passes=self._no_passes()))
                return decision

    def _send_block(self, query: SpeculationQuery, decision: tuple[int, float | None],
                    ahead: bool) -> Block:
        """Draft one block at the end of the draft's sequence (after every block in flight)
        and send it with its premise."""
        t_start = now()
        start = len(query.draft.tokens)
        drafts = draft_tokens(query.draft, min(decision[0], query.remaining - 1), query.decoding,
                              query.rng, query.eos_id, query.codec,
                              query.request.confidence_floor)
        draft_passes = self.models.take_passes()
        # another block may follow this one on its premise: room for one draft and the token
        # after it, and the premise (all kept) leaves the sequence open
        follows = query.remaining >= 2 and not (drafts.ids and drafts.ids[-1] == query.eos_id)
        premise = {"epoch": query.epoch, "start": start, "ahead_follows": follows}
        message = draft_message(query.session, query.next_seq(), query.codec, drafts,
                                query.catch_up_fields(), query.catch_up_arrays(), premise)
        t_sent = now()
        bytes_up = self.channel.send(message)
        query.caught_up()
        return Block(message, drafts, start, premise, decision, ahead, t_start, t_sent, bytes_up,
                     draft_passes)

    def _block_verdict(self, query: SpeculationQuery, block: Block) -> bool:
        """Receive the verdict on ``block``, commit it, record the block; whether its premise
        still holds for the blocks after it (kept whole, the bonus deferred)."""
        reply, bytes_down = self._receive(query.session)
        query.t_last = now()
        self._check(reply, block.message, "verdict")
        if reply.seq != block.message.seq:
            raise ProtocolError(f"expected the verdict on message {block.message.seq}, got "
                                f"one on {reply.seq}")
        drafts = block.drafts
        verdict, target_row = read_verdict(reply, drafts.sampled_rows.shape[1])
        verdict = settle_verdict(query.draft, block.start, drafts, verdict, target_row,
                                 query.rng, query.eos_id)
        if reply.fields["residual"]:   # the cloud hears of the edge's correction next
            query.caught_up(correction=verdict.next_token)
        query.finished = query.eos = verdict.finished
        cloud_s = reply.fields["compute_s"]
        query.cloud_compute_s += cloud_s
        network_s = query.t_last - block.t_sent - cloud_s
        self._cycle(query, block.decision, block.t_start, dict(
            k=len(drafts.ids), accepted=verdict.accepted,
            tokens=verdict.accepted + (verdict.next_token is not None),
            rtt_ms=math.nan if block.ahead else network_s * 1000.0, bytes_up=block.bytes_up,
            bytes_down=bytes_down, t_draft=block.t_draft, t_verify=cloud_s,
            t_network=network_s, ahead=block.ahead, draft_eos=drafts.ends_on(query.eos_id),
            draft_passes=block.draft_passes, verify_passes=read_passes(reply.fields)))
        return verdict.bonus_deferred(len(drafts.ids))

    def _speculation_cycle(self, query: SpeculationQuery, k: int) -> dict:
        """Draft ``k`` tokens, have the cloud verify them, commit its verdict."""
        t_start = now()
        sent: dict = {}

        def verify(drafts: Drafts) -> tuple[Verdict, np.ndarray | None]:
            sent["passes"] = self.models.take_passes()
            message = draft_message(query.session, query.next_seq(), query.codec, drafts,
                                    query.catch_up_fields(), query.catch_up_arrays())
            sent["reply"], sent["up"], sent["down"], sent["at"], query.t_last = self._exchange(
                message, "verdict")
            return read_verdict(sent["reply"], drafts.sampled_rows.shape[1])

        drafts, verdict = speculation_step(query.draft, k, query.decoding, query.rng,
                                           query.eos_id, query.codec, verify,
                                           query.request.confidence_floor)
        fields = sent["reply"].fields
        # a correction the edge sampled (q-scalar): the cloud hears of it with the next message
        query.caught_up(correction=verdict.next_token if fields["residual"] else None)
        query.finished = query.eos = verdict.finished
        cloud_s = fields["compute_s"]
        query.cloud_compute_s += cloud_s
        network_s = query.t_last - sent["at"] - cloud_s
        return dict(k=len(drafts.ids), accepted=verdict.accepted,
                    tokens=verdict.accepted + (verdict.next_token is not None),
                    rtt_ms=network_s * 1000.0, bytes_up=sent["up"], bytes_down=sent["down"],
                    t_draft=sent["at"] - t_start, t_verify=cloud_s, t_network=network_s,
                    draft_eos=drafts.ends_on(query.eos_id), draft_passes=sent["passes"],
                    verify_passes=read_passes(fields))

    def _cloud_stretch(self, query: SpeculationQuery, tokens: int) -> dict:
        """K = 0: the cloud decodes ``tokens`` tokens and streams them; one round trip."""
        message = Message("decode", query.session, query.next_seq(),
                          {"tokens": tokens, **query.catch_up_fields()}, query.catch_up_arrays())
        t_send = now()
        bytes_up = self.channel.send(message)
        query.caught_up()
        measured = self._streamed(query, message, t_send)
        return {**measured, "bytes_up": bytes_up + measured["bytes_up"]}

    def _streamed(self, query: SpeculationQuery, message: Message, t_send: float,
                  rtt_s: float | None = None) -> dict:
        """Receive the tokens the cloud streams for ``message`` (sent at ``t_send``) until it
        says finished; commit them on the draft's sequence.

        Meanwhile the edge measures the link with ``ping``s, about every ``PING_EVERY_S``
        at random instants: a ping waits at the cloud behind the step in progress, and
        pings sent in step with the tokens would all wait alike, which hides any RTT shorter
        than a step.  The last ``PINGS_KEPT`` bracket the link's RTT (``link_rtt_bounds``); the
        most it can be goes to the policy (``KPolicy.continue_stretch``), and once the policy
        would rather speculate even so, the edge asks the cloud to ``stop``, and keeps the tokens already on their way (they are
        the target's).  The stretch's measurements: ``rtt_ms`` the link's RTT when it ended, the
        middle of its bracket (if no ping came back: ``rtt_s`` as known before, else its first token's network
        time), ``bytes_up`` its pings and stop."""
        stream, bytes_up = CloudStream(self._no_passes()), 0
        pings: dict[int, float] = {}                      # seq -> sent at
        answered: deque[tuple[float, float]] = deque(maxlen=PINGS_KEPT)
        next_ping_at, stopping, heard_at = self._ping_after(t_send), False, now()
        while True:
            silent_for = self.channel.receive_timeout_s - (now() - heard_at)
            try:
                reply, _, size = self.channel.recv(
                    timeout_s=silent_for if stopping else min(silent_for, next_ping_at - now()))
            except ReceiveTimeout:
                if stopping or now() - heard_at >= self.channel.receive_timeout_s:
                    raise
                seq = query.next_seq()
                bytes_up += self.channel.send(Message("ping", query.session, seq))
                pings[seq], next_ping_at = now(), self._ping_after(now())
                continue
            arrived = heard_at = now()
            if reply.type == "pong" and reply.seq in pings:
                answered.append((arrived - pings.pop(reply.seq) - reply.fields["compute_s"],
                                 reply.fields["waited_at_most_s"]))
                low, high = link_rtt_bounds(answered)
                rtt_s = (low + high) / 2.0
                # stopped only if speculation wins even at the most the RTT can be
                if not stopping and not query.policy.continue_stretch(high):
                    bytes_up += self.channel.send(Message("stop", query.session,
                                                          query.next_seq()))
                    stopping = True
                continue
            if self._stale(reply, query.session):    # a ping of an earlier stretch, say
                continue
            self._check(reply, message, "tokens")
            query.t_last = arrived
            stream.add(reply, size, arrived)
            if rtt_s is None:
                rtt_s = arrived - t_send - stream.wall_s
            if stream.finished:
                break
        query.draft.extend(stream.ids)
        query.finished = query.eos = stream.eos
        query.cloud_compute_s += stream.compute_s
        query.handoff_tokens += len(stream.ids)
        return dict(k=0, accepted=0, tokens=len(stream.ids), rtt_ms=rtt_s * 1000.0,
                    bytes_up=bytes_up, bytes_down=stream.bytes_down, t_draft=0.0,
                    t_verify=stream.wall_s, t_network=query.t_last - t_send - stream.wall_s,
                    served_by="cloud", arrivals=stream.arrivals,
                    draft_passes=self._no_passes(), verify_passes=stream.passes)

    def _ping_after(self, instant: float) -> float:
        """When to ping next: ``PING_EVERY_S`` on average after ``instant``, at random."""
        return instant + PING_EVERY_S * self.ping_jitter.uniform(0.5, 1.5)

    def _edge_stretch(self, query: SpeculationQuery, tokens: int) -> dict:
        """The edge-only cutoff: the draft decodes ``tokens`` tokens alone, unverified (the
        cloud hears of them with the next message)."""
        t_start = now()
        served, arrivals = [], []
        for token in decode_plainly(query.draft, tokens, query.decoding, query.rng,
                                    query.eos_id):
            served.append(token)
            arrivals.append(now())
        query.t_last = arrivals[-1]
        query.served.extend(served)
        query.cutoff_tokens += len(served)
        query.finished = query.eos = served[-1] == query.eos_id
        return dict(k=0, accepted=0, tokens=len(served), rtt_ms=float("nan"), bytes_up=0,
                    bytes_down=0, t_draft=query.t_last - t_start, t_verify=0.0, t_network=0.0,
                    served_by="edge", nasd_cutoff=True, arrivals=arrivals,
                    draft_passes=self.models.take_passes(),
                    verify_passes=self._no_passes())


class CloudStream:
    """What the edge holds of one stream of the cloud's ``tokens`` messages, as they come:
    the token ids and when each reached the edge (a message's tokens share its arrival),
    the bytes, the cloud's compute and its wall time (the sum of ``interval_s``: each
    message's time at the cloud since the one before, or since the request for the first),
    the first message's share of both, cloud-spec's counts of its own speculation, and
    under device emulation the passes (``passes``: None without)."""

    def __init__(self, passes: list[PassTiming] | None) -> None:
        self.ids: list[int] = []
        self.arrivals: list[float] = []
        self.first_arrival = self.last_arrival = math.nan
        self.bytes_down = 0
        self.compute_s = self.wall_s = self.first_compute_s = self.first_wall_s = 0.0
        self.drafted = self.accepted = self.rejections = 0
        self.passes = passes
        self.finished = self.eos = False

    def add(self, reply: Message, size: int, arrived: float) -> None:
        fields, ids = reply.fields, reply.arrays["ids"]
        if math.isnan(self.first_arrival):
            self.first_arrival = arrived
            self.first_compute_s, self.first_wall_s = fields["compute_s"], fields["interval_s"]
        self.last_arrival = arrived
        self.ids.extend(int(token) for token in ids)
        self.arrivals.extend([arrived] * len(ids))
        self.bytes_down += size
        self.compute_s += fields["compute_s"]
        self.wall_s += fields["interval_s"]
        self.drafted += fields["drafted"]
        self.accepted += fields["accepted"]
        self.rejections += fields["accepted"] < fields["drafted"]
        if self.passes is not None:
            self.passes += read_passes(fields) or []
        self.finished, self.eos = bool(fields["finished"]), bool(fields["eos"])


@dataclass(frozen=True)
class Block:
    """A draft-ahead block in flight: its message and drafts, where on the draft's sequence
    it starts, its ``premise`` (``epoch``: the verdicts so far that did not keep their block
    whole with the bonus deferred; ``start``; ``ahead_follows``), the policy's decision it
    drafted, whether it was sent ``ahead`` (before the verdict on the block before it), and
    its clocks and size; under device emulation, the passes that drafted it."""

    message: Message
    drafts: Drafts
    start: int
    premise: dict
    decision: tuple[int, float | None]
    ahead: bool
    t_start: float
    t_sent: float
    bytes_up: int
    draft_passes: list[PassTiming] | None = None

    @property
    def t_draft(self) -> float:
        return self.t_sent - self.t_start


class SpeculationQuery:
    """One query under a speculative strategy, on the edge: the draft's sequence, what the
    cloud has yet to hear (a q-scalar correction, tokens the draft served alone), the
    draft-ahead epoch, the cycles so far and the query's clocks."""

    def __init__(self, request: QueryRequest, session: str, prompt_ids: list[int],
                 models: HostModels, policy: KPolicy) -> None:
        self.request, self.session, self.prompt_ids = request, session, prompt_ids
        self.policy = policy
        self.codec = get_codec(request.codec)
        self.decoding = request.sampling.decoding
        self.rng = session_rng(request.seed, session, "edge")
        self.eos_id = models.draft.eos_id
        self.draft = TokenSequence(models.draft, prompt_ids, request.sampling)
        self.cycles: list[CycleRecord] = []
        self.seq = 0                         # data messages sent after the open
        self.epoch = 0                       # draft-ahead: as the cloud counts it (cloud.py)
        self.correction: int | None = None   # the edge's q-scalar correction, not yet sent
        self.served: list[int] = []          # cutoff tokens, not yet sent
        self.finished = self.eos = False
        self.t_submit = self.t_first = self.t_last = 0.0
        self.token_times: list[float] = []   # when the edge held each committed token
        self.cloud_compute_s = 0.0
        self.handoff_tokens = self.cutoff_tokens = 0
        self.stages = StageTally()           # device emulation: the passes of both hosts

    @property
    def remaining(self) -> int:
        """Tokens the budget leaves after the draft's sequence (blocks in flight included)."""
        return self.request.max_new_tokens - len(self.draft.generated)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def catch_up_fields(self) -> dict:
        return {} if self.correction is None else {"correction": self.correction}

    def catch_up_arrays(self) -> dict:
        return {"served": np.asarray(self.served, dtype=np.int32)} if self.served else {}

    def caught_up(self, correction: int | None = None) -> None:
        """The cloud has what was pending; ``correction``: the next one it must hear of."""
        self.correction, self.served = correction, []

    def record(self, agent: EdgeAgent, opened: Message, open_bytes_down: int) -> QueryRecord:
        cycles = self.cycles
        record = agent._record(self.request, self.prompt_ids, self.draft.generated,
                               self.token_times, self.t_submit, self.t_first, self.t_last,
                               self.eos)
        verified = [c for c in cycles if c.served_by != "dropped"]
        record.cycles = len(cycles)
        record.drafted = sum(c.k for c in verified)
        record.accepted = sum(c.accepted for c in verified)
        record.rejections = sum(1 for c in verified if c.accepted < c.k)
        record.ahead_blocks_kept = sum(1 for c in verified if c.ahead)
        record.ahead_blocks_dropped = len(cycles) - len(verified)
        record.ahead_drafts_dropped = sum(c.k for c in cycles if c.served_by == "dropped")
        record.bytes_up = sum(c.bytes_up for c in cycles)   # dropped blocks crossed too
        record.bytes_down = open_bytes_down + sum(c.bytes_down for c in cycles)
        record.cloud_compute_s = opened.fields["compute_s"] + self.cloud_compute_s
        record.cloud_first_s = opened.fields["compute_s"]
        record.handoff_tokens, record.cutoff_tokens = self.handoff_tokens, self.cutoff_tokens
        record.nasd_cutoff_triggered = self.cutoff_tokens > 0
        record.nasd_k_per_cycle = [c.policy_k for c in cycles]
        record.nasd_rtt_per_cycle = [c.nasd_rtt_estimate_ms for c in cycles]
        record.acceptance_rate_per_cycle = [c.accepted / c.k if c.k else None for c in cycles]
        record.network_overhead_per_cycle = [c.t_network / c.t_cycle if c.t_cycle > 0 else 0.0
                                             for c in cycles]
        record.emulated_stages = agent._emulated_stages(self.stages)
        return record


def main(argv: list[str] | None = None) -> int:
    settings = settings_from_argv(argv, "Edge agent (started by the orchestrator)")
    start_log("edge", settings)
    runtime = AgentRuntime(settings, zmq.DEALER, side="edge")
    agent = EdgeAgent(load_models(settings.model_pair, "edge", log, settings.emulation),
                      runtime.channel)

    def query(request: dict) -> dict:
        record, cycles = agent.run_query(QueryRequest.model_validate(request["request"]))
        log.info("query %s/%s/%d: %d tokens, TTFT %.1f ms, %.1f tokens/s, %d cycles",
                 record.label, record.query_id, record.repetition, record.n_tokens,
                 1000 * record.ttft_s, record.tokens_per_s, len(cycles))
        return {"query": record.as_dict(), "cycles": [c.as_dict() for c in cycles]}

    handlers = runtime.handlers(query=query)
    try:
        while runtime.control.serve_one(handlers) != "stop":
            pass
    finally:
        runtime.close()
    log.info("stopped by the orchestrator")
    return 0


if __name__ == "__main__":
    sys.exit(main())
