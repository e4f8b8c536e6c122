"""The shipped offline pair (configs/models/tiny-arith), loaded with plain transformers.

Checks what the pair promises: one shared tokenizer, a target several times
the draft's size within 20 MB on disk, a target that answers the shipped
arithmetic questions in the training format, and greedy K=5 speculation with
an acceptance between 0.5 and 0.9 (a small reference loop here, no cache).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from validation.task_accuracy import is_correct

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
PAIR = ROOT / "configs" / "models" / "tiny-arith"
PROMPTS = ROOT / "configs" / "prompts" / "arith.jsonl"
FREE_PROMPTS = ROOT / "configs" / "prompts" / "arith-free.jsonl"
MAX_NEW = 48
ANSWER_LINE = re.compile(r"^ (\d+) (plus|minus|times) (\d+) is (\d+)\.\n?$")


@pytest.fixture(scope="module")
def pair():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(min(2, torch.get_num_threads()))
    tokenizer = AutoTokenizer.from_pretrained(PAIR / "tokenizer", local_files_only=True)
    target = AutoModelForCausalLM.from_pretrained(PAIR / "target", local_files_only=True,
                                                  dtype=torch.float32).eval()
    draft = AutoModelForCausalLM.from_pretrained(PAIR / "draft", local_files_only=True,
                                                 dtype=torch.float32).eval()
    return tokenizer, draft, target


def rows(path: Path = PROMPTS) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def argmax_rows(model, ids: list[int]) -> list[int]:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].argmax(-1).tolist()


def greedy_text(model, tokenizer, prompt: str) -> str:
    ids = tokenizer.encode(prompt)
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=MAX_NEW,
                             eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)


def speculate(draft, target, ids: list[int], k: int, eos: int):
    """Greedy speculation without a cache: (tokens, accepted, rejections)."""
    seq, start, accepted, rejections = list(ids), len(ids), 0, 0
    while len(seq) - start < MAX_NEW and (len(seq) == start or seq[-1] != eos):
        proposal: list[int] = []
        while len(proposal) < min(k, MAX_NEW - (len(seq) - start)):
            proposal.append(argmax_rows(draft, seq + proposal)[-1])
            if proposal[-1] == eos:
                break
        verdict = argmax_rows(target, seq + proposal)[len(seq) - 1:]
        n = 0
        while n < len(proposal) and proposal[n] == verdict[n]:
            n += 1
        accepted += n
        seq += proposal[:n]
        if n < len(proposal):
            rejections += 1
            seq.append(verdict[n])
        elif proposal[-1] != eos and len(seq) - start < MAX_NEW:
            seq.append(verdict[n])
    return seq[start:], accepted, rejections


def test_prompt_files_are_well_formed():
    arith, free = rows(PROMPTS), rows(FREE_PROMPTS)
    assert len(arith) >= 60 and len(free) >= 30
    for row in arith + free:
        assert set(row) == {"id", "prompt", "answer"}
        assert isinstance(row["id"], str) and row["answer"].lstrip("-").isdigit()
        assert row["prompt"].startswith("Question: ") and row["prompt"].endswith("\nAnswer:")
    assert len({row["id"] for row in arith + free}) == len(arith) + len(free)


def test_shared_tokenizer_and_special_ids(pair):
    tokenizer, draft, target = pair
    assert type(tokenizer).__name__ == "PreTrainedTokenizerFast"
    assert None not in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    for model in (draft, target):
        assert model.config.vocab_size == len(tokenizer)
        assert model.config.eos_token_id == tokenizer.eos_token_id
        assert model.config.bos_token_id == tokenizer.bos_token_id
        assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    text = "Question: What is 47 plus 38?\nAnswer: 47 plus 38 is 85."
    ids = tokenizer.encode(text)
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_sizes_on_disk_and_parameter_counts(pair):
    _, draft, target = pair
    total = sum((PAIR / role / "model.safetensors").stat().st_size for role in ("draft", "target"))
    assert total <= 20 * 1024 * 1024
    n_draft = sum(p.numel() for p in draft.parameters())
    n_target = sum(p.numel() for p in target.parameters())
    assert n_target > 4 * n_draft


def test_target_answers_in_training_format(pair):
    tokenizer, _, target = pair
    correct = 0
    for row in rows()[:10]:
        text = greedy_text(target, tokenizer, row["prompt"])
        match = ANSWER_LINE.match(text)
        assert match, f"{row['id']}: {text!r} does not read like the training format"
        a, op, b = re.match(r"Question: What is (\d+) (plus|minus|times) (\d+)\?",
                            row["prompt"]).groups()
        assert match.group(1, 2, 3) == (a, op, b), text
        correct += match.group(4) == row["answer"]
    assert correct >= 8


def test_free_form_answers_are_sentences(pair):
    tokenizer, _, target = pair
    text = greedy_text(target, tokenizer, rows(FREE_PROMPTS)[0]["prompt"])
    assert text.startswith(" ") and "The answer is " in text and text.rstrip().endswith(".")


def test_greedy_acceptance_at_k5(pair):
    tokenizer, draft, target = pair
    eos = tokenizer.eos_token_id
    accepted = rejections = 0
    for row in rows()[:20]:
        ids = tokenizer.encode(row["prompt"])
        out, a, r = speculate(draft, target, ids, 5, eos)
        with torch.inference_mode():
            plain = target.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=MAX_NEW,
                                    eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        assert out == plain[0, len(ids):].tolist()  # greedy speculation is lossless
        accepted, rejections = accepted + a, rejections + r
    rate = accepted / (accepted + rejections)
    assert 0.5 <= rate <= 0.9, rate


def test_target_is_clearly_more_accurate_than_draft(pair):
    tokenizer, draft, target = pair
    first = rows()[:30]

    def accuracy(model) -> float:
        return sum(is_correct("free", row["answer"], greedy_text(model, tokenizer, row["prompt"]))
                   for row in first) / len(first)

    assert accuracy(target) >= accuracy(draft) + 0.20
