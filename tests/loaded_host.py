"""What timing a loaded host cannot fake, shared by the tests that judge the kernel's links.

netem releases a packet when its timer fires: never early, but late by the timer's latency,
which on a busy 2-core host (and in a TCG router guest above all) grows by a millisecond or
more, and which a bare-path baseline (no timers on its path) does not contain.  Tests judge
the late side with this allowance; the tight figures are the benchmarks' (``benchmarks/``).
"""

from __future__ import annotations


def late_allowance_ms(expected_ms: float) -> float:
    """How late a shaped delay of ``expected_ms`` may land on a loaded host: max(5 ms, 25 %)."""
    return max(5.0, 0.25 * expected_ms)
