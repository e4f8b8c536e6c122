"""Measuring a calibration (``orchestrator calibrate``): a model pair, a payload codec,
this host, or the devices a job emulates (each pass padded as a run pads it).

Both models run in this process, on the agents' own code: the backends
(``agents.backends.build_models``: the edge's draft and the cloud's target, each as its
host builds it), the cycle's steps (``agents.speculative``: draft, verify, commit) and
the wire (the edge's ``draft_message`` and the cloud's ``verdict_message``, framed by
``agents.protocol.encode``), so the bytes per cycle are the bytes a run puts on the wire.
No agent processes, no network.  Measured, each with its samples kept for an interval:

- prefill: the draft's (edge) and the target's with its first token (cloud), per prompt
  length of the job's prompts, ``repetitions`` times each;
- the cloud's plain decoding step (cloud-only), from ``generate_locally`` without a draft,
  the path the cloud streams cloud-only answers on;
- speculation cycles at every K in 0..k_max (K = 0: the target scoring one position),
  round-robin over K and the prompts until each K has ``cycles_per_k`` cycles: the edge's
  drafting time per token and its draft message, the cloud's verification time (decoding
  the payload, verifying, the verdict) and its verdict, and what was accepted, counted
  per position.

The measuring pieces, ``time_prefill`` (both prefills) and ``timed_cycle`` (one cycle,
both halves, timed as each side sees it), are shared with ``orchestrator latency measure``
(``orchestrator.lifecycle.latency``), which times the same steps at chosen contexts.

A query's last cycles draft fewer tokens (the answer must fit ``max_new_tokens``, or the
draft ended), and count for the K they drafted, as in a run's records.
"""

from __future__ import annotations

import platform
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from rich.progress import Progress

from agents.backends import ModelPairConfig, build_models
from agents.backends.emulated import DeviceEmulation
from agents.backends.base import LanguageModel, TokenSequence
from agents.cloud import verdict_message
from agents.codecs import DraftCodec, get_codec
from agents.edge import draft_message, read_verdict
from agents.protocol import encode
from agents.sampling import Decoding, SamplingConfig
from agents.speculative import (
    choose_token,
    generate_locally,
    session_rng,
    speculation_step,
    verify_drafts,
)
from nasd.analytic import acceptance_from_counts
from orchestrator.config.nasd_files import (
    Acceptance,
    BytesAtK,
    CalibrationFile,
    Interval,
    PositionCounts,
    PrefillAtLength,
    SecondsAtK,
)
from shaping.clock import now
from shaping.link_model import zmtp_wire_bytes
from validation.stats import binomial_interval, ratio_interval


@dataclass(frozen=True)
class CalibrationPlan:
    pair_name: str
    prompts: list[str]
    sampling: SamplingConfig
    codec: str
    max_new_tokens: int
    k_max: int = 15
    cycles_per_k: int = 20
    repetitions: int = 5     # of each prefill
    seed: int = 0


@dataclass(frozen=True)
class CycleSample:
    k: int            # drafted
    accepted: int
    t_draft: float    # the edge: drafting and the draft message
    t_verify: float   # the cloud: payload decoded, verified, the verdict built
    bytes_up: int
    bytes_down: int
    t_encode: float = 0.0   # of t_draft: the draft message through the codec


def interval(values, per=None) -> Interval:
    """Mean of ``values`` (per unit of ``per``, when given) with its bootstrap interval."""
    values = np.asarray(values, dtype=np.float64)
    per = np.ones_like(values) if per is None else np.asarray(per, dtype=np.float64)
    low, high = ratio_interval(values, per)
    return Interval(mean=float(values.sum() / per.sum()), low=low, high=high, n=len(values))


