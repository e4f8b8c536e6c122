"""The stages of a speculation cycle as work: the bytes a forward pass must move and the
FLOPs it must compute, for a decoder-only transformer of a given shape.

Owns the stage names (``STAGES``, each run by the draft or the target: ``ROLE``), the shape
of a model (``ModelShape``: from a transformers config, its parameter count; published ones
by name, ``NAMED_SHAPES``, or nearest in size, ``shape_for_parameters``), the work of
one forward pass (``forward_work``) and of each stage (``stage_work``), and the per-stage
frames the fits read from a measured table (``stage_frame``).  What a stage is, at a
committed context of C tokens (C - 1 in the cache, the last one pending, as at the start of
every cycle):

- ``edge_prefill`` / ``cloud_prefill``: the prompt of P tokens through the draft / the
  target from an empty cache (the cloud's with its first token chosen);
- ``draft_token``: one drafted token, averaged over a block of K (the i-th feeds one token
  onto a cache of C - 1 + i; the average cache is C - 1 + (K - 1) / 2), carrying 1/K of the
  block's fixed cost (``blocks``);
- ``verify``: the target scoring K drafts in one pass (K + 1 tokens onto C - 1), with the
  payload decoded and the verdict built;
- ``decode``: one plain target step (1 token onto C - 1).

Bytes: every weight is read once per pass (the output layer included; an untied input
embedding only for the rows looked up), the KV cache is read whole and the new entries
written.  FLOPs: 2 per weight per token through the matrices (the output layer for every
row: transformers computes logits for each fed token), and attention's QK^T and AV over the
cache and the causal block.  Both are lower counts of what a pass really does (activations,
norms and softmax are left out), which is what the roofline bound needs.  Beside them, for
the fitted models only: the KV cache's share of the bytes (a runtime may move it more than
once: transformers' cache appends by copying), the copies of it a multi-token pass onto a
cache makes for every query head (``kv_repeat_bytes``: transformers' SDPA path repeats
grouped KV heads where the pass needs a mask), the elements the per-token vector work
touches (``activations``) and the linear layers large enough that the runtime hands them to
its GEMM library (``library_calls``: at bfloat16 on the Xeon build host, a fixed cost of its
own per call; float32 and float16 have no such step there).

Pure: no I/O, no clocks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:       # pandas only for the fits' frames: the agents' wire schema imports STAGES
    import pandas as pd

Stage = Literal["edge_prefill", "draft_token", "cloud_prefill", "verify", "decode"]
STAGES: tuple[Stage, ...] = ("edge_prefill", "draft_token", "cloud_prefill", "verify", "decode")
ROLE: dict[str, str] = {"edge_prefill": "draft", "draft_token": "draft",
                        "cloud_prefill": "target", "verify": "target", "decode": "target"}
Dtype = Literal["float32", "bfloat16", "float16"]
DTYPE_BYTES: dict[Dtype, int] = {"float32": 4, "bfloat16": 2, "float16": 2}
SHAPE_FIELDS = ("layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab",
                "tied_embeddings")


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer (Llama/Qwen family: gated MLP, grouped-query attention)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in (name for name in SHAPE_FIELDS if name != "tied_embeddings"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads "
                             f"({self.kv_heads})")

    @classmethod
    def from_config(cls, config: Mapping) -> ModelShape:
        """From a transformers config (``config.json`` as a mapping)."""
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return cls(layers=int(config["num_hidden_layers"]), hidden=hidden, heads=heads,
                   kv_heads=int(config.get("num_key_value_heads") or heads),
                   head_dim=int(config.get("head_dim") or hidden // heads),
                   intermediate=int(config["intermediate_size"]), vocab=int(config["vocab_size"]),
                   tied_embeddings=bool(config.get("tie_word_embeddings", True)))

    @property
    def layer_parameters(self) -> int:
        """One decoder layer: q, k, v, o projections, the gated MLP, two norms."""
        attention = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        return attention + 3 * self.hidden * self.intermediate + 2 * self.hidden

    @property
    def embedding_parameters(self) -> int:
        return self.vocab * self.hidden

    @property
    def parameters(self) -> int:
        """Every weight, counted as ``sum(p.numel())`` counts them (tied: once)."""
        output = 0 if self.tied_embeddings else self.embedding_parameters
        return (self.layers * self.layer_parameters + self.embedding_parameters + output
                + self.hidden)

    @property
    def linear_products(self) -> list[tuple[int, int]]:
        """The (in, out) sizes of one layer's linear layers: q, k, v, o, gate, up, down."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return [(self.hidden, q), (self.hidden, kv), (self.hidden, kv), (q, self.hidden),
                (self.hidden, self.intermediate), (self.hidden, self.intermediate),
                (self.intermediate, self.hidden)]

    def kv_bytes_per_token(self, dtype_bytes: float) -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    def weight_bytes_read(self, tokens: int, dtype_bytes: float) -> float:
        """Weights one pass over ``tokens`` new tokens reads: all but an untied input
        embedding, of which only the looked-up rows."""
        read = self.parameters - (0 if self.tied_embeddings else self.embedding_parameters)
        looked_up = 0 if self.tied_embeddings else tokens * self.hidden
        return (read + looked_up) * dtype_bytes


