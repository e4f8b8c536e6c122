"""An emulated link: a ``LinkTopology`` shaped by a profile, live, with its counters.

``EmulatedLink`` composes the three layers of the emulated mode and owns
their order: create the namespaces and veth (``shaping.topology``), shape
both directions (``shaping.qdisc``), then follow the profile's timeline with
netlink ``change`` from a background thread, at the offsets the sim link
uses (``NetworkProfile.change_times``, counted from ``started_at``).
Closing stops the timeline and removes everything (the qdiscs die with the
veth, the veth with the namespaces).

``counters`` reads what the kernel did per direction: the root qdisc's
packets, bytes and drops (netem counts its lost packets as drops).
"""

from __future__ import annotations

import logging
import threading

from shaping import qdisc
from shaping.clock import now
from shaping.profile import NetworkProfile
from shaping.simlink import TIMELINE_HORIZON_S
from shaping.topology import LinkTopology

log = logging.getLogger(__name__)

SIDE_OF_DIRECTION = {"uplink": "edge", "downlink": "cloud"}   # whose egress shapes it


class EmulatedLink:
    """Namespaces, veth and qdiscs for one profile; a context manager."""

    def __init__(self, profile: NetworkProfile, prefix: str | None = None) -> None:
        self.profile = profile
        self.topology = LinkTopology(prefix)
        self.layouts: dict[str, str] = {}
        self.started_at: float | None = None
        self.changes_applied = 0
        self._stop = threading.Event()
        self._timeline: threading.Thread | None = None
        self.timeline_error: BaseException | None = None

    def __enter__(self) -> "EmulatedLink":
        return self if self.topology.is_up else self.create()

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def prefix(self) -> str:
        return self.topology.prefix

    def create(self, shape: bool = True) -> "EmulatedLink":
        """Build the topology and (unless ``shape`` is False: call ``shape()`` later) shape it."""
        try:
            self.topology.create()
            if shape:
                self.shape()
        except BaseException:
            self.close()
            raise
        return self

    def shape(self) -> None:
        """Apply the profile's initial state and start following its timeline."""
        self.layouts = qdisc.apply_link(self.topology, self.profile.state_at(0.0))
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
        self.topology.close()

    def _follow_timeline(self) -> None:
        for offset in self.profile.change_times(TIMELINE_HORIZON_S):
            if offset == 0.0:
                continue
            if self._stop.wait(max(0.0, self.started_at + offset - now())):
                return
            try:
                self.layouts = qdisc.change_link(self.topology, self.profile.state_at(offset))
                self.changes_applied += 1
            except Exception as error:    # reported by counters(); the run goes on unshaped
                log.error("%s: applying the change at %.3f s failed: %s", self.prefix, offset, error)
                self.timeline_error = error
                return

    def counters(self) -> dict[str, dict]:
        """Per direction: the kernel's qdisc counters on the shaping veth end."""
        found = {}
        for direction, side in SIDE_OF_DIRECTION.items():
            with self.topology.ipr(side) as ipr:
                index = ipr.link_lookup(ifname=self.topology.interface(side))[0]
                qdiscs = qdisc.current_qdiscs(ipr, index)
            root = next((q for q in qdiscs if q.parent == qdisc.TC_H_ROOT), None)
            found[direction] = {
                "layout": self.layouts.get(side, "none"),
                "qdiscs": [q.kind for q in qdiscs],
                "packets": root.packets_sent if root else 0,
                "bytes": root.bytes_sent if root else 0,
                "dropped_packets": sum(q.drops for q in qdiscs),
            }
        found["timeline"] = {"changes_applied": self.changes_applied,
                             "error": str(self.timeline_error) if self.timeline_error else None,
                             "elapsed_s": round(now() - self.started_at, 3)
                             if self.started_at is not None else None}
        return found
