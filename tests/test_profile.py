"""Network profiles (shaping/profile.py): shorthands, per-direction blocks, loss
models, schedules, trace files and validation that names the bad field."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from orchestrator.config.loading import load_profile
from shaping.profile import (
    MAX_TIMELINE_STEPS,
    DirectionSpec,
    GilbertElliottLoss,
    LinkState,
    NetworkProfile,
    ProfileFile,
    RandomLoss,
    Schedule,
    parse_trace,
    resolve,
)


def profile(**fields) -> NetworkProfile:
    return resolve(ProfileFile(**fields), name="test")


def first_loc(error: pytest.ExceptionInfo) -> tuple:
    return tuple(error.value.errors()[0]["loc"])


# --------------------------------------------------------------------------- shorthands


def test_rtt_is_split_evenly_and_shorthands_apply_to_both_directions():
    link = profile(rtt_ms=50, bandwidth_mbps=10, jitter_ms=4, jitter_distribution="normal",
                   delay_correlation_pct=25, loss_pct=2.5, allow_reordering=True).initial
    for direction in (link.uplink, link.downlink):
        assert direction.delay_ms == 25.0
        assert direction.bandwidth_mbps == 10.0
        assert direction.rate_bytes_per_s == pytest.approx(1.25e6)
        assert direction.jitter_ms == 4.0
        assert direction.jitter_distribution == "normal"
        assert direction.delay_correlation_pct == 25.0
        assert direction.allow_reordering is True
        assert isinstance(direction.loss, RandomLoss)
        assert direction.loss.pct == 2.5
        assert direction.loss_pct == 2.5
    assert link.rtt_ms == 50.0


def test_odd_rtt_splits_into_halves():
    link = profile(rtt_ms=7).initial
    assert link.uplink.delay_ms == 3.5 and link.downlink.delay_ms == 3.5
    assert link.rtt_ms == 7.0


def test_empty_profile_is_an_ideal_link():
    prof = profile()
    assert prof.name == "test"
    assert prof.is_static
    assert prof.change_times(100.0) == []
    for direction in (prof.initial.uplink, prof.initial.downlink):
        assert direction.delay_ms == 0.0
        assert direction.bandwidth_mbps is None
        assert direction.rate_bytes_per_s == math.inf
        assert direction.loss.is_lossless
        assert direction.loss_pct == 0.0


def test_name_in_file_wins_over_the_file_stem():
    assert resolve(ProfileFile(name="mine", rtt_ms=1), name="stem").name == "mine"
    assert resolve(ProfileFile(rtt_ms=1), name="stem").name == "stem"


def test_per_direction_blocks_win_over_shorthands_asymmetric_4g():
    link = profile(rtt_ms=60, jitter_ms=8, jitter_distribution="normal", loss_pct=0.1,
                   bandwidth_mbps=10,
                   uplink={"bandwidth_mbps": 5, "delay_ms": 40},
                   downlink={"bandwidth_mbps": 20, "loss": {"model": "random", "pct": 1.0}}
                   ).initial
    assert link.uplink.bandwidth_mbps == 5.0
    assert link.downlink.bandwidth_mbps == 20.0
    assert link.uplink.delay_ms == 40.0          # block wins over rtt_ms / 2
    assert link.downlink.delay_ms == 30.0        # shorthand still applies where no block field
    assert link.rtt_ms == 70.0
    assert link.uplink.loss_pct == 0.1
    assert link.downlink.loss_pct == 1.0
    assert link.uplink.jitter_ms == link.downlink.jitter_ms == 8.0
    assert link.uplink.jitter_distribution == link.downlink.jitter_distribution == "normal"


# --------------------------------------------------------------------------- loss models


def test_random_loss_is_lossless_only_at_zero():
    assert RandomLoss().is_lossless
    assert RandomLoss(pct=0.0).is_lossless
    assert not RandomLoss(pct=0.01).is_lossless


@pytest.mark.parametrize("p, r, bad, good, mean", [
    (1.0, 10.0, 100.0, 0.0, 100.0 / 11.0),                       # share of bad state 1/11
    (1.0, 10.0, 50.0, 1.0, 50.0 / 11.0 + 10.0 / 11.0),
    (5.0, 5.0, 100.0, 0.0, 50.0),
    (0.0, 10.0, 100.0, 0.0, 0.0),                                # never enters bad state
    (0.0, 10.0, 100.0, 2.0, 2.0),                                # good state alone loses 2 %
    (3.0, 30.0, 0.0, 0.0, 0.0),                                  # bad state loses nothing
])
def test_gilbert_elliott_mean_loss(p, r, bad, good, mean):
    loss = GilbertElliottLoss(model="gilbert-elliott", p_good_to_bad_pct=p,
                              r_bad_to_good_pct=r, loss_in_bad_pct=bad, loss_in_good_pct=good)
    assert loss.mean_loss_pct == pytest.approx(mean, rel=1e-12, abs=1e-12)
    assert loss.is_lossless == (mean == 0.0)
    direction = DirectionSpec(loss=loss)
    assert direction.loss_pct == pytest.approx(mean, rel=1e-12, abs=1e-12)


def test_gilbert_elliott_defaults_and_resolution_through_a_profile():
    link = profile(rtt_ms=20, downlink={"loss": {"model": "gilbert-elliott",
                                                 "p_good_to_bad_pct": 2,
                                                 "r_bad_to_good_pct": 18}}).initial
    assert isinstance(link.downlink.loss, GilbertElliottLoss)
    assert link.downlink.loss.loss_in_bad_pct == 100.0
    assert link.downlink.loss.loss_in_good_pct == 0.0
    assert link.downlink.loss_pct == pytest.approx(10.0)         # 2 / (2 + 18)
    assert isinstance(link.uplink.loss, RandomLoss) and link.uplink.loss_pct == 0.0


def test_gilbert_elliott_rejects_zero_recovery():
    with pytest.raises(ValidationError) as error:
        GilbertElliottLoss(model="gilbert-elliott", p_good_to_bad_pct=1, r_bad_to_good_pct=0)
    assert first_loc(error) == ("r_bad_to_good_pct",)


# --------------------------------------------------------------------------- schedules


def oscillating(**schedule_fields) -> NetworkProfile:
    return profile(rtt_ms=10, bandwidth_mbps=100, uplink={"bandwidth_mbps": 50}, schedule={
        "steps": [{"at_s": 0, "rtt_ms": 10}, {"at_s": 5, "rtt_ms": 200},
                  {"at_s": 10, "rtt_ms": 10, "loss_pct": 3},
                  {"at_s": 15, "rtt_ms": 500, "downlink": {"bandwidth_mbps": 1}}],
        **schedule_fields})


def test_state_at_follows_the_steps():
    prof = oscillating()
    assert not prof.is_static
    expected = {0.0: 10, 4.999: 10, 5.0: 200, 7.5: 200, 9.99: 200, 10.0: 10, 14.0: 10,
                15.0: 500, 100.0: 500}                            # no repeat: last step stays
    for t, rtt in expected.items():
        assert prof.state_at(t).rtt_ms == rtt, t
    assert isinstance(prof.state_at(6.0), LinkState)
    # steps override the base: the base's uplink block survives, step fields apply
    assert prof.state_at(6.0).uplink.bandwidth_mbps == 50.0
    assert prof.state_at(6.0).downlink.bandwidth_mbps == 100.0
    assert prof.state_at(11.0).uplink.loss_pct == 3.0
    assert prof.state_at(16.0).downlink.bandwidth_mbps == 1.0
    assert prof.state_at(16.0).uplink.bandwidth_mbps == 50.0
    # a step's loss override does not leak into later steps that do not set it
    assert prof.state_at(16.0).uplink.loss_pct == 0.0


def test_state_before_the_first_step_is_the_base():
    prof = profile(rtt_ms=30, schedule={"steps": [{"at_s": 2, "rtt_ms": 100}]})
    assert prof.initial.rtt_ms == 30.0
    assert prof.state_at(0.0).rtt_ms == 30.0
    assert prof.state_at(1.9).rtt_ms == 30.0
    assert prof.state_at(2.0).rtt_ms == 100.0
    assert prof.change_times(10.0) == [2.0]
    assert prof.change_times(1.0) == []


def test_repeat_every_wraps_time():
    prof = oscillating(repeat_every_s=20)
    assert prof.repeat_every_s == 20.0
    for offset, rtt in [(0.0, 10), (5.0, 200), (12.0, 10), (15.5, 500), (19.99, 500)]:
        for period in range(4):
            assert prof.state_at(20.0 * period + offset).rtt_ms == rtt, (period, offset)


def test_change_times_up_to_a_horizon():
    assert oscillating().change_times(12.0) == [0.0, 5.0, 10.0]
    assert oscillating().change_times(1000.0) == [0.0, 5.0, 10.0, 15.0]
    repeating = oscillating(repeat_every_s=20)
    assert repeating.change_times(45.0) == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0,
                                            40.0, 45.0]
    assert repeating.change_times(44.9) == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0]
    # every change time lands on a state different from the one just before it
    times = repeating.change_times(60.0)
    for before, at in zip(times, times[1:]):
        assert repeating.state_at(at) != repeating.state_at(before)


def test_change_times_include_the_revert_to_base_at_each_period():
    prof = profile(rtt_ms=10, schedule={"repeat_every_s": 10, "steps": [{"at_s": 5, "rtt_ms": 200}]})
    assert prof.state_at(9.9).rtt_ms == 200 and prof.state_at(10.0).rtt_ms == 10
    assert prof.change_times(20.0) == [5.0, 10.0, 15.0, 20.0]


def test_state_at_each_change_time_is_the_steps_state_for_fractional_periods():
    prof = profile(rtt_ms=10, schedule={"repeat_every_s": 2.2, "steps": [
        {"at_s": 0, "rtt_ms": 10}, {"at_s": 0.2, "rtt_ms": 200}]})
    times = prof.change_times(30.0)
    got = [prof.state_at(t).rtt_ms for t in times]
    assert got == [10.0 if i % 2 == 0 else 200.0 for i in range(len(times))]


def test_schedule_steps_out_of_order_are_rejected():
    with pytest.raises(ValidationError, match="increasing at_s"):
        Schedule(steps=[{"at_s": 5, "rtt_ms": 1}, {"at_s": 1, "rtt_ms": 2}])
    with pytest.raises(ValidationError, match="increasing at_s"):
        ProfileFile(schedule={"steps": [{"at_s": 2}, {"at_s": 3}, {"at_s": 2.5}]})


@pytest.mark.parametrize("last_at", [20.0, 25.0])
def test_schedule_step_at_or_after_the_period_is_rejected(last_at):
    with pytest.raises(ValidationError, match="below repeat_every_s"):
        Schedule(repeat_every_s=20, steps=[{"at_s": 0}, {"at_s": last_at}])


def test_schedule_needs_steps_and_a_positive_period():
    with pytest.raises(ValidationError) as error:
        Schedule(steps=[])
    assert first_loc(error) == ("steps",)
    with pytest.raises(ValidationError) as error:
        Schedule(steps=[{"at_s": 0}], repeat_every_s=0)
    assert first_loc(error) == ("repeat_every_s",)


def test_schedule_step_fields_are_validated_with_their_location():
    with pytest.raises(ValidationError) as error:
        ProfileFile(schedule={"steps": [{"at_s": 0, "rtt_ms": 5}, {"at_s": 1, "rtt_ms": -5}]})
    assert first_loc(error) == ("schedule", "steps", 1, "rtt_ms")
    with pytest.raises(ValidationError) as error:
        ProfileFile(schedule={"steps": [{"at_s": -1}]})
    assert first_loc(error) == ("schedule", "steps", 0, "at_s")


# --------------------------------------------------------------------------- trace files


def test_trace_file_with_comments_and_commas(tmp_path):
    (tmp_path / "rtt.txt").write_text(
        "# t_s, rtt_ms\n"
        "0, 10\n"
        "\n"
        "2.5 50   # a spike\n"
        "   5,200\n"
        "7.25\t80\n")
    (tmp_path / "traced.yaml").write_text(
        "trace: rtt.txt\nbandwidth_mbps: 10\nuplink: {bandwidth_mbps: 5}\n")
    prof = load_profile(str(tmp_path / "traced.yaml"))      # the trace: beside the profile
    assert prof.name == "traced"
    assert prof.repeat_every_s is None
    assert [step.at_s for step in prof.timeline] == [0.0, 2.5, 5.0, 7.25]
    assert [step.rtt_ms for step in prof.timeline] == [10.0, 50.0, 200.0, 80.0]
    assert prof.state_at(3.0).rtt_ms == 50.0
    assert prof.state_at(3.0).uplink.delay_ms == 25.0
    assert prof.state_at(6.0).rtt_ms == 200.0
    assert prof.state_at(1e6).rtt_ms == 80.0
    assert prof.state_at(3.0).uplink.bandwidth_mbps == 5.0         # base survives trace steps
    assert prof.state_at(3.0).downlink.bandwidth_mbps == 10.0
    assert prof.change_times(5.0) == [0.0, 2.5, 5.0]


def test_absolute_trace_path_is_taken_as_it_is(tmp_path):
    trace = tmp_path / "abs.txt"
    trace.write_text("0 40\n1 60\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "p.yaml").write_text(f"trace: {trace}\n")
    prof = load_profile(str(tmp_path / "elsewhere" / "p.yaml"))
    assert [step.rtt_ms for step in prof.timeline] == [40.0, 60.0]


@pytest.mark.parametrize("text, line", [
    ("0 10\n1 20 30\n", 2),              # three columns
    ("# header\n0 10\n\n5\n", 4),        # one column
    ("zero ten\n", 1),                   # not numbers
    ("0 10\n1, 2ms\n", 2),
    ("0 10\n1 -5\n", 2),                 # a negative RTT
    ("0 10\n1 inf\n", 2),                # an infinite one
    ("nan 10\n", 1),
])
def test_bad_trace_lines_name_source_and_line(text, line):
    with pytest.raises(ValueError) as error:
        parse_trace(text, "bad.txt")
    assert f"bad.txt:{line}:" in str(error.value)


def test_trace_without_samples_is_rejected():
    with pytest.raises(ValueError) as error:
        parse_trace("# nothing here\n\n", "empty.txt")
    assert "empty.txt" in str(error.value) and "no samples" in str(error.value)


def test_a_trace_stops_at_its_sample_limit():
    text = "".join(f"{i / 100} 10\n" for i in range(MAX_TIMELINE_STEPS + 5))
    with pytest.raises(ValueError, match=f"bad.txt:{MAX_TIMELINE_STEPS + 1}: more than"):
        parse_trace(text, "bad.txt")


def test_schedule_and_trace_together_are_rejected():
    with pytest.raises(ValidationError, match="either schedule or trace"):
        ProfileFile(trace="rtt.txt", schedule={"steps": [{"at_s": 0, "rtt_ms": 10}]})


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("fields, loc", [
    ({"rtt_ms": -1}, ("rtt_ms",)),
    ({"jitter_ms": -0.5}, ("jitter_ms",)),
    ({"loss_pct": 100.5}, ("loss_pct",)),
    ({"loss_pct": -1}, ("loss_pct",)),
    ({"bandwidth_mbps": 0}, ("bandwidth_mbps",)),
    ({"delay_correlation_pct": 101}, ("delay_correlation_pct",)),
    ({"jitter_distribution": "gaussian"}, ("jitter_distribution",)),
    ({"latency_ms": 5}, ("latency_ms",)),
    ({"uplink": 5}, ("uplink",)),
])
def test_bad_shorthands_name_the_field(fields, loc):
    with pytest.raises(ValidationError) as error:
        ProfileFile(**fields)
    assert first_loc(error) == loc


def test_unknown_field_is_forbidden():
    with pytest.raises(ValidationError) as error:
        ProfileFile(rtt_ms=10, latency_ms=5)
    assert error.value.errors()[0]["type"] == "extra_forbidden"
    assert first_loc(error) == ("latency_ms",)


@pytest.mark.parametrize("direction, fields, loc", [
    ("uplink", {"delay_ms": -5}, ("uplink", "delay_ms")),
    ("downlink", {"delay_ms": -0.1}, ("downlink", "delay_ms")),
    ("uplink", {"bandwidth_mbps": 0}, ("uplink", "bandwidth_mbps")),
    ("downlink", {"jitter_distribution": "lognormal"}, ("downlink", "jitter_distribution")),
    ("uplink", {"loss": {"model": "random", "pct": 150}}, ("uplink", "loss", "random", "pct")),
    ("downlink", {"loss": {"model": "bursty"}}, ("downlink", "loss")),
    ("uplink", {"burst_bytes": 0}, ("uplink", "burst_bytes")),
    ("uplink", {"dealy_ms": 5}, ("uplink", "dealy_ms")),
])
def test_bad_direction_blocks_name_direction_and_field(direction, fields, loc):
    with pytest.raises(ValidationError) as error:
        profile(rtt_ms=10, **{direction: fields})
    assert first_loc(error) == loc


def test_direction_spec_itself_validates():
    with pytest.raises(ValidationError) as error:
        DirectionSpec(delay_ms=-1)
    assert first_loc(error) == ("delay_ms",)
    with pytest.raises(ValidationError) as error:
        DirectionSpec(loss=RandomLoss(pct=1), extra_field=1)
    assert first_loc(error) == ("extra_field",)