# The Qwen2.5 family's published shapes (each model's config.json on its hub page,
# Qwen/Qwen2.5-<size>; their q/k/v biases, a few thousand weights a layer, left out): what
# ``shape_for_parameters`` answers with for a model known only by its size.
QWEN2_5 = {
    "0.5B": ModelShape(24, 896, 14, 2, 64, 4864, 151936, True),
    "1.5B": ModelShape(28, 1536, 12, 2, 128, 8960, 151936, True),
    "3B": ModelShape(36, 2048, 16, 2, 128, 11008, 151936, True),
    "7B": ModelShape(28, 3584, 28, 4, 128, 18944, 152064, False),
    "14B": ModelShape(48, 5120, 40, 8, 128, 13824, 152064, False),
    "32B": ModelShape(64, 5120, 40, 8, 128, 27648, 152064, False),
    "72B": ModelShape(80, 8192, 64, 8, 128, 29568, 152064, False),
}


# Small drafts of the speculative decoding literature (SpecInfer's JackFram/llama-68m and
# JackFram/llama-160m, each config.json on its hub page: Llama layers, 12 heads of 64, untied
# embeddings, a 32,000-token vocabulary).
LLAMA_DRAFTS = {
    "llama-68m": ModelShape(2, 768, 12, 12, 64, 3072, 32000, False),
    "llama-160m": ModelShape(12, 768, 12, 12, 64, 3072, 32000, False),
}
# every published shape by the name a user gives it (``qwen2.5-0.5b``, ``llama-160m``)
NAMED_SHAPES = {f"qwen2.5-{size.lower()}": shape for size, shape in QWEN2_5.items()} | LLAMA_DRAFTS


def shape_for_parameters(parameters: float) -> ModelShape:
    """The published shape (``QWEN2_5``) nearest to ``parameters`` in log scale: a model
    declared by its size alone ("a 0.5 B draft, a 7 B target") gets a real architecture's
    layers, KV heads and vocabulary, which its time depends on beside its size."""
    if not parameters > 0:
        raise ValueError(f"parameters must be > 0 (got {parameters})")
    return min(QWEN2_5.values(), key=lambda shape: abs(math.log(shape.parameters / parameters)))


