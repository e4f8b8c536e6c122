"""Tiny random transformers models saved to disk, loaded through the real ``hf`` path.

The draft is a noisy copy of the target, so the pair agrees often enough for
speculation to commit several tokens per cycle; a character tokenizer built
with the ``tokenizers`` library stands in for a real one.
"""

from __future__ import annotations

import string
from pathlib import Path

CHARACTERS = string.ascii_lowercase + string.digits + " .,?!:\n"


def save_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(CHARACTERS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    core.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.save_pretrained(folder)


def save_pair(root: Path, noise: float = 0.02, seed: int = 0) -> dict[str, str]:
    """Write tokenizer/, target/ and draft/ under ``root``; return their paths."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    vocab_size = len(CHARACTERS) + 3
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=48, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, tie_word_embeddings=False)
    target = LlamaForCausalLM(config)
    with torch.no_grad():
        for parameter in target.parameters():
            parameter.mul_(3.0)  # sharper distributions than a fresh init
    draft = LlamaForCausalLM(config)
    draft.load_state_dict(target.state_dict())
    with torch.no_grad():
        for parameter in draft.parameters():
            parameter.add_(noise * torch.randn_like(parameter))
    paths = {name: root / name for name in ("tokenizer", "target", "draft")}
    save_tokenizer(paths["tokenizer"])
    target.save_pretrained(paths["target"])
    draft.save_pretrained(paths["draft"])
    return {name: str(path) for name, path in paths.items()}
