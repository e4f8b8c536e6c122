"""Model backends and the model-pair config that selects one.

``build_models`` gives each host what it runs: the edge a draft model, the
cloud a target model and a draft model of its own (for ``cloud-spec``).
Both models of a pair return rows of one common width (the wider vocabulary;
the narrower model's missing ids have probability zero).  Under device emulation
(``agents.backends.emulated``) the models come wrapped, their passes padded to the emulated
device's time and recorded in the host's ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Union

from pydantic import Field

from agents.backends.base import Host, LanguageModel
from agents.backends.emulated import DeviceEmulation, PassTiming, StageLedger
from agents.backends.hf import HFPairConfig
from agents.backends.synthetic import SyntheticModel, SyntheticPairConfig
from agents.backends.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer

ModelPairConfig = Annotated[Union[SyntheticPairConfig, HFPairConfig], Field(discriminator="backend")]


@dataclass
class HostModels:
    draft: LanguageModel
    target: LanguageModel | None
    tokenizer: Tokenizer
    ledger: StageLedger | None = None   # device emulation: every pass of these models

    def take_passes(self) -> list[PassTiming] | None:
        """Device emulation: the passes run since the last take (None without emulation)."""
        return None if self.ledger is None else self.ledger.take()


def build_models(config: ModelPairConfig, host: Host,
                 emulation: DeviceEmulation | None = None) -> HostModels:
    """``host``'s models of the pair; with ``emulation``, timed as its emulated device."""
    models = _host_models(config, host)
    if emulation is None:
        return models
    ledger = StageLedger()
    return HostModels(emulation.wrap(models.draft, host, "draft", ledger),
                      None if models.target is None
                      else emulation.wrap(models.target, host, "target", ledger),
                      models.tokenizer, ledger)


def _host_models(config: ModelPairConfig, host: Host) -> HostModels:
    if isinstance(config, SyntheticPairConfig):
        tokenizer = ByteTokenizer(config.vocab_size, reserved=(config.eos_id,))
        if host == "edge":
            return HostModels(SyntheticModel(config, "draft", config.latency.edge_draft), None,
                              tokenizer)
        return HostModels(SyntheticModel(config, "draft", config.latency.cloud_draft),
                          SyntheticModel(config, "target", config.latency.cloud_target), tokenizer)
    from agents.backends.hf import HFModel, load_tokenizer, pair_width
    tokenizer = load_tokenizer(config)
    width, eos_id = pair_width(config), tokenizer.eos_token_id
    device = config.edge_device if host == "edge" else config.cloud_device
    draft = HFModel(config.draft, config, device, width, eos_id)
    target = HFModel(config.target, config, device, width, eos_id) if host == "cloud" else None
    return HostModels(draft, target, HFTokenizer(tokenizer))