@dataclass(frozen=True)
class Work:
    """What one stage must do at least: bytes moved, FLOPs computed, and the shape facts the
    latency models use beside them."""

    flops: float
    bytes: float
    working_set: float   # bytes that must be resident: weights and the KV cache
    tokens: int          # new tokens through the pass
    layers: int
    kv_bytes: float = 0.0      # of ``bytes``: the KV cache's
    activations: float = 0.0   # elements the per-token vector work touches (norms, rotary,
                               # activation function, residuals): tokens x layers x (h + i)
    blocks: float = 0.0        # the share of a draft block's fixed cost this unit carries (1/K)
    kv_repeat_bytes: float = 0.0   # the KV cache copied out to every query head (see below)
    library_calls: int = 0     # linear layers large enough for the GEMM library (see below)


# PyTorch's CPU matmul hands a product of more than 16^3 multiply-adds (rows x in x out) to
# oneDNN at 16-bit dtypes (aten/src/ATen/native/mkldnn/Matmul.cpp, ``checksize``); a smaller
# one runs its own kernel.  What such a call costs is a device's measured figure
# (``nasd.latency.roofline.Device.library_call_us``).
LIBRARY_MIN_PRODUCT = 16 ** 3


def library_calls(shape: ModelShape, tokens: int) -> int:
    """The linear layers of one pass of ``tokens`` rows (each layer's seven and the output
    layer) above ``LIBRARY_MIN_PRODUCT`` multiply-adds."""
    large = sum(tokens * fan_in * fan_out > LIBRARY_MIN_PRODUCT
                for fan_in, fan_out in shape.linear_products)
    return shape.layers * large + int(tokens * shape.hidden * shape.vocab > LIBRARY_MIN_PRODUCT)


def forward_work(shape: ModelShape, tokens: int, cached: float, dtype_bytes: float) -> Work:
    """One forward pass of ``tokens`` new tokens onto a cache of ``cached`` tokens."""
    if tokens < 1 or cached < 0:
        raise ValueError(f"a pass needs tokens >= 1 and cached >= 0 (got {tokens}, {cached})")
    matrices = shape.layers * (shape.layer_parameters - 2 * shape.hidden) + shape.embedding_parameters
    # each new token attends to the cache and to the block up to itself: QK^T and AV
    attended = tokens * cached + tokens * (tokens + 1) / 2
    attention = 4 * shape.layers * shape.heads * shape.head_dim * attended
    kv_per_token = shape.kv_bytes_per_token(dtype_bytes)
    weights = shape.weight_bytes_read(tokens, dtype_bytes)
    kv_bytes = kv_per_token * (cached + tokens)
    # transformers' SDPA path copies grouped KV heads out to every query head when the pass
    # needs a mask (several new tokens onto a cache: a verification), not for one token or
    # a prefill, where the kernel groups the heads itself
    repeats = tokens > 1 and cached > 0 and shape.kv_heads < shape.heads
    kv_repeat = kv_bytes * shape.heads / shape.kv_heads if repeats else 0.0
    return Work(flops=2 * matrices * tokens + attention, bytes=weights + kv_bytes,
                working_set=shape.parameters * dtype_bytes + kv_bytes, tokens=tokens,
                layers=shape.layers, kv_bytes=kv_bytes,
                activations=tokens * shape.layers * (shape.hidden + shape.intermediate),
                kv_repeat_bytes=kv_repeat, library_calls=library_calls(shape, tokens))


def stage_work(stage: Stage, shape: ModelShape, dtype: str, prompt_tokens: int = 1,
               context_tokens: int = 1, k: int = 1) -> Work:
    """The work of ``stage`` (see the module's docstring) for the model of that stage."""
    dtype_bytes = dtype_size(dtype)
    if stage in ("edge_prefill", "cloud_prefill"):
        return forward_work(shape, prompt_tokens, 0, dtype_bytes)
    if context_tokens < 1:
        raise ValueError(f"context_tokens must be >= 1 (got {context_tokens})")
    cached = context_tokens - 1
    if stage == "draft_token":
        work = forward_work(shape, 1, cached + (max(k, 1) - 1) / 2, dtype_bytes)
        return replace(work, blocks=1.0 / max(k, 1))
    if stage == "verify":
        return forward_work(shape, k + 1, cached, dtype_bytes)
    if stage == "decode":
        return forward_work(shape, 1, cached, dtype_bytes)
    raise ValueError(f"unknown stage {stage!r}: one of {', '.join(STAGES)}")


