"""The latency model (nasd/latency): a transformer's work per stage against transformers'
own models, the roofline bound and the device files, the roofline-shaped fit recovering a
known model and judged group-wise, recalibration to other hardware, the estimator's one
prediction function, and `orchestrator latency` measuring and fitting (a tiny campaign, and
the committed tables)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nasd.latency.estimator import LatencyEstimator, fit_estimator, stage_seconds
from nasd.latency.models import (
    RooflineParams,
    bound_check,
    errors,
    evaluate,
    fit_roofline,
    held_out,
)
from nasd.latency.roofline import Device, clamp_to_bound, roofline_bound
from nasd.latency.stages import (
    STAGES,
    ModelShape,
    forward_work,
    library_calls,
    required_columns,
    shape_columns,
    stage_frames,
    stage_work,
)
from nasd.latency.transfer import (
    PRIOR_SIGMAS,
    choose_prior_sigma,
    curve_summary,
    fit_affine,
    recalibrate,
    select,
    transfer_curve,
)
from orchestrator.config.loading import (
    ConfigError,
    available,
    load_device,
    load_latency_table,
)

REPO = Path(__file__).resolve().parent.parent
MEASURED = REPO / "benchmarks" / "measured" / "latency"
HOST = Device(name="host", kind="cpu", memory_gib=16, memory_bandwidth_gbps=25.0,
              cache={"bytes": 32 << 20, "bandwidth_gbps": 100.0},
              peak_tflops={"float32": 0.1, "bfloat16": 0.2},
              sources=[{"what": "all", "cite": "a test"}])
TINY = ModelShape(layers=4, hidden=224, heads=4, kv_heads=4, head_dim=56, intermediate=640,
                  vocab=511)
# Qwen2.5-7B's published config.json
QWEN_7B = ModelShape.from_config({"num_hidden_layers": 28, "hidden_size": 3584,
                                  "num_attention_heads": 28, "num_key_value_heads": 4,
                                  "intermediate_size": 18944, "vocab_size": 152064,
                                  "tie_word_embeddings": False})


def params(overhead_s, per_layer_s, eta_bw, eta_flops, sharpness, per_block_s=1e-9,
           per_activation_s=1e-10, kv_factor=2.0) -> RooflineParams:
    return RooflineParams(overhead_s=overhead_s, per_layer_s=per_layer_s,
                          per_activation_s=per_activation_s, per_block_s=per_block_s,
                          eta_bw=eta_bw, eta_flops=eta_flops, kv_factor=kv_factor,
                          sharpness=sharpness)


TRUE = {"edge_prefill": params(3e-4, 2e-4, 0.2, 0.5, 2.0),
        "draft_token": params(2e-4, 1e-4, 0.25, 0.05, 8.0, per_block_s=4e-4),
        "cloud_prefill": params(5e-4, 3e-4, 0.2, 0.6, 2.0),
        "verify": params(6e-4, 2e-4, 0.2, 0.3, 4.0),
        "decode": params(3e-4, 1e-4, 0.22, 0.05, 8.0)}
SHAPES = [(64, 2, 2, 2), (128, 2, 2, 2), (128, 4, 2, 1), (192, 3, 3, 3), (256, 4, 4, 4),
          (320, 4, 5, 5), (384, 6, 6, 6), (512, 6, 8, 4)]


def shape(hidden, layers, heads, kv_heads) -> ModelShape:
    return ModelShape(layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
                      head_dim=hidden // heads, intermediate=round(hidden * 8 / 3 / 32) * 32,
                      vocab=511)


def synthetic_table(truth: dict[str, RooflineParams], n: int, seed: int, dtype="float32",
                    noise=0.0, device: Device = HOST) -> pd.DataFrame:
    """A measured table whose stage times are ``truth``'s on ``device`` (times lognormal
    noise)."""
    rng = np.random.default_rng(seed)
    rows = []
    for sample in range(n):
        a, b = sorted(rng.choice(len(SHAPES), 2, replace=False))
        row = {"sample": sample, "campaign": f"synthetic-{dtype}", "dtype": dtype, "threads": 1,
               "prompt_tokens": int(rng.choice([8, 32, 64, 128])),
               "context_tokens": int(rng.choice([8, 64, 128, 256])),
               "k": int(rng.choice([1, 3, 5, 8, 15])), "load_1m": 1.0,
               "bytes_up": 200, "bytes_down": 60}
        for role, index in (("draft", a), ("target", b)):
            own = shape(*SHAPES[index])
            row |= dict(zip(shape_columns(role), (own.layers, own.hidden, own.heads,
                                                  own.kv_heads, own.head_dim, own.intermediate,
                                                  own.vocab, own.tied_embeddings)))
        rows.append(row | {f"{stage}_s": 1.0 for stage in STAGES})
    table = pd.DataFrame(rows)
    for stage, frame in stage_frames(table).items():
        table[f"{stage}_s"] = (truth[stage].seconds(device, frame)
                               * np.exp(noise * rng.standard_normal(len(frame))))
    return table


# --------------------------------------------------------------------------- work


def test_parameters_are_what_transformers_counts():
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM
    config = json.loads((REPO / "configs/models/tiny-arith/target/config.json").read_text())
    for update in ({}, {"num_key_value_heads": 2}, {"tie_word_embeddings": False}):
        with torch.device("meta"):     # shapes only: no weights to initialize
            network = LlamaForCausalLM(LlamaConfig(**(config | update)))
        counted = sum(p.numel() for p in network.parameters())
        assert ModelShape.from_config(network.config.to_dict()).parameters == counted


def test_the_kv_copies_counted_are_the_ones_transformers_makes(monkeypatch):
    """A grouped-KV model repeats its cache for every query head in a verification (several
    tokens onto a cache), not in a prefill or a one-token step: the work counts exactly the
    bytes ``repeat_kv`` writes."""
    torch = pytest.importorskip("torch")
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
    from transformers.integrations import sdpa_attention
    grouped = ModelShape(layers=2, hidden=128, heads=4, kv_heads=1, head_dim=32,
                         intermediate=256, vocab=511)
    network = LlamaForCausalLM(LlamaConfig(
        hidden_size=grouped.hidden, num_attention_heads=grouped.heads,
        num_key_value_heads=grouped.kv_heads, intermediate_size=grouped.intermediate,
        num_hidden_layers=grouped.layers, vocab_size=grouped.vocab,
        attn_implementation="sdpa")).eval()
    written = []
    repeat_kv = sdpa_attention.repeat_kv

    def counting(states, n_rep):
        out = repeat_kv(states, n_rep)
        written.append(out.numel() * out.element_size() if n_rep > 1 else 0)
        return out

    monkeypatch.setattr(sdpa_attention, "repeat_kv", counting)
    cache = DynamicCache()
    passes = {"cloud_prefill": dict(prompt_tokens=20), "decode": dict(context_tokens=21),
              "verify": dict(context_tokens=22, k=4)}
    with torch.no_grad():
        for stage, (tokens, args) in zip(passes, ((20, passes["cloud_prefill"]),
                                                  (1, passes["decode"]),
                                                  (5, passes["verify"]))):
            written.clear()
            network(torch.arange(tokens)[None], past_key_values=cache, use_cache=True)
            work = stage_work(stage, grouped, "float32", **args)
            assert sum(written) == pytest.approx(work.kv_repeat_bytes), stage
    assert work.kv_repeat_bytes == pytest.approx(4 * work.kv_bytes)    # heads / kv_heads
    assert stage_work("verify", TINY, "float32", context_tokens=22, k=4).kv_repeat_bytes == 0


def test_the_library_calls_counted_are_the_matmuls_pytorch_hands_to_onednn(capfd):
    """At bfloat16 PyTorch's CPU runtime runs a linear layer of more than 16^3 multiply-adds
    through oneDNN, at a dispatch cost of its own: the work counts exactly the matmuls
    oneDNN reports executing, in a prefill, a decoding step and a verification, for a shape
    whose attention projections stay below the threshold at one row and one whose grouped
    k and v projections do."""
    torch = pytest.importorskip("torch")
    import ctypes

    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
    libc = ctypes.CDLL(None)
    counted = {}
    for own in (ModelShape(2, 64, 2, 2, 32, 160, 511), ModelShape(2, 128, 4, 1, 32, 352, 511)):
        network = LlamaForCausalLM(LlamaConfig(
            hidden_size=own.hidden, num_attention_heads=own.heads,
            num_key_value_heads=own.kv_heads, intermediate_size=own.intermediate,
            num_hidden_layers=own.layers, vocab_size=own.vocab,
            attn_implementation="sdpa")).eval().to(torch.bfloat16)
        cache = DynamicCache()
        for tokens in (5, 1, 3):       # a prefill, then one token, then three onto the cache
            capfd.readouterr()
            with torch.no_grad(), torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                network(torch.arange(tokens)[None], past_key_values=cache, use_cache=True)
            libc.fflush(None)          # oneDNN's lines are C stdio's, buffered
            executed = sum(",exec,cpu,matmul," in line
                           for line in capfd.readouterr().out.splitlines())
            if executed == 0:
                pytest.skip("this CPU's PyTorch runs no bfloat16 matmul through oneDNN")
            assert executed == library_calls(own, tokens), (own.hidden, tokens)
            counted[own.hidden, tokens] = executed
    # one row: hidden 64's q, k, v, o (64 x 64) stay below, hidden 128's grouped k, v do
    assert counted == {(64, 5): 15, (64, 1): 7, (64, 3): 15,
                       (128, 5): 15, (128, 1): 11, (128, 3): 15}
    assert stage_work("decode", TINY, "float32", context_tokens=9).library_calls == 29


def test_verify_moves_the_same_weights_at_every_k_and_computes_in_proportion():
    works = [stage_work("verify", TINY, "float32", context_tokens=100, k=k) for k in (1, 4, 15)]
    weights = TINY.parameters * 4
    assert all(weights < w.bytes < weights * 1.1 for w in works)   # the KV cache adds a little
    assert works[2].flops / works[0].flops == pytest.approx(16 / 2, rel=0.05)
    decode = stage_work("decode", TINY, "float32", context_tokens=100)
    assert decode == forward_work(TINY, 1, 99, 4)
    # a drafted token of a block of K sees on average (K - 1) / 2 more cached tokens
    # and carries 1/K of the block's fixed cost
    assert (stage_work("draft_token", TINY, "float32", context_tokens=100, k=9)
            == replace(forward_work(TINY, 1, 99 + 4, 4), blocks=1 / 9))
    assert stage_work("decode", TINY, "bfloat16", context_tokens=100).bytes == pytest.approx(
        decode.bytes / 2)
    with pytest.raises(ValueError, match="unknown stage"):
        stage_work("network", TINY, "float32")
    with pytest.raises(ValueError, match="unknown dtype"):
        stage_work("decode", TINY, "int3")


# --------------------------------------------------------------------------- roofline


def test_the_bound_is_the_slower_of_memory_and_compute_at_the_peaks():
    prefill = stage_work("cloud_prefill", QWEN_7B, "bfloat16", prompt_tokens=2048)
    decode = stage_work("decode", QWEN_7B, "bfloat16", context_tokens=2048)
    h100 = load_device("h100-sxm")
    assert roofline_bound(h100, decode, "bfloat16") == pytest.approx(decode.bytes / 3.35e12)
    assert roofline_bound(h100, prefill, "bfloat16") == pytest.approx(prefill.flops / 989.5e12)
    # a 7B decoding step on an H100 cannot beat ~4.3 ms (14 GB of bf16 weights at 3.35 TB/s)
    assert 4.0e-3 < roofline_bound(h100, decode, "bfloat16") < 5e-3
    # a working set in the cache reads at the cache's bandwidth
    small = stage_work("decode", TINY, "float32", context_tokens=10)
    assert roofline_bound(HOST, small, "float32") == pytest.approx(small.bytes / 100e9)
    clamped, flagged = clamp_to_bound([1.0, 3.0], [2.0, 2.0])
    assert clamped.tolist() == [2.0, 3.0] and flagged.tolist() == [True, False]


def test_every_shipped_device_file_loads_and_cites_its_sources():
    names = available("devices")
    for needed in ("jetson-orin-nano", "raspberry-pi-5", "a100-sxm", "h100-sxm", "h200-sxm",
                   "dev-epyc-2c", "dev-xeon-2c"):
        assert needed in names
    for name in names:
        device = load_device(name)
        assert device.sources and all(source.cite for source in device.sources)
        assert device.peak_flops("float32") > 0
    assert load_device("dev-epyc-2c").measured is not None
    # a CPU without bfloat16 instructions computes it at the float32 rate
    pi = load_device("raspberry-pi-5")
    assert pi.peak_flops("bfloat16") == pi.peak_flops("float32")


@pytest.mark.parametrize("change, field", [
    ({"memory_bandwidth_gbps": 0}, "memory_bandwidth_gbps"),
    ({"peak_tflops": {"float32": 1, "int4": 9}}, "unknown dtype 'int4'"),
    ({"peak_tflops": {"bfloat16": 1}}, "float32 is required"),
    ({"sources": []}, "sources"),
    ({"kind": "fpga"}, "kind"),
    ({"library_call_us": {"int4": 1}}, "library_call_us: unknown dtype 'int4'"),
    ({"library_call_us": {"bfloat16": -1}}, r"library_call_us.bfloat16: must be >= 0"),
])
def test_a_bad_device_file_is_one_config_error_naming_the_field(tmp_path, change, field):
    import yaml
    data = yaml.safe_load((REPO / "configs/devices/h100-sxm.yaml").read_text()) | change
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=field) as error:
        load_device(str(path))
    assert "\n" not in str(error.value) and str(path) in str(error.value)


# --------------------------------------------------------------------------- fits


def test_the_roofline_fit_recovers_a_known_model_and_predicts_unseen_shapes():
    table = synthetic_table(TRUE, 100, seed=1)
    frames = stage_frames(table)
    for stage in ("draft_token", "verify"):
        fitted = fit_roofline(frames[stage], HOST)
        predicted = fitted.seconds(HOST, frames[stage])
        assert errors(frames[stage]["seconds"], predicted)["mape_pct"] < 1.0
        judged = held_out(frames[stage], HOST, folds=4, trees=10).predictions
        assert errors(judged["seconds"], judged["roofline"])["mape_pct"] < 2.0
        # held out by shape: no fold's test groups were in its training
        assert judged["group"].nunique() == frames[stage]["group"].nunique()
        assert bound_check(judged["seconds"], judged["bound"])["violations"] == 0


def test_a_devices_library_call_cost_predicts_a_shape_whose_small_layers_skip_it():
    """Where the runtime's GEMM library costs a fixed time per call, a draft of hidden 64
    (its attention projections below the threshold at one row: 7 calls, not 15) runs its
    layers faster than the other shapes' layer count says.  Held out, it is predicted from
    the device's measured cost per call, and missed by a fit that has to guess it."""
    measured = HOST.model_copy(update={"library_call_us": {"bfloat16": 30.0}})
    frame = stage_frames(synthetic_table(TRUE, 120, seed=3, dtype="bfloat16",
                                         device=measured))["draft_token"]
    small = (frame["group"] == "L2-h64-kv2").to_numpy()
    assert set(frame["library_calls"][small]) == {7} and frame["library_calls"].min() == 7
    judged = {name: held_out(frame, device, folds=4, trees=10).predictions
              for name, device in (("measured", measured), ("unknown", HOST))}
    mape = {name: errors(rows["seconds"][small], rows["roofline"][small])["mape_pct"]
            for name, rows in judged.items()}
    assert mape["measured"] < 1.0 and mape["unknown"] > 5.0, mape


