"""The shipped pair through the real agents: lossless for every codec and K.

Greedy, fp32, sim mode at RTT 0: for every payload codec, fixed-K output
equals cloud-only output token for token (``ids``: K in {1, 3, 5, 10} on 20
prompts; the codecs that carry probabilities on fewer, as ``CODEC_PLAN``
says: greedy verification reads ids alone, so what they add is their own
encoding, and full rows cost a vocabulary per position in sim time),
cloud-only equals transformers' own greedy ``generate``, and the target's
accuracy survives speculation while edge-only's is the draft's; so does the
output of the adaptive K policies (nasd, hf-heuristic, bandit), and of
draft-ahead (the transformers path of the deferred bonus: the target row kept
from the block before, the KV cache rolled back over dropped blocks, answers
that end on EOS inside a pipelined block).
"""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from agents.codecs import CODEC_NAMES
from orchestrator.config.run_spec import RunSpec
from orchestrator.lifecycle.run import run

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

PROMPTS = 20
K_VALUES = (1, 3, 5, 10)
# per codec: (prompts, K values) of its lossless check
CODEC_PLAN = {"ids": (PROMPTS, K_VALUES), "q-scalar": (6, K_VALUES), "topk": (6, K_VALUES),
              "full16": (4, (1, 5)), "full32": (4, (1, 5))}


def run_codec(codec: str, strategies: list[str], root, prompts: int = PROMPTS,
              k_values=K_VALUES, draft_ahead: int = 0):
    spec = RunSpec.load("default", "rtt000-bw100", "sim", job_overrides={
        "model_pair": "tiny-arith", "prompts": "arith", "max_queries": prompts,
        "strategies": strategies, "k_values": list(k_values), "decoding": "greedy",
        "codec": codec, "max_new_tokens": 32, "draft_ahead": draft_ahead})
    folder, summary = run(spec, root, Console(file=io.StringIO()))
    queries = [json.loads(line) for line in (folder / "queries.jsonl").read_text().splitlines()]
    return spec, summary.set_index("label"), queries


def test_every_codec_has_a_plan():
    assert set(CODEC_PLAN) == set(CODEC_NAMES)


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_every_codec_and_k_is_token_identical_to_cloud_only(codec, tmp_path):
    strategies = ["cloud-only", "fixed-k"] + (["edge-only"] if codec == "ids" else [])
    prompts, k_values = CODEC_PLAN[codec]
    spec, summary, queries = run_codec(codec, strategies, tmp_path, prompts, k_values)
    for k in k_values:
        row = summary.loc[f"fixed-k{k}"]
        assert row["queries"] == prompts and row["lossless"] == 1.0, (codec, k)
        assert row["accuracy"] == summary.loc["cloud-only", "accuracy"]
    if codec == "ids":
        assert 0.5 <= summary.loc["fixed-k5", "per_token_acceptance"] <= 0.9
        assert summary.loc["cloud-only", "accuracy"] >= summary.loc["edge-only", "accuracy"] + 0.2
        check_against_transformers(spec, queries)


def check_against_transformers(spec, queries):
    """Cloud-only through the agents equals target.generate; assisted generation agrees."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    pair = spec.model_pair
    tokenizer = AutoTokenizer.from_pretrained(pair.tokenizer, local_files_only=True)
    target = AutoModelForCausalLM.from_pretrained(pair.target, local_files_only=True)
    draft = AutoModelForCausalLM.from_pretrained(pair.draft, local_files_only=True)
    outputs = {q["query_id"]: q["output_ids"] for q in queries if q["strategy"] == "cloud-only"}
    for prompt in spec.prompts[:PROMPTS]:
        inputs = torch.tensor([tokenizer.encode(prompt.prompt)])
        plain = target.generate(inputs, do_sample=False, max_new_tokens=32)
        assisted = target.generate(inputs, do_sample=False, max_new_tokens=32,
                                   assistant_model=draft)
        assert plain[0, inputs.shape[1]:].tolist() == outputs[prompt.id]
        assert assisted.tolist() == plain.tolist()


def test_the_default_job_drafts_every_k_it_lists_to_its_full_length(tmp_path):
    """Its answers are long enough that no two K values of the default job run alike."""
    spec = RunSpec.load("default", "rtt000-bw100", "sim",
                        job_overrides={"strategies": ["fixed-k"], "max_queries": 3})
    folder, _ = run(spec, tmp_path, Console(file=io.StringIO()))
    cycles = [json.loads(line) for line in (folder / "cycles.jsonl").read_text().splitlines()]
    for k in spec.job.k_values:
        drafted = [c["k"] for c in cycles if c["label"] == f"fixed-k{k}"]
        assert max(drafted) == k and drafted.count(k) >= 3, (k, drafted)
    # a block the draft ended with its EOS is marked; kept whole it ends the answer, no bonus
    queries = {(q["label"], q["query_id"]): q for q in map(
        json.loads, (folder / "queries.jsonl").read_text().splitlines())}
    last = {(c["label"], c["query_id"]): c["cycle"] for c in cycles}
    ended = [c for c in cycles if c["draft_eos"] and c["accepted"] == c["k"]]
    assert ended
    for c in ended:
        assert c["tokens"] == c["k"] and c["cycle"] == last[(c["label"], c["query_id"])]
        assert queries[(c["label"], c["query_id"])]["finished_by_eos"]


def test_adaptive_k_policies_are_token_identical_to_cloud_only(tmp_path):
    """nasd, hf-heuristic and bandit choose K per cycle; the output stays the target's."""
    _, summary, queries = run_codec("ids", ["cloud-only", "nasd", "hf-heuristic", "bandit"],
                                    tmp_path, prompts=10)
    reference = {q["query_id"]: q["output_ids"] for q in queries if q["strategy"] == "cloud-only"}
    for strategy in ("nasd", "hf-heuristic", "bandit"):
        outputs = {q["query_id"]: q["output_ids"] for q in queries if q["strategy"] == strategy}
        assert outputs == reference, strategy
        assert summary.loc[strategy, "accuracy"] == summary.loc["cloud-only", "accuracy"]


@pytest.mark.parametrize("codec, depth", [("ids", 1), ("q-scalar", 2)])
def test_draft_ahead_is_token_identical_to_cloud_only(codec, depth, tmp_path):
    _, summary, queries = run_codec(codec, ["cloud-only", "fixed-k", "nasd"], tmp_path,
                                    prompts=5, k_values=(1, 4), draft_ahead=depth)
    for label in ("fixed-k1", "fixed-k4", "nasd"):
        row = summary.loc[f"{label}+ahead{depth}"]
        assert row["lossless"] == 1.0 and row["draft_ahead"] == depth, label
    ahead = [q for q in queries if q["draft_ahead"]]
    assert sum(q["ahead_blocks_kept"] for q in ahead) > 0
    assert sum(q["ahead_blocks_dropped"] for q in ahead) > 0
    assert any(q["finished_by_eos"] for q in ahead)
