"""The sim link's direction model: timeline changes, independent directions, counters."""

from __future__ import annotations

import pytest

from shaping.profile import ProfileFile, Schedule, resolve
from shaping.simlink import SimLinkSettings, SimulatedDirection


def settings_for(**profile) -> SimLinkSettings:
    return SimLinkSettings(profile=resolve(ProfileFile(**profile), "t"), seed=3, started_at=100.0)


def one_way_ms(link: SimulatedDirection, at_s: float) -> float:
    sent = link.started_at + at_s
    return (link.deliver_at(sent, 64) - sent) * 1000.0


def test_schedule_changes_the_delay_as_time_passes():
    link = SimulatedDirection(settings_for(rtt_ms=10, schedule=Schedule(
        repeat_every_s=20, steps=[{"at_s": 0, "rtt_ms": 10}, {"at_s": 5, "rtt_ms": 200},
                                  {"at_s": 15, "rtt_ms": 500}, {"at_s": 16, "rtt_ms": 10}])),
        "uplink")
    observed = [one_way_ms(link, t) for t in (1.0, 6.0, 15.5, 17.0, 26.0, 35.2)]
    assert observed == pytest.approx([5.0, 100.0, 250.0, 5.0, 100.0, 250.0])


def test_directions_follow_their_own_spec():
    settings = settings_for(rtt_ms=40, uplink={"delay_ms": 30}, downlink={"delay_ms": 10})
    assert one_way_ms(SimulatedDirection(settings, "uplink"), 1.0) == pytest.approx(30.0)
    assert one_way_ms(SimulatedDirection(settings, "downlink"), 1.0) == pytest.approx(10.0)


def test_streams_and_directions_draw_independent_losses():
    settings = settings_for(rtt_ms=20, loss_pct=30)
    links = [SimulatedDirection(settings, "uplink", 0), SimulatedDirection(settings, "uplink", 1),
             SimulatedDirection(settings, "downlink", 0)]
    patterns = [[one_way_ms(link, i * 0.01) > 15 for i in range(200)] for link in links]
    assert patterns[0] != patterns[1] and patterns[0] != patterns[2]
    again = SimulatedDirection(settings, "uplink", 0)
    assert [one_way_ms(again, i * 0.01) > 15 for i in range(200)] == patterns[0]
    stats = links[0].stats()
    assert stats["messages"] == 200 and stats["packets"] - stats["lost_packets"] == 200


TWO_STEPS = {"rtt_ms": 10, "schedule": Schedule(steps=[{"at_s": 0.4, "rtt_ms": 200}])}


def test_a_restarted_timeline_starts_again_in_the_initial_state():
    link = SimulatedDirection(settings_for(**TWO_STEPS), "uplink")
    assert [one_way_ms(link, t) for t in (0.1, 0.5, 3.0)] == pytest.approx([5.0, 100.0, 100.0])
    origin = link.started_at + 5.0
    link.restart_timeline(origin)
    before = origin - 0.2             # sent before the new origin: the state it was sent in
    assert (link.deliver_at(before, 64) - before) * 1000.0 == pytest.approx(100.0)
    at = [origin + t for t in (0.0, 0.39, 0.4, 2.0)]
    assert [(link.deliver_at(t, 64) - t) * 1000.0 for t in at] == pytest.approx(
        [5.0, 5.0, 100.0, 100.0])


def test_a_restarted_repeating_timeline_meets_its_changes_at_the_same_offsets():
    """First step after 0: a restart reverts to the base state, as a period boundary does."""
    link = SimulatedDirection(settings_for(rtt_ms=10, schedule=Schedule(
        repeat_every_s=2, steps=[{"at_s": 0.5, "rtt_ms": 100}, {"at_s": 1.5, "rtt_ms": 300}])),
        "downlink")
    offsets = (0.1, 0.7, 1.6, 2.2, 2.6)
    first = [one_way_ms(link, t) for t in offsets]
    assert first == pytest.approx([5.0, 50.0, 150.0, 5.0, 50.0])
    origin = link.started_at + 3.7    # mid-way through the second period's 300 ms step
    link.restart_timeline(origin)
    assert [(link.deliver_at(origin + t, 64) - origin - t) * 1000.0 for t in offsets] \
        == pytest.approx(first)