def test_verify_learns_the_runtimes_speed_by_rows_and_interpolates_between_them():
    """A CPU's matrix kernels block their rows, so a verification of 9 rows can take longer
    than one of 16: the fit learns a factor per row count it saw (the pattern, not each
    value: the efficiencies and the ridge's sharpness share the scale), predicts unseen
    shapes with them, finds none where the runtime has none, and interpolates between the
    counts it saw."""
    factors = {2: 0.8, 4: 1.2, 6: 1.3, 9: 1.5, 16: 0.9}
    blocked = TRUE | {"verify": replace(TRUE["verify"], row_factors=factors)}
    frame = stage_frames(synthetic_table(blocked, 120, seed=7, noise=0.01))["verify"]
    fitted = fit_roofline(frame, HOST)
    assert sorted(fitted.row_factors) == sorted(factors)
    learned = fitted.row_factors
    assert learned[2] < learned[4] < learned[6] < learned[9] and learned[16] < learned[4]
    assert errors(frame["seconds"], fitted.seconds(HOST, frame))["mape_pct"] < 1.5
    unblocked = replace(fitted, row_factors={})
    assert errors(frame["seconds"], unblocked.seconds(HOST, frame))["mape_pct"] > 8
    judged = held_out(frame, HOST, folds=4, trees=10).predictions
    assert errors(judged["seconds"], judged["roofline"])["mape_pct"] < 3.0
    plain = fit_roofline(stage_frames(synthetic_table(TRUE, 120, seed=7))["verify"], HOST)
    assert max(plain.row_factors.values()) / min(plain.row_factors.values()) < 1.05
    # between fitted counts in log, 1 for one row and past 16
    assert fitted.row_factor([3, 1, 17, 128]) == pytest.approx(
        [np.sqrt(fitted.row_factors[2] * fitted.row_factors[4]), 1, 1, 1])
    assert fit_roofline(frame.assign(tokens=frame["tokens"] + 16), HOST).row_factors == {}
    estimator = LatencyEstimator("host", {"verify": fitted})
    assert LatencyEstimator.from_dict(json.loads(json.dumps(estimator.to_dict()))) == estimator


