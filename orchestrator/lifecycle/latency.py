"""Measuring latency for the latency model (``orchestrator latency measure``) and this host's
peaks for its device file (``orchestrator latency device``).

``measure`` samples configurations sparsely from a grid (model pair, prompt length, context
length, K; the campaign's dtype and torch threads are its "hardware") and times each stage
of a speculation cycle through the agents' own code, with ``orchestrator calibrate``'s
measuring pieces (``time_prefill``, ``timed_cycle``): the hf backend loading each model from
a folder, ``TokenSequence`` sessions with their KV cache, the codec and the wire messages.
Model pairs: the job's own pair, and pairs of randomly initialized Llama models shaped like it
but scaled (hidden size, layers, heads, KV heads), written to a scratch folder and loaded
from there like any local model (weights do not change a pass's time, so random ones time
as trained ones would).  Measured in rounds (``measure``): each round times every stage of
every sample (the median of a few passes), right after an untimed pass of the same stage; a
sample's row keeps the median over the rounds (with the minimum and the interquartile range),
so a busy neighbour that slows this shared host for a while spoils one repeat of many
samples instead of every repeat of a few.  Beside every turn a reference step (the job's
target decoding one token at a fixed context, ``speed_reference``) is timed, and the turn's
times are scaled by it: the host's speed drifts over seconds, within a round.  See
``nasd.latency.stages`` for what each stage is.  One row per sample, with the machine's
description and the median 1-minute load average of its turns; the CSV is rewritten after
every round (a cut-off campaign keeps every finished round).

``measure_device`` measures this host's peaks with micro-benchmarks in torch: read
bandwidth (a reduction over arrays in the last-level cache and far beyond it) and the FLOP/s
of a linear layer per dtype, on 1 thread and all cores, the best of several tries: a
roofline bound must not sit above what a real pass achieves.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import re
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
from rich.progress import Progress

from agents.backends import build_models
from agents.backends.base import LanguageModel, TokenSequence
from agents.backends.hf import HFPairConfig
from agents.codecs import get_codec
from agents.sampling import SamplingConfig
from agents.speculative import decode_plainly, session_rng
from nasd.latency.stages import LIBRARY_MIN_PRODUCT, SHAPE_FIELDS, STAGES, ModelShape
from orchestrator.lifecycle.calibrate import host, time_prefill, timed_cycle
from shaping.clock import now

# scaled shapes (hidden, layers, heads, kv_heads): head_dim = hidden / heads, the MLP
# 8/3 of the hidden size; pairs take a smaller one as draft and a larger one as target
SCALED_SHAPES: tuple[tuple[int, int, int, int], ...] = (
    (64, 2, 2, 2), (128, 2, 2, 2), (128, 4, 2, 1), (192, 3, 3, 3), (256, 2, 4, 2),
    (256, 4, 4, 4), (320, 4, 5, 5), (384, 4, 6, 2), (384, 6, 6, 6), (448, 5, 7, 7),
    (512, 6, 8, 4))
PROMPT_TOKENS = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192)
CONTEXT_TOKENS = (8, 16, 32, 64, 96, 128, 160, 192, 256, 320, 384)
KS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15)
T = TypeVar("T")


@dataclass(frozen=True)
class LatencyPlan:
    shipped: HFPairConfig            # the job's pair (its tokenizer and shape serve every pair)
    texts: list[str]                 # text the prompts and contexts are cut from
    sampling: SamplingConfig
    codec: str
    dtype: str = "float32"
    threads: int = 1
    samples: int = 200
    repeats: int = 5
    passes: int = 1                  # timed passes of each stage per round (median kept)
    speed_reference: bool = False    # scale each turn by a reference step timed beside it
    budget_s: float = 480.0
    seed: int = 0
    campaign: str = ""
    max_load: float | None = None    # wait before a round until the 1-min load is this low
    quiet_wait_s: float = 120.0      # ... for at most this long
    shapes: tuple[tuple[int, int, int, int], ...] = SCALED_SHAPES
    prompt_tokens: tuple[int, ...] = PROMPT_TOKENS
    context_tokens: tuple[int, ...] = CONTEXT_TOKENS
    ks: tuple[int, ...] = KS


@dataclass(frozen=True)
class SampleConfig:
    pair: str                        # the job's pair by name, or "<draft shape>/<target shape>"
    prompt_tokens: int
    context_tokens: int
    k: int


@dataclass
class LoadedPair:
    draft: LanguageModel
    target: LanguageModel
    shapes: dict[str, ModelShape]
    params: dict[str, int]
    warm: bool = False       # its first passes (allocation) are done


def shape_name(shape: tuple[int, int, int, int]) -> str:
    hidden, layers, heads, kv_heads = shape
    return f"h{hidden}-L{layers}-a{heads}-kv{kv_heads}"


def parse_shape_name(name: str) -> tuple[int, int, int, int]:
    """``h256-L4-a4-kv2`` -> (256, 4, 4, 2)."""
    match = re.fullmatch(r"h(\d+)-L(\d+)-a(\d+)-kv(\d+)", name)
    if match is None:
        raise ValueError(f"not a scaled shape name: {name!r}")
    hidden, layers, heads, kv_heads = (int(group) for group in match.groups())
    return hidden, layers, heads, kv_heads


def pair_names(plan: LatencyPlan) -> list[str]:
    """The shipped pair and every scaled pair of a smaller draft and a larger target."""
    # every scaled shape has the shipped pair's vocabulary: ordered by their layers alone
    ordered = sorted(plan.shapes,
                     key=lambda s: ModelShape(**scaled_config_shape(s), vocab=1).parameters)
    return [plan.shipped.name] + [f"{shape_name(a)}/{shape_name(b)}"
                        for a, b in itertools.combinations(ordered, 2)]


def sample_configs(plan: LatencyPlan) -> list[SampleConfig]:
    """``plan.samples`` configurations drawn without replacement from the grid, seeded."""
    rng = np.random.default_rng(plan.seed)
    pairs = pair_names(plan)
    grid_size = len(pairs) * len(plan.prompt_tokens) * len(plan.context_tokens) * len(plan.ks)
    chosen: list[SampleConfig] = []
    seen = set()
    while len(chosen) < min(plan.samples, grid_size):
        config = SampleConfig(pairs[rng.integers(len(pairs))],
                              int(rng.choice(plan.prompt_tokens)),
                              int(rng.choice(plan.context_tokens)), int(rng.choice(plan.ks)))
        if config.pair == plan.shipped.name:   # within its positions
            config = SampleConfig(config.pair, config.prompt_tokens,
                                  min(config.context_tokens,
                                      shipped_positions(plan) - max(plan.ks) - 1), config.k)
        if config not in seen:
            seen.add(config)
            chosen.append(config)
    return chosen


def shipped_positions(plan: LatencyPlan) -> int:
    """The longest sequence the job's own pair takes (its target's position embeddings)."""
    config = json.loads((Path(plan.shipped.target) / "config.json").read_text())
    return int(config.get("max_position_embeddings") or 2048)


def scaled_config_shape(shape: tuple[int, int, int, int]) -> dict:
    hidden, layers, heads, kv_heads = shape
    return dict(layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
                head_dim=hidden // heads, intermediate=max(32, round(hidden * 8 / 3 / 32) * 32))


class PairCache:
    """Model pairs loaded once per campaign: the shipped one from its folders, a scaled one
    written (random weights, seeded) to a scratch folder first, each through
    ``agents.backends.build_models`` at the plan's dtype and threads."""

    def __init__(self, plan: LatencyPlan, scratch: Path) -> None:
        self.plan = plan
        self.scratch = scratch
        self.loaded: dict[str, LoadedPair] = {}
        base = json.loads((Path(plan.shipped.target) / "config.json").read_text())
        self.base = base
        self.vocab = int(base["vocab_size"])

    def get(self, name: str) -> LoadedPair:
        if name not in self.loaded:
            self.loaded[name] = self._load(name)
        return self.loaded[name]

    def _load(self, name: str) -> LoadedPair:
        update = {"dtype": self.plan.dtype, "cpu_threads": self.plan.threads}
        if name != self.plan.shipped.name:
            draft, target = (self._write(part) for part in name.split("/"))
            update |= {"draft": str(draft), "target": str(target), "name": name}
        pair = self.plan.shipped.model_copy(update=update)
        edge = build_models(pair, "edge")
        target_model = build_models(pair, "cloud").target
        shapes, params = {}, {}
        for role, model in (("draft", edge.draft), ("target", target_model)):
            config = model.network.config.to_dict()
            shapes[role] = ModelShape.from_config(config)
            params[role] = int(sum(p.numel() for p in model.network.parameters()))
        return LoadedPair(edge.draft, target_model, shapes, params)

    def _write(self, name: str) -> Path:
        folder = self.scratch / name
        if (folder / "config.json").exists():
            return folder
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
        hidden, layers, heads, kv_heads = parse_shape_name(name)
        shape = scaled_config_shape((hidden, layers, heads, kv_heads))
        config = LlamaConfig(**{**self.base, "hidden_size": hidden, "num_hidden_layers": layers,
                                "num_attention_heads": heads, "num_key_value_heads": kv_heads,
                                "head_dim": shape["head_dim"],
                                "intermediate_size": shape["intermediate"],
                                "max_position_embeddings": 1024})
        torch.manual_seed(self.plan.seed)
        LlamaForCausalLM(config).save_pretrained(folder)
        return folder


