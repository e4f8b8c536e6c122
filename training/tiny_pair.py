"""Train the small draft/target pair that ships with the project (``tiny-arith``).

Everything is generated here, offline and seeded, on the CPU:

* a corpus of readable English arithmetic: plain questions
  ("Question: What is 47 plus 38?" / "Answer: 47 plus 38 is 85.") and word
  problems with one- or two-step answers ("First, 6 times 7 is 42. Then 42
  minus 5 is 37. The answer is 37."), every example ending in EOS;
* one shared byte-level BPE tokenizer (``tokenizers`` library, digits split
  one per token), saved as a ``PreTrainedTokenizerFast`` that prepends BOS;
* two ``LlamaForCausalLM`` models built from configs, a ~3M-parameter target
  and a ~0.1M-parameter draft, trained with the loss on the answers;
* the held-out prompt files ``arith.jsonl`` (plain questions) and
  ``arith-free.jsonl`` (word problems); none of their questions occur in the
  training text.  The numbers are small (operands and results up to 40, the
  2..9 times table), so every arithmetic fact is seen in training, inside
  other questions: the models memorise facts, they do not learn an algorithm,
  and the target's larger capacity is what makes it the more accurate.

At the end the script measures, and prints, the exact-match accuracy of both
models on the held-out prompts and the per-token acceptance of K=5 greedy
speculative decoding (accepted / (accepted + rejections)), with a small
reference implementation, and it checks that transformers' own assisted
generation reproduces plain greedy decoding of the target.

Usage::

    python -m training.tiny_pair --out configs/models/tiny-arith

Layout written: ``OUT/tokenizer/``, ``OUT/draft/``, ``OUT/target/`` (each model:
config.json, generation_config.json, model.safetensors) and, in
``--prompts-dir`` (default ``configs/prompts``), ``arith.jsonl`` and
``arith-free.jsonl``.  Load with plain transformers::

    AutoTokenizer.from_pretrained(OUT / "tokenizer", local_files_only=True)
    AutoModelForCausalLM.from_pretrained(OUT / "target", local_files_only=True)
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

# ---------------------------------------------------------------------------
# The task: generated arithmetic text
# ---------------------------------------------------------------------------

NAMES = [("Tom", "he"), ("Anna", "she"), ("Sam", "he"), ("Mia", "she"), ("Ben", "he"),
         ("Lucy", "she"), ("Max", "he"), ("Emma", "she"), ("Leo", "he"), ("Sara", "she"),
         ("Jack", "he"), ("Nina", "she")]
ITEMS = ["apples", "pencils", "stickers", "cookies", "marbles", "books", "cards", "stamps",
         "shells", "balloons"]
CONTAINERS = {"box": "boxes", "bag": "bags", "pack": "packs", "jar": "jars"}
ANIMALS = ["cows", "pigs", "sheep", "goats", "ducks", "horses"]
MAX_VALUE = 40           # every operand and every result stays within 0..40 ...
TIMES_RANGE = (2, 9)     # ... except in the times table, 2..9 x 2..9


@dataclass(frozen=True)
class Problem:
    kind: str                                   # "arith" or a word-problem template name
    prompt: str                                 # ends with "Answer:"
    completion: str                             # " ... ." + "\n" (EOS is added by training)
    answer: int
    steps: tuple[tuple[str, int, int], ...]     # (op, a, b) of every step
    key: tuple                                  # template + numbers, identifies the problem


def _fact(op: str, a: int, b: int) -> int:
    return {"plus": a + b, "minus": a - b, "times": a * b}[op]


def plain_question(op: str, a: int, b: int) -> Problem:
    r = _fact(op, a, b)
    return Problem("arith", f"Question: What is {a} {op} {b}?\nAnswer:",
                   f" {a} {op} {b} is {r}.\n", r, ((op, a, b),), ("arith", op, a, b))


def random_triple(rng: random.Random, op: str) -> tuple[int, int]:
    if op == "plus":
        a = rng.randint(1, MAX_VALUE - 1)
        return a, rng.randint(1, MAX_VALUE - a)
    if op == "minus":
        a = rng.randint(2, MAX_VALUE)
        return a, rng.randint(1, a - 1)
    return rng.randint(*TIMES_RANGE), rng.randint(*TIMES_RANGE)


def _small_product(rng: random.Random) -> tuple[int, int]:
    while True:
        a, b = rng.randint(*TIMES_RANGE), rng.randint(*TIMES_RANGE)
        if a * b <= MAX_VALUE:
            return a, b


TEMPLATES = ["have_plus", "give_minus", "box_times", "buy_give", "bags_away", "read_days",
             "farm", "birds"]


def word_problem(rng: random.Random, template: str) -> Problem:
    """One word problem; numbers, names and items drawn from ``rng``."""
    name, pron = rng.choice(NAMES)
    friend = rng.choice([n for n, _ in NAMES if n != name])
    item = rng.choice(ITEMS)
    Pron = pron.capitalize()
    if template == "have_plus":
        a, b = random_triple(rng, "plus")
        r = a + b
        prompt = (f"Question: {name} has {a} {item} and buys {b} more. "
                  f"How many {item} does {pron} have now?\nAnswer:")
        completion = f" {name} has {a} plus {b} is {r} {item}. The answer is {r}.\n"
        steps, key = (("plus", a, b),), (a, b)
    elif template == "give_minus":
        a, b = random_triple(rng, "minus")
        r = a - b
        prompt = (f"Question: {name} has {a} {item} and gives {b} of them to {friend}. "
                  f"How many {item} does {name} have left?\nAnswer:")
        completion = f" {name} has {a} minus {b} is {r} {item} left. The answer is {r}.\n"
        steps, key = (("minus", a, b),), (a, b)
    elif template == "box_times":
        a, b = rng.randint(*TIMES_RANGE), rng.randint(*TIMES_RANGE)
        box = rng.choice(list(CONTAINERS))
        r = a * b
        prompt = (f"Question: A {box} holds {a} {item}. {name} buys {b} {CONTAINERS[box]}. "
                  f"How many {item} does {name} get?\nAnswer:")
        completion = f" {name} gets {b} times {a} is {r} {item}. The answer is {r}.\n"
        steps, key = (("times", b, a),), (a, b)
    elif template == "buy_give":
        a, b = random_triple(rng, "plus")
        s = a + b
        c = rng.randint(1, s - 1)
        r = s - c
        prompt = (f"Question: {name} has {a} {item}. {Pron} buys {b} more and then gives "
                  f"{c} to {friend}. How many {item} does {name} have now?\nAnswer:")
        completion = (f" First, {a} plus {b} is {s}. Then {s} minus {c} is {r}. "
                      f"The answer is {r}.\n")
        steps, key = (("plus", a, b), ("minus", s, c)), (a, b, c)
    elif template == "bags_away":
        a, b = _small_product(rng)
        s = a * b
        c = rng.randint(1, s - 1)
        r = s - c
        box = rng.choice(list(CONTAINERS))
        prompt = (f"Question: {name} buys {a} {CONTAINERS[box]} with {b} {item} in each {box}. "
                  f"{Pron} gives away {c} of them. How many {item} are left?\nAnswer:")
        completion = (f" First, {a} times {b} is {s}. Then {s} minus {c} is {r}. "
                      f"The answer is {r}.\n")
        steps, key = (("times", a, b), ("minus", s, c)), (a, b, c)
    elif template == "read_days":
        while True:
            a, b = _small_product(rng)
            s = a * b
            if s < MAX_VALUE:
                break
        c = rng.randint(1, MAX_VALUE - s)
        r = s + c
        prompt = (f"Question: {name} reads {a} pages every day for {b} days and then "
                  f"{c} more pages. How many pages does {name} read in total?\nAnswer:")
        completion = (f" First, {a} times {b} is {s}. Then {s} plus {c} is {r}. "
                      f"The answer is {r}.\n")
        steps, key = (("times", a, b), ("plus", s, c)), (a, b, c)
    elif template == "farm":
        first, second = rng.sample(ANIMALS, 2)
        a = rng.randint(1, MAX_VALUE - 10)
        b = rng.randint(1, MAX_VALUE - 1 - a)
        s = a + b
        c = rng.randint(1, MAX_VALUE - s)
        r = s + c
        prompt = (f"Question: A farm has {a} {first}, {b} {second} and {c} chickens. "
                  f"How many animals are on the farm?\nAnswer:")
        completion = (f" First, {a} plus {b} is {s}. Then {s} plus {c} is {r}. "
                      f"The answer is {r}.\n")
        steps, key = (("plus", a, b), ("plus", s, c)), (a, b, c, first, second)
    elif template == "birds":
        a = rng.randint(3, MAX_VALUE)
        b = rng.randint(1, a - 2)
        s = a - b
        c = rng.randint(1, s - 1)
        r = s - c
        fly_b, fly_c = ("bird flies" if b == 1 else "birds fly"), ("flies" if c == 1 else "fly")
        prompt = (f"Question: There are {a} birds in a tree. {b} {fly_b} away and then "
                  f"{c} more {fly_c} away. How many birds are left in the tree?\nAnswer:")
        completion = (f" First, {a} minus {b} is {s}. Then {s} minus {c} is {r}. "
                      f"The answer is {r}.\n")
        steps, key = (("minus", a, b), ("minus", s, c)), (a, b, c)
    else:
        raise ValueError(template)
    return Problem(template, prompt, completion, r, steps, (template, *key))


def held_out_sets(seed: int, n_arith: int, n_free: int) -> tuple[list[Problem], list[Problem]]:
    """The shipped prompts: plain questions and word problems never used for training."""
    rng = random.Random(seed * 1000 + 17)
    arith: list[Problem] = []
    seen: set = set()
    quota = {"plus": n_arith * 2 // 5, "minus": n_arith * 2 // 5}
    quota["times"] = n_arith - quota["plus"] - quota["minus"]
    for op, count in quota.items():
        while count:
            problem = plain_question(op, *random_triple(rng, op))
            if problem.key in seen:
                continue
            seen.add(problem.key)
            arith.append(problem)
            count -= 1
    rng.shuffle(arith)
    free: list[Problem] = []
    while len(free) < n_free:
        problem = word_problem(rng, TEMPLATES[len(free) % len(TEMPLATES)])
        if problem.key not in seen:
            seen.add(problem.key)
            free.append(problem)
    rng.shuffle(free)
    return arith, free


def training_corpus(seed: int, count: int, held_arith: Sequence[Problem],
                    held_free: Sequence[Problem]) -> list[Problem]:
    """``count`` training problems, none of them a held-out question.

    The arithmetic facts themselves are not held out: a held-out "What is 17
    plus 8?" may still meet "17 plus 8 is 25" inside a word problem's answer.
    """
    rng = random.Random(seed * 1000 + 29)
    banned_keys = {p.key for p in held_arith} | {p.key for p in held_free}
    banned_prompts = {p.prompt for p in held_arith} | {p.prompt for p in held_free}
    corpus: list[Problem] = []
    while len(corpus) < count:
        roll = rng.random()
        if roll < 0.45:
            op = rng.choices(["plus", "minus", "times"], weights=[4, 4, 2])[0]
            problem = plain_question(op, *random_triple(rng, op))
        else:
            problem = word_problem(rng, rng.choice(TEMPLATES))
        if problem.key in banned_keys or problem.prompt in banned_prompts:
            continue
        corpus.append(problem)
    return corpus


def final_number(text: str) -> str | None:
    """The last number in a generated answer (what exact match compares)."""
    numbers = re.findall(r"-?\d+", text.split("\nQuestion:")[0])
    return numbers[-1] if numbers else None


# ---------------------------------------------------------------------------
# Tokenizer and models
# ---------------------------------------------------------------------------

SPECIALS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>"}


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Byte-level BPE (one digit per token) wrapped as a PreTrainedTokenizerFast."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    core = Tokenizer(models.BPE())
    # " 47" -> " 4", "7": every digit is its own token (a leading space rides with the first)
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" ?[0-9]"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                  special_tokens=[SPECIALS["pad"], SPECIALS["bos"], SPECIALS["eos"]],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    core.train_from_iterator(texts, trainer=trainer)
    bos, eos = SPECIALS["bos"], SPECIALS["eos"]
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
        special_tokens=[(bos, core.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token=eos,
                                   pad_token=SPECIALS["pad"], clean_up_tokenization_spaces=False,
                                   model_max_length=512)


SIZES = {
    # name: hidden, layers, heads, kv heads, intermediate
    "target": dict(hidden_size=224, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=4, intermediate_size=640),
    "draft": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, intermediate_size=128),
}


def build_model(role: str, tokenizer, seed: int, sizes: dict | None = None):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
                         rope_theta=10000.0, **(sizes or SIZES)[role])
    return LlamaForCausalLM(config)


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

def encode_examples(tokenizer, problems: Sequence[Problem]):
    """(ids, first answer position) per problem: BOS prompt completion EOS."""
    prompts = tokenizer([p.prompt for p in problems])["input_ids"]
    fulls = tokenizer([p.prompt + p.completion for p in problems])["input_ids"]
    encoded = []
    for prompt, full in zip(prompts, fulls):
        if full[:len(prompt)] != prompt:
            raise AssertionError("prompt tokens are not a prefix of the example's tokens")
        encoded.append((full + [tokenizer.eos_token_id], len(prompt)))
    return encoded


def train_model(model, encoded, steps: int, batch_size: int, lr: float, seed: int,
                label: str, pad_id: int, log_every: int = 100, micro_batch: int = 16,
                device: str = "cpu") -> float:
    """AdamW, warmup + cosine decay, loss on the answer tokens; returns wall seconds."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98),
                                  weight_decay=0.01)
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    start = time.perf_counter()
    running = None
    for step in range(steps):
        index = torch.randint(len(encoded), (batch_size,), generator=generator).tolist()
        rows = sorted((encoded[i] for i in index), key=lambda row: len(row[0]))
        n_labels = sum(len(ids) - answer_start for ids, answer_start in rows)
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        # length-sorted micro-batches, each padded only to its own longest row
        for chunk_start in range(0, batch_size, micro_batch):
            chunk = rows[chunk_start:chunk_start + micro_batch]
            width = max(len(ids) for ids, _ in chunk)
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            for row, (ids, answer_start) in enumerate(chunk):
                input_ids[row, :len(ids)] = torch.tensor(ids)
                labels[row, answer_start:len(ids)] = torch.tensor(ids[answer_start:])
            # right padding: causal attention never lets real tokens see the padding
            logits = model(input_ids=input_ids.to(device)).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                labels[:, 1:].reshape(-1).to(device), ignore_index=-100, reduction="sum") / n_labels
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        running = total if running is None else 0.95 * running + 0.05 * total
        if (step + 1) % log_every == 0 or step + 1 == steps:
            print(f"  [{label}] step {step + 1}/{steps}  loss {running:.4f}  "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
    model.to("cpu").eval()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------
# Evaluation: greedy decoding and reference greedy speculative decoding
# ---------------------------------------------------------------------------

def _next_tokens(model, ids: Sequence[int]):
    import torch
    with torch.inference_mode():
        return model(input_ids=torch.tensor([list(ids)])).logits[0].argmax(-1).tolist()


def greedy(model, ids: Sequence[int], max_new_tokens: int, eos_id: int) -> list[int]:
    """Plain greedy decoding with a KV cache (transformers' generate)."""
    import torch
    with torch.inference_mode():
        input_ids = torch.tensor([list(ids)])
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                             do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=eos_id, pad_token_id=model.config.pad_token_id)
    return out[0, len(ids):].tolist()