def test_the_noise_floor_is_the_error_of_a_median_of_repeats_and_none_without_repeats():
    from nasd.latency.models import noise_floor_pct
    rng = np.random.default_rng(3)
    truth, sd, repeats = 0.01, 0.0005, 9
    draws = truth + sd * rng.standard_normal((2000, repeats))
    upper, lower = np.percentile(draws, [75, 25], axis=1)
    frame = pd.DataFrame({"seconds": np.median(draws, axis=1), "iqr_s": upper - lower,
                          "repeats": repeats})
    achieved = 100 * np.mean(np.abs(frame["seconds"] - truth) / truth)
    assert noise_floor_pct(frame) == pytest.approx(achieved, rel=0.15)
    # one time per sample has no spread: no floor, rather than a floor of 0
    assert noise_floor_pct(frame.assign(repeats=1, iqr_s=0.0)) is None


def test_evaluate_reports_every_model_and_the_bound_for_every_stage():
    table = synthetic_table(TRUE, 60, seed=2, noise=0.03)
    report, predictions = evaluate(stage_frames(table), HOST, folds=3, trees=20)
    assert set(report) == set(STAGES)
    for stage, row in report.items():
        assert set(row["models"]) == {"roofline", "linear", "forest"}
        assert row["bound"]["violations"] == 0
        assert row["models"]["roofline"]["mape_pct"] < 8.0
        assert abs(sum(row["forest_importances"].values()) - 1.0) < 1e-2
        assert len(predictions[stage]) == 60


