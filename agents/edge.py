"""The edge agent: runs one query at a time under a strategy and measures it.

Strategies on the edge side:

- ``edge-only``: the draft model decodes alone, no network.
- ``cloud-only`` / ``cloud-spec``: the prompt goes up once and the cloud
  streams tokens back (plain decoding, or speculation inside the cloud).
- ``fixed-k``, ``nasd``, ``hf-heuristic``, ``bandit``: the edge drafts K tokens
  per cycle and the cloud verifies them (one round trip per cycle).  The K of
  each cycle comes from the strategy's ``nasd.policy.KPolicy``, which sees
  every finished cycle; one policy serves all queries of a strategy run.

Run as a process: ``python -m agents.edge --settings FILE``; the orchestrator
sends ``query`` requests over the control plane and gets the records back.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, get_args

import numpy as np
import zmq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agents.backends import HostModels
from agents.backends.base import TokenSequence
from agents.codecs import DraftCodec, decode_target_row, get_codec
from agents.protocol import Channel, Message, ProtocolError
from agents.records import CycleRecord, QueryRecord, decode_rate
from agents.runtime import AgentRuntime, load_models, settings_from_argv, start_log
from agents.sampling import SamplingConfig
from agents.speculative import (Drafts, apply_verdict, choose_token, draft_tokens,
                                sample_correction, session_rng)
from agents.verification import Verdict
from nasd.estimator import Calibration
from nasd.policy import DEFAULT_K_MAX, DEFAULT_K_MIN, POLICY_NAMES, KPolicy, PolicyName, make_policy
from nasd.table import RttTable
from shaping.clock import now

StrategyName = Literal["cloud-only", "cloud-spec", "edge-only", PolicyName]
STRATEGY_NAMES: tuple[str, ...] = get_args(StrategyName)
log = logging.getLogger("edge")


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    strategy: StrategyName
    label: str
    k: int | None = Field(default=None, ge=0)
    k_min: int = Field(default=DEFAULT_K_MIN, ge=1)   # adaptive K policies: the range of K
    k_max: int = Field(default=DEFAULT_K_MAX, ge=1)
    query_id: str
    repetition: int = 0
    prompt: str
    max_new_tokens: int = Field(gt=0)
    sampling: SamplingConfig = SamplingConfig()
    codec: str = "ids"
    seed: int = 0
    answer: str | None = None   # expected answer, when the prompt set has one (for accuracy)
    nasd_rtt_table: RttTable | None = None        # nasd: K looked up for its RTT estimate
    nasd_calibration: Calibration | None = None   # nasd: the stage model it starts from

    @field_validator("codec")
    @classmethod
    def _known_codec(cls, name: str) -> str:
        get_codec(name)
        return name


def draft_message(session: str, seq: int, correction: dict, codec: DraftCodec,
                  drafts: Drafts) -> Message:
    """A cycle's ``draft`` message: the drafts through the codec, and a q-scalar correction
    the cloud has yet to hear about (``{"correction": token}``, else empty)."""
    return Message("draft", session, seq, correction, codec.encode(drafts.ids, drafts.model_rows))


class EdgeAgent:
    def __init__(self, models: HostModels, channel: Channel) -> None:
        self.models = models
        self.channel = channel
        self.policies: dict[tuple, KPolicy] = {}  # one per strategy run, across its queries

    def policy(self, request: QueryRequest) -> KPolicy:
        key = (request.label, request.strategy, request.k, request.k_min, request.k_max)
        if key not in self.policies:
            self.policies[key] = make_policy(request.strategy, request.k, request.k_min,
                                             request.k_max, request.nasd_rtt_table,
                                             request.nasd_calibration)
        return self.policies[key]

    def run_query(self, request: QueryRequest) -> tuple[QueryRecord, list[CycleRecord]]:
        session = f"{request.label}/{request.query_id}/{request.repetition}"
        prompt_ids = self.models.tokenizer.encode(request.prompt)
        if not prompt_ids:
            raise ValueError(f"query {request.query_id}: empty prompt")
        if request.strategy == "edge-only":
            return self._edge_only(request, session, prompt_ids)
        if request.strategy in ("cloud-only", "cloud-spec"):
            return self._cloud_streamed(request, session, prompt_ids)
        assert request.strategy in POLICY_NAMES, request.strategy
        return self._speculative(request, session, prompt_ids, self.policy(request))

    def _record(self, request: QueryRequest, prompt_ids: list[int], output: list[int],
                t_submit: float, t_first: float, t_last: float, eos: bool) -> QueryRecord:
        rate, decode_s = decode_rate(len(output), t_first, t_last)
        return QueryRecord(
            label=request.label, strategy=request.strategy, k=request.k,
            query_id=request.query_id,
            repetition=request.repetition, prompt_tokens=len(prompt_ids), n_tokens=len(output),
            ttft_s=t_first - t_submit, e2e_s=t_last - t_submit, tokens_per_s=rate,
            decode_s=decode_s, finished_by_eos=eos, output_ids=list(output),
            output_text=self.models.tokenizer.decode(output), answer=request.answer)

    def _edge_only(self, request, session, prompt_ids):
        rng = session_rng(request.seed, session, "edge")
        eos_id = self.models.draft.eos_id
        t_submit = now()
        sequence = TokenSequence(self.models.draft, prompt_ids, request.sampling)
        t_first = t_last = t_submit
        compute_s = first_s = 0.0
        while len(sequence.generated) < request.max_new_tokens:
            t_forward = now()
            probs = sequence.next_probs()
            compute_s += now() - t_forward
            token = choose_token(probs, request.sampling.decoding, rng)
            sequence.extend([token])
            t_last = now()
            if len(sequence.generated) == 1:
                t_first, first_s = t_last, compute_s
            if token == eos_id:
                break
        output = sequence.generated
        record = self._record(request, prompt_ids, output, t_submit, t_first, t_last,
                              bool(output) and output[-1] == eos_id)
        record.edge_compute_s, record.edge_first_s = compute_s, first_s
        return record, []

    def _exchange(self, message: Message, expect: str) -> tuple[Message, int, int, float, float]:
        """Send, await the answer of type ``expect``; return it, bytes up/down and both instants."""
        t_send = now()
        bytes_up = self.channel.send(message)
        reply, _, bytes_down = self.channel.recv()
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

    def _cloud_streamed(self, request, session, prompt_ids):
        message = Message("generate", session, 0, self._generate_fields(request),
                          {"prompt": np.asarray(prompt_ids, dtype=np.int32)})
        t_submit = now()
        record_up = self.channel.send(message)
        output, bytes_down, compute_s = [], 0, 0.0
        drafted = accepted = rejections = 0
        first_compute_s = 0.0
        t_first = t_last = t_submit
        finished = eos = False
        while not finished:
            reply, _, size = self.channel.recv()
            t_last = now()
            self._check(reply, message, "tokens")
            if not output:
                t_first = t_last
                first_compute_s = reply.fields["compute_s"]
            output.extend(int(t) for t in reply.arrays["ids"])
            bytes_down += size
            compute_s += reply.fields["compute_s"]
            drafted += reply.fields["drafted"]
            accepted += reply.fields["accepted"]
            rejections += reply.fields["accepted"] < reply.fields["drafted"]
            finished, eos = reply.fields["finished"], reply.fields["eos"]
        record = self._record(request, prompt_ids, output, t_submit, t_first, t_last, eos)
        record.bytes_up, record.bytes_down, record.cloud_compute_s = record_up, bytes_down, compute_s
        record.cloud_first_s = first_compute_s
        record.drafted, record.accepted, record.rejections = drafted, accepted, rejections
        return record, []

    def _speculative(self, request, session, prompt_ids, policy: KPolicy):
        codec = get_codec(request.codec)
        decoding = request.sampling.decoding
        rng = session_rng(request.seed, session, "edge")
        eos_id = self.models.draft.eos_id
        draft = TokenSequence(self.models.draft, prompt_ids, request.sampling)
        t_submit = now()
        self.channel.send(Message("open", session, 0, self._generate_fields(request),
                                  {"prompt": np.asarray(prompt_ids, dtype=np.int32)}))
        draft.prefill()  # overlaps with the upload and the cloud's prefill
        opened, _, bytes_down = self.channel.recv()
        t_first = t_last = now()
        self._check(opened, Message("open", session), "opened")
        draft.extend([opened.fields["token"]])
        finished = eos = opened.fields["eos"]
        cycles: list[CycleRecord] = []
        compute_s = opened.fields["compute_s"]
        correction: dict = {}  # a q-scalar correction the cloud has yet to hear about
        try:
            while not finished and len(draft.generated) < request.max_new_tokens:
                remaining = request.max_new_tokens - len(draft.generated)
                policy_k = policy.next_k()
                rtt_estimate_ms = policy.rtt_estimate_ms   # what policy_k was chosen on
                k = min(policy_k, remaining - 1)
                t_start = now()
                committed_length = len(draft.tokens)
                drafts = draft_tokens(draft, k, decoding, rng, eos_id, codec)
                message = draft_message(session, len(cycles) + 1, correction, codec, drafts)
                reply, up, down, t_send, t_last = self._exchange(message, "verdict")
                fields = reply.fields
                token = None if fields["token"] < 0 else fields["token"]
                if fields["residual"]:
                    target_row = decode_target_row(reply.arrays, drafts.sampled_rows.shape[1])
                    token = sample_correction(target_row, drafts.sampled_rows[fields["accepted"]],
                                              rng)
                correction = {"correction": token} if fields["residual"] else {}
                verdict = Verdict(accepted=fields["accepted"], next_token=token,
                                  finished=fields["finished"] or token == eos_id)
                apply_verdict(draft, committed_length, verdict)
                cloud_s = fields["compute_s"]
                cycle = CycleRecord(
                    label=request.label, strategy=request.strategy, query_id=request.query_id,
                    repetition=request.repetition, cycle=len(cycles) + 1, k=len(drafts.ids),
                    policy_k=policy_k, nasd_rtt_estimate_ms=rtt_estimate_ms,
                    accepted=verdict.accepted, tokens=len(draft.tokens) - committed_length,
                    rtt_ms=(t_last - t_send - cloud_s) * 1000.0, bytes_up=up, bytes_down=down,
                    t_draft=t_send - t_start, t_verify=cloud_s,
                    t_network=t_last - t_send - cloud_s, t_cycle=t_last - t_start,
                    t_start=t_start - t_submit)
                cycles.append(cycle)
                policy.observe(cycle)
                compute_s += cloud_s
                finished = eos = verdict.finished
        finally:
            self.channel.send(Message("close", session))
        record = self._record(request, prompt_ids, draft.generated, t_submit, t_first, t_last, eos)
        record.cycles = len(cycles)
        record.drafted = sum(c.k for c in cycles)
        record.accepted = sum(c.accepted for c in cycles)
        record.rejections = sum(1 for c in cycles if c.accepted < c.k)
        record.bytes_up = sum(c.bytes_up for c in cycles)
        record.bytes_down = bytes_down + sum(c.bytes_down for c in cycles)
        record.cloud_compute_s = compute_s
        record.cloud_first_s = opened.fields["compute_s"]
        return record, cycles


def main(argv: list[str] | None = None) -> int:
    settings = settings_from_argv(argv, "Edge agent (started by the orchestrator)")
    start_log("edge", settings)
    runtime = AgentRuntime(settings, zmq.DEALER, side="edge")
    agent = EdgeAgent(load_models(settings.model_pair, "edge", log), runtime.channel)

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