def speculative_greedy(draft, target, ids: Sequence[int], k: int, max_new_tokens: int,
                       eos_id: int) -> tuple[list[int], int, int, int]:
    """Reference greedy speculation, no cache: (tokens, accepted, rejections, cycles).

    Each cycle the draft proposes up to ``k`` tokens greedily; the target scores
    them in one pass and keeps the longest prefix that matches its own argmax,
    then adds its own token (the correction after a mismatch, or the bonus).
    """
    seq = list(ids)
    start = len(seq)
    accepted = rejections = cycles = 0
    while len(seq) - start < max_new_tokens and (len(seq) == start or seq[-1] != eos_id):
        room = max_new_tokens - (len(seq) - start)
        proposal: list[int] = []
        for _ in range(min(k, room)):
            token = _next_tokens(draft, seq + proposal)[-1]
            proposal.append(token)
            if token == eos_id:
                break
        verdict = _next_tokens(target, seq + proposal)[len(seq) - 1:]
        n = 0
        while n < len(proposal) and proposal[n] == verdict[n]:
            n += 1
        cycles += 1
        accepted += n
        seq += proposal[:n]
        if n < len(proposal):
            rejections += 1
            seq.append(verdict[n])
        elif proposal[-1:] != [eos_id] and len(seq) - start < max_new_tokens:
            seq.append(verdict[n])
    return seq[start:], accepted, rejections, cycles