def test_predictions_never_fall_below_the_bound_and_say_when_it_decided():
    estimator = LatencyEstimator("host", {stage: params(0.0, 1e-9, 1.0, 1.0, 16.0,
                                                        per_activation_s=0.0, kv_factor=1.0)
                                          for stage in STAGES})
    for device in ("h100-sxm", "jetson-orin-nano"):
        prediction = stage_seconds(estimator, "decode", load_device(device), QWEN_7B,
                                   "bfloat16", context_tokens=512)
        assert prediction.seconds >= prediction.bound_s
    slow = LatencyEstimator("host", {stage: replace(TRUE[stage]) for stage in STAGES})
    on_h100 = stage_seconds(slow, "verify", load_device("h100-sxm"), QWEN_7B, "bfloat16",
                            context_tokens=512, k=5)
    on_orin = stage_seconds(slow, "verify", load_device("jetson-orin-nano"), QWEN_7B,
                            "bfloat16", context_tokens=512, k=5)
    assert not on_h100.at_bound and on_orin.seconds > 10 * on_h100.seconds
    assert LatencyEstimator.from_dict(json.loads(json.dumps(slow.to_dict()))) == slow
    with pytest.raises(ValueError, match="unknown stage"):
        LatencyEstimator.from_dict({"device": "x", "stages": {"network": {}}})


# --------------------------------------------------------------------------- transfer


