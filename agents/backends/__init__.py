"""Model backends and the model-pair config that selects one.

``build_models`` gives each host what it runs: the edge a draft model, the
cloud a target model and a draft model of its own (for ``cloud-spec``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agents.backends.base import LanguageModel
from agents.backends.synthetic import SyntheticModel, SyntheticPairConfig
from agents.backends.tokenizer import ByteTokenizer, Tokenizer

ModelPairConfig = SyntheticPairConfig
Host = Literal["edge", "cloud"]


@dataclass
class HostModels:
    draft: LanguageModel
    target: LanguageModel | None
    tokenizer: Tokenizer


def build_models(config: ModelPairConfig, host: Host) -> HostModels:
    tokenizer = ByteTokenizer(config.vocab_size, reserved=(config.eos_id,))
    if host == "edge":
        return HostModels(SyntheticModel(config, "draft", config.latency.edge_draft), None, tokenizer)
    return HostModels(SyntheticModel(config, "draft", config.latency.cloud_draft),
                      SyntheticModel(config, "target", config.latency.cloud_target), tokenizer)