def strip_eos(tokens: Sequence[int], eos_id: int) -> list[int]:
    tokens = list(tokens)
    return tokens[:tokens.index(eos_id)] if eos_id in tokens else tokens


def evaluate(model, tokenizer, rows: Sequence[dict], max_new_tokens: int):
    """Exact-match accuracy of the final number, and the decoded answers."""
    correct, texts = 0, []
    for row in rows:
        ids = tokenizer.encode(row["prompt"])
        out = greedy(model, ids, max_new_tokens, tokenizer.eos_token_id)
        text = tokenizer.decode(strip_eos(out, tokenizer.eos_token_id), skip_special_tokens=True)
        texts.append(text)
        correct += final_number(text) == row["answer"]
    return correct / max(1, len(rows)), texts


def acceptance(draft, target, tokenizer, rows: Sequence[dict], k: int, max_new_tokens: int,
               check_lossless: bool = True):
    accepted = rejections = cycles = tokens = 0
    for row in rows:
        ids = tokenizer.encode(row["prompt"])
        out, a, r, c = speculative_greedy(draft, target, ids, k, max_new_tokens,
                                          tokenizer.eos_token_id)
        if check_lossless and out != greedy(target, ids, max_new_tokens, tokenizer.eos_token_id):
            raise AssertionError(f"speculation changed the target's output on {row['id']}")
        accepted, rejections, cycles, tokens = (accepted + a, rejections + r, cycles + c,
                                                tokens + len(out))
    return {"acceptance": accepted / max(1, accepted + rejections), "accepted": accepted,
            "rejections": rejections, "cycles": cycles, "tokens": tokens,
            "tokens_per_cycle": tokens / max(1, cycles)}