class Calibrator:
    """The pair's edge draft and cloud target, loaded once; ``run`` measures the plan."""

    def __init__(self, pair: ModelPairConfig, plan: CalibrationPlan,
                 emulation: DeviceEmulation | None = None) -> None:
        """With ``emulation`` each pass is padded to its emulated device's time, as in a run
        (the draft as the edge's device runs it, the target as the cloud's), and the
        calibration records which emulation it measured."""
        self.plan, self.emulation = plan, emulation
        edge = build_models(pair, "edge", emulation)
        self.draft: LanguageModel = edge.draft
        self.target: LanguageModel = build_models(pair, "cloud", emulation).target
        self.codec = get_codec(plan.codec)
        self.prompts = [edge.tokenizer.encode(text) for text in plan.prompts]
        if not self.prompts or not all(self.prompts):
            raise ValueError("calibrating needs non-empty prompts")

    def run(self, progress: Progress) -> CalibrationFile:
        plan = self.plan
        self.speculate(self.prompts[0], 1, "warm-up")   # first calls out of the figures
        prefill = self.prefill(progress)
        decode_s = self.decoding(progress)
        cycles = self.cycles(progress)
        return CalibrationFile(
            model_pair=plan.pair_name, codec=self.codec.name,
            decoding=plan.sampling.decoding, host=host(),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"), k_max=plan.k_max,
            draft_token_s=interval([c.t_draft for c in cycles if c.k],
                                   [c.k for c in cycles if c.k]),
            decode_s=interval(decode_s),
            verify=[SecondsAtK(k=k, seconds=interval([c.t_verify for c in own]))
                    for k, own in by_k(cycles).items()],
            draft=[SecondsAtK(k=k, seconds=interval([c.t_draft for c in own]))
                   for k, own in by_k(cycles).items() if k],
            prefill=prefill,
            bytes=[BytesAtK(k=k, cycles=len(own), up=float(np.mean([c.bytes_up for c in own])),
                            down=float(np.mean([c.bytes_down for c in own])))
                   for k, own in by_k(cycles).items()],
            acceptance=acceptance(cycles),
            emulation=None if self.emulation is None else self.emulation.identity)

    def prefill(self, progress: Progress) -> list[PrefillAtLength]:
        plan = self.plan
        lengths = {len(ids): ids for ids in self.prompts}
        task = progress.add_task("prefill", total=len(lengths) * plan.repetitions, unit="prefills")
        rows = []
        for length, ids in sorted(lengths.items()):
            edge, cloud = [], []
            for repetition in range(plan.repetitions):
                rng = session_rng(plan.seed, f"prefill/{repetition}", "cloud")
                edge_s, cloud_s = time_prefill(self.draft, self.target, ids, plan.sampling, rng)
                edge.append(edge_s)
                cloud.append(cloud_s)
                progress.advance(task)
            rows.append(PrefillAtLength(prompt_tokens=length, edge_s=interval(edge),
                                        cloud_s=interval(cloud)))
        return rows

    def decoding(self, progress: Progress) -> list[float]:
        """Seconds of each plain target step after the first token, ``cycles_per_k`` or
        more, over the prompts in turn."""
        plan = self.plan
        task = progress.add_task("cloud-only steps", total=plan.cycles_per_k, unit="steps")
        steps: list[float] = []
        for turn in range(10 * plan.cycles_per_k):
            if len(steps) >= plan.cycles_per_k:
                break
            ids = self.prompts[turn % len(self.prompts)]
            rng = session_rng(plan.seed, f"cloud-only/{turn}", "cloud")
            target = TokenSequence(self.target, ids, plan.sampling)
            commits = generate_locally(target, None, 0, plan.sampling.decoding, rng,
                                       self.target.eos_id, plan.max_new_tokens)
            next(commits)   # the first token comes with the prefill
            started = now()
            for _ in commits:
                steps.append(now() - started)
                started = now()
            progress.update(task, completed=min(len(steps), plan.cycles_per_k))
        return steps

    def cycles(self, progress: Progress) -> list[CycleSample]:
        """Cycles at every K in 0..k_max, one query per K per round, until each K has
        ``cycles_per_k`` cycles that drafted it."""
        plan = self.plan
        counts: dict[int, int] = defaultdict(int)
        samples: list[CycleSample] = []
        task = progress.add_task("cycles", total=(plan.k_max + 1) * plan.cycles_per_k,
                                 unit="cycles")
        for turn in range(10 * plan.cycles_per_k):   # a pair that ends every answer at once
            short = [k for k in range(plan.k_max + 1) if counts[k] < plan.cycles_per_k]
            if not short:
                break
            for k in short:
                ids = self.prompts[(turn + k) % len(self.prompts)]
                for sample in self.speculate(ids, k, f"calibrate-k{k}/{turn}/0"):
                    samples.append(sample)
                    counts[sample.k] += 1
                progress.update(task, completed=sum(min(counts[k], plan.cycles_per_k)
                                                    for k in range(plan.k_max + 1)))
        return samples

    def speculate(self, ids: list[int], k: int, session: str) -> list[CycleSample]:
        """One query at fixed K with both halves here: the edge's ``_speculative`` loop and
        the cloud's ``_open`` and ``_verify`` on one sequence each, in their order."""
        plan, codec, decoding = self.plan, self.codec, self.plan.sampling.decoding
        edge_rng, cloud_rng = (session_rng(plan.seed, session, side) for side in ("edge", "cloud"))
        eos_id = self.draft.eos_id
        draft = TokenSequence(self.draft, ids, plan.sampling)
        target = TokenSequence(self.target, ids, plan.sampling)
        draft.prefill()
        first = choose_token(target.next_probs(), decoding, cloud_rng)
        target.extend([first])
        draft.extend([first])
        finished, correction, samples = first == self.target.eos_id, {}, []
        while not finished and len(draft.generated) < plan.max_new_tokens:
            remaining = plan.max_new_tokens - len(draft.generated)
            sample, correction, finished = timed_cycle(
                draft, target, min(k, remaining - 1), codec, decoding, (edge_rng, cloud_rng),
                session, len(samples) + 1, correction, (eos_id, self.target.eos_id))
            samples.append(sample)
        return samples


