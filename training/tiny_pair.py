"""Train the small draft/target pair that ships with the project (``tiny-arith``).

Everything is generated here, offline and seeded, on the CPU:

* a corpus of readable English arithmetic (``training.arith_task``), every
  example ending in EOS;
* one shared byte-level BPE tokenizer (``tokenizers`` library, digits split
  one per token), saved as a ``PreTrainedTokenizerFast`` that prepends BOS;
* two ``LlamaForCausalLM`` models built from configs, a ~3M-parameter target
  and a ~0.1M-parameter draft, trained with the loss on the answers;
* the held-out prompt files ``arith.jsonl`` (plain questions) and
  ``arith-free.jsonl`` (word problems); none of their questions occur in the
  training text.  Every arithmetic fact is seen in training, inside other
  questions: the models memorise facts, they do not learn an algorithm, and
  the target's larger capacity is what makes it the more accurate.

At the end the script loads what it wrote through the agents' ``hf`` backend
and measures, and prints, the exact-match accuracy of both models on the
held-out prompts (scored as runs score it, ``validation.task_accuracy``) and the
per-token acceptance of K=5 greedy speculative decoding (accepted /
(accepted + rejections)) as ``cloud-spec`` runs it
(``agents.speculative.generate_locally``).  It checks that this speculation,
and transformers' own assisted generation, reproduce plain greedy decoding of
the target by transformers' ``generate``.  ``--measure-only`` does just this
on a pair already written.

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
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from agents.backends import HostModels, build_models
from agents.backends.base import TokenSequence
from agents.backends.hf import HFPairConfig
from agents.sampling import SamplingConfig
from agents.speculative import generate_locally
from nasd.analytic import acceptance_from_counts
from training.arith_task import Problem, held_out_sets, prompt_rows, training_corpus
from validation.task_accuracy import accuracy, is_correct

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
# Evaluation: the pair as the agents load and run it, against plain greedy
# ---------------------------------------------------------------------------

def load_pair(out: Path, threads: int) -> HostModels:
    """The pair in ``out`` loaded by the agents' ``hf`` backend, as the cloud holds it."""
    config = HFPairConfig(backend="hf", name=out.name, draft=str(out / "draft"),
                          target=str(out / "target"), tokenizer=str(out / "tokenizer"),
                          dtype="float32", cpu_threads=threads)
    return build_models(config, "cloud")


def greedy(model, ids: Sequence[int], max_new_tokens: int, eos_id: int) -> list[int]:
    """Plain greedy decoding with a KV cache (transformers' generate).

    The reference speculation must reproduce: transformers' code, so that it
    stays independent of the agents' code it checks.
    """
    import torch
    with torch.inference_mode():
        input_ids = torch.tensor([list(ids)])
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                             do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=eos_id, pad_token_id=model.config.pad_token_id)
    return out[0, len(ids):].tolist()


def speculate(pair: HostModels, ids: Sequence[int], k: int,
              max_new_tokens: int) -> tuple[list[int], int, int, int]:
    """Greedy speculation as ``cloud-spec`` runs it: (tokens, accepted, rejections, cycles).

    The target picks the first token; every later commit is one cycle.
    """
    sampling = SamplingConfig(decoding="greedy")
    target = TokenSequence(pair.target, ids, sampling)
    draft = TokenSequence(pair.draft, ids, sampling)
    commits = generate_locally(target, draft, k, "greedy", np.random.default_rng(0),
                               pair.target.eos_id, max_new_tokens)  # greedy draws nothing
    next(commits)
    accepted = rejections = cycles = 0
    for commit in commits:
        cycles += 1
        accepted += commit.accepted
        rejections += commit.accepted < commit.drafted
    return target.generated, accepted, rejections, cycles


def evaluate(model, pair: HostModels, rows: Sequence[dict], max_new_tokens: int):
    """Exact-match accuracy of the answer (as runs score it), and the decoded answers."""
    eos_id = pair.target.eos_id
    texts = [pair.tokenizer.decode(greedy(model, pair.tokenizer.encode(row["prompt"]),
                                          max_new_tokens, eos_id)) for row in rows]
    return accuracy(is_correct("free", row["answer"], text)
                    for row, text in zip(rows, texts)), texts


