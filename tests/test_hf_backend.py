"""The ``hf`` backend on real transformers models (tiny, random, saved to disk).

Greedy speculation through every codec (K = 1 and 10) is token-identical to
the target's own greedy decoding and to transformers' assisted generation;
sampled speculation follows the target's distribution (and a broken verifier
is caught); the KV cache is fed only new tokens and cropped on rejection.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import chisquare

from agents.backends import build_models
from agents.backends.base import TokenSequence
from agents.backends.hf import HFPairConfig
from agents.codecs import CODEC_NAMES, decode_target_row, encode_target_row, get_codec
from agents.sampling import SamplingConfig
from agents.speculative import choose_token, speculation_step, verify_drafts
from tests.hf_fixtures import CHARACTERS, save_pair

pytest.importorskip("transformers")
REPO = Path(__file__).resolve().parent.parent


def pair_config(paths: dict[str, str]) -> HFPairConfig:
    return HFPairConfig(backend="hf", draft=paths["draft"], target=paths["target"],
                        tokenizer=paths["tokenizer"])


@pytest.fixture(scope="module")
def close_pair(tmp_path_factory):
    """Draft close to the target: high acceptance, for greedy equality."""
    return build_models(pair_config(save_pair(tmp_path_factory.mktemp("close"), noise=0.004)),
                        "cloud")


@pytest.fixture(scope="module")
def loose_pair(tmp_path_factory):
    """Draft far enough from the target that rejections and residuals matter."""
    return build_models(pair_config(save_pair(tmp_path_factory.mktemp("loose"), noise=0.05)),
                        "cloud")


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(CHARACTERS[:36]), size=rng.integers(3, 12))) for _ in range(n)]


def speculate(models, prompt_ids, n_new, k, codec_name, sampling, rng, first_token=None,
              max_cycles=None):
    """Edge and cloud cycles in one process through ``speculation_step``, the edge's own cycle:
    each draft message and each target row the cloud returns through the codec's wire form.

    ``first_token`` fixes the token the cloud would sample from its prefill,
    so a test can look at one context's cycle."""
    codec = get_codec(codec_name)
    width = models.target.vocab_size
    target = TokenSequence(models.target, prompt_ids, sampling)
    draft = TokenSequence(models.draft, prompt_ids, sampling)
    draft.prefill()
    first = choose_token(target.next_probs(), sampling.decoding, rng)
    first = first if first_token is None else first_token
    target.extend([first])
    draft.extend([first])

    def over_the_wire(drafts):
        payload = codec.decode(codec.encode(drafts.ids, drafts.model_rows), width)
        verification = verify_drafts(target, payload, sampling.decoding, rng, None)
        row = verification.residual_row
        return verification.verdict, (None if row is None
                                      else decode_target_row(encode_target_row(row), width))

    cycles = []
    while len(target.generated) < n_new and len(cycles) != max_cycles:
        drafts, verdict = speculation_step(draft, min(k, n_new - len(target.generated) - 1),
                                           sampling.decoding, rng, None, codec, over_the_wire)
        target.extend(draft.tokens[len(target.tokens):])   # q-scalar: the edge's correction
        assert draft.tokens == target.tokens
        cycles.append((len(drafts.ids), verdict.accepted))
    return target.generated, cycles


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 10])   # the shortest block and a long one
def test_greedy_is_identical_to_transformers_for_every_codec(close_pair, k):
    import torch
    tokenizer, greedy = close_pair.tokenizer, SamplingConfig()
    target_network, draft_network = close_pair.target.network, close_pair.draft.network
    for network in (target_network, draft_network):  # run the full 20 tokens, as the loop does
        network.generation_config.eos_token_id = None
    accepted = rejections = 0
    for index, text in enumerate(prompts(25)):
        ids = tokenizer.encode(text)
        inputs = torch.tensor([ids])
        reference = target_network.generate(inputs, do_sample=False, max_new_tokens=20,
                                            pad_token_id=0)[0, len(ids):].tolist()
        if index < 10:  # transformers' own assisted generation agrees (its guarantee, checked)
            assisted = target_network.generate(inputs, do_sample=False, max_new_tokens=20,
                                               assistant_model=draft_network,
                                               pad_token_id=0)[0, len(ids):].tolist()
            assert assisted == reference
        for codec in CODEC_NAMES:
            output, cycles = speculate(close_pair, ids, 20, k, codec, greedy,
                                       np.random.default_rng(index))
            assert output == reference, (codec, text)
            accepted += sum(a for _, a in cycles)
            rejections += sum(a < d for d, a in cycles)
    assert accepted / (accepted + rejections) > 0.4  # speculation committed several tokens a cycle


def first_cycle_tokens(models, codec, sampling, n_samples, prompt_ids, first):
    """The first token each of ``n_samples`` K=3 cycles commits after ``prompt + [first]``."""
    counts = {}
    for seed in range(n_samples):
        output, cycles = speculate(models, prompt_ids, 5, 3, codec, sampling,
                                   np.random.default_rng(seed), first_token=first, max_cycles=1)
        assert cycles[0][0] == 3
        counts[output[1]] = counts.get(output[1], 0) + 1
    return counts


def chi_square_against_target(models, counts, sampling, context_ids):
    expected = TokenSequence(models.target, context_ids, sampling).next_probs().astype(float)
    n = sum(counts.values())
    assert set(counts) <= set(np.flatnonzero(expected > 0).tolist())
    order = np.argsort(-expected)
    big = [t for t in order if expected[t] * n >= 5]
    tail = [t for t in order if expected[t] * n < 5 and expected[t] > 0]
    observed = [counts.get(t, 0) for t in big] + [sum(counts.get(t, 0) for t in tail)]
    wanted = [expected[t] * n for t in big] + [expected[tail].sum() * n]
    if not tail:
        observed, wanted = observed[:-1], wanted[:-1]
    wanted = np.array(wanted) * sum(observed) / sum(wanted)
    return chisquare(observed, wanted).pvalue


