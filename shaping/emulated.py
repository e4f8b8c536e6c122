"""A kernel-shaped link: a topology shaped by a profile, live, with its counters.

``EmulatedLink`` composes the layers of the emulated and vm modes and owns
their order: create the topology (``shaping.topology.LinkTopology``: two
namespaces and a veth; or ``shaping.router.RouterTopology``: two namespaces
and a router VM), shape both directions (``shaping.qdisc``, on the egress the
topology names: the veth ends, or the router's NICs), then follow the
profile's timeline with netlink ``change`` from a background thread, at the
offsets the sim link uses (``NetworkProfile.change_times``, counted from
``started_at``).  Each applied change is recorded with its planned offset
and the offsets at which it was sent and acknowledged by the kernel.

A link given a topology that is already up (a router VM shared by several
runs) shapes it and, on closing, only removes its qdiscs; otherwise closing
removes everything it created (the qdiscs die with the veth, the veth with
the namespaces, the TAPs with the VM).

``counters`` reads what the kernel did per direction: the root qdisc's
packets, bytes and drops (netem counts its lost packets as drops).
"""

from __future__ import annotations

import logging
import threading

from shaping.clock import now
from shaping.profile import SENDER, NetworkProfile
from shaping.qdisc.operations import apply_link, change_link, link_counters, remove_link
from shaping.simlink import TIMELINE_HORIZON_S
from shaping.topology import LinkTopology

log = logging.getLogger(__name__)


class EmulatedLink:
    """A topology and its qdiscs for one profile; a context manager."""

    def __init__(self, profile: NetworkProfile, prefix: str | None = None,
                 topology: LinkTopology | None = None) -> None:
        self.profile = profile
        self.topology = topology if topology is not None else LinkTopology(prefix)
        self.layouts: dict[str, str] = {}
        self.started_at: float | None = None
        self.changes: list[dict[str, float]] = []
        self._owns_topology = False
        self._created = False
        self._stop = threading.Event()
        self._timeline: threading.Thread | None = None
        self.timeline_error: BaseException | None = None

    def __enter__(self) -> "EmulatedLink":
        return self if self._created else self.create()

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def prefix(self) -> str:
        return self.topology.prefix

    def create(self, shape: bool = True) -> "EmulatedLink":
        """Build the topology (unless it is up already) and (unless ``shape`` is False:
        call ``shape()`` later) shape it."""
        self._created = True
        try:
            if not self.topology.is_up:
                self._owns_topology = True
                self.topology.create()
            if shape:
                self.shape()
        except BaseException:
            self.close()
            raise
        return self

    def shape(self) -> None:
        """Apply the profile's initial state and start following its timeline."""
        self.topology.wait_ready()
        self.layouts = apply_link(self.topology, self.profile.state_at(0.0))
        self.started_at = now()
        if not self.profile.is_static:
            self._timeline = threading.Thread(target=self._follow_timeline,
                                              name=f"{self.prefix}-timeline", daemon=True)
            self._timeline.start()

    def close(self) -> None:
        self._stop.set()
        if self._timeline is not None:
            self._timeline.join(timeout=5.0)
            self._timeline = None
        if self._owns_topology:
            self.topology.close()
        elif self.layouts and self.topology.health() is None:
            try:
                remove_link(self.topology)
            except Exception as error:      # the topology's owner removes it in the end
                log.warning("%s: removing the qdiscs: %s", self.prefix, error)
        self.layouts = {}

    def _follow_timeline(self) -> None:
        for offset in self.profile.change_times(TIMELINE_HORIZON_S):
            if offset == 0.0:
                continue
            if self._stop.wait(max(0.0, self.started_at + offset - now())):
                return
            sent = now()
            try:
                self.layouts = change_link(self.topology, self.profile.state_at(offset),
                                           self.layouts)
            except Exception as error:    # reported by counters(); the run goes on unshaped
                log.error("%s: applying the change at %.3f s failed: %s", self.prefix, offset, error)
                self.timeline_error = error
                return
            self.changes.append({"at_s": offset, "sent_s": round(sent - self.started_at, 6),
                                 "applied_s": round(now() - self.started_at, 6)})

    def counters(self) -> dict[str, dict]:
        """Per direction: the kernel's qdisc counters where it is shaped; the timeline."""
        found = link_counters(self.topology)
        for direction, side in SENDER.items():
            found[direction]["layout"] = self.layouts.get(side, "none")
        found["timeline"] = {"changes_applied": len(self.changes), "changes": self.changes,
                             "error": str(self.timeline_error) if self.timeline_error else None,
                             "elapsed_s": round(now() - self.started_at, 3)
                             if self.started_at is not None else None}
        return found
