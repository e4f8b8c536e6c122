"""The RTT -> K table: the closed form's best K precomputed on an RTT grid, looked up per cycle.

``build_table`` evaluates a ``Calibration`` (``nasd.estimator``, whose ``best_k`` and
``throughputs`` are ``nasd.analytic``'s closed forms) at each RTT of a grid: the best
speculative K in [k_min, k_max] and its predicted tokens/s, beside cloud-only decoding's;
the row's ``k`` is that K, or 0 where cloud-only decoding is predicted faster (past the
reversal RTT).  ``RttTable.row_at`` answers for any RTT with the row of the nearest grid
RTT, and evaluates no closed form per cycle: on an evenly spaced grid (what ``orchestrator
calibrate`` writes) the row's index is arithmetic, O(1); on any other grid a bisection.

The speculative K never decreases as the RTT grows (``nasd.analytic.optimal_k``), and
cloud-only's rate does not depend on the RTT while speculation's falls with it, so the
rows with k = 0 are the grid's tail.

Pure: no I/O, no clocks.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from nasd.analytic import cloud_only_throughput
from nasd.estimator import Calibration

CLOUD_ONLY_K = 0   # a row's k when cloud-only decoding is predicted faster than any K


@dataclass(frozen=True)
class TableRow:
    rtt_ms: float
    k: int                          # the best K, or CLOUD_ONLY_K where cloud-only pays more
    tokens_per_s: float             # the predicted rate of that choice
    spec_k: int                     # the best speculative K in [k_min, k_max]
    spec_tokens_per_s: float        # its predicted rate
    cloud_only_tokens_per_s: float


@dataclass(frozen=True)
class RttTable:
    """Rows on a strictly increasing RTT grid, K within [k_min, k_max] (or 0)."""

    rows: tuple[TableRow, ...]
    k_min: int
    k_max: int

    def __post_init__(self) -> None:
        if not self.rows:
            raise ValueError("a table needs at least one row")
        if not 1 <= self.k_min <= self.k_max:
            raise ValueError(f"need 1 <= k_min <= k_max, got {self.k_min}, {self.k_max}")
        rtts = [row.rtt_ms for row in self.rows]
        if not (0 <= rtts[0] and all(a < b for a, b in zip(rtts, rtts[1:]))
                and math.isfinite(rtts[-1])):
            raise ValueError("rtt_ms must be finite, non-negative and strictly increasing")
        for row in self.rows:
            if not self.k_min <= row.spec_k <= self.k_max:
                raise ValueError(f"rtt {row.rtt_ms:g} ms: spec_k {row.spec_k} is outside "
                                 f"[{self.k_min}, {self.k_max}]")
            if row.k not in (CLOUD_ONLY_K, row.spec_k):
                raise ValueError(f"rtt {row.rtt_ms:g} ms: k must be spec_k ({row.spec_k}) "
                                 f"or {CLOUD_ONLY_K} (cloud-only), got {row.k}")

    @cached_property
    def rtts_ms(self) -> list[float]:
        return [row.rtt_ms for row in self.rows]

    @cached_property
    def step_ms(self) -> float | None:
        """The grid's spacing where it is even (to a part in 1e9), else None."""
        grid = self.rtts_ms
        if len(grid) < 2:
            return None
        step = (grid[-1] - grid[0]) / (len(grid) - 1)
        even = all(math.isclose(b - a, step, rel_tol=1e-9) for a, b in zip(grid, grid[1:]))
        return step if even else None

    def check_range(self, k_min: int, k_max: int) -> None:
        """ValueError unless every K of the table lies within [k_min, k_max]."""
        if not (k_min <= self.k_min and self.k_max <= k_max):
            raise ValueError(f"the table's K range [{self.k_min}, {self.k_max}] is not "
                             f"within [{k_min}, {k_max}]")

    def row_at(self, rtt_ms: float) -> TableRow:
        """The row of the grid RTT nearest ``rtt_ms`` (the end rows beyond the grid; the
        lower row halfway between two)."""
        grid, step = self.rtts_ms, self.step_ms
        if step is not None:
            # the nearest index, halfway rounding down; clamped to the grid
            i = min(max(math.ceil((rtt_ms - grid[0]) / step - 0.5), 0), len(grid) - 1)
            return self.rows[i]
        i = bisect.bisect_left(grid, rtt_ms)
        if i == len(grid) or (i > 0 and rtt_ms - grid[i - 1] <= grid[i] - rtt_ms):
            i -= 1
        return self.rows[i]


def build_table(calibration: Calibration, rtts_ms: Sequence[float], k_min: int,
                k_max: int) -> RttTable:
    """The table of ``calibration`` on the grid ``rtts_ms`` (sorted here) for K in
    [k_min, k_max]."""
    cloud_only = cloud_only_throughput(calibration.times)
    rows = []
    for rtt_ms in sorted(rtts_ms):
        rtt_s = rtt_ms / 1000.0
        spec_k = calibration.best_k(rtt_s, k_min, k_max)
        (spec_rate,) = calibration.throughputs(rtt_s, (spec_k,))
        faster = cloud_only > spec_rate
        rows.append(TableRow(rtt_ms=float(rtt_ms), k=CLOUD_ONLY_K if faster else spec_k,
                             tokens_per_s=float(max(cloud_only, spec_rate)), spec_k=spec_k,
                             spec_tokens_per_s=float(spec_rate),
                             cloud_only_tokens_per_s=float(cloud_only)))
    return RttTable(tuple(rows), k_min, k_max)