def test_recalibration_learns_a_slower_hardware_from_ten_samples():
    slower = {stage: replace(params, eta_bw=params.eta_bw / 2, overhead_s=params.overhead_s * 1.5)
              for stage, params in TRUE.items()}
    source = fit_estimator(stage_frames(synthetic_table(TRUE, 120, seed=3)), HOST)
    target = stage_frames(synthetic_table(slower, 120, seed=4))
    curve, held = transfer_curve(source, target, HOST, ns=(10, 50), holdout=50, draws=2)
    summary = curve_summary(curve).set_index(["method", "n", "stage"])["mape_pct"]
    assert summary[("none", 0, "all")] > 20
    assert summary[("C", 10, "all")] < 8 and summary[("A", 50, "all")] < 10
    assert len(held) == 50
    # B scales every stage by one factor per sample: a uniform slow-down is all it can learn
    uniform = {stage: replace(p, overhead_s=p.overhead_s * 2, per_layer_s=p.per_layer_s * 2,
                              eta_bw=p.eta_bw / 2, eta_flops=p.eta_flops / 2)
               for stage, p in TRUE.items()}
    frames = stage_frames(synthetic_table(uniform, 40, seed=5))
    fitted = recalibrate("B", source, HOST, select(frames, range(20)))
    assert fitted.total.slope == pytest.approx(2.0, rel=0.05)
    with pytest.raises(ValueError, match="unknown recalibration"):
        recalibrate("D", source, HOST, frames)


def test_method_c_widens_its_prior_only_as_far_as_the_targets_own_samples_ask():
    """The prior's width is chosen by cross-validation on the N calibration samples: wide
    for a target far from the source, narrow for one like it, the narrowest when there are
    too few samples to leave any out."""
    source = fit_estimator(stage_frames(synthetic_table(TRUE, 120, seed=3)), HOST)
    far_truth = {stage: replace(p, eta_bw=p.eta_bw / 4, overhead_s=p.overhead_s * 3)
                 for stage, p in TRUE.items()}
    far = stage_frames(synthetic_table(far_truth, 30, seed=6, noise=0.02))
    near = stage_frames(synthetic_table(TRUE, 30, seed=6, noise=0.05))
    for stage in STAGES:
        prior = source.stages[stage]
        assert choose_prior_sigma(far[stage], HOST, prior) == max(PRIOR_SIGMAS)
        assert choose_prior_sigma(near[stage], HOST, prior) == min(PRIOR_SIGMAS)
        assert choose_prior_sigma(far[stage].iloc[:5], HOST, prior) == PRIOR_SIGMAS[0]
    chosen = recalibrate("C", source, HOST, far).prior_sigmas
    assert chosen == {stage: max(PRIOR_SIGMAS) for stage in STAGES}
    assert recalibrate("C", source, HOST, far, prior_sigma=0.5).prior_sigmas["verify"] == 0.5


def test_a_transfer_between_machines_fits_on_the_sources_peaks_and_predicts_on_the_targets(
        tmp_path):
    from orchestrator.reporting.latency_report import transfer_report
    faster = HOST.model_copy(update={
        "name": "faster", "memory_bandwidth_gbps": 3 * HOST.memory_bandwidth_gbps,
        "peak_tflops": {dtype: 3 * peak for dtype, peak in HOST.peak_tflops.items()}})
    source = synthetic_table(TRUE, 100, seed=3)
    target = synthetic_table(TRUE, 100, seed=4, device=faster)

    def uncorrected_mape(result):
        return next(row["mape_pct"] for row in result["summary"]
                    if row["method"] == "none" and row["stage"] == "all")
    across = transfer_report(source, target, faster, tmp_path / "across", ns=(10,), holdout=40,
                             draws=1, source_device=HOST)
    one_device = transfer_report(source, target, faster, tmp_path / "one", ns=(10,),
                                 holdout=40, draws=1)
    assert across["source_device"] == "host" and across["device"] == "faster"
    assert uncorrected_mape(across) < 2 < 10 < uncorrected_mape(one_device)


def test_an_affine_fit_falls_back_to_a_ratio_when_the_line_would_not_rise():
    assert fit_affine([1, 2, 3], [2.1, 3.9, 6.0]).slope == pytest.approx(1.95, rel=0.05)
    flat = fit_affine([1.0, 1.0], [2.0, 2.2])
    assert flat.intercept == 0 and flat.slope == pytest.approx(2.1, rel=0.05)


# --------------------------------------------------------------------------- measuring


