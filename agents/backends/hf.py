"""The ``hf`` backend: transformers causal LMs with a KV cache that rewinds.

Any ``AutoModelForCausalLM`` by hub id or local path, the code path a user
with Qwen2.5-1.5B (draft) and Qwen2.5-7B (target) on a GPU server takes, and
the one the shipped offline pair takes.  Each session owns a ``DynamicCache``:
``forward`` feeds only new tokens (verification never recomputes the prefix)
and ``truncate`` crops the cache to the committed length after a rejection,
as transformers' own assisted generation does.

Logits become the sampling distribution here, on the model's device
(temperature, then top-k, then top-p), in float32; rows are padded with zeros
to the pair's common vocabulary width.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agents.sampling import SamplingConfig
from agents.verification import pad_to_width

Dtype = Literal["auto", "float32", "float16", "bfloat16"]
WARM_UP_STEPS = 4   # single-token passes a model runs as it loads (``HFModel.warm_up``)


class HFPairConfig(BaseModel):
    """A transformers draft/target pair (a model-pair file with ``backend: hf``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    backend: Literal["hf"]
    name: str = "hf"
    description: str = ""
    draft: str                      # hub id or local folder
    target: str
    tokenizer: str | None = None    # default: the target's
    local_files_only: bool = True
    dtype: Dtype = "float32"
    edge_device: str = "cpu"
    cloud_device: str = "cpu"
    cpu_threads: int | None = Field(
        default=None, ge=1, le=1024,
        description="torch threads per agent on a CPU device; default: half the cores, "
                    "since edge and cloud share the host in sim and emulated mode")

    @property
    def tokenizer_source(self) -> str:
        return self.tokenizer or self.target


class ModelNotAvailable(RuntimeError):
    """Weights or tokenizer could not be loaded (absent, or not allowed to download)."""


def _torch():
    import torch
    return torch


def _transformers():
    """transformers, without loading scikit-learn: where scikit-learn is installed (the latency
    model fits with it), transformers imports ``sklearn.metrics`` as it loads its generation
    code, only to tune the confidence threshold of its own assisted generation, which this
    backend never runs; that import was 2.4 s of the 10 s each agent took to start on the
    build host.  Set before the generation code loads, so the hook is never taken."""
    import transformers.utils.import_utils
    transformers.utils.import_utils._sklearn_available = False
    import transformers
    return transformers


def load_tokenizer(config: HFPairConfig):
    try:
        return _transformers().AutoTokenizer.from_pretrained(
            config.tokenizer_source, local_files_only=config.local_files_only)
    except (OSError, ValueError) as error:
        raise ModelNotAvailable(f"tokenizer {config.tokenizer_source!r}: {error}") from None


def check_available(config: HFPairConfig) -> None:
    """Fail fast (before any process starts) when a model or the tokenizer is absent."""
    for role, source in (("draft", config.draft), ("target", config.target)):
        try:
            _transformers().AutoConfig.from_pretrained(
                source, local_files_only=config.local_files_only)
        except (OSError, ValueError) as error:
            hint = " (local_files_only: nothing is downloaded)" if config.local_files_only else ""
            first_line = str(error).strip().splitlines()[0]
            raise ModelNotAvailable(f"{role} model {source!r} is not available{hint}: "
                                    f"{first_line}") from None
    load_tokenizer(config)


def logits_to_probs(logits, sampling: SamplingConfig):
    """Rows of logits -> the distribution both sides sample and verify on."""
    torch = _torch()
    logits = logits.float()
    if sampling.decoding == "sampling":
        logits = logits / sampling.temperature
        if sampling.top_k > 0 and sampling.top_k < logits.shape[-1]:
            kth = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if sampling.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            sorted_probs = torch.softmax(sorted_logits, dim=-1)
            # drop a token when the mass before it already reaches top_p (the top token stays)
            drop_sorted = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= sampling.top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
    return torch.softmax(logits, dim=-1)


class HFSession:
    def __init__(self, model: "HFModel", sampling: SamplingConfig) -> None:
        self.model = model
        self.sampling = sampling
        self.cache = _transformers().DynamicCache()
        self.processed = 0

    def forward(self, ids: Sequence[int], all_rows: bool = False) -> np.ndarray:
        torch = _torch()
        with torch.inference_mode():
            input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.model.device)
            output = self.model.network(input_ids=input_ids, past_key_values=self.cache,
                                        use_cache=True)
            self.cache = output.past_key_values
            self.processed += len(ids)
            logits = output.logits[0] if all_rows else output.logits[0, -1]
            probs = logits_to_probs(logits, self.sampling).cpu().numpy()
        return pad_to_width(probs, self.model.vocab_size)    # the pair's shared width

    def truncate(self, length: int) -> None:
        self.cache.crop(length)
        self.processed = length

    def start_block(self, length: int) -> None:
        """A real model's rows do not depend on where a draft block starts."""


