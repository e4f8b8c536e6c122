"""netem and tbf settings for one direction, from its ``DirectionSpec``: pure math, no I/O.

The units are the kernel's (ns and 64 ns psched ticks, bytes/s, percentages as
fractions of 2^32-1) and the rules iproute2's, so the requests
``shaping.qdisc.messages`` builds from these equal what ``tc`` would send.

What netem does with them that the sim link (``shaping.link_model``) does not:

- it picks the table entry (or the uniform offset) as the correlated random
  number *modulo* the table size (or 2 x jitter), which keeps little of
  ``delay_correlation_pct``;
- re-sending the Gilbert-Elliott model (every change does) restarts the chain
  in the good state, and a change without ``TCA_NETEM_PRNG_SEED`` reseeds
  netem's generator on kernels that reseed in ``netem_change``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shaping.link_model import HEADER_BYTES, JITTER_TABLES, NETEM_DIST_SCALE, default_burst_bytes
from shaping.profile import DirectionSpec, GilbertElliottLoss, NetworkProfile, RandomLoss

# Kernel units and limits (uapi <linux/pkt_sched.h>, include/net/pkt_sched.h)
UINT32_MAX = 0xFFFF_FFFF
INT32_MAX = 0x7FFF_FFFF
NSEC_PER_SEC = 1_000_000_000
PSCHED_TICK_NS = 64                 # PSCHED_SHIFT = 6

# Queue sizes (``queue_latency_s``, ``netem_limit_packets``)
QUEUE_FLOOR_S = 0.050
MIN_PACKET_BYTES = HEADER_BYTES     # a pure ACK on the wire
UNSHAPED_RATE_BYTES_PER_S = 10e9 / 8
NETEM_LIMIT_MIN = 1000
NETEM_LIMIT_MAX = 1_000_000

# In order unless ``allow_reordering``.  netem draws a delay per packet and releases packets
# in time-to-send order, so jitter (and a change that lowers the delay) reorders them, which
# TCP takes for loss (dup-ACKs, spurious retransmits).  With a rate set, netem computes each
# send time from the last queued packet, ``t_send = max(now + delay, t_last) + len / rate``,
# so send times never decrease: a packet whose draw is shorter than its predecessor's waits
# for it (as TCP would make the data wait anyway).  At 2^32-1 bytes/s (34.4 Gbit/s) that adds
# 0.35 us per full frame; rate 0 switches the rate code off.  (A pfifo child, the old recipe,
# does not help on current kernels: netem's tfifo sorts by time before the child sees a packet.)
IN_ORDER_RATE_BYTES_PER_S = UINT32_MAX

# A change *to* uniform jitter sends this table, as the kernel keeps the table it has when a
# change carries none and cannot drop one: 4096 evenly spaced entries over +-1 jitter (netem
# reads NETEM_DIST_SCALE as one jitter), netem's own uniform draw to 1/2048 of the jitter.
UNIFORM_TABLE: tuple[int, ...] = tuple(4 * i + 2 - NETEM_DIST_SCALE for i in range(4096))


# Unit conversions ----------------------------------------------------------------

def percent_u32(pct: float) -> int:
    """iproute2's ``set_percent``: ``rint(pct / 100 * (2^32 - 1))``; 100 % -> 2^32 - 1."""
    return min(UINT32_MAX, max(0, round(pct / 100.0 * UINT32_MAX)))


def ms_to_ns(ms: float) -> int:
    return round(ms * 1_000_000)


