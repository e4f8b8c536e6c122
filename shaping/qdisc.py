"""Kernel shaping of one link direction: netem and tbf on a veth end's egress.

Everything goes over rtnetlink through pyroute2; nothing shells out to ``tc``.
pyroute2's own netem request has no distribution table and no Gilbert-Elliott
loss, and its tbf request has no ``TCA_TBF_BURST``/``TCA_TBF_RATE64``, so this
module defines its own ``tcmsg`` whose ``TCA_OPTIONS`` are encoded by
``NetemOptions``/``TbfOptions`` below, laid out as in the kernel uapi
``<linux/pkt_sched.h>``.

Layout (per veth end, i.e. per direction)
-----------------------------------------
With netem (kernels that have ``sch_netem``)::

    root 1: netem  (delay, jitter + distribution, correlation, loss)
      `- 10: tbf   (rate), at netem's class 1:1, only when bandwidth_mbps is set

Without netem (this kind of host: ``sch_netem`` missing): ``root 1: tbf``
alone, and a spec that needs netem (delay, jitter or loss) raises
``NetemUnavailable`` before anything is touched.

When netem is available it is always the root, even at zero delay, so a
schedule change never has to swap the root qdisc: ``change_direction`` is a
netlink *change* of netem (``RTM_NEWQDISC`` without ``NLM_F_CREATE``, i.e.
``tc qdisc change``), plus change/add/delete of the tbf child when the rate
appears or disappears.

Why netem above tbf
-------------------
netem stamps every packet with its send time when it is enqueued, whatever
sits above or below it, so both orders give "delay, then rate" and neither
makes the delay depend on the rate.  The difference is the queues: with netem
as the root, netem's time-ordered queue holds only packets still in their
delay (its packet ``limit`` sized from rate x delay) and tbf's byte FIFO holds
the rate backlog (its byte ``limit`` sized from the bandwidth-delay product),
so each queue limit means one thing.  With tbf as the root, tbf's own FIFO is
replaced by netem and one packet limit would have to cover both.  netem over
tbf is also the arrangement the netem documentation shows.  (Consequence: for
a constant delay this equals rate-then-delay exactly, as the token bucket is
shift invariant; with jitter the jitter is applied before the bucket, so a
backlogged bucket smooths it.  ``shaping.link`` models rate-then-delay.)

Reordering
----------
netem draws a delay per packet and releases packets in time-to-send order, so
jitter (and a schedule change that lowers the delay) reorders packets, which
TCP sees as loss (dup-ACKs, spurious retransmits).  Unless
``allow_reordering`` is set, netem gets a ``rate`` of 2^32-1 bytes/s
(34.4 Gbit/s): with a rate set, netem computes each packet's send time from
the last queued packet, ``t_send = max(now + delay, t_last) + len / rate``,
so send times never decrease and packets leave in order (a packet whose draw
is shorter than its predecessor's waits for it, as TCP would make the data
wait anyway).  ``len / rate`` adds 0.35 us per full frame.  The old recipe of
a pfifo child does not help on current kernels: netem's internal tfifo sorts
by time before anything reaches the child.  With ``allow_reordering`` the
rate is sent as 0, which switches the rate code off again.

Queue sizes and burst
---------------------
tbf (all in wire bytes as tbf counts them: Ethernet + IP + TCP headers +
payload, 66 + 1448 per full frame):

- rate ``R = bandwidth_mbps * 1e6 / 8``;
- burst ``B = burst_bytes`` or ``shaping.link.default_burst_bytes(R)`` (two
  full frames, and at least one timer tick (1 ms) of rate), sent exactly as
  ``TCA_TBF_BURST``;
- queue ``limit = B + ceil(R * L)`` bytes with
  ``L = 50 ms + 2 * (delay + jitter_reach)``: the bandwidth-delay product for
  a round trip of twice this direction's worst one-way delay (the other
  direction is assumed similar), so a window-limited TCP sender keeps the
  bottleneck busy after a multiplicative decrease (Reno needs 1 BDP of
  buffer, CUBIC 0.43), plus a 50 ms floor for short paths.
  ``jitter_reach`` is ``jitter_ms`` for uniform jitter and the table's
  farthest entry for the table distributions (``JitterTable.reach_sigmas``
  times ``jitter_ms``: 3.7 for normal, 23 for pareto).

netem ``limit`` (packets, counted in its time queue): everything that can be
in flight in the delay line plus tbf's backlog, counted in the smallest TCP
packets (pure ACKs, 66 bytes) at the direction's rate:
``ceil(R * (delay + jitter_reach + L) / 66)`` clamped to [1000, 1 000 000];
unshaped directions assume a 10 Gbit/s line.

Encodings (what ``tc`` sends)
-----------------------------
- ``tc_netem_qopt.latency``/``.jitter``: psched ticks (64 ns), saturating at
  2^32-1, as iproute2 <= 6.8 sends them; plus ``TCA_NETEM_LATENCY64`` and
  ``TCA_NETEM_JITTER64`` in nanoseconds (s64), as iproute2 >= 6.9 sends them.
  Kernels >= 4.15 use the 64-bit values; both agree.  The jitter sent is
  ``netem_jitter``'s (scaled for the table distributions, below); the kernel
  caps it at 2^31-1 ns (2.1 s), and larger values are refused here.
- percentages: ``rint(pct / 100 * (2^32 - 1))`` (iproute2's ``set_percent``).
- ``TCA_NETEM_CORR`` (delay correlation) and ``TCA_NETEM_RATE`` are always
  sent, zeros included: a netlink change keeps the old value of any
  attribute that is absent, so omitting them would leave a previous
  correlation or in-order rate in force.
- Gilbert-Elliott: nested ``TCA_NETEM_LOSS | NLA_F_NESTED`` holding
  ``NETEM_LOSS_GE`` = ``tc_netem_gemodel {p, r, h, k1}`` with
  ``p = P(good->bad)``, ``r = P(bad->good)``, ``h = 2^32-1 - u32(loss in bad)``
  (iproute2 takes ``1-h`` and inverts it), ``k1 = u32(loss in good)``;
  ``qopt.loss`` = 0.  An absent ``TCA_NETEM_LOSS`` resets the kernel to
  random loss, so random loss needs no extra attribute.
- ``TCA_NETEM_DELAY_DIST``: the s16 entries of ``shaping.link.JITTER_TABLES``
  (4096 entries, ``units_per_sigma`` per sigma), sent when jitter > 0 and
  the distribution is not uniform, with the jitter scaled by
  ``8192 / units_per_sigma`` (netem reads 8192 as one jitter).  iproute2's
  own ``.dist`` files use 8192 per sigma, which clips pareto's tail at 4
  sigma (int16) and delivers about 0.82 of the configured sigma; these
  tables fit their whole tail, and the sim link draws from the same ones,
  so both legs share one jitter law.  The kernel keeps the old
  table when a change carries none and has no way to drop a table, so a
  *change* to uniform jitter sends ``UNIFORM_TABLE`` (4096 evenly spaced
  entries over +-1 sigma), equal to netem's built-in uniform draw to 1/2048
  of the jitter.

Kernel behaviour that ``shaping.link`` does not share
-----------------------------------------------------
- netem picks the table entry (or the uniform offset) as the correlated
  random number *modulo* the table size (or 2 x jitter), which keeps little
  of ``delay_correlation_pct``.
- Re-sending the Gilbert-Elliott model (every change does) restarts the
  chain in the good state, and a change without ``TCA_NETEM_PRNG_SEED``
  reseeds netem's generator on kernels that reseed in ``netem_change``.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import struct
from dataclasses import dataclass

from pyroute2 import IPRoute, netns
from pyroute2.netlink import (NLA_F_NESTED, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
                              NLM_F_REQUEST, nla, nlmsg)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELQDISC, RTM_NEWQDISC, TC_H_ROOT

from shaping import topology
from shaping.link import HEADER_BYTES, JITTER_TABLES, NETEM_DIST_SCALE, default_burst_bytes
from shaping.profile import DirectionSpec, GilbertElliottLoss, LinkState, NetworkProfile, RandomLoss

log = logging.getLogger(__name__)

# Kernel constants (uapi <linux/pkt_sched.h>, include/net/pkt_sched.h) ---------

UINT32_MAX = 0xFFFF_FFFF
INT32_MAX = 0x7FFF_FFFF
NSEC_PER_SEC = 1_000_000_000
PSCHED_TICK_NS = 64                 # PSCHED_SHIFT = 6
NETEM_DIST_MAX = 16384
NETEM_LOSS_GE = 2
TC_LINKLAYER_ETHERNET = 1

# Our layout ---------------------------------------------------------------------

ROOT_HANDLE = 0x0001_0000           # "1:"
TBF_CHILD_PARENT = 0x0001_0001      # "1:1", netem's single class
TBF_CHILD_HANDLE = 0x0010_0000      # "10:"

QUEUE_FLOOR_S = 0.050
MIN_PACKET_BYTES = HEADER_BYTES     # a pure ACK on the wire
UNSHAPED_RATE_BYTES_PER_S = 10e9 / 8
NETEM_LIMIT_MIN = 1000
NETEM_LIMIT_MAX = 1_000_000
IN_ORDER_RATE_BYTES_PER_S = UINT32_MAX

_ADD_FLAGS = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
_CHANGE_FLAGS = NLM_F_REQUEST | NLM_F_ACK          # `tc qdisc change`
_DELETE_FLAGS = NLM_F_REQUEST | NLM_F_ACK


class NetemUnavailable(RuntimeError):
    """The spec needs netem (delay, jitter or loss) and this kernel has no sch_netem."""


# Unit conversions ----------------------------------------------------------------

def percent_u32(pct: float) -> int:
    """iproute2's ``set_percent``: 0 % -> 0, 100 % -> 2^32 - 1."""
    return min(UINT32_MAX, max(0, round(pct / 100.0 * UINT32_MAX)))


