"""Is a held-out model shape's own speed its linear layers' kernels?  Times each shape's
linear layers on this host and asks whether that time predicts the stage where the work
terms do not.

For every model shape of a measured table (``benchmarks/measured/latency/<table>.csv``) and
every row count its stages feed (1 for ``draft_token`` and ``decode``, K + 1 for
``verify``), one pass through the shape's linear layers is timed at the table's dtype and
threads: each layer's q, k, v, o, gate, up and down projections with weights of their own
(random; the weights of L layers stream as a real pass's do) and the output layer, the
median of 5 batches.  Then, per stage, the linear model of ``nasd.latency.models``
(non-negative least squares, relative) is judged on model shapes held out of training
twice: on its work terms, and with the timed linear layers in place of bytes and FLOPs.

    .venv/bin/python benchmarks/linear_layers.py --table xeon-bfloat16-t1

Takes 1-3 minutes per table on a 2-core host; the timings are this host's, so run it on
the machine that measured the table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nasd.latency.models import LINEAR_FEATURES, errors, relative_weights  # noqa: E402
from nasd.latency.stages import ROLE, ModelShape, shape_of, stage_frame  # noqa: E402
from orchestrator.config.loading import load_latency_table  # noqa: E402

MEASURED = Path(__file__).resolve().parent / "measured" / "latency"
STAGES = ("draft_token", "verify", "decode")
TIMED_FEATURES = ("linear_s", "kv_bytes", "kv_repeat_bytes", "layers", "activations", "blocks")


def projections(shape: ModelShape) -> list[tuple[int, int]]:
    """(in, out) of one layer's linear layers: q, k, v, o, gate, up, down."""
    query, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    return [(shape.hidden, query), (shape.hidden, kv), (shape.hidden, kv),
            (query, shape.hidden), (shape.hidden, shape.intermediate),
            (shape.hidden, shape.intermediate), (shape.intermediate, shape.hidden)]


def linear_pass_s(torch, shape: ModelShape, rows: int, dtype, batches: int = 5,
                  min_batch_s: float = 0.05) -> float:
    """Seconds of one pass of ``rows`` rows through every linear layer of ``shape``."""
    linear = torch.nn.functional.linear
    layers = [[torch.randn(out, inp, dtype=dtype) for inp, out in projections(shape)]
              for _ in range(shape.layers)] + [[torch.randn(shape.vocab, shape.hidden,
                                                            dtype=dtype)]]
    inputs = {width: torch.randn(rows, width, dtype=dtype)
              for width in {w.shape[1] for layer in layers for w in layer}}

    def one_pass():
        for layer in layers:
            for weight in layer:
                linear(inputs[weight.shape[1]], weight)

    one_pass()
    started, repeats = time.perf_counter(), 0
    while time.perf_counter() - started < min_batch_s:      # size a batch
        one_pass()
        repeats += 1
    times = []
    for _ in range(batches):
        started = time.perf_counter()
        for _ in range(repeats):
            one_pass()
        times.append((time.perf_counter() - started) / repeats)
    return float(np.median(times))


def held_out_mape(frame: pd.DataFrame, features) -> float:
    """MAPE of the linear model on model shapes held out (5 group-wise folds)."""
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import GroupKFold
    x, y = frame[list(features)].to_numpy(dtype=float), frame["seconds"].to_numpy(dtype=float)
    predicted = np.zeros(len(frame))
    for train, test in GroupKFold(n_splits=5).split(x, groups=frame["group"]):
        model = LinearRegression(positive=True)
        model.fit(x[train], y[train], sample_weight=relative_weights(y[train]))
        predicted[test] = model.predict(x[test])
    return errors(y, predicted)["mape_pct"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", default="xeon-bfloat16-t1",
                        help="table stem under benchmarks/measured/latency")
    args = parser.parse_args()
    import torch
    table = load_latency_table(MEASURED / f"{args.table}.csv")
    dtypes, threads = table["dtype"].unique(), table["threads"].unique()
    if len(dtypes) != 1 or len(threads) != 1:
        raise SystemExit(f"{args.table}: one dtype and thread count per table, please")
    torch.set_num_threads(int(threads[0]))
    dtype = getattr(torch, dtypes[0])
    timed: dict[tuple, float] = {}
    print(f"{args.table}: {dtypes[0]}, {threads[0]} thread(s); held-out MAPE of the linear "
          "model on its work terms, and with the timed linear layers for bytes and FLOPs")
    for stage in STAGES:
        rows = table[table[f"{stage}_s"].notna()]
        frame = stage_frame(table, stage)
        passes = []
        for record in rows.to_dict("records"):
            shape = shape_of(record, ROLE[stage])
            width = int(record["k"]) + 1 if stage == "verify" else 1
            if (shape, width) not in timed:
                timed[(shape, width)] = linear_pass_s(torch, shape, width, dtype)
            passes.append(timed[(shape, width)])
        frame["linear_s"] = passes
        print(f"  {stage:12s} work terms {held_out_mape(frame, LINEAR_FEATURES):5.1f} %   "
              f"timed linear layers {held_out_mape(frame, TIMED_FEATURES):5.1f} %   "
              f"({len(frame)} samples, {frame['group'].nunique()} shapes)")
    one_row = sorted((shape.layers, shape.hidden, shape.intermediate, seconds)
                     for (shape, width), seconds in timed.items() if width == 1)
    print("  one row through the linear layers, per shape (layers, hidden, intermediate): "
          + ", ".join(f"L{layers}-h{hidden}-i{inter} {seconds * 1e6:.0f} us"
                      for layers, hidden, inter, seconds in one_row))


if __name__ == "__main__":
    main()