def check_assisted_generation(draft, target, tokenizer, rows: Sequence[dict],
                              max_new_tokens: int) -> int:
    """transformers' assisted generation must equal plain greedy target decoding."""
    import torch
    for row in rows:
        input_ids = torch.tensor([tokenizer.encode(row["prompt"])])
        kwargs = dict(do_sample=False, max_new_tokens=max_new_tokens,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        with torch.inference_mode():
            plain = target.generate(input_ids, **kwargs)
            assisted = target.generate(input_ids, assistant_model=draft, **kwargs)
        if not torch.equal(plain, assisted):
            raise AssertionError(f"assisted generation differs from greedy on {row['id']}")
    return len(rows)


# ---------------------------------------------------------------------------
# Writing it all out
# ---------------------------------------------------------------------------

def prompt_rows(problems: Sequence[Problem], prefix: str) -> list[dict]:
    return [{"id": f"{prefix}-{i + 1}", "prompt": p.prompt, "answer": str(p.answer)}
            for i, p in enumerate(problems)]


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def save_model(model, folder: Path, tokenizer, dtype: str) -> None:
    import torch
    from transformers import GenerationConfig
    folder.mkdir(parents=True, exist_ok=True)
    model = model.to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=64)
    model.save_pretrained(folder, safe_serialization=True)
    model.to(torch.float32)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.tiny_pair",
        description=__doc__.split("\n\n")[0],
        epilog="Regenerates tokenizer, draft, target and the two prompt files; "
               "prints accuracy and greedy K=5 acceptance at the end.")
    parser.add_argument("--out", type=Path, default=Path("configs/models/tiny-arith"),
                        help="model folder to write (tokenizer/, draft/, target/)")
    parser.add_argument("--prompts-dir", type=Path, default=Path("configs/prompts"),
                        help="where arith.jsonl and arith-free.jsonl go")
    parser.add_argument("--steps", type=int, default=1500, help="target training steps")
    parser.add_argument("--draft-steps", type=int, default=200,
                        help="draft training steps (fewer: the draft is meant to be weaker)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 or 2)")
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                        help="storage dtype of the safetensors files")
    parser.add_argument("--reuse-target", action="store_true",
                        help="keep OUT/target (and its tokenizer) and retrain only the draft")
    parser.add_argument("--device", default="cpu",
                        help="training device (the shipped pair is trained on cpu)")
    parser.add_argument("--k", type=int, default=5, help="speculation depth for the acceptance")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    draft_steps = args.draft_steps
    t0 = time.perf_counter()

    held_arith, held_free = held_out_sets(args.seed, n_arith=80, n_free=40)
    arith_rows, free_rows = prompt_rows(held_arith, "arith"), prompt_rows(held_free, "free")
    corpus = training_corpus(args.seed, max(args.steps, draft_steps) * args.batch_size // 2,
                             held_arith, held_free)
    print(f"corpus: {len(corpus)} training problems; held out {len(arith_rows)} questions "
          f"and {len(free_rows)} word problems")

    tokenizer = train_tokenizer((p.prompt + p.completion for p in corpus[:20000]),
                                args.vocab_size)
    encoded = encode_examples(tokenizer, corpus)
    lengths = sorted(len(ids) for ids, _ in encoded)
    print(f"tokenizer: vocab {len(tokenizer)}, example length median {lengths[len(lengths) // 2]}"
          f" max {lengths[-1]} tokens")

    models, times = {}, {}
    roles = (("target", args.steps, 2e-3), ("draft", draft_steps, 3e-3))
    if args.reuse_target:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        saved = AutoTokenizer.from_pretrained(args.out / "tokenizer", local_files_only=True)
        if saved.get_vocab() != tokenizer.get_vocab():
            parser.error("--reuse-target: the saved tokenizer differs from this run's")
        models["target"] = AutoModelForCausalLM.from_pretrained(
            args.out / "target", local_files_only=True, dtype=torch.float32).eval()
        times["target"] = 0.0
        roles = roles[1:]
    for role, steps, lr in roles:
        model = build_model(role, tokenizer, args.seed + (1 if role == "draft" else 0))
        print(f"training {role}: {param_count(model):,} parameters, {steps} steps", flush=True)
        times[role] = train_model(model, encoded, steps, args.batch_size, lr,
                                  args.seed + 7, role, tokenizer.pad_token_id,
                                  device=args.device)
        models[role] = model

    out: Path = args.out
    tokenizer.save_pretrained(out / "tokenizer")
    for role, model in models.items():
        save_model(model, out / role, tokenizer, args.dtype)
    write_jsonl(args.prompts_dir / "arith.jsonl", arith_rows)
    write_jsonl(args.prompts_dir / "arith-free.jsonl", free_rows)

    # evaluate what was written, loaded back the way users load it
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer", local_files_only=True)
    loaded = {role: AutoModelForCausalLM.from_pretrained(out / role, local_files_only=True,
                                                         dtype=torch.float32).eval()
              for role in models}
    target, draft = loaded["target"], loaded["draft"]
    sizes = {role: (out / role / "model.safetensors").stat().st_size for role in loaded}
    results = {}
    for name, rows in (("arith", arith_rows), ("arith-free", free_rows)):
        acc_t, texts_t = evaluate(target, tokenizer, rows, args.max_new_tokens)
        acc_d, texts_d = evaluate(draft, tokenizer, rows, args.max_new_tokens)
        spec = acceptance(draft, target, tokenizer, rows, args.k, args.max_new_tokens)
        results[name] = (acc_t, acc_d, spec, texts_t, texts_d)
    checked = check_assisted_generation(draft, target, tokenizer, arith_rows[:3] + free_rows[:3],
                                        args.max_new_tokens)

    print("\n=== tiny-arith ===")
    for role in ("target", "draft"):
        print(f"{role:6s}: LlamaForCausalLM {param_count(loaded[role]):,} parameters, "
              f"{sizes[role] / 1e6:.2f} MB on disk, trained {times[role]:.0f}s")
    print(f"total safetensors: {sum(sizes.values()) / 1e6:.2f} MB; vocab {len(tokenizer)}")
    total_acc = total_rej = 0
    for name, (acc_t, acc_d, spec, texts_t, texts_d) in results.items():
        print(f"{name:10s}: accuracy target {acc_t:.1%}  draft {acc_d:.1%}  |  K={args.k} greedy "
              f"acceptance {spec['acceptance']:.3f} ({spec['accepted']} accepted, "
              f"{spec['rejections']} rejections, {spec['tokens_per_cycle']:.2f} tokens/cycle)")
        total_acc += spec["accepted"]
        total_rej += spec["rejections"]
    print(f"overall K={args.k} greedy acceptance: {total_acc / max(1, total_acc + total_rej):.3f}")
    print(f"transformers assisted generation == greedy target on {checked} prompts")
    for name, rows in (("arith", arith_rows), ("arith-free", free_rows)):
        _, _, _, texts_t, texts_d = results[name]
        for i in range(2):
            print(f"--- {rows[i]['id']}: {rows[i]['prompt']!r}\n  target:{texts_t[i]!r}\n"
                  f"  draft: {texts_d[i]!r}")
    print(f"total wall time {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