def ns_to_ticks(ns: int) -> int:
    """psched ticks, saturating at 2^32-1 (the 32-bit fields of the old qopt structs)."""
    return min(UINT32_MAX, ns // PSCHED_TICK_NS)


# What needs netem ----------------------------------------------------------------

def needs_netem(spec: DirectionSpec) -> bool:
    return spec.delay_ms > 0 or spec.jitter_ms > 0 or not spec.loss.is_lossless


def profile_needs_netem(profile: NetworkProfile) -> bool:
    """Whether any state of the profile, in either direction, needs netem."""
    states = [profile.initial, *profile.timeline]
    return any(needs_netem(state.uplink) or needs_netem(state.downlink) for state in states)


# tbf ------------------------------------------------------------------------------

def jitter_reach_s(spec: DirectionSpec) -> float:
    """How far from the mean a delay draw can land, in seconds: ``jitter_ms`` for uniform
    jitter, the table's farthest entry for the others (``JitterTable.reach_sigmas``: 3.7
    sigma for normal, 23 for pareto)."""
    sigmas = (1.0 if spec.jitter_distribution == "uniform"
              else JITTER_TABLES[spec.jitter_distribution].reach_sigmas)
    return sigmas * spec.jitter_ms / 1000.0


def queue_latency_s(spec: DirectionSpec) -> float:
    """How much rate backlog tbf holds, in seconds of its rate: ``50 ms + 2 * (delay +
    jitter reach)``.

    That is the bandwidth-delay product of a round trip of twice this
    direction's worst one-way delay (the other direction assumed similar), so
    a window-limited TCP sender keeps the bottleneck busy after a
    multiplicative decrease (Reno needs 1 BDP of buffer, CUBIC 0.43), plus a
    50 ms floor for short paths.
    """
    return QUEUE_FLOOR_S + 2.0 * (spec.delay_ms / 1000.0 + jitter_reach_s(spec))


@dataclass(frozen=True)
class TbfParams:
    rate_bytes_per_s: int
    burst_bytes: int
    limit_bytes: int

    @property
    def buffer_ticks(self) -> int:
        """The burst as a time at the rate, in psched ticks (``tc_tbf_qopt.buffer``)."""
        return ns_to_ticks(self.burst_bytes * NSEC_PER_SEC // self.rate_bytes_per_s)


def tbf_params(spec: DirectionSpec) -> TbfParams | None:
    """tbf settings for a direction; None when it has no bandwidth limit.

    In wire bytes, as tbf counts them (Ethernet + IP + TCP headers + payload,
    66 + 1448 per full frame): rate ``R = bandwidth_mbps * 1e6 / 8``; burst
    ``burst_bytes`` or ``shaping.link_model.default_burst_bytes(R)`` (two full
    frames, and at least one 1 ms timer tick of rate); queue limit the burst
    plus ``ceil(R * queue_latency_s)``.
    """
    if spec.bandwidth_mbps is None:
        return None
    rate = max(1, round(spec.rate_bytes_per_s))
    burst = spec.burst_bytes if spec.burst_bytes is not None else default_burst_bytes(rate)
    limit = burst + math.ceil(rate * queue_latency_s(spec))
    if limit > UINT32_MAX:
        raise ValueError(f"tbf limit {limit} bytes does not fit in 32 bits "
                         "(bandwidth_mbps x delay too large)")
    return TbfParams(rate_bytes_per_s=rate, burst_bytes=burst, limit_bytes=limit)


# netem ----------------------------------------------------------------------------

@dataclass(frozen=True)
class NetemParams:
    latency_ns: int
    jitter_ns: int
    limit_packets: int
    loss_u32: int
    delay_corr_u32: int
    gemodel: tuple[int, int, int, int] | None    # p, r, h, k1
    in_order_rate: int                            # bytes/s; 0 = netem's rate code off
    dist_table: tuple[int, ...] | None

    @property
    def latency_ticks(self) -> int:
        return ns_to_ticks(self.latency_ns)

    @property
    def jitter_ticks(self) -> int:
        return ns_to_ticks(self.jitter_ns)


def netem_limit_packets(spec: DirectionSpec) -> int:
    """netem's ``limit``, in packets of its time queue: all that can be in flight in the
    delay line plus tbf's backlog, counted in the smallest TCP packets (pure ACKs, 66 bytes)
    at the direction's rate (an unshaped one: a 10 Gbit/s line), within [1000, 1 000 000]."""
    rate = spec.rate_bytes_per_s if spec.bandwidth_mbps is not None else UNSHAPED_RATE_BYTES_PER_S
    in_flight_s = spec.delay_ms / 1000.0 + jitter_reach_s(spec)
    if spec.bandwidth_mbps is not None:
        in_flight_s += queue_latency_s(spec)
    packets = math.ceil(rate * in_flight_s / MIN_PACKET_BYTES)
    return min(NETEM_LIMIT_MAX, max(NETEM_LIMIT_MIN, packets))


def netem_jitter(spec: DirectionSpec, for_change: bool = False) -> tuple[int, tuple | None]:
    """The jitter netem gets (ns) and its distribution table (None: netem's uniform draw).

    The tables are ``shaping.link_model.JITTER_TABLES``, the ones the sim link
    draws from, not iproute2's files (``JitterTable`` says why).  netem adds
    ``jitter * entry / 8192`` to the delay, so a table of ``units_per_sigma``
    units per sigma gets the jitter scaled by ``8192 / units_per_sigma``: the
    delivered sigma is ``jitter_ms``.  The kernel caps the jitter at 2^31-1 ns
    (2.1 s); more is refused here.  ``for_change``: uniform jitter gets
    ``UNIFORM_TABLE``.
    """
    if spec.jitter_ms == 0:
        return 0, None
    if spec.jitter_distribution == "uniform":
        jitter_ns, table = ms_to_ns(spec.jitter_ms), UNIFORM_TABLE if for_change else None
    else:
        jitter_table = JITTER_TABLES[spec.jitter_distribution]
        jitter_ns = round(ms_to_ns(spec.jitter_ms) * NETEM_DIST_SCALE
                          / jitter_table.units_per_sigma)
        table = jitter_table.entries
    if jitter_ns > INT32_MAX:
        limit_ms = spec.jitter_ms * INT32_MAX / jitter_ns
        raise ValueError(f"jitter_ms {spec.jitter_ms} is above netem's limit of "
                         f"{limit_ms:.0f} ms for {spec.jitter_distribution} jitter")
    return jitter_ns, table


def netem_params(spec: DirectionSpec, *, for_change: bool = False) -> NetemParams:
    """netem settings for a direction (``for_change``: a change of a live qdisc).

    Gilbert-Elliott loss is ``tc_netem_gemodel {p, r, h, k1}``: ``p =
    P(good->bad)``, ``r = P(bad->good)``, ``h = 2^32-1 - u32(loss in bad)``
    (iproute2 takes ``1-h`` and inverts it), ``k1 = u32(loss in good)``; the
    qopt's random loss is then 0.
    """
    jitter_ns, table = netem_jitter(spec, for_change)
    loss = spec.loss
    if isinstance(loss, RandomLoss):
        loss_u32, gemodel = percent_u32(loss.pct), None
    elif isinstance(loss, GilbertElliottLoss):
        loss_u32 = 0
        gemodel = (percent_u32(loss.p_good_to_bad_pct), percent_u32(loss.r_bad_to_good_pct),
                   UINT32_MAX - percent_u32(loss.loss_in_bad_pct),
                   percent_u32(loss.loss_in_good_pct))
    else:   # pragma: no cover - the profile schema has only these two
        raise TypeError(f"unknown loss model {loss!r}")
    return NetemParams(
        latency_ns=ms_to_ns(spec.delay_ms),
        jitter_ns=jitter_ns,
        limit_packets=netem_limit_packets(spec),
        loss_u32=loss_u32,
        delay_corr_u32=percent_u32(spec.delay_correlation_pct),
        gemodel=gemodel,
        in_order_rate=0 if spec.allow_reordering else IN_ORDER_RATE_BYTES_PER_S,
        dist_table=table,
    )


def kernel_shaping_problem(profile: NetworkProfile) -> str | None:
    """What of ``profile`` the kernel's netem and tbf cannot take (``<when>: <direction>:
    <why>``), or None: checked as a kernel mode is chosen, before anything is created."""
    for state in (profile.initial, *profile.timeline):
        for direction in ("uplink", "downlink"):
            spec = getattr(state, direction)
            try:
                tbf_params(spec)
                netem_params(spec)
            except ValueError as error:
                when = f"the step at {state.at_s:g} s" if hasattr(state, "at_s") else "initial"
                return f"{when}: {direction}: {error}"
    return None


__all__ = [
    "IN_ORDER_RATE_BYTES_PER_S", "NETEM_LIMIT_MAX", "NETEM_LIMIT_MIN", "UINT32_MAX",
    "UNIFORM_TABLE", "NetemParams", "TbfParams", "jitter_reach_s", "kernel_shaping_problem",
    "ms_to_ns", "needs_netem",
    "netem_jitter", "netem_limit_packets", "netem_params", "ns_to_ticks", "percent_u32",
    "profile_needs_netem", "queue_latency_s", "tbf_params",
]