class HFModel:
    """One transformers model on one device, handing out cache-owning sessions."""

    def __init__(self, source: str, config: HFPairConfig, device: str, vocab_size: int,
                 eos_id: int | None) -> None:
        torch = _torch()
        AutoModelForCausalLM = _transformers().AutoModelForCausalLM
        if torch.device(device).type == "cpu":
            torch.set_num_threads(torch_threads(config))
        dtype = "auto" if config.dtype == "auto" else getattr(torch, config.dtype)
        try:
            network = AutoModelForCausalLM.from_pretrained(
                source, local_files_only=config.local_files_only, dtype=dtype)
        except (OSError, ValueError) as error:
            raise ModelNotAvailable(f"model {source!r}: {error}") from None
        self.network = network.to(device).eval()
        self.device = torch.device(device)
        self.vocab_size = vocab_size
        self.eos_id = eos_id
        self.warm_up()

    def session(self, sampling: SamplingConfig) -> HFSession:
        return HFSession(self, sampling)

    def warm_up(self, prompt_tokens: int = 8, steps: int = WARM_UP_STEPS) -> None:
        """A prefill and ``steps`` single-token passes on a throwaway session, before any is
        timed: a model's first passes allocate (the shipped target on this CPU: its first
        prefill 32 ms, later ones 5 ms; its first decoding steps 2.6 ms, later ones 1.8), and
        an agent's first query would otherwise pay them inside its figures, where NASD reads
        the cloud's decoding step off the first stream of the run."""
        session = self.session(SamplingConfig())
        session.forward([0] * prompt_tokens)
        for _ in range(steps):
            session.forward([0])


def torch_threads(config: HFPairConfig) -> int:
    """The torch threads each agent computes with on a CPU device."""
    return config.cpu_threads or max(1, (os.cpu_count() or 2) // 2)


def model_configs(config: HFPairConfig) -> dict[str, dict]:
    """The transformers config of the ``draft`` and the ``target``, as mappings."""
    AutoConfig = _transformers().AutoConfig
    return {role: AutoConfig.from_pretrained(source,
                                             local_files_only=config.local_files_only).to_dict()
            for role, source in (("draft", config.draft), ("target", config.target))}


def pair_width(config: HFPairConfig) -> int:
    """The common row width of a pair: the wider of the two output layers."""
    return max(int(model["vocab_size"]) for model in model_configs(config).values())


def resolve_paths(config: HFPairConfig, base_dir: Path) -> HFPairConfig:
    """Local folders given relative to the pair file become absolute; hub ids stay."""
    def resolve(source: str | None) -> str | None:
        if source is None:
            return None
        candidate = base_dir / source
        return str(candidate.resolve()) if candidate.exists() else source
    return config.model_copy(update={"draft": resolve(config.draft), "target": resolve(config.target),
                                     "tokenizer": resolve(config.tokenizer)})
