"""Precise waiting on the monotonic clock.

The link emulator releases messages and the synthetic backend occupies its
modeled compute time; both need sub-millisecond accuracy, which neither
``time.sleep`` (it overshoots by tens of microseconds or more) nor ZeroMQ's
millisecond poll gives.  Sleep coarsely, then spin the last stretch.
"""

import time

SPIN_S = 0.0002

now = time.perf_counter


def sleep_until(deadline: float) -> None:
    """Return at ``deadline`` (a ``perf_counter`` time), or at once if it has passed."""
    remaining = deadline - now()
    if remaining > SPIN_S:
        time.sleep(remaining - SPIN_S)
    while now() < deadline:
        pass