def time_prefill(draft: LanguageModel, target: LanguageModel, ids: list[int],
                 sampling: SamplingConfig, rng: np.random.Generator) -> tuple[float, float]:
    """Seconds of the edge's prefill of ``ids`` on the draft, and of the cloud's ``open`` on
    the target (its prefill and the first token)."""
    started = now()
    TokenSequence(draft, ids, sampling).prefill()
    edge_s = now() - started
    started = now()
    choose_token(TokenSequence(target, ids, sampling).next_probs(), sampling.decoding, rng)
    return edge_s, now() - started


def timed_cycle(draft: TokenSequence, target: TokenSequence, k: int, codec: DraftCodec,
                decoding: Decoding, rngs: tuple[np.random.Generator, np.random.Generator],
                session: str, seq: int, correction: dict,
                eos_ids: tuple[int | None, int | None]) -> tuple[CycleSample, dict, bool]:
    """One speculation cycle with both halves here, timed as each side sees it: the edge's
    ``speculation_step`` drafting up to ``k`` tokens on ``draft`` and building its draft
    message, the cloud's ``_verify`` of that message on ``target`` and its verdict.

    ``rngs`` and ``eos_ids``: (the edge's, the cloud's); ``correction``: the q-scalar
    correction the edge still owes the cloud (``{}`` for none).  Returns the sample, the
    correction the next cycle carries, and whether the answer finished.
    """
    edge_rng, cloud_rng = rngs
    wire: dict = {"started": now()}

    def verify(drafts):
        """The cloud's ``_verify`` on the message the edge would send, timed."""
        wire["drafted"] = now()
        wire["message"] = message = draft_message(session, seq, codec, drafts, correction)
        wire["received"] = received = now()
        if correction:
            target.extend([correction["correction"]])
        verification = verify_drafts(target, codec.decode(message.arrays, target.vocab_size),
                                     decoding, cloud_rng, eos_ids[1])
        wire["reply"] = reply = verdict_message(session, message.seq, verification, received)
        wire["answered"] = now()
        return read_verdict(reply, draft.vocab_size)

    drafts, verdict = speculation_step(draft, k, decoding, edge_rng, eos_ids[0], codec, verify)
    residual = wire["reply"].fields["residual"]
    sample = CycleSample(
        k=len(drafts.ids), accepted=verdict.accepted,
        t_draft=wire["received"] - wire["started"],
        t_verify=wire["answered"] - wire["received"],
        bytes_up=zmtp_wire_bytes(encode(wire["message"])),
        bytes_down=zmtp_wire_bytes(encode(wire["reply"])),
        t_encode=wire["received"] - wire["drafted"])
    return sample, ({"correction": verdict.next_token} if residual else {}), verdict.finished


def by_k(cycles: list[CycleSample]) -> dict[int, list[CycleSample]]:
    grouped: dict[int, list[CycleSample]] = defaultdict(list)
    for cycle in cycles:
        grouped[cycle.k].append(cycle)
    return dict(sorted(grouped.items()))


def acceptance(cycles: list[CycleSample]) -> Acceptance:
    """Pooled (``nasd.analytic.acceptance_from_counts``, a rejection being a cycle that
    kept fewer drafts than it sent) and per position: a cycle tests positions 1..a+1
    (up to its K) and accepts 1..a."""
    drafted = [c for c in cycles if c.k]
    accepted = sum(c.accepted for c in drafted)
    rejections = sum(c.accepted < c.k for c in drafted)
    longest = max((c.k for c in drafted), default=0)
    reached, kept = np.zeros(longest, dtype=int), np.zeros(longest, dtype=int)
    for c in drafted:
        reached[:min(c.accepted + 1, c.k)] += 1
        kept[:c.accepted] += 1
    low, high = binomial_interval(accepted, accepted + rejections)
    return Acceptance(
        rate=acceptance_from_counts(accepted, rejections), low=low, high=high,
        accepted=accepted, rejections=rejections,
        positions=[PositionCounts(position=i + 1, reached=int(reached[i]), accepted=int(kept[i]),
                                  rate=float(kept[i] / reached[i]) if reached[i] else None)
                   for i in range(longest)])


def host() -> dict[str, str]:
    """What the figures were measured on."""
    described = {"node": platform.node(), "machine": platform.machine(),
                 "processor": cpu_model() or platform.processor() or platform.machine(),
                 "python": platform.python_version()}
    for package in ("numpy", "torch", "transformers"):
        try:
            described[package] = version(package)
        except PackageNotFoundError:
            pass
    return described


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), where ``platform`` says only the
    architecture."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None