def token_stream(plan: LatencyPlan, tokenizer) -> list[int]:
    """The plan's texts as token ids, repeated to the longest prompt or context needed."""
    ids = [t for text in plan.texts for t in tokenizer.encode(text)]
    if not ids:
        raise ValueError("measuring latency needs non-empty texts")
    longest = max(max(plan.prompt_tokens), max(plan.context_tokens)) + max(plan.ks) + 2
    return (ids * (longest // len(ids) + 1))[:longest]


def summarize(values: list[float]) -> tuple[float, float, float]:
    """(median, minimum, interquartile range) of a stage's repeats."""
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return float(median), float(np.min(values)), float(q3 - q1)


class SampleRun:
    """One configuration being measured: its sequences (the draft's and the target's for the
    cycles, and the target's for plain decoding) held at the committed context
    (C - 1 tokens in each cache, the last one pending, as at the start of every cycle; each
    pass rewinds to it) and the times of its stages so far.  ``turn`` times every stage once,
    each right after an untimed pass of the same stage, so a turn finds the model's weights
    as warm as a running agent has them although other samples ran in between."""

    def __init__(self, pair: LoadedPair, config: SampleConfig, plan: LatencyPlan,
                 tokens: list[int], index: int) -> None:
        self.pair, self.config, self.plan, self.index = pair, config, plan, index
        self.codec = get_codec(plan.codec)
        self.session = f"latency/{plan.campaign}/{index}"
        self.rngs = (session_rng(plan.seed, self.session, "edge"),
                     session_rng(plan.seed, self.session, "cloud"))
        self.prompt = tokens[:config.prompt_tokens]
        self.context = tokens[:config.context_tokens]
        # the decoding step has a sequence of its own: on the cycles' one it read their K (a
        # step after cycles of 15 drafts took 13-15 % longer than after cycles of 1, one
        # untimed step between them), which no plain decoding, as cloud-only serves it, does
        self.draft, self.target, self.decoder = (
            TokenSequence(model, self.context[:-1], plan.sampling)
            for model in (pair.draft, pair.target, pair.target))
        for sequence in (self.draft, self.target, self.decoder):
            if len(self.context) > 1:
                sequence.prefill()
            sequence.extend(self.context[-1:])
        self.times: dict[str, list[float]] = {stage: [] for stage in STAGES}
        self.encode_s: list[float] = []
        self.bytes: list[tuple[int, int]] = []
        self.loads: list[float] = []
        self.references: list[float] = []    # the reference's step beside each turn
        self.turns = 0

    def cycle(self):
        sample, _, _ = timed_cycle(self.draft, self.target, self.config.k, self.codec,
                                   self.plan.sampling.decoding, self.rngs, self.session,
                                   self.turns + 1, {}, (None, None))
        reset(self.context, self.draft, self.target)
        return sample

    def decode(self) -> float:
        started = now()
        next(decode_plainly(self.decoder, 1, self.plan.sampling.decoding, self.rngs[1], None))
        elapsed = now() - started
        reset(self.context, self.decoder)
        return elapsed

    def prefill(self) -> tuple[float, float]:
        return time_prefill(self.pair.draft, self.pair.target, self.prompt, self.plan.sampling,
                            self.rngs[1])

    def turn(self, reference: SampleRun | None = None) -> None:
        """Every stage once untimed, then ``plan.passes`` times timed: the turn's time of a
        stage is the median of its passes; then, with a ``reference``, its decoding step
        timed the same way: how fast the host ran at that moment."""
        passes = self.plan.passes
        prefills = after_one_untimed(self.prefill, passes)
        samples = after_one_untimed(self.cycle, passes)
        decodes = after_one_untimed(self.decode, passes)
        self.times["edge_prefill"].append(float(np.median([edge for edge, _ in prefills])))
        self.times["cloud_prefill"].append(float(np.median([cloud for _, cloud in prefills])))
        self.times["draft_token"].append(float(np.median(
            [(sample.t_draft - sample.t_encode) / sample.k for sample in samples])))
        self.times["verify"].append(float(np.median([sample.t_verify for sample in samples])))
        self.times["decode"].append(float(np.median(decodes)))
        self.encode_s.append(float(np.median([sample.t_encode for sample in samples])))
        self.bytes.append((samples[-1].bytes_up, samples[-1].bytes_down))
        if reference is not None:
            self.references.append(float(np.median(after_one_untimed(reference.decode,
                                                                     passes))))
        self.loads.append(os.getloadavg()[0])
        self.turns += 1

    def row(self, reference_s: float | None = None) -> dict:
        """The table row: the configuration, both shapes, each stage's median, minimum and
        interquartile range over the turns, the codec's time and the bytes.  With
        ``reference_s`` (the reference step's median over the campaign) and a reference
        timed beside each turn, a turn's times are first scaled by ``reference_s`` over the
        reference's step beside it: the host's speed at the moment taken out."""
        config, plan = self.config, self.plan
        row: dict = {"sample": self.index, "campaign": plan.campaign, "pair": config.pair,
                     "codec": self.codec.name, "decoding": plan.sampling.decoding,
                     "dtype": plan.dtype, "threads": plan.threads, "batch": 1,
                     "prompt_tokens": config.prompt_tokens,
                     "context_tokens": config.context_tokens, "k": config.k}
        for role in ("draft", "target"):
            shape = self.pair.shapes[role]
            row |= {f"{role}_{name}": getattr(shape, name) for name in SHAPE_FIELDS}
            row[f"{role}_params"] = self.pair.params[role]
        speed = np.ones(self.turns)
        if reference_s is not None and self.references:
            speed = reference_s / np.asarray(self.references)
            row["reference_rounds_s"] = " ".join(f"{value:.6g}" for value in self.references)
        for stage, values in self.times.items():
            row[f"{stage}_s"], row[f"{stage}_min_s"], row[f"{stage}_iqr_s"] = summarize(
                list(np.asarray(values) * speed))
        for stage, values in self.times.items():     # every round's time, for re-analysis
            row[f"{stage}_rounds_s"] = " ".join(f"{value:.6g}" for value in values)
        up, down = zip(*self.bytes)
        return row | {"codec_encode_s": float(np.median(self.encode_s)),
                      "bytes_up": int(np.median(up)), "bytes_down": int(np.median(down)),
                      "repeats": self.turns, "passes": self.plan.passes,
                      "load_1m": float(np.median(self.loads))}


def after_one_untimed(measured: Callable[[], T], passes: int) -> list[T]:
    """``measured()`` once with its result dropped (the pass that warms what the sample's
    neighbours cooled), then ``passes`` times: those results."""
    measured()
    return [measured() for _ in range(passes)]


def reset(context: list[int], *sequences: TokenSequence) -> None:
    """Back to the committed context: C - 1 tokens processed, the last one pending."""
    for sequence in sequences:
        sequence.rewind(len(context) - 1)
        sequence.extend(context[-1:])


def measure(plan: LatencyPlan, out: Path, progress: Progress) -> int:
    """Measure the plan's samples into ``out`` (CSV); the number of rows written.

    In rounds: every sample is set up (its pair loaded, its context prefilled), then each
    round gives every sample one ``SampleRun.turn`` (in an order of its own,
    ``order_of_round``), and the table is rewritten after each
    round with the medians so far.  A sample's repeats are thus a whole round apart, so a
    neighbour that slows the host for a while spoils one repeat of many samples (which the
    median drops) rather than every repeat of a few.  Rounds stop at ``plan.repeats``, or
    before a round that would end past ``plan.budget_s`` (at least one round is done).
    """
    configs = sample_configs(plan)
    machine = host() | {"cores": os.cpu_count(), "torch_threads": plan.threads}
    created = datetime.now(UTC).isoformat(timespec="seconds")
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="latency-models-") as scratch:
        pairs = PairCache(plan, Path(scratch))
        tokens = token_stream(plan, pair_tokenizer(plan))
        setup = progress.add_task("set up", total=len(configs), unit="samples")
        runs = []
        for index, config in enumerate(configs):
            progress.update(setup, description=f"set up {config.pair}")
            pair = pairs.get(config.pair)
            runs.append(SampleRun(pair, config, plan, tokens, index))
            if not pair.warm:    # a pair's first passes allocate; out of the figures
                runs[-1].turn()
                runs[-1] = SampleRun(pair, config, plan, tokens, index)
                pair.warm = True
            progress.advance(setup)
        reference = speed_reference(plan, pairs, tokens) if plan.speed_reference else None
        task = progress.add_task("rounds", total=plan.repeats * len(runs), unit="turns")
        for round_index in range(plan.repeats):
            wait_for_quiet(plan, progress)
            round_started = time.monotonic()
            for index in order_of_round(plan.seed, round_index, len(runs)):
                run = runs[index]
                progress.update(task, description=f"round {round_index + 1}: {run.config.pair}")
                run.turn(reference)
                progress.advance(task)
            reference_s = None if reference is None else float(np.median(
                [step for run in runs for step in run.references]))
            write_rows(out, [run.row(reference_s) | {"created": created,
                                                     "speed_reference_s": reference_s}
                             | {f"host_{key}": value for key, value in machine.items()}
                             for run in runs])
            round_s = time.monotonic() - round_started
            if (round_index + 1 < plan.repeats
                    and time.monotonic() - started + round_s > plan.budget_s):
                done = round_index + 1
                progress.console.print(f"budget of {plan.budget_s:g} s: stopping after "
                                       f"{done} round{'s' if done > 1 else ''}")
                break
    return len(runs)


REFERENCE_CONTEXT = 32   # tokens before the reference's decoding step


def order_of_round(seed: int, round_index: int, samples: int) -> list[int]:
    """The order the samples take their turns in one round: shuffled afresh every round
    (seeded), so no sample meets the same neighbours, or the same moment of a drifting
    host's speed, in every round, and its rounds' errors are independent."""
    return np.random.default_rng([seed, round_index]).permutation(samples).tolist()


def speed_reference(plan: LatencyPlan, pairs: PairCache, tokens: list[int]) -> SampleRun:
    """The run whose decoding step (the job's own target at a fixed context) is timed beside
    every turn: on this 2-vCPU VM the host's speed drifts by +-20 % over seconds (one
    round's samples moved together: lag-1 correlation 0.5 in the order they ran, a
    sample's draft and verify times 0.93 correlated), more than a sample's stages vary
    on their own, and the step beside a turn tells how fast the host ran for it."""
    config = SampleConfig(plan.shipped.name, REFERENCE_CONTEXT, REFERENCE_CONTEXT, 1)
    return SampleRun(pairs.get(config.pair), config, plan, tokens, -1)


def wait_for_quiet(plan: LatencyPlan, progress: Progress) -> None:
    """Before a round, wait (at most ``plan.quiet_wait_s``) for the host's 1-minute load
    average to fall to ``plan.max_load``: on a shared host, a round measured while others
    compute is slower throughout (the medians drop one such round, not several)."""
    if plan.max_load is None:
        return
    deadline = time.monotonic() + plan.quiet_wait_s
    announced = False
    while os.getloadavg()[0] > plan.max_load and time.monotonic() < deadline:
        if not announced:
            progress.console.print(f"load {os.getloadavg()[0]:.1f} > {plan.max_load:g}: "
                                   f"waiting up to {plan.quiet_wait_s:g} s")
            announced = True
        time.sleep(2.0)
    if announced and os.getloadavg()[0] > plan.max_load:
        progress.console.print(f"load still {os.getloadavg()[0]:.1f} after "
                               f"{plan.quiet_wait_s:g} s: measuring this round anyway")


def write_rows(out: Path, rows: list[dict]) -> None:
    """The table, replaced whole (written beside it, then renamed)."""
    partial = out.with_suffix(out.suffix + ".partial")
    with partial.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(out)


def pair_tokenizer(plan: LatencyPlan):
    from agents.backends.hf import load_tokenizer
    return load_tokenizer(plan.shipped)


# --------------------------------------------------------------------------- this host


@dataclass
class DeviceMeasurement:
    memory_bandwidth_gbps: float
    cache_bytes: int | None
    cache_bandwidth_gbps: float | None
    peak_tflops: dict[str, float]
    library_call_us: dict[str, float] = field(default_factory=dict)
    details: dict = field(default_factory=dict)


def best_seconds(run, tries: int) -> float:
    best = float("inf")
    for _ in range(tries):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def last_level_cache_bytes() -> int | None:
    """The largest CPU cache sysfs lists for cpu0, in bytes."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip()
        scale = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * scale)
    return max(sizes) if sizes else None


def read_bandwidth(nbytes: int, threads: int, tries: int) -> float:
    """Bytes/s of a reduction over a float32 array of ``nbytes`` (read once per pass)."""
    import torch
    torch.set_num_threads(threads)
    array = torch.ones(nbytes // 4, dtype=torch.float32)
    reps = max(1, (256 << 20) // nbytes)
    def run():
        for _ in range(reps):
            array.sum()
    run()
    return reps * nbytes / best_seconds(run, tries)


def matmul_flops(dtype: str, rows: int, threads: int, tries: int) -> float:
    """FLOP/s of ``torch.nn.functional.linear`` (the op a model's layers run: ``rows`` tokens
    through a 1024 x 1024 weight) at ``dtype``."""
    import torch
    torch.set_num_threads(threads)
    weight = torch.randn(1024, 1024).to(getattr(torch, dtype))
    x = torch.randn(rows, 1024).to(getattr(torch, dtype))
    torch.nn.functional.linear(x, weight)
    return 2 * rows * 1024 ** 2 / best_seconds(lambda: torch.nn.functional.linear(x, weight),
                                                tries)


# one row through linear layers (in, out) of LIBRARY_MIN_PRODUCT multiply-adds each (the
# shapes of small models' projections: 64 x 64, a grouped 128 x 32), and through each with
# one input or output more: the same bytes and FLOPs within 3 %
LIBRARY_SIDE = math.isqrt(LIBRARY_MIN_PRODUCT)
LIBRARY_AT = ((LIBRARY_SIDE, LIBRARY_SIDE), (LIBRARY_SIDE // 2, 2 * LIBRARY_SIDE),
              (2 * LIBRARY_SIDE, LIBRARY_SIDE // 2))
LIBRARY_ABOVE = ((LIBRARY_SIDE, LIBRARY_SIDE + 1), (LIBRARY_SIDE // 2 + 1, 2 * LIBRARY_SIDE),
                 (2 * LIBRARY_SIDE, LIBRARY_SIDE // 2 + 1))


def library_call_rounds(dtype: str, rounds: int, pairs: int = 9,
                        calls: int = 50) -> list[float]:
    """Per round, what one row through a linear layer just above ``LIBRARY_MIN_PRODUCT``
    multiply-adds costs more than one at it, on 1 thread: the median over ``pairs`` of a
    batch through ``LIBRARY_ABOVE``'s layers less the batch through ``LIBRARY_AT``'s just
    before it (``calls`` passes each; paired, so a slower moment of the host slows both).
    One more row or column of a weight costs a fraction of a microsecond; the rest is the
    dispatch cost of the runtime's GEMM library.  The rounds differ on a busy host: its
    bfloat16 calls on this Xeon cost 17 us quiet and up to 150 beside other work."""
    import torch
    torch.set_num_threads(1)
    kind = getattr(torch, dtype)
    at, above = ([(torch.randn(1, fan_in).to(kind), torch.randn(fan_out, fan_in).to(kind))
                  for fan_in, fan_out in sizes] for sizes in (LIBRARY_AT, LIBRARY_ABOVE))

    def per_call(layers) -> float:
        started = time.perf_counter()
        for _ in range(calls):
            for x, weight in layers:
                torch.nn.functional.linear(x, weight)
        return (time.perf_counter() - started) / (calls * len(layers))
    per_call(at), per_call(above)                       # warm-up: oneDNN builds its kernels
    return [statistics.median(-per_call(at) + per_call(above) for _ in range(pairs))
            for _ in range(rounds)]


def cpu_seconds() -> tuple[float, float]:
    """The CPU seconds every process of this host has used (``/proc/stat``: all but idle
    and iowait) and this one's, so far."""
    fields = [float(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    own = resource.getrusage(resource.RUSAGE_SELF)
    return busy, own.ru_utime + own.ru_stime


def measure_device(tries: int = 7, progress: Progress | None = None) -> DeviceMeasurement:
    """This host's read bandwidth (in its last-level cache and in main memory) and linear-layer
    FLOP/s per dtype, the best over 1 thread and all cores, sizes and tries; and per dtype
    the dispatch cost of a linear layer its runtime hands to the GEMM library, the least
    over rounds (``library_call_rounds``); beside them, the share of the cores other
    processes used meanwhile (``others_cpu_share``: a busy host's figures are its own)."""
    cores = os.cpu_count() or 1
    threads = sorted({1, cores})
    started, (busy, own) = time.monotonic(), cpu_seconds()
    cache = last_level_cache_bytes()
    cache_sizes = [size for size in (1 << 20, 4 << 20, 16 << 20) if cache is None or size < cache]
    dtypes = ("float32", "bfloat16", "float16")
    task = progress.add_task("micro-benchmarks",
                             total=len(threads) * (len(cache_sizes) + 1 + 3 * len(dtypes))
                             + len(dtypes), unit="benchmarks") if progress else None
    cached, main, flops = {}, {}, {}
    for count in threads:
        for size in cache_sizes:
            cached[f"{size >> 20}MiB/{count}t"] = read_bandwidth(size, count, tries)
            progress and progress.advance(task)
        main[f"1GiB/{count}t"] = read_bandwidth(1 << 30, count, max(3, tries // 2))
        progress and progress.advance(task)
        for dtype in dtypes:
            for rows in (64, 256, 1024):
                flops[f"{dtype}/{rows}rows/{count}t"] = matmul_flops(dtype, rows, count, tries)
                progress and progress.advance(task)
    peak = {dtype: max(v for key, v in flops.items() if key.startswith(dtype + "/")) / 1e12
            for dtype in dtypes}
    library, library_rounds = {}, {}
    for dtype in dtypes:
        rounds = library_call_rounds(dtype, tries)
        library[dtype] = round(max(0.0, 1e6 * min(rounds)), 1)   # the host at its quietest
        library_rounds[dtype] = [round(1e6 * value, 1) for value in rounds]
        progress and progress.advance(task)
    (busy_after, own_after), wall = cpu_seconds(), time.monotonic() - started
    others_share = round(max(0.0, (busy_after - busy) - (own_after - own)) / (wall * cores), 3)
    return DeviceMeasurement(
        memory_bandwidth_gbps=max(main.values()) / 1e9,
        cache_bytes=cache, cache_bandwidth_gbps=max(cached.values()) / 1e9 if cached else None,
        peak_tflops=peak, library_call_us=library,
        details={"read_gbps": {k: round(v / 1e9, 2) for k, v in (cached | main).items()},
                 "matmul_gflops": {k: round(v / 1e9, 1) for k, v in flops.items()},
                 "library_call_rounds_us": library_rounds,
                 "load_1m": os.getloadavg()[0], "others_cpu_share": others_share})


def device_file(measured: DeviceMeasurement, name: str) -> dict:
    """A device file (``nasd.latency.roofline.Device``) for this host from its measurement."""
    machine = host()
    return {
        "name": name,
        "description": f"{machine['processor']} ({os.cpu_count()} cores) of {machine['node']}, "
                       "measured by `orchestrator latency device`",
        "kind": "cpu",
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1),
        "memory_bandwidth_gbps": round(measured.memory_bandwidth_gbps, 2),
        **({"cache": {"bytes": measured.cache_bytes,
                      "bandwidth_gbps": round(measured.cache_bandwidth_gbps, 2)}}
           if measured.cache_bytes and measured.cache_bandwidth_gbps else {}),
        "peak_tflops": {dtype: round(value, 4) for dtype, value in measured.peak_tflops.items()},
        "library_call_us": measured.library_call_us,
        "sources": [{"what": "every figure", "cite": "measured on this host with torch "
                     "micro-benchmarks (orchestrator/lifecycle/latency.py measure_device): the "
                     "best of several tries over 1 thread and all cores; library_call_us: "
                     "the least round on 1 thread"}],
        "measured": {"created": datetime.now(UTC).isoformat(timespec="seconds"),
                     "host": machine, **measured.details},
    }