def acceptance(pair: HostModels, rows: Sequence[dict], k: int, max_new_tokens: int,
               check_lossless: bool = True):
    accepted = rejections = cycles = tokens = 0
    for row in rows:
        ids = pair.tokenizer.encode(row["prompt"])
        out, a, r, c = speculate(pair, ids, k, max_new_tokens)
        if check_lossless and out != greedy(pair.target.network, ids, max_new_tokens,
                                            pair.target.eos_id):
            raise AssertionError(f"speculation changed the target's output on {row['id']}")
        accepted, rejections, cycles, tokens = (accepted + a, rejections + r, cycles + c,
                                                tokens + len(out) - 1)
    return {"acceptance": acceptance_from_counts(accepted, rejections), "accepted": accepted,
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


def report(out: Path, arith_rows: Sequence[dict], free_rows: Sequence[dict], k: int,
           max_new_tokens: int, threads: int, times: dict[str, float] | None = None) -> None:
    """Measure the pair written to ``out`` on the held-out rows and print the figures."""
    pair = load_pair(out, threads)
    target, draft = pair.target.network, pair.draft.network
    loaded = {"target": target, "draft": draft}
    sizes = {role: (out / role / "model.safetensors").stat().st_size for role in loaded}
    results = {}
    for name, rows in (("arith", arith_rows), ("arith-free", free_rows)):
        acc_t, texts_t = evaluate(target, pair, rows, max_new_tokens)
        acc_d, texts_d = evaluate(draft, pair, rows, max_new_tokens)
        spec = acceptance(pair, rows, k, max_new_tokens)
        results[name] = (acc_t, acc_d, spec, texts_t, texts_d)
    checked = check_assisted_generation(draft, target, pair.tokenizer.tokenizer,
                                        list(arith_rows[:3]) + list(free_rows[:3]),
                                        max_new_tokens)

    print(f"\n=== {out.name} ===")
    for role in ("target", "draft"):
        trained = f", trained {times[role]:.0f}s" if times else ""
        print(f"{role:6s}: LlamaForCausalLM {param_count(loaded[role]):,} parameters, "
              f"{sizes[role] / 1e6:.2f} MB on disk{trained}")
    print(f"total safetensors: {sum(sizes.values()) / 1e6:.2f} MB; "
          f"vocab {len(pair.tokenizer.tokenizer)}")
    total_acc = total_rej = 0
    for name, (acc_t, acc_d, spec, texts_t, texts_d) in results.items():
        print(f"{name:10s}: accuracy target {acc_t:.1%}  draft {acc_d:.1%}  |  K={k} greedy "
              f"acceptance {spec['acceptance']:.3f} ({spec['accepted']} accepted, "
              f"{spec['rejections']} rejections, {spec['tokens_per_cycle']:.2f} tokens/cycle)")
        total_acc += spec["accepted"]
        total_rej += spec["rejections"]
    print(f"overall K={k} greedy acceptance: {acceptance_from_counts(total_acc, total_rej):.3f}")
    print(f"speculation == greedy target on {len(arith_rows) + len(free_rows)} prompts; "
          f"transformers assisted generation == greedy target on {checked}")
    for name, rows in (("arith", arith_rows), ("arith-free", free_rows)):
        _, _, _, texts_t, texts_d = results[name]
        for i in range(2):
            print(f"--- {rows[i]['id']}: {rows[i]['prompt']!r}\n  target:{texts_t[i]!r}\n"
                  f"  draft: {texts_d[i]!r}")


# ---------------------------------------------------------------------------
# Writing it all out
# ---------------------------------------------------------------------------

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


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
    parser.add_argument("--measure-only", action="store_true",
                        help="train and write nothing: measure the pair in OUT on the prompt "
                             "files in --prompts-dir")
    args = parser.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    draft_steps = args.draft_steps
    t0 = time.perf_counter()
    if args.measure_only:
        report(args.out, read_jsonl(args.prompts_dir / "arith.jsonl"),
               read_jsonl(args.prompts_dir / "arith-free.jsonl"), args.k, args.max_new_tokens,
               args.threads)
        print(f"total wall time {time.perf_counter() - t0:.0f}s")
        return 0

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

    # measure what was written, loaded back the way the agents load it
    report(out, arith_rows, free_rows, args.k, args.max_new_tokens, args.threads, times)
    print(f"total wall time {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