def test_a_tiny_campaign_measures_every_stage_through_the_agents_code(tmp_path):
    pytest.importorskip("transformers")
    from rich.console import Console
    from rich.progress import Progress

    from agents.sampling import SamplingConfig
    from orchestrator.config.loading import load_model_pair
    from orchestrator.lifecycle.latency import LatencyPlan, measure
    plan = LatencyPlan(shipped=load_model_pair("tiny-arith"), texts=["1 + 2 = 3. 4 + 5 = 9."],
                       sampling=SamplingConfig(), codec="ids", samples=3, repeats=2, passes=2,
                       speed_reference=True,
                       shapes=((64, 2, 2, 2), (96, 2, 2, 1)), prompt_tokens=(4, 8),
                       context_tokens=(4, 16), ks=(1, 3), campaign="tiny")
    out = tmp_path / "tiny.csv"
    with Progress(console=Console(file=open(os.devnull, "w")), disable=True) as progress:
        assert measure(plan, out, progress) == 3
    table = load_latency_table(out)
    assert set(required_columns()) <= set(table.columns) and len(table) == 3
    assert (table["draft_params"] < table["target_params"]).all()
    assert (table["bytes_up"] > 0).all() and table["host_processor"].notna().all()
    assert (table["repeats"] == 2).all() and (table["passes"] == 2).all()
    # each turn scaled by the reference step timed beside it, the raw rounds kept
    for row in table.to_dict("records"):
        raw, steps = (np.array(row[column].split(), dtype=float)
                      for column in ("verify_rounds_s", "reference_rounds_s"))
        assert row["verify_s"] == pytest.approx(
            np.median(raw * row["speed_reference_s"] / steps), rel=1e-4)
    for row in table.to_dict("records"):    # the stage's model is the one the row names
        shape_of_draft = ModelShape(**{c.removeprefix("draft_"): row[c]
                                       for c in shape_columns("draft")})
        assert shape_of_draft.parameters == row["draft_params"]


def test_the_committed_tables_never_beat_the_measured_hosts_roofline():
    from nasd.latency.models import bounds
    measured_hosts = {device.measured["host"]["processor"]: device
                      for device in map(load_device, available("devices")) if device.measured}
    for path in sorted(MEASURED.glob("*.csv")):
        table = load_latency_table(path)
        device = measured_hosts[table["host_processor"].iloc[0]]   # the table's own machine
        for stage, frame in stage_frames(table).items():
            check = bound_check(frame["seconds"], bounds(frame, device))
            assert check["violations"] == 0, (path.name, stage, check)


def test_bad_tables_are_one_error_line_with_exit_code_2(tmp_path, capsys):
    from orchestrator.cli import main
    good = synthetic_table(TRUE, 4, seed=6)
    good.to_csv(tmp_path / "good.csv", index=False)
    good.drop(columns=["verify_s"]).to_csv(tmp_path / "columns.csv", index=False)
    good.assign(decode_s=-1.0).to_csv(tmp_path / "negative.csv", index=False)
    good.assign(k=["3", "x", "5", "8"]).to_csv(tmp_path / "text.csv", index=False)
    good.assign(dtype="int8").to_csv(tmp_path / "dtype.csv", index=False)
    pd.concat([good, good]).to_csv(tmp_path / "twice.csv", index=False)
    good.assign(k=[3, -3, 5, 8]).to_csv(tmp_path / "negative-k.csv", index=False)
    good.assign(draft_heads=3, draft_kv_heads=2).to_csv(tmp_path / "heads.csv", index=False)
    good.assign(repeats=0).to_csv(tmp_path / "repeats.csv", index=False)
    good.assign(dtype=["float32", "float32", "bfloat16", "float32"]).to_csv(
        tmp_path / "dtypes.csv", index=False)
    good.assign(threads=[1, 2, 1, 1]).to_csv(tmp_path / "threads.csv", index=False)
    for name, message in (("missing.csv", "no such file"), ("columns.csv", "verify_s"),
                          ("negative.csv", "row 2: decode_s must be a number > 0 .got -1"),
                          ("text.csv", "row 3: k must be a whole number >= 1 .got x"),
                          ("negative-k.csv", "row 3: k must be a whole number >= 1 .got -3"),
                          ("heads.csv", "row 2: draft shape: heads .3. must be a multiple of "
                                        "kv_heads .2."),
                          ("repeats.csv", "row 2: repeats must be a whole number >= 1"),
                          ("dtype.csv", "row 2: dtype 'int8': one of float32"),
                          ("dtypes.csv", "row 4: mixes dtypes .float32, then bfloat16.: a "
                                         "table is one hardware"),
                          ("threads.csv", "row 3: mixes torch thread counts .1, then 2."),
                          ("twice.csv", "rows 2 and 6: sample 0 twice")):
        with pytest.raises(ConfigError, match=message) as error:
            load_latency_table(tmp_path / name)
        assert "\n" not in str(error.value)
    capsys.readouterr()
    assert main(["latency", "fit", str(tmp_path / "negative.csv"), "--device", "h100-sxm"]) == 2
    assert main(["latency", "fit", str(tmp_path / "good.csv"), "--device", "nowhere"]) == 2
    assert main(["latency", "measure", "--model-pair", "synthetic"]) == 2
    good[good["sample"] < 1].to_csv(tmp_path / "one-shape.csv", index=False)
    assert main(["latency", "fit", str(tmp_path / "one-shape.csv"), "--device", "h100-sxm"]) == 2
    # shapes that differ in their MLP alone are one group of the split, so one shape here
    good.assign(draft_layers=2, draft_hidden=64, draft_heads=2, draft_kv_heads=2,
                draft_head_dim=32, draft_intermediate=[128, 160, 128, 160]).to_csv(
        tmp_path / "one-group.csv", index=False)
    assert main(["latency", "fit", str(tmp_path / "one-group.csv"), "--device", "h100-sxm"]) == 2
    measured = (tmp_path / "good.csv").read_bytes()     # a finished campaign is never replaced
    assert main(["latency", "measure", "--out", str(tmp_path / "good.csv")]) == 2
    assert (tmp_path / "good.csv").read_bytes() == measured
    # checked before any measuring: a folder nothing can be written in
    assert main(["latency", "measure", "--out", "/proc/campaign.csv"]) == 2
    good.iloc[:3].assign(draft_layers=[2, 4, 6]).to_csv(tmp_path / "three.csv", index=False)
    assert main(["latency", "fit", str(tmp_path / "three.csv"), "--device", "h100-sxm"]) == 2
    (tmp_path / "clash.CSV").write_bytes(measured)     # its default folder: a file there
    (tmp_path / "clash").write_text("")
    assert main(["latency", "fit", str(tmp_path / "clash.CSV"), "--device", "h100-sxm"]) == 2
    assert main(["latency", "transfer", str(tmp_path / "good.csv"),
                 str(tmp_path / "one-shape.csv"), "--device", "h100-sxm"]) == 2
    assert (tmp_path / "good.csv").read_bytes() == measured and not list(tmp_path.glob("*/"))
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 10 and all(line.startswith("error: ")
                                            for line in stderr.splitlines())
    assert "device 'nowhere' not found" in stderr and "needs an hf pair" in stderr
    assert "good.csv exists: a new campaign would replace it" in stderr
    assert "--out /proc/campaign.csv: cannot write there" in stderr
    assert "three.csv: 3 samples: the fit and its guardrail need at least 4" in stderr
    assert "a file is there, not a folder" in stderr
    assert "one-shape.csv: 1 sample: a transfer needs at least 2" in stderr
    assert "every sample has one draft model shape" in stderr