def fixed_first_token(models, prompt_ids, sampling):
    """Condition on the first token (the cloud samples it from the target directly)."""
    return int(np.argmax(TokenSequence(models.target, prompt_ids, sampling).next_probs()))


@pytest.mark.slow
# q-scalar: the edge samples the correction; topk: the draft samples its truncated rows.  Dense
# rows (full16/full32) verify in the cloud from the rows alone: the synthetic pair's sampled
# test (test_speculative) covers them, greedy full rows test_shipped_pair_lossless
@pytest.mark.parametrize("codec", ["q-scalar", "topk"])
def test_sampled_speculation_follows_the_target(loose_pair, codec):
    sampling = SamplingConfig(decoding="sampling", temperature=0.8, top_k=20)
    prompt_ids = loose_pair.tokenizer.encode("abc")
    first = fixed_first_token(loose_pair, prompt_ids, sampling)
    counts = first_cycle_tokens(loose_pair, codec, sampling, 2000, prompt_ids, first)
    assert chi_square_against_target(loose_pair, counts, sampling, prompt_ids + [first]) > 0.01


@pytest.mark.slow
def test_a_verifier_that_corrects_from_p_is_caught(loose_pair, monkeypatch):
    sampling = SamplingConfig(decoding="sampling", temperature=0.8, top_k=20)
    prompt_ids = loose_pair.tokenizer.encode("abc")
    first = fixed_first_token(loose_pair, prompt_ids, sampling)
    monkeypatch.setattr("agents.verification.residual_distribution",
                        lambda p, q: np.asarray(p, dtype=float) / np.sum(p))
    counts = first_cycle_tokens(loose_pair, "full32", sampling, 2000, prompt_ids, first)
    monkeypatch.undo()
    assert chi_square_against_target(loose_pair, counts, sampling, prompt_ids + [first]) < 0.01


def test_cache_is_fed_only_new_tokens_and_cropped_on_rejection(close_pair):
    sequence = TokenSequence(close_pair.target, [5, 6, 7, 8], SamplingConfig())
    session = sequence.model_session
    sequence.prefill()
    assert session.processed == session.cache.get_seq_length() == 4
    sequence.extend([9, 10, 11])
    rows = sequence.score_last(2)
    assert rows.shape == (3, close_pair.target.vocab_size)
    assert session.cache.get_seq_length() == 7
    sequence.rewind(5)
    assert session.processed == session.cache.get_seq_length() == 5
    sequence.extend([12])
    again = sequence.next_probs()
    fresh = TokenSequence(close_pair.target, [5, 6, 7, 8, 9, 12], SamplingConfig()).next_probs()
    np.testing.assert_allclose(again, fresh, atol=1e-5)


def test_sampling_settings_shape_the_rows(close_pair):
    row = lambda sampling: TokenSequence(close_pair.target, [5, 6, 7],  # noqa: E731
                                         sampling).next_probs()
    plain, top3 = row(SamplingConfig(decoding="sampling")), \
        row(SamplingConfig(decoding="sampling", top_k=3))
    assert np.count_nonzero(top3) == 3 and set(np.flatnonzero(top3)) == set(np.argsort(-plain)[:3])
    nucleus = row(SamplingConfig(decoding="sampling", top_p=0.5))
    kept = np.flatnonzero(nucleus)
    assert plain[kept].sum() >= 0.5 and plain[kept].sum() - plain[kept].min() < 0.5
    cold = row(SamplingConfig(decoding="sampling", temperature=0.5))
    assert cold.max() > plain.max() and np.argmax(cold) == np.argmax(plain)


def test_missing_weights_are_a_one_line_error(tmp_path):
    pair_file = tmp_path / "pair.yaml"
    pair_file.write_text(yaml.safe_dump({"backend": "hf", "draft": "no/such-draft",
                                         "target": str(tmp_path / "missing-target")}))
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", "--model-pair",
                             str(pair_file), "--job", "smoke", "--results", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "not available" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_every_codec_runs_through_the_agents(tmp_path):
    """The sampled wire path of the codecs that sample on the edge: q-scalar's edge-side
    correction from a sparse row, topk's truncated rows, K = 0 tail cycles.  Greedy runs of
    every codec through the agents are ``test_shipped_pair_lossless``'s; sampled dense rows
    the synthetic pair's (``test_speculative``, ``test_draft_ahead``)."""
    import io

    from rich.console import Console

    from orchestrator.config.run_spec import RunSpec
    from orchestrator.lifecycle.run import run
    paths = save_pair(tmp_path / "pair", noise=0.004)
    pair_file = tmp_path / "pair.yaml"
    pair_file.write_text(yaml.safe_dump({"backend": "hf", "name": "random-tiny", **paths}))
    for codec in ("q-scalar", "topk"):
        spec = RunSpec.load("smoke", "rtt010-bw010", "sim", job_overrides={
            "model_pair": str(pair_file), "strategies": ["cloud-only", "fixed-k"], "k_values": [4],
            "decoding": "sampling", "top_k": 12, "codec": codec, "max_new_tokens": 13})
        folder, summary = run(spec, tmp_path / codec, Console(file=io.StringIO()))
        row = summary.set_index("label").loc["fixed-k4"]
        assert 0 < row["per_token_acceptance"] < 1, codec
        queries = [json.loads(line) for line in (folder / "queries.jsonl").read_text().splitlines()]
        assert len(queries) == 4
        assert all(q["n_tokens"] == 13 or q["finished_by_eos"] for q in queries), codec
