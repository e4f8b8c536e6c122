"""Benchmark: where device emulation puts the performance reversal, before anything runs, and
what a sweep of an emulating job measured.

For each pair of (edge device, draft shape) and (cloud device, target shape): the emulated
seconds of a draft token, a decoding step and a verification of 5 drafts (their roofline
bounds, ``nasd.latency.emulation.pass_seconds``, at a context of ``--context`` tokens), and
the RTT above which fixed K loses to cloud-only by the closed form
(``nasd.analytic.crossover_rtt_s``) at the per-token acceptance ``--acceptance``: the device
model alone, with none of this host's overheads around the passes.

With ``--sweep DIR`` (a finished ``orchestrator sweep`` of a job that emulates devices, such
as the shipped ``jetson-h100``), per fixed K: the measured reversal RTT and the analytic
model's (``reversal.csv``: the closed form on the run's own measured stage times, which hold
the emulated ones), beside the device model's alone at the K's measured acceptance.

    .venv/bin/python benchmarks/device_emulation.py [--acceptance 0.68] [--context 48]
        [--sweep results/<time>-sweep-jetson-h100-sim]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.backends.emulated import DeviceEmulation  # noqa: E402
from nasd.analytic import ComputeTimes, crossover_rtt_s  # noqa: E402
from nasd.latency.emulation import pass_seconds  # noqa: E402
from nasd.latency.roofline import Device  # noqa: E402
from nasd.latency.stages import NAMED_SHAPES, ModelShape  # noqa: E402
from orchestrator.config.loading import load_device  # noqa: E402

PAIRS = (("jetson-orin-nano", "qwen2.5-0.5b", "h100-sxm", "qwen2.5-7b"),
         ("jetson-orin-nano", "qwen2.5-0.5b", "h100-sxm", "qwen2.5-32b"),
         ("jetson-orin-nano", "llama-160m", "h100-sxm", "qwen2.5-7b"),
         ("jetson-orin-nano", "llama-160m", "h100-sxm", "qwen2.5-14b"),
         ("jetson-orin-nano", "llama-160m", "h100-sxm", "qwen2.5-32b"),
         ("jetson-orin-nano", "llama-68m", "h100-sxm", "qwen2.5-32b"),
         ("raspberry-pi-5", "llama-68m", "a100-sxm", "qwen2.5-32b"))
KS = (1, 3, 5, 10)
VERIFY_FIT_KS = (1, 15)   # verify(K) = base + per token * (K + 1), through these two Ks


def device_times(edge: Device, draft: ModelShape, cloud: Device, target: ModelShape,
                 dtype: str, context: int) -> ComputeTimes:
    """The closed form's stage times from the emulated passes at a context of ``context``."""
    cached = context - 1
    low, high = (pass_seconds(cloud, target, dtype, k + 1, cached) for k in VERIFY_FIT_KS)
    per_token = (high - low) / (VERIFY_FIT_KS[1] - VERIFY_FIT_KS[0])
    return ComputeTimes(draft_token_s=pass_seconds(edge, draft, dtype, 1, cached),
                        verify_base_s=low - per_token * (VERIFY_FIT_KS[0] + 1),
                        verify_per_token_s=per_token,
                        decode_s=pass_seconds(cloud, target, dtype, 1, cached))


def print_pairs(acceptance: float, dtype: str, context: int) -> None:
    print(f"== the device model alone: roofline-bound passes ({dtype}, context {context}), "
          f"crossover RTT of fixed K at acceptance {acceptance:g} (negative: never pays) ==")
    print(f"{'edge / draft':32s} {'cloud / target':24s} {'draft ms':>8s} {'decode ms':>9s} "
          f"{'verify(5) ms':>12s}  " + "  ".join(f"{f'K={k} ms':>8s}" for k in KS))
    for edge_name, draft_name, cloud_name, target_name in PAIRS:
        edge, cloud = load_device(edge_name), load_device(cloud_name)
        times = device_times(edge, NAMED_SHAPES[draft_name], cloud, NAMED_SHAPES[target_name],
                             dtype, context)
        crossings = [1000 * crossover_rtt_s(acceptance, k, times) for k in KS]
        print(f"{edge_name + ' / ' + draft_name:32s} {cloud_name + ' / ' + target_name:24s} "
              f"{1000 * times.draft_token_s:8.2f} {1000 * times.decode_time_s():9.2f} "
              f"{1000 * times.verify_time_s(5):12.2f}  "
              + "  ".join(f"{value:8.1f}" for value in crossings))


def print_sweep(folder: Path, context: int) -> None:
    reversals = pd.read_csv(folder / "reversal.csv")
    board = pd.read_csv(folder / "leaderboard.csv")
    first_cell = Path(board["folder"].iloc[0]) / "config.yaml"
    emulation = DeviceEmulation.model_validate(yaml.safe_load(first_cell.read_text())["emulation"])
    times = device_times(emulation.edge_device, emulation.draft_shape, emulation.cloud_device,
                         emulation.target_shape, emulation.dtype, context)
    print(f"\n== {folder.name}: {emulation.describe()} ==")
    print(f"{'strategy':12s} {'alpha':>6s} {'measured ms':>11s} {'model ms':>9s} "
          f"{'model - measured':>16s} {'device model ms':>15s}   RTTs swept")
    for row in reversals.itertuples():
        own = board[board["label"] == row.label]    # none for the best fixed K at each RTT
        alpha = own["per_token_acceptance"].mean() if len(own) else None
        device = f"{1000 * crossover_rtt_s(alpha, int(own['k'].iloc[0]), times):15.1f}" \
            if alpha is not None else f"{'-':>15s}"
        print(f"{row.label:12s} {'-' if alpha is None else f'{alpha:.3f}':>6s} "
              f"{row.measured_reversal_rtt_ms:11.1f} {row.predicted_reversal_rtt_ms:9.1f} "
              f"{row.predicted_reversal_rtt_ms - row.measured_reversal_rtt_ms:16.1f} "
              f"{device}   {row.rtts}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--acceptance", type=float, default=0.68,
                        help="per-token acceptance of the a-priori table (tiny-arith, greedy: "
                             "about 0.68)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--context", type=int, default=48,
                        help="committed tokens at a cycle's start (the arith prompts and "
                             "answers: 20 to 60)")
    parser.add_argument("--sweep", type=Path, help="a finished sweep of an emulating job")
    args = parser.parse_args()
    print_pairs(args.acceptance, args.dtype, args.context)
    if args.sweep is not None:
        print_sweep(args.sweep, args.context)
    return 0


if __name__ == "__main__":
    sys.exit(main())
