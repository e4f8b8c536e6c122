"""What the latency model says about measured tables (``orchestrator latency fit`` and
``transfer``, and ``benchmarks/latency_model.py``): JSON files and figures in a folder.

``fit_report``: the estimator fitted on a whole table (``estimator.json``, what
``nasd.latency.estimator.stage_seconds`` predicts with), the group-wise held-out errors of
the roofline-shaped, linear and random-forest models per stage with the forest's
importances and the bound's check (``heldout.json``), predicted against measured
(``predicted_vs_measured.png``), and the budget guardrail judged on the held-out predictions
(``guardrail.json``, ``guardrail.png``: violation rate against the budget fraction with and
without it, false rejects against false accepts).  ``transfer_report``: the source table's estimator
recalibrated to the target table's hardware by each method at each N, scored on held-out
target samples (``transfer.json``, ``transfer_error_vs_n.png``,
``transfer_by_stage.png``).  Reads tables, writes files, starts nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from nasd.latency.estimator import fit_estimator
from nasd.latency.guardrail import guardrail_analysis
from nasd.latency.models import evaluate
from nasd.latency.roofline import Device
from nasd.latency.stages import stage_frames
from nasd.latency.transfer import PRIOR_FOLDS, PRIOR_SIGMAS, curve_summary, transfer_curve
from orchestrator.reporting.latency_plots import (
    plot_guardrail,
    plot_predicted_vs_measured,
    plot_transfer,
    plot_transfer_by_stage,
)


def describe(table: pd.DataFrame) -> dict:
    """What a table was measured on and under: its campaign, hardware, host, load."""
    first = table.iloc[0]
    host = {key.removeprefix("host_"): first[key] for key in table.columns
            if key.startswith("host_")}
    load = table["load_1m"] if "load_1m" in table else pd.Series(dtype=float)
    return {"campaign": str(first.get("campaign", "")), "samples": len(table),
            "dtype": sorted(table["dtype"].unique().tolist()),
            "threads": sorted(int(t) for t in table["threads"].unique()),
            "host": {key: (value.item() if hasattr(value, "item") else value)
                     for key, value in host.items()},
            "load_1m": ({"median": float(load.median()), "max": float(load.max())}
                        if len(load) else None)}


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")
    return path


def fit_report(table: pd.DataFrame, device: Device, out_dir: Path, folds: int = 5,
               seed: int = 0) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = stage_frames(table)
    report, predictions = evaluate(frames, device, folds, seed)
    estimator = fit_estimator(frames, device)
    write_json(out_dir / "estimator.json", {"table": describe(table), **estimator.to_dict(),
                                            "device_file": device.model_dump(mode="json")})
    heldout = {"table": describe(table), "device": device.name,
               "split": f"GroupKFold over the shape of each stage's model ({folds} folds at "
                        "most): every sample is predicted by models fitted without its "
                        "model shape", "stages": report}
    write_json(out_dir / "heldout.json", heldout)
    plot_predicted_vs_measured(predictions, report, out_dir / "predicted_vs_measured.png",
                               f"{describe(table)['campaign']}: held-out predictions "
                               f"(group-wise, {device.name})")
    guard = guardrail_analysis(predictions, table, seed=seed)
    write_json(out_dir / "guardrail.json", {"table": describe(table), **guard})
    plot_guardrail(guard, out_dir / "guardrail.png")
    return heldout | {"guardrail": guard}


def transfer_report(source: pd.DataFrame, target: pd.DataFrame, device: Device, out_dir: Path,
                    ns=(10, 25, 50, 100), holdout: int = 60, draws: int = 20, seed: int = 0,
                    prior_sigma: float | None = None, source_device: Device | None = None) -> dict:
    """``device`` is the target's; the source's estimator is fitted on ``source_device``
    (the same device when None: the target differs by its dtype or threads only)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    source_device = source_device or device
    estimator = fit_estimator(stage_frames(source), source_device)
    curve, held = transfer_curve(estimator, stage_frames(target), device, ns, holdout, draws,
                                 seed, prior_sigma)
    summary = curve_summary(curve)
    spread = (curve.groupby(["method", "n", "stage"])["mape_pct"]
              .quantile([0.1, 0.9]).unstack().reset_index()
              .rename(columns={0.1: "mape_p10", 0.9: "mape_p90"}))
    summary = summary.merge(spread, on=["method", "n", "stage"])
    result = {"source": describe(source), "target": describe(target), "device": device.name,
              "source_device": source_device.name,
              "held_out_samples": held, "draws": draws,
              "prior_sigma": prior_sigma or ("per stage, the best of "
                                             f"{', '.join(f'{v:g}' for v in PRIOR_SIGMAS)} in a "
                                             f"{PRIOR_FOLDS}-fold cross-validation on the N "
                                             "calibration samples"),
              "n": [n for n in ns if n in set(curve["n"])],   # those the target could fill
              "summary": summary.to_dict("records")}
    write_json(out_dir / "transfer.json", result)
    title = (f"{describe(source)['campaign']} -> {describe(target)['campaign']}: "
             f"error on {len(held)} held-out target samples (mean of {draws} draws)")
    plot_transfer(summary, out_dir / "transfer_error_vs_n.png", title)
    plot_transfer_by_stage(summary, out_dir / "transfer_by_stage.png")
    return result
