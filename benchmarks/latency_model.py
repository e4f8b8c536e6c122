"""Benchmark: the latency model on the measured tables of ``benchmarks/measured/latency/``.

Reproduces, from the committed tables alone (nothing is measured), the figures issue 13
asks of the latency model, and writes them beside the tables (JSON and PNG):

- this host, held-out configurations (group-wise: a sample's model shape never seen in
  training): MAPE, MAE and P95 absolute error per stage for the roofline-shaped, linear and
  random-forest models, the forest's importances, and the roofline bound's violations (a
  bound above a measured time; goal: none); goal MAPE <= 5 % for draft_token and verify;
- transfer from the source table's hardware to the target's (another dtype or thread count
  of this CPU): MAPE and P95 absolute error against N for none, A, B, C on held-out target
  samples; goal MAPE <= 10 % at N = 10 and <= 5 % at N = 50;
- the budget guardrail on the held-out predictions: violation and false-reject rates at
  budget fractions 0.5, 0.7, 0.85, 1.0 with and without it; goal violations <= 2 % at 0.85.

    .venv/bin/python benchmarks/latency_model.py [--source float32-t1-shuffled]
        [--target bfloat16-t1-shuffled] [--device dev-epyc-2c] [--source-device DEVICE]
        [--draws 20] [--holdout 60]

``--device`` is the target table's machine, ``--source-device`` the source's where the two
tables come from different machines (the Intel Xeon ``xeon-*`` tables against the AMD EPYC
ones: ``--source float32-t1-ref --source-device dev-epyc-2c --target xeon-float32-t1
--device dev-xeon-2c``).

The tables come from ``orchestrator latency measure`` (see the folder's README for the
commands that measured them), the device file from ``orchestrator latency device``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.config.loading import load_device, load_latency_table  # noqa: E402
from orchestrator.reporting.latency_report import fit_report, transfer_report  # noqa: E402

MEASURED = Path(__file__).resolve().parent / "measured" / "latency"
GOAL_STAGES = ("draft_token", "verify")


def print_heldout(name: str, report: dict) -> None:
    print(f"\n== {name}: held-out MAPE per stage (group-wise over model shapes) ==")
    print("(noise floor: the MAPE a perfect model would show, from the spread of each sample's "
          "repeats)")
    print(f"{'stage':14s} {'n':>4s} {'groups':>6s} {'roofline':>9s} {'linear':>8s} {'forest':>8s} "
          f"{'P95 abs (roofline)':>19s} {'noise floor':>11s} {'bound>measured':>15s}  "
          "top forest features")
    for stage, row in report["stages"].items():
        models = row["models"]
        top = sorted(row["forest_importances"].items(), key=lambda kv: -kv[1])[:3]
        print(f"{stage:14s} {row['samples']:4d} {row['groups']:6d} "
              f"{models['roofline']['mape_pct']:8.1f}% {models['linear']['mape_pct']:7.1f}% "
              f"{models['forest']['mape_pct']:7.1f}% "
              f"{models['roofline']['p95_abs_s'] * 1e3:16.2f} ms "
              f"{row['noise_floor_mape_pct'] or float('nan'):10.1f}% {row['bound']['violations']:15d}  "
              + ", ".join(f"{k} {v:.2f}" for k, v in top))
    for stage in GOAL_STAGES:
        best = min(report["stages"][stage]["models"].items(), key=lambda kv: kv[1]["mape_pct"])
        verdict = "meets" if best[1]["mape_pct"] <= 5 else "misses"
        print(f"goal <= 5 % for {stage}: best {best[0]} {best[1]['mape_pct']:.1f}% ({verdict})")


def print_guardrail(guard: dict) -> None:
    print(f"\n-- guardrail ({guard['model']}, {guard['coverage']:.0%} conformal intervals from "
          f"{guard['calibration_samples']} held-out samples; {guard['candidates']} candidates on "
          f"{guard['judged_samples']} others; budget = the f-quantile of their measured s/token) --")
    print(f"{'fraction':>8s} {'budget':>10s}  {'violations':>21s}  {'false rejects':>21s}  "
          f"{'measure':>7s}")
    print(f"{'':8s} {'':10s}  {'guarded':>10s} {'unguarded':>10s}  {'guarded':>10s} "
          f"{'unguarded':>10s}")
    for row in guard["fractions"]:
        g, u = row["guarded"], row["unguarded"]
        print(f"{row['fraction']:8.2f} {row['budget_s_per_token'] * 1e3:7.2f} ms  "
              f"{100 * g['violation_rate']:9.1f}% {100 * u['violation_rate']:9.1f}%  "
              f"{100 * g['false_reject_rate']:9.1f}% {100 * u['false_reject_rate']:9.1f}%  "
              f"{100 * g['measured'] / g['candidates']:6.1f}%")
    at = next(row for row in guard["fractions"] if row["fraction"] == 0.85)
    verdict = "meets" if at["guarded"]["violation_rate"] <= 0.02 else "misses"
    print(f"goal violations <= 2 % at 0.85 with the guardrail: "
          f"{100 * at['guarded']['violation_rate']:.1f}% ({verdict})")


def print_transfer(result: dict) -> None:
    print(f"\n== transfer {result['source']['campaign']} -> {result['target']['campaign']} "
          f"({result['source_device']} -> {result['device']}): "
          f"{len(result['held_out_samples'])} held-out target samples, mean of "
          f"{result['draws']} draws ==")
    rows = result["summary"]
    stages = ["all"] + sorted({r["stage"] for r in rows} - {"all"})
    print(f"{'method':6s} {'N':>4s} " + " ".join(f"{s[:12]:>12s}" for s in stages)
          + "   P95 abs (all)")
    keyed = {(r["method"], r["n"], r["stage"]): r for r in rows}
    for method, n in sorted({(r["method"], r["n"]) for r in rows},
                            key=lambda mn: (mn[0] != "none", mn[0], mn[1])):
        print(f"{method:6s} {n:4d} "
              + " ".join(f"{keyed[(method, n, s)]['mape_pct']:11.1f}%" for s in stages)
              + f"   {keyed[(method, n, 'all')]['p95_abs_s'] * 1e3:8.2f} ms")
    for n, goal in ((10, 10.0), (50, 5.0)):
        best = min((r for r in rows if r["n"] == n and r["stage"] == "all"),
                   key=lambda r: r["mape_pct"], default=None)
        if best:
            verdict = "meets" if best["mape_pct"] <= goal else "misses"
            print(f"goal MAPE <= {goal:g} % at N = {n}: best {best['method']} "
                  f"{best['mape_pct']:.1f}% ({verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="float32-t1-shuffled",
                        help="table stem under measured/latency")
    parser.add_argument("--target", default="bfloat16-t1-shuffled")
    parser.add_argument("--device", default="dev-epyc-2c", help="the target table's machine")
    parser.add_argument("--source-device", help="the source table's machine [default: --device]")
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--holdout", type=int, default=60)
    args = parser.parse_args()
    device = load_device(args.device)
    source_device = load_device(args.source_device) if args.source_device else device
    tables = {name: load_latency_table(MEASURED / f"{name}.csv")
              for name in (args.source, args.target)}
    for name, machine in ((args.source, source_device), (args.target, device)):
        report = fit_report(tables[name], machine, MEASURED / name)
        print_heldout(name, report)
        print_guardrail(report["guardrail"])
    result = transfer_report(tables[args.source], tables[args.target], device,
                             MEASURED / f"transfer-{args.source}-to-{args.target}",
                             draws=args.draws, holdout=args.holdout,
                             source_device=source_device)
    print_transfer(result)
    print(f"\nwritten under {MEASURED}")


if __name__ == "__main__":
    main()
