"""The sim-mode link: one direction of the pure link model, on a receiving channel.

In sim mode the agents talk over loopback TCP and each receiving end holds
every message until the link model says it arrives: the sender stamps
``sent_at`` (``perf_counter``, one clock for all processes on a host), and
the receiver releases the message at ``sent_at + transit`` (delay, jitter,
loss as TCP retransmission after an RTO, serialization through a token
bucket, in order).  Loopback's own latency is absorbed inside the modeled
delay whenever that delay is longer, so the link behaves as the profile says
rather than as the profile plus this host's socket stack.  The profile's
timeline is applied as time passes, like ``netlink change`` in emulated mode,
counted from ``started_at`` until ``restart_timeline`` moves its origin (the
orchestrator does so before every query, telling both agents the same
``perf_counter`` instant: CLOCK_MONOTONIC, one clock for all processes): from
the first message sent at or after the new origin the direction is in the
profile's state at offset 0 again and meets its changes at the same offsets.
A message sent before the origin keeps the state it was sent in.  The queue,
jitter correlation and loss chain carry over, as across a kernel ``change``.
"""

from __future__ import annotations


import numpy as np
from pydantic import BaseModel, ConfigDict

from shaping.link_model import DirectionLink, tcp_estimates
from shaping.profile import TIMELINE_HORIZON_S, Direction, NetworkProfile


class SimLinkSettings(BaseModel):
    """What an agent needs to emulate the direction it receives on."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    profile: NetworkProfile
    seed: int
    started_at: float  # perf_counter instant the link came up; the timeline counts from it
    #                    until restarted (``SimulatedDirection.restart_timeline``)


class SimulatedDirection:
    """One direction of one connection: when does a message sent at ``sent_at`` arrive?"""

    def __init__(self, settings: SimLinkSettings, direction: Direction, stream: int = 0) -> None:
        self.profile = settings.profile
        self.direction = direction
        self.started_at = settings.started_at      # the link model's time axis counts from here
        state = self.profile.state_at(0.0)
        seed = np.random.SeedSequence([settings.seed, 0 if direction == "uplink" else 1, stream])
        self.link = DirectionLink(getattr(state, direction), np.random.default_rng(seed),
                                  *tcp_estimates(state))
        # offset 0 leads, so that a restart sets the initial state again (none: a static profile)
        changes = self.profile.change_times(TIMELINE_HORIZON_S)
        self.changes = changes if changes[:1] in ([], [0.0]) else [0.0, *changes]
        self.timeline_started_at = settings.started_at
        self.next_change = 0
        self.messages = 0
        self.payload_bytes = 0

    def restart_timeline(self, started_at: float) -> None:
        """Count the profile's timeline from ``started_at`` (a ``perf_counter`` instant) on."""
        self.timeline_started_at = started_at
        self.next_change = 0

    def _apply_timeline(self, t: float) -> None:
        offset = t - self.timeline_started_at
        while self.next_change < len(self.changes) and offset >= self.changes[self.next_change]:
            state = self.profile.state_at(self.changes[self.next_change])
            self.link.update(getattr(state, self.direction), *tcp_estimates(state))
            self.next_change += 1

    def deliver_at(self, sent_at: float, payload_bytes: int) -> float:
        self._apply_timeline(sent_at)
        self.messages += 1
        self.payload_bytes += payload_bytes
        return self.started_at + self.link.transit(sent_at - self.started_at, payload_bytes).deliver_at_s

    def stats(self) -> dict:
        return {"messages": self.messages, "payload_bytes": self.payload_bytes,
                "packets": self.link.packets_sent, "lost_packets": self.link.packets_lost}