def dtype_size(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}: one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def shape_columns(role: str) -> list[str]:
    """The table's columns that hold the shape of the ``role`` model (``draft_layers``, ...)."""
    return [f"{role}_{name}" for name in SHAPE_FIELDS]


def shape_of(row: Mapping, role: str) -> ModelShape:
    return ModelShape(**{name: row[f"{role}_{name}"] for name in SHAPE_FIELDS})


def shape_group(shape: ModelShape) -> str:
    """The name a group-wise split holds a model shape out by (``L4-h256-kv4``)."""
    return f"L{shape.layers}-h{shape.hidden}-kv{shape.kv_heads}"


def stage_frame(table: pd.DataFrame, stage: Stage) -> pd.DataFrame:
    """One row per measured sample of ``stage``: its seconds (``seconds``: the median of the
    repeats), the configuration, the model's shape (``group``: a name of that shape, which a
    group-wise split holds out whole) and the stage's work (``flops``, ``bytes``,
    ``working_set``, ``tokens``, ``layers``, ``kv_bytes``, ``activations``, ``blocks``,
    ``library_calls``, ``params``)."""
    import pandas as pd
    role = ROLE[stage]
    seconds = f"{stage}_s"
    rows = table[table[seconds].notna()]
    works, groups, params = [], [], []
    for row in rows.to_dict("records"):
        shape = shape_of(row, role)
        works.append(stage_work(stage, shape, row["dtype"], int(row["prompt_tokens"]),
                                int(row["context_tokens"]), int(row["k"])))
        groups.append(shape_group(shape))
        params.append(shape.parameters)
    frame = pd.DataFrame({
        "sample": rows["sample"].to_numpy(), "seconds": rows[seconds].to_numpy(dtype=float),
        "group": groups, "params": params, "hidden": rows[f"{role}_hidden"].to_numpy(),
        "dtype": rows["dtype"].to_numpy(),
        "dtype_bytes": [dtype_size(d) for d in rows["dtype"]],
        "threads": rows["threads"].to_numpy(),
        "prompt_tokens": rows["prompt_tokens"].to_numpy(),
        "context_tokens": rows["context_tokens"].to_numpy(), "k": rows["k"].to_numpy(),
        "flops": [w.flops for w in works], "bytes": [w.bytes for w in works],
        "working_set": [w.working_set for w in works], "tokens": [w.tokens for w in works],
        "layers": [w.layers for w in works], "kv_bytes": [w.kv_bytes for w in works],
        "kv_repeat_bytes": [w.kv_repeat_bytes for w in works],
        "activations": [w.activations for w in works], "blocks": [w.blocks for w in works],
        "library_calls": [w.library_calls for w in works]})
    if "load_1m" in rows:
        frame["load_1m"] = rows["load_1m"].to_numpy()
    if f"{stage}_iqr_s" in rows and "repeats" in rows:
        frame["iqr_s"] = rows[f"{stage}_iqr_s"].to_numpy(dtype=float)
        frame["repeats"] = rows["repeats"].to_numpy(dtype=float)
    return frame.reset_index(drop=True)


def required_columns() -> list[str]:
    """The columns of a measured table the latency model reads (the guardrail's analysis
    also a cycle's bytes)."""
    return (["sample", "dtype", "threads", "prompt_tokens", "context_tokens", "k"]
            + shape_columns("draft") + shape_columns("target")
            + [f"{stage}_s" for stage in STAGES] + ["bytes_up", "bytes_down"])


def stage_frames(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``stage_frame`` of every stage."""
    return {stage: stage_frame(table, stage) for stage in STAGES}