def test_latency_device_measures_this_hosts_peaks_and_library_call_cost(tmp_path, monkeypatch,
                                                                        capsys):
    """`latency device` writes a device file that loads as one, with the roofline's peaks
    and, per dtype, the measured cost of a GEMM library call (0 where the runtime has no
    such path), and says both; measured beside a process that keeps a core busy, it warns
    that the figures are a busy host's."""
    import subprocess
    import sys

    from orchestrator.cli import main
    monkeypatch.chdir(tmp_path)
    busy = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 120\n"
                             "while time.time() < end: pass"])
    try:
        assert main(["latency", "device", "--name", "here", "--tries", "1"]) == 0
    finally:
        busy.kill()
        busy.wait(timeout=10)
    said = capsys.readouterr()
    device = load_device("here")
    assert device.measured["host"]["torch"] and device.memory_bandwidth_gbps > 0
    assert set(device.library_call_us) == {"float32", "bfloat16", "float16"}
    assert all(value >= 0 for value in device.library_call_us.values())
    assert "a layer handed to the GEMM library float32 +" in said.out and "bfloat16 +" in said.out
    assert device.measured["others_cpu_share"] > 0.2
    assert "warning: other processes used" in said.err


def test_a_table_fitted_on_another_machines_device_file_is_named(tmp_path, monkeypatch, capsys):
    """A measured device file says which processor it describes; a table measured on
    another one, or fitted on a datasheet's device, is fitted with a warning naming both,
    and a device file written in the current folder by `latency device` is found there by
    its name."""
    from orchestrator.cli import main
    measured_on = load_device("dev-xeon-2c").measured["host"]["processor"]
    table = synthetic_table(TRUE, 40, seed=6, device=load_device("dev-xeon-2c"))
    table.assign(host_processor="Some Other CPU").to_csv(tmp_path / "other.csv", index=False)
    table.assign(host_processor=measured_on).to_csv(tmp_path / "same.csv", index=False)
    (tmp_path / "my-host.yaml").write_text((REPO / "configs/devices/dev-xeon-2c.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["latency", "fit", "other.csv", "--device", "my-host", "--folds", "2"]) == 0
    warned = capsys.readouterr().err
    assert "warning: the table was measured on Some Other CPU" in warned and measured_on in warned
    assert main(["latency", "fit", "same.csv", "--device", "my-host", "--folds", "2"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert (tmp_path / "same" / "estimator.json").is_file()
    # a datasheet's device measured nothing here: a CPU's table fitted on an H100's peaks
    assert main(["latency", "fit", "same.csv", "--device", "h100-sxm", "--folds", "2",
                 "--out", "on-h100"]) == 0
    assert "device h100-sxm is from a datasheet, not measured" in capsys.readouterr().err
    # a bfloat16 table on a device file from before `latency device` measured a GEMM library
    # call's cost: named, and not on one that has it
    import yaml
    older = yaml.safe_load((tmp_path / "my-host.yaml").read_text())
    del older["library_call_us"]
    (tmp_path / "older.yaml").write_text(yaml.safe_dump(older))
    table.assign(host_processor=measured_on, dtype="bfloat16").to_csv(tmp_path / "bf16.csv",
                                                                      index=False)
    for device, noted in (("older", True), ("my-host", False)):
        assert main(["latency", "fit", "bf16.csv", "--device", device, "--folds", "2",
                     "--out", f"bf16-{device}"]) == 0
        said = capsys.readouterr().err
        assert ("has no library_call_us for bfloat16" in said) == noted


# --------------------------------------------------------------------------- guardrail


def test_a_conformal_interval_covers_new_samples_as_stated():
    from nasd.latency.guardrail import conformal_interval
    rng = np.random.default_rng(7)
    predicted = rng.uniform(0.001, 0.1, 4000)
    measured = predicted * np.exp(0.1 * rng.standard_normal(4000))
    interval = conformal_interval(measured[:200], predicted[:200], coverage=0.9)
    ratio = measured[200:] / predicted[200:]
    covered = np.mean((ratio >= interval.low) & (ratio <= interval.high))
    assert 0.86 < covered < 0.95 and interval.low < 1 < interval.high and interval.n == 200
    assert interval.coverage == 0.9
    # between the least and largest of 4 ratios a fifth falls with probability 3 / 5
    few = conformal_interval([1.0, 2.0, 3.0, 4.0], [1.0] * 4, coverage=0.9)
    assert (few.low, few.high, few.coverage) == (1.0, 4.0, pytest.approx(0.6))
    with pytest.raises(ValueError, match="two"):
        conformal_interval([1.0], [1.0])


def test_the_guardrail_accepts_what_fits_rejects_what_breaks_and_measures_the_rest():
    from nasd.analytic import expected_tokens_per_cycle
    from nasd.latency.guardrail import decide, per_token
    assert decide([1, 3, 1], [2, 4, 4], [1.5, 3.5, 2], budget=2.5).tolist() == [
        "accept", "reject", "measure"]
    assert decide([1, 3, 1], [2, 4, 4], [1.5, 3.5, 2], 2.5, guarded=False).tolist() == [
        "accept", "reject", "accept"]
    seconds = per_token("fixed-k", 4, 0.002, 0.01, 0.009, 0.05, 0.001, 0.7)
    assert seconds == pytest.approx((4 * 0.002 + 0.01 + 0.05 + 0.001)
                                    / expected_tokens_per_cycle(0.7, 4))
    assert per_token("cloud-only", 4, 0.002, 0.01, 0.009, 0.05, 0.001, 0.7) == 0.009
    # answers of known length: a 2-token answer is one cycle of no drafts after its first
    # token (the verification and the link alone); long answers approach E[tau]
    alone = 0.01 + 0.05 + 0.001
    assert per_token("fixed-k", 4, 0.002, 0.01, 0.009, 0.05, 0.001, 0.7, [2]) == \
        pytest.approx(alone)
    short, long = (per_token("fixed-k", 4, 0.002, 0.01, 0.009, 0.05, 0.001, 0.7, [tokens])
                   for tokens in (20, 2000))
    assert short > long > seconds and long == pytest.approx(seconds, rel=0.01)
    both = per_token("fixed-k", 4, 0.002, 0.01, 0.009, 0.05, 0.001, 0.7, [20, 2000])
    assert both == pytest.approx((19 * short + 1999 * long) / 2018)   # tokens over time
    assert per_token("fixed-k", 4, 0.002, 0.01, 0.009, 0.05, 0.001, 0.7, [1]) == seconds


def test_the_guardrail_keeps_violations_low_where_the_point_prediction_does_not():
    from nasd.latency.guardrail import guardrail_analysis
    table = synthetic_table(TRUE, 200, seed=8, noise=0.08)
    table["bytes_up"], table["bytes_down"] = 120, 140
    frames = stage_frames(table)
    estimator = fit_estimator(frames, HOST)
    heldout = {stage: frame[["sample", "seconds"]].assign(
        roofline=estimator.stages[stage].seconds(HOST, frame)) for stage, frame in frames.items()}
    guard = guardrail_analysis(heldout, table, coverage=0.9)
    at = {row["fraction"]: row for row in guard["fractions"]}
    assert at[0.85]["guarded"]["violation_rate"] <= 0.02
    assert at[0.85]["unguarded"]["violation_rate"] > at[0.85]["guarded"]["violation_rate"]
    assert at[1.0]["guarded"]["violation_rate"] == 0.0
    assert guard["candidates"] == guard["judged_samples"] * 4 * 2


def test_a_model_known_by_its_size_gets_the_nearest_published_shape():
    from nasd.latency.stages import QWEN2_5, shape_for_parameters
    # the published counts: Qwen2.5-0.5B 0.49 B, -7B 7.6 B (without the q/k/v biases)
    assert QWEN2_5["0.5B"].parameters == pytest.approx(494e6, rel=0.01)
    assert QWEN2_5["7B"].parameters == pytest.approx(7.62e9, rel=0.01)
    assert QWEN2_5["7B"] == QWEN_7B
    assert shape_for_parameters(0.5e9) == QWEN2_5["0.5B"]
    assert shape_for_parameters(7e9) == QWEN2_5["7B"]
    with pytest.raises(ValueError):
        shape_for_parameters(0)


def test_each_round_takes_the_samples_in_an_order_of_its_own():
    """A drifting host's speed is shared by samples measured one after another: with the same
    order every round a sample met the same neighbours every time, and its error persisted."""
    from orchestrator.lifecycle.latency import order_of_round
    orders = [order_of_round(0, round_index, 50) for round_index in range(5)]
    assert all(sorted(order) == list(range(50)) for order in orders)
    assert len({tuple(order) for order in orders}) == 5
    assert order_of_round(0, 3, 50) == orders[3] != order_of_round(1, 3, 50)
