"""A fair race on the kernel link: restarting the timeline sets the initial state again by
netlink ``change`` and re-applies the profile's changes at their offsets from the restart.
Through the session's router VM (``router_vm``: this host's kernel has no sch_netem); run
this file alone (a software-emulated boot takes ~15 s)."""

from __future__ import annotations

import time

from shaping.link import EmulatedLink
from shaping.profile import DirectionSpec, LinkState, NetworkProfile, TimedLinkState
from shaping.qdisc.operations import current_qdiscs

FAST = DirectionSpec(delay_ms=5)
STEPS = NetworkProfile(name="steps", initial=LinkState(uplink=FAST, downlink=FAST), timeline=[
    TimedLinkState(at_s=0.5, uplink=DirectionSpec(delay_ms=30), downlink=FAST),
    TimedLinkState(at_s=1.0, uplink=DirectionSpec(delay_ms=60, bandwidth_mbps=5),
                   downlink=FAST)])
TICKS_PER_MS = 1_000_000 // 64      # netem's delay in psched ticks


def uplink_delay_ms(router) -> float:
    """The delay of the guest's uplink netem, as its kernel reports it."""
    handle, ifname = router.egress("uplink")
    root = next(q for q in current_qdiscs(handle, handle.link_lookup(ifname=ifname)[0])
                if q.kind == "netem")
    return root.options["delay"] / TICKS_PER_MS


def test_restarting_the_timeline_applies_it_again_from_offset_0(router_vm):
    with EmulatedLink(STEPS, topology=router_vm).create() as link:
        time.sleep(1.3)
        assert uplink_delay_ms(router_vm) == 60
        for restart in (1, 2):
            started_at = link.restart_timeline({})
            assert started_at == link.started_at
            assert uplink_delay_ms(router_vm) == 5          # the initial state, at once
            time.sleep(1.3)
            assert uplink_delay_ms(router_vm) == 60
            timeline = link.counters()["timeline"]
            assert timeline["error"] is None
            assert (timeline["starts"], timeline["changes_applied"]) == (1 + restart, 2 + 3 * restart)
            assert [change["at_s"] for change in timeline["changes"]] == [0.0, 0.5, 1.0]
            assert 0.0 <= timeline["changes"][0]["drain_s"] < link.DRAIN_LIMIT_S
            for change in timeline["changes"]:
                assert change["at_s"] <= change["sent_s"] <= change["applied_s"] < change["at_s"] + 0.5
        assert link.counters()["uplink"]["layout"] == "netem+tbf"