def ms_to_ns(ms: float) -> int:
    return round(ms * 1_000_000)


def ns_to_ticks(ns: int) -> int:
    return min(UINT32_MAX, ns // PSCHED_TICK_NS)


# Distribution tables ---------------------------------------------------------------
#
# The table distributions come from ``shaping.link.JITTER_TABLES`` (the sim link draws from the
# same tables), not from iproute2's files; uniform jitter is netem's own draw, and a change *to*
# uniform jitter sends this table (the kernel cannot drop a table it has).

UNIFORM_TABLE: tuple[int, ...] = tuple(4 * i + 2 - NETEM_DIST_SCALE for i in range(4096))


# Parameters ------------------------------------------------------------------------

def needs_netem(spec: DirectionSpec) -> bool:
    return spec.delay_ms > 0 or spec.jitter_ms > 0 or not spec.loss.is_lossless


def profile_needs_netem(profile: NetworkProfile) -> bool:
    """Whether any state of the profile, in either direction, needs netem."""
    states = [profile.initial, *profile.timeline]
    return any(needs_netem(state.uplink) or needs_netem(state.downlink) for state in states)


def jitter_reach_s(spec: DirectionSpec) -> float:
    """How far from the mean a delay draw can land, in seconds."""
    sigmas = (1.0 if spec.jitter_distribution == "uniform"
              else JITTER_TABLES[spec.jitter_distribution].reach_sigmas)
    return sigmas * spec.jitter_ms / 1000.0


def queue_latency_s(spec: DirectionSpec) -> float:
    """How much rate backlog tbf holds, in seconds of its rate (see the module doc)."""
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
    """tbf settings for a direction; None when it has no bandwidth limit."""
    if spec.bandwidth_mbps is None:
        return None
    rate = max(1, round(spec.rate_bytes_per_s))
    burst = spec.burst_bytes if spec.burst_bytes is not None else default_burst_bytes(rate)
    limit = burst + math.ceil(rate * queue_latency_s(spec))
    if limit > UINT32_MAX:
        raise ValueError(f"tbf limit {limit} bytes does not fit in 32 bits "
                         "(bandwidth_mbps x delay too large)")
    return TbfParams(rate_bytes_per_s=rate, burst_bytes=burst, limit_bytes=limit)


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
    rate = spec.rate_bytes_per_s if spec.bandwidth_mbps is not None else UNSHAPED_RATE_BYTES_PER_S
    in_flight_s = spec.delay_ms / 1000.0 + jitter_reach_s(spec)
    if spec.bandwidth_mbps is not None:
        in_flight_s += queue_latency_s(spec)
    packets = math.ceil(rate * in_flight_s / MIN_PACKET_BYTES)
    return min(NETEM_LIMIT_MAX, max(NETEM_LIMIT_MIN, packets))


def netem_jitter(spec: DirectionSpec, for_change: bool = False) -> tuple[int, tuple | None]:
    """The jitter netem gets (ns) and its distribution table (None: netem's uniform draw).

    netem adds ``jitter * entry / 8192`` to the delay, so a table of
    ``units_per_sigma`` units per sigma gets the jitter scaled by
    ``8192 / units_per_sigma``: the delivered sigma is ``jitter_ms``.
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
    """netem settings for a direction (``for_change``: a change of a live qdisc)."""
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


# Netlink messages -------------------------------------------------------------------

class NetemOptions(nla):
    """``TCA_OPTIONS`` of netem: ``struct tc_netem_qopt`` then ``TCA_NETEM_*`` attributes."""

    fields = (
        ("latency", "I"),
        ("limit", "I"),
        ("loss", "I"),
        ("gap", "I"),
        ("duplicate", "I"),
        ("jitter", "I"),
    )
    nla_map = (
        ("TCA_NETEM_UNSPEC", "none"),
        ("TCA_NETEM_CORR", "netem_corr"),
        ("TCA_NETEM_DELAY_DIST", "cdata"),
        ("TCA_NETEM_REORDER", "netem_pair"),
        ("TCA_NETEM_CORRUPT", "netem_pair"),
        ("TCA_NETEM_LOSS", "netem_loss"),
        ("TCA_NETEM_RATE", "netem_rate"),
        ("TCA_NETEM_ECN", "uint32"),
        ("TCA_NETEM_RATE64", "uint64"),
        ("TCA_NETEM_PAD", "hex"),
        ("TCA_NETEM_LATENCY64", "int64"),
        ("TCA_NETEM_JITTER64", "int64"),
        ("TCA_NETEM_SLOT", "hex"),
        ("TCA_NETEM_SLOT_DIST", "hex"),
        ("TCA_NETEM_PRNG_SEED", "uint64"),
    )

    class netem_corr(nla):
        fields = (("delay_corr", "I"), ("loss_corr", "I"), ("dup_corr", "I"))

    class netem_pair(nla):
        fields = (("probability", "I"), ("correlation", "I"))

    class netem_rate(nla):
        fields = (("rate", "I"), ("packet_overhead", "i"),
                  ("cell_size", "I"), ("cell_overhead", "i"))

    class netem_loss(nla):
        nla_flags = NLA_F_NESTED
        nla_map = (
            ("NETEM_LOSS_UNSPEC", "none"),
            ("NETEM_LOSS_GI", "netem_gimodel"),
            ("NETEM_LOSS_GE", "netem_gemodel"),
        )

        class netem_gimodel(nla):
            fields = (("p13", "I"), ("p31", "I"), ("p32", "I"), ("p14", "I"), ("p23", "I"))

        class netem_gemodel(nla):
            fields = (("p", "I"), ("r", "I"), ("h", "I"), ("k1", "I"))


_RATESPEC = (("cell_log", "B"), ("linklayer", "B"), ("overhead", "H"),
             ("cell_align", "h"), ("mpu", "H"), ("rate", "I"))


class TbfOptions(nla):
    """``TCA_OPTIONS`` of tbf: nested ``TCA_TBF_*`` attributes."""

    nla_map = (
        ("TCA_TBF_UNSPEC", "none"),
        ("TCA_TBF_PARMS", "tbf_qopt"),
        ("TCA_TBF_RTAB", "hex"),
        ("TCA_TBF_PTAB", "hex"),
        ("TCA_TBF_RATE64", "uint64"),
        ("TCA_TBF_PRATE64", "uint64"),
        ("TCA_TBF_BURST", "uint32"),
        ("TCA_TBF_PBURST", "uint32"),
        ("TCA_TBF_PAD", "hex"),
    )

    class tbf_qopt(nla):
        fields = tuple((f"rate_{name}", fmt) for name, fmt in _RATESPEC) + tuple(
            (f"peak_{name}", fmt) for name, fmt in _RATESPEC) + (
            ("limit", "I"), ("buffer", "I"), ("mtu", "I"))


_OPTIONS_BY_KIND = {"netem": NetemOptions, "tbf": TbfOptions}


class ShapingTcmsg(nlmsg):
    """``struct tcmsg`` whose options use the classes above (requests only)."""

    prefix = "TCA_"
    fields = (
        ("family", "B"),
        ("pad1", "B"),
        ("pad2", "H"),
        ("index", "i"),
        ("handle", "I"),
        ("parent", "I"),
        ("info", "I"),
    )
    nla_map = (
        ("TCA_UNSPEC", "none"),
        ("TCA_KIND", "asciiz"),
        ("TCA_OPTIONS", "get_options"),
    )

    @staticmethod
    def get_options(self, *argv, **kwarg):
        return _OPTIONS_BY_KIND[self.get_attr("TCA_KIND")]


def _tcmsg(kind: str | None, ifindex: int, handle: int, parent: int,
           options: dict | None = None) -> ShapingTcmsg:
    msg = ShapingTcmsg()
    msg["family"] = 0    # AF_UNSPEC
    msg["index"] = ifindex
    msg["handle"] = handle
    msg["parent"] = parent
    msg["attrs"] = []
    if kind is not None:
        msg["attrs"].append(["TCA_KIND", kind])
    if options is not None:
        msg["attrs"].append(["TCA_OPTIONS", options])
    return msg


def netem_options(params: NetemParams) -> dict:
    attrs: list[list] = [
        ["TCA_NETEM_LATENCY64", params.latency_ns],
        ["TCA_NETEM_JITTER64", params.jitter_ns],
        ["TCA_NETEM_CORR", {"delay_corr": params.delay_corr_u32, "loss_corr": 0, "dup_corr": 0}],
    ]
    if params.gemodel is not None:
        p, r, h, k1 = params.gemodel
        attrs.append(["TCA_NETEM_LOSS", {"attrs": [
            ["NETEM_LOSS_GE", {"p": p, "r": r, "h": h, "k1": k1}]]}])
    attrs.append(["TCA_NETEM_RATE", {"rate": params.in_order_rate, "packet_overhead": 0,
                                     "cell_size": 0, "cell_overhead": 0}])
    if params.dist_table is not None:
        attrs.append(["TCA_NETEM_DELAY_DIST",
                      struct.pack(f"={len(params.dist_table)}h", *params.dist_table)])
    return {
        "latency": params.latency_ticks,
        "limit": params.limit_packets,
        "loss": params.loss_u32,
        "gap": 0,
        "duplicate": 0,
        "jitter": params.jitter_ticks,
        "attrs": attrs,
    }


def tbf_options(params: TbfParams) -> dict:
    rate32 = min(params.rate_bytes_per_s, UINT32_MAX)
    qopt = {f"rate_{name}": 0 for name, _ in _RATESPEC}
    qopt.update({f"peak_{name}": 0 for name, _ in _RATESPEC})
    qopt.update({"rate_linklayer": TC_LINKLAYER_ETHERNET, "rate_rate": rate32,
                 "limit": params.limit_bytes, "buffer": params.buffer_ticks, "mtu": 0})
    attrs: list[list] = [["TCA_TBF_PARMS", qopt]]
    if params.rate_bytes_per_s >= 1 << 32:
        attrs.append(["TCA_TBF_RATE64", params.rate_bytes_per_s])
    attrs.append(["TCA_TBF_BURST", params.burst_bytes])
    return {"attrs": attrs}


def netem_message(ifindex: int, params: NetemParams, *, handle: int = ROOT_HANDLE,
                  parent: int = TC_H_ROOT) -> ShapingTcmsg:
    return _tcmsg("netem", ifindex, handle, parent, netem_options(params))


def tbf_message(ifindex: int, params: TbfParams, *, handle: int = ROOT_HANDLE,
                parent: int = TC_H_ROOT) -> ShapingTcmsg:
    return _tcmsg("tbf", ifindex, handle, parent, tbf_options(params))


def encode(msg: ShapingTcmsg, msg_type: int = RTM_NEWQDISC, flags: int = _ADD_FLAGS) -> bytes:
    """The wire bytes of a request (nlmsghdr + tcmsg + attributes), for tests and logs."""
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = flags
    msg.encode()
    return bytes(msg.data)


def _send(ipr: IPRoute, msg: ShapingTcmsg, msg_type: int, flags: int) -> None:
    """Send one request and wait for its ACK (raises ``NetlinkError`` on a NACK)."""
    # pyroute2 0.9's sync IPRoute never sets the status key its nlm_request reads.
    if isinstance(ipr, IPRoute) and "nlm_generator" not in ipr.asyncore.status:
        ipr.asyncore.status["nlm_generator"] = False
    tuple(ipr.nlm_request(msg, msg_type=msg_type, msg_flags=flags))


# Reading what is there ----------------------------------------------------------------

@dataclass(frozen=True)
class QdiscInfo:
    kind: str
    handle: int
    parent: int
    options: dict
    bytes_sent: int
    packets_sent: int = 0
    drops: int = 0          # netem counts the packets its loss model drops here


def current_qdiscs(ipr: IPRoute, ifindex: int) -> list[QdiscInfo]:
    found = []
    for msg in ipr.tc("dump"):
        if msg["index"] != ifindex:
            continue
        options = msg.get_attr("TCA_OPTIONS")
        stats = msg.get_attr("TCA_STATS2")
        basic = stats.get_attr("TCA_STATS_BASIC") if stats is not None else None
        queue = stats.get_attr("TCA_STATS_QUEUE") if stats is not None else None
        found.append(QdiscInfo(
            kind=msg.get_attr("TCA_KIND"),
            handle=msg["handle"],
            parent=msg["parent"],
            options=dict(options) if options is not None else {},
            bytes_sent=basic["bytes"] if basic is not None else 0,
            packets_sent=basic["packets"] if basic is not None else 0,
            drops=queue["drops"] if queue is not None else 0,
        ))
    return found


def _root(qdiscs: list[QdiscInfo]) -> QdiscInfo | None:
    """Our root qdisc, or None when the device runs its default (handle 0:)."""
    for qdisc in qdiscs:
        if qdisc.parent == TC_H_ROOT and qdisc.handle != 0:
            return qdisc
    return None


def _child(qdiscs: list[QdiscInfo]) -> QdiscInfo | None:
    for qdisc in qdiscs:
        if qdisc.parent == TBF_CHILD_PARENT:
            return qdisc
    return None


# Applying --------------------------------------------------------------------------------

def _add_netem(ipr: IPRoute, ifindex: int, spec: DirectionSpec) -> None:
    msg = netem_message(ifindex, netem_params(spec))
    try:
        _send(ipr, msg, RTM_NEWQDISC, _ADD_FLAGS)
    except NetlinkError as error:
        if error.code in (errno.ENOENT, errno.EOPNOTSUPP):
            raise NetemUnavailable(f"the kernel refused netem: {error}") from error
        raise


def apply_direction(ipr: IPRoute, ifindex: int, spec: DirectionSpec, *,
                    use_netem: bool | None = None) -> str:
    """Shape the egress of ``ifindex`` (in ``ipr``'s namespace) as ``spec`` says.

    Replaces whatever root qdisc is there.  ``use_netem``: None picks netem
    when the kernel has it; True insists; False forbids it (then a spec that
    needs netem is refused).  Returns the layout: ``"netem+tbf"``,
    ``"netem"``, ``"tbf"`` or ``"none"``.
    """
    if use_netem is None:
        use_netem = netem_available()
    if needs_netem(spec) and not use_netem:
        raise NetemUnavailable(
            "delay, jitter and loss need sch_netem, which this kernel lacks "
            "(use the vm or sim mode)")
    tbf = tbf_params(spec)
    if use_netem:
        netem_params(spec)      # validates (jitter range, table files) before touching anything
    remove(ipr, ifindex)
    try:
        if use_netem:
            _add_netem(ipr, ifindex, spec)
            if tbf is not None:
                _send(ipr, tbf_message(ifindex, tbf, handle=TBF_CHILD_HANDLE,
                                       parent=TBF_CHILD_PARENT), RTM_NEWQDISC, _ADD_FLAGS)
            return "netem+tbf" if tbf is not None else "netem"
        if tbf is not None:
            _send(ipr, tbf_message(ifindex, tbf), RTM_NEWQDISC, _ADD_FLAGS)
            return "tbf"
        return "none"
    except BaseException:
        remove(ipr, ifindex)
        raise


@dataclass(frozen=True)
class Request:
    """One netlink request: a message, its type and its flags."""

    msg: ShapingTcmsg
    msg_type: int
    flags: int


def change_requests(layout: str, ifindex: int, spec: DirectionSpec) -> list[Request] | None:
    """The requests that move a direction shaped as ``layout`` to ``spec`` in place (pure).

    netem and tbf keep their queues; only the tbf child is added or deleted
    when the rate limit appears or disappears.  None where the root cannot
    express ``spec`` (nothing applied yet, or a tbf-only root and a spec that
    needs netem): that takes ``apply_direction``.
    """
    tbf = tbf_params(spec)
    child_msg = (tbf_message(ifindex, tbf, handle=TBF_CHILD_HANDLE, parent=TBF_CHILD_PARENT)
                 if tbf is not None else None)
    if layout in ("netem", "netem+tbf"):
        requests = [Request(netem_message(ifindex, netem_params(spec, for_change=True)),
                            RTM_NEWQDISC, _CHANGE_FLAGS)]
        if tbf is not None:
            flags = _CHANGE_FLAGS if layout == "netem+tbf" else _ADD_FLAGS
            requests.append(Request(child_msg, RTM_NEWQDISC, flags))
        elif layout == "netem+tbf":
            requests.append(Request(_tcmsg(None, ifindex, TBF_CHILD_HANDLE, TBF_CHILD_PARENT),
                                    RTM_DELQDISC, _DELETE_FLAGS))
        return requests
    if layout == "tbf" and not needs_netem(spec):
        if tbf is None:
            return [Request(_tcmsg(None, ifindex, ROOT_HANDLE, TC_H_ROOT), RTM_DELQDISC,
                            _DELETE_FLAGS)]
        return [Request(tbf_message(ifindex, tbf), RTM_NEWQDISC, _CHANGE_FLAGS)]
    return None


def layout_after(layout: str, spec: DirectionSpec) -> str:
    """The layout ``change_requests`` leaves."""
    if layout in ("netem", "netem+tbf"):
        return "netem+tbf" if spec.bandwidth_mbps is not None else "netem"
    return "tbf" if spec.bandwidth_mbps is not None else "none"


def current_layout(ipr: IPRoute, ifindex: int) -> str:
    """How the direction is shaped now; a foreign child at netem's class is deleted, a
    foreign root refused."""
    qdiscs = current_qdiscs(ipr, ifindex)
    root, child = _root(qdiscs), _child(qdiscs)
    if root is None:
        return "none"
    if root.handle != ROOT_HANDLE or root.kind not in ("netem", "tbf"):
        raise RuntimeError(f"interface {ifindex} has a root qdisc this tool did not make: "
                           f"{root.kind} {root.handle >> 16:x}:")
    if root.kind == "tbf":
        return "tbf"
    if child is not None and child.kind != "tbf":
        _delete(ipr, ifindex, child.handle, child.parent)
        child = None
    return "netem+tbf" if child is not None else "netem"


def change_direction(ipr: IPRoute, ifindex: int, spec: DirectionSpec, *,
                     use_netem: bool | None = None, layout: str | None = None) -> str:
    """Move a shaped direction to ``spec`` in place (netlink change, not delete + add).

    ``layout``: how it is shaped now, when the caller knows (it made it: no
    dump of the qdiscs first); see ``change_requests``, which falls back to
    ``apply_direction``.  Returns the new layout.
    """
    layout = current_layout(ipr, ifindex) if layout is None else layout
    requests = change_requests(layout, ifindex, spec)
    if requests is None:
        return apply_direction(ipr, ifindex, spec, use_netem=use_netem)   # raises if no netem
    if isinstance(ipr, IPRoute):
        for request in requests:
            _send(ipr, request.msg, request.msg_type, request.flags)
    else:           # a relay (shaping.router.GuestNetlink): all in one round trip
        ipr.nlm_requests([(request.msg, request.msg_type, request.flags)
                          for request in requests])
    return layout_after(layout, spec)


def _delete(ipr: IPRoute, ifindex: int, handle: int, parent: int) -> None:
    _send(ipr, _tcmsg(None, ifindex, handle, parent), RTM_DELQDISC, _DELETE_FLAGS)


def remove(ipr: IPRoute, ifindex: int) -> bool:
    """Delete the root qdisc (and its child); the device goes back to its default.

    Returns whether there was anything to delete.
    """
    root = _root(current_qdiscs(ipr, ifindex))
    if root is None:
        return False
    try:
        _delete(ipr, ifindex, root.handle, TC_H_ROOT)
    except NetlinkError as error:
        if error.code in (errno.ENOENT, errno.EINVAL):   # gone meanwhile
            return False
        raise
    return True


# Both directions of a topology -----------------------------------------------------------------
#
# A topology (``LinkTopology``, ``shaping.router.RouterTopology``) says where each direction is
# shaped: ``egress(direction)`` -> (netlink handle, interface), and whether that kernel has
# netem (``netem``: None = this host's kernel, probed).  Layouts are keyed by the direction's
# sending side, "edge" (uplink) and "cloud" (downlink).

def _each_direction(state: LinkState):
    yield "edge", "uplink", state.uplink
    yield "cloud", "downlink", state.downlink


def apply_link(topo, state: LinkState, *, use_netem: bool | None = None) -> dict[str, str]:
    """Shape uplink and downlink, each on the egress its topology names."""
    use_netem = topo.netem if use_netem is None else use_netem
    layouts = {}
    for side, direction, spec in _each_direction(state):
        handle, ifname = topo.egress(direction)
        with handle as ipr:
            index = ipr.link_lookup(ifname=ifname)[0]
            layouts[side] = apply_direction(ipr, index, spec, use_netem=use_netem)
    return layouts


def change_link(topo, state: LinkState, layouts: dict[str, str] | None = None) -> dict[str, str]:
    """Change both directions in place; ``layouts``: how they are shaped now, as
    ``apply_link``/``change_link`` returned it (skips reading the qdiscs first)."""
    changed = {}
    with topo.batch():
        for side, direction, spec in _each_direction(state):
            handle, ifname = topo.egress(direction)
            with handle as ipr:
                index = ipr.link_lookup(ifname=ifname)[0]
                changed[side] = change_direction(ipr, index, spec, use_netem=topo.netem,
                                                 layout=(layouts or {}).get(side))
    return changed


def remove_link(topo) -> None:
    for direction in ("uplink", "downlink"):
        handle, ifname = topo.egress(direction)
        with handle as ipr:
            remove(ipr, ipr.link_lookup(ifname=ifname)[0])


def link_counters(topo) -> dict[str, dict]:
    """Per direction: the root qdisc's packets and bytes, the drops of all (netem counts the
    packets its loss model drops), the qdiscs there."""
    found = {}
    for direction in ("uplink", "downlink"):
        handle, ifname = topo.egress(direction)
        with handle as ipr:
            qdiscs = current_qdiscs(ipr, ipr.link_lookup(ifname=ifname)[0])
        root = next((q for q in qdiscs if q.parent == TC_H_ROOT), None)
        found[direction] = {"qdiscs": [q.kind for q in qdiscs],
                            "packets": root.packets_sent if root else 0,
                            "bytes": root.bytes_sent if root else 0,
                            "dropped_packets": sum(q.drops for q in qdiscs)}
    return found


# What the kernel can do ----------------------------------------------------------------------

def _probe(kind: str) -> bool:
    """Add then remove a ``kind`` qdisc on ``lo`` of a throwaway namespace."""
    prefix = topology.new_prefix()
    namespace = topology.namespace_name(prefix, "probe")
    try:
        topology.write_owner(prefix)
        netns.create(namespace)
    except OSError as error:
        topology.remove_owner(prefix)
        log.info("cannot probe for %s: no network namespace (%s)", kind, error)
        return False
    try:
        with topology.open_netns(namespace) as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            if kind == "netem":
                msg = netem_message(lo, netem_params(DirectionSpec()))
            else:
                msg = tbf_message(lo, tbf_params(DirectionSpec(bandwidth_mbps=1.0)))
            try:
                _send(ipr, msg, RTM_NEWQDISC, _ADD_FLAGS)
            except NetlinkError as error:
                if error.code in (errno.ENOENT, errno.EOPNOTSUPP):
                    log.info("the kernel has no %s qdisc: %s", kind, error)
                    return False
                raise
            remove(ipr, lo)
            return True
    finally:
        netns.remove(namespace)
        topology.remove_owner(prefix)


@functools.lru_cache(maxsize=None)
def netem_available() -> bool:
    """Whether this kernel can add a netem qdisc (probed once per process)."""
    return _probe("netem")


@functools.lru_cache(maxsize=None)
def tbf_available() -> bool:
    """Whether this kernel can add a tbf qdisc (probed once per process)."""
    return _probe("tbf")


__all__ = [
    "NetemOptions", "NetemParams", "NetemUnavailable", "QdiscInfo", "ShapingTcmsg",
    "Request", "TbfOptions", "TbfParams", "UNIFORM_TABLE", "apply_direction", "apply_link",
    "change_direction", "change_link", "change_requests", "current_layout", "current_qdiscs",
    "encode", "layout_after", "link_counters",
    "needs_netem", "netem_available", "netem_jitter", "netem_message", "netem_params",
    "percent_u32", "queue_latency_s", "remove", "remove_link", "tbf_available",
    "tbf_message", "tbf_params",
]
