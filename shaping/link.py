"""The link between the edge and the cloud agents: one interface, one class per way of making it.

Object model: a ``Link`` carries one run's data plane and shapes it by a
``NetworkProfile``; which side sends which direction is ``shaping.profile.SENDER``.

- ``SimLink``: no kernel link.  The agents talk over loopback TCP, and each
  receiving agent holds every message until the pure link model
  (``shaping.link_model``) delivers it (``shaping.simlink``, applied by
  ``agents.protocol.Channel``): this side hands both agents the same settings
  and collects what their models counted.
- ``EmulatedLink``: a ``LinkTopology`` (two namespaces and a veth pair) shaped
  by the kernel's netem and tbf on each direction's egress
  (``shaping.qdisc``), following the profile's timeline live with netlink
  ``change`` from a background thread, at the offsets the sim link uses
  (``NetworkProfile.change_times``, counted from ``started_at``); each applied
  change of the current timeline is recorded with its planned offset and the
  offsets at which it was sent and acknowledged.  A restart waits until the
  qdiscs hold nothing of the last query, then ``change``s the link back to the
  initial state and follows the timeline again.  Given a topology that is already up (a router VM
  shared by several runs) it shapes it and, on closing, only removes its
  qdiscs; otherwise closing removes everything it created.
- ``RouterLink``: an ``EmulatedLink`` on a ``shaping.router.RouterTopology``:
  the namespaces meet in the router VM, which shapes (the vm mode).

A link's life, as a run's deployment drives it: ``create()`` builds what
carries the bytes; ``data_address``, ``agent_argv(side)`` and ``sim_link``
say where the cloud listens, how each agent is started and what it applies
itself (``data_host`` and ``own_namespaces``, known before ``create()``, say
whether anyone outside the run can reach the data plane:
``agents.security.chosen_security``); ``wait_ready()``; ``shape(agents)`` starts the profile;
``restart_timeline(agents)``, before each query, starts the profile's timeline
again from offset 0 (its initial state), so that every query of every strategy
meets the same link at the same offsets from its start (a fair race on a
time-varying link; a query longer than the timeline's period meets offsets 0
to its length), and returns the instant it did (a ``perf_counter`` reading:
CLOCK_MONOTONIC, shared by every process of the host); on a static profile
it does nothing and returns None.  ``stats(agents)`` is what each direction
carried (saved as ``link_stats.json``); ``close()`` removes what it created.  ``topology`` is the kernel path, where there is one
(a probe measures it); ``health()`` says why the link broke, if it did.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import Mapping, Protocol

from shaping.clock import now, sleep_until
from shaping.profile import RECEIVER, SENDER, TIMELINE_HORIZON_S, NetworkProfile, Side
from shaping.qdisc.operations import apply_link, change_link, link_counters, remove_link
from shaping.simlink import SimLinkSettings
from shaping.topology import LinkTopology

log = logging.getLogger(__name__)


class Agent(Protocol):
    """What a link needs of a running agent."""

    pid: int

    def stats(self) -> dict: ...

    def held_until(self) -> float | None:
        """Sim: when the last message its link model holds is due (None: none is held)."""

    def restart_timeline(self, started_at: float) -> None:
        """Count its sim link's timeline from ``started_at`` on."""


class Link:
    """The data plane of one run, shaped by ``profile``; a context manager (see the module
    docstring for the order of the calls)."""

    topology: LinkTopology | None = None
    own_namespaces = False     # the data plane crosses only network namespaces the run made

    def __init__(self, profile: NetworkProfile) -> None:
        self.profile = profile
        self.started_at: float | None = None      # when the profile's timeline began

    def __enter__(self) -> "Link":
        return self.create()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def create(self, shape: bool = True) -> "Link":
        """Build what carries the bytes and (unless ``shape`` is False: call ``shape()``
        later) shape it."""
        return self

    @property
    def data_address(self) -> str:
        raise NotImplementedError

    @property
    def data_host(self) -> str:
        """The address the cloud listens on (known before ``create()``)."""
        raise NotImplementedError

    def agent_argv(self, side: Side) -> list[str]:
        """What goes before an agent's command line (e.g. entering its namespace)."""
        return []

    @property
    def sim_link(self) -> SimLinkSettings | None:
        """What each agent applies itself to the direction it receives on (sim only)."""
        return None

    def watched(self) -> list:
        """Processes the link depends on (a router VM): a run ends when one dies."""
        return []

    def wait_ready(self) -> None:
        """Until the link carries packets (a router VM may still be booting)."""

    def shape(self, agents: Mapping[Side, Agent] | None = None) -> None:
        """Start the profile."""

    def restart_timeline(self, agents: Mapping[Side, Agent]) -> float | None:
        """Start the profile's timeline again at offset 0; the instant it started (None: a
        static profile, where nothing is done)."""
        if self.profile.is_static:
            return None
        self.started_at = self._restart_timeline(agents)
        return self.started_at

    def _restart_timeline(self, agents: Mapping[Side, Agent]) -> float:
        raise NotImplementedError

    def stats(self, agents: Mapping[Side, Agent]) -> dict:
        raise NotImplementedError

    def health(self) -> str | None:
        """Why the link broke (None: it did not)."""
        return None

    def close(self) -> None:
        pass


LOOPBACK = "127.0.0.1"
DRAIN_ROUNDS = 3      # sim: a restart asks the agents this often at most for messages held


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


class SimLink(Link):
    """Loopback; each receiving agent applies the link model (see the module docstring)."""

    def __init__(self, profile: NetworkProfile, seed: int) -> None:
        super().__init__(profile)
        self.seed = seed
        self._address = ""

    def create(self, shape: bool = True) -> "SimLink":
        # the agents' timelines count from here: their settings carry it, so it is fixed
        # before they start (a kernel link's timeline starts once they are up)
        self.started_at = now()
        self._address = f"tcp://{LOOPBACK}:{free_tcp_port()}"
        return self

    @property
    def data_address(self) -> str:
        return self._address

    @property
    def data_host(self) -> str:
        return LOOPBACK

    @property
    def sim_link(self) -> SimLinkSettings:
        return SimLinkSettings(profile=self.profile, seed=self.seed, started_at=self.started_at)

    def _restart_timeline(self, agents: Mapping[Side, Agent]) -> float:
        """Both agents' link models count from the same instant, taken once neither holds a
        message of the last query (the cloud holds its ``close`` until the old state
        delivers it, and messages arrive in order: the next ``open`` would wait behind it,
        a whole one-way delay of the old state): nothing is in flight then, and the
        timeline does not start before the next query."""
        for _ in range(DRAIN_ROUNDS):   # nobody sends meanwhile: the second finds none
            held = [due for due in (agent.held_until() for agent in agents.values())
                    if due is not None]
            if not held:
                break
            sleep_until(max(held))
        started_at = now()
        for agent in agents.values():
            agent.restart_timeline(started_at)
        return started_at

    def stats(self, agents: Mapping[Side, Agent]) -> dict:
        return {direction: agents[side].stats()["sim_link"] for direction, side in RECEIVER.items()}


def tcp_counters(pid: int) -> dict[str, int]:
    """The TCP counters of the network namespace ``pid`` lives in (``/proc/PID/net/snmp``)."""
    lines = [line.split() for line in Path(f"/proc/{pid}/net/snmp").read_text().splitlines()
             if line.startswith("Tcp:")]
    names, values = lines[0][1:], lines[1][1:]
    counters = dict(zip(names, map(int, values)))
    return {"segments_out": counters["OutSegs"], "retransmitted_segments": counters["RetransSegs"]}


class EmulatedLink(Link):
    """A kernel-shaped topology and its qdiscs (see the module docstring)."""

    DATA_PORT = 5555
    own_namespaces = True       # its veth pair, or the router VM that joins its namespaces
    DRAIN_LIMIT_S = 5.0     # a restart waits at most this long for the link to empty
    DRAIN_POLL_S = 0.005

    def __init__(self, profile: NetworkProfile, prefix: str | None = None,
                 topology: LinkTopology | None = None) -> None:
        super().__init__(profile)
        self.topology = topology if topology is not None else LinkTopology(prefix)
        self.layouts: dict[str, str] = {}
        self._tcp_at_start: dict[Side, dict[str, int]] = {}
        self.changes: list[dict[str, float]] = []     # those of the current timeline
        self.timeline_starts = 0
        self.changes_applied = 0                      # over all timelines
        self._owns_topology = False
        self._created = False
        self._change_times: list[float] | None = None
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

    @property
    def data_address(self) -> str:
        return f"tcp://{self.data_host}:{self.DATA_PORT}"

    @property
    def data_host(self) -> str:
        return self.topology.cloud_ip

    def agent_argv(self, side: Side) -> list[str]:
        return self.topology.run_in(side, [])

    def watched(self) -> list:
        return self.topology.watched()

    def wait_ready(self) -> None:
        self.topology.wait_ready()

    def health(self) -> str | None:
        return self.topology.health()

    def shape(self, agents: Mapping[Side, Agent] | None = None) -> None:
        """Apply the profile's initial state and start following its timeline; with the
        ``agents``, count their TCP segments from here on."""
        self.topology.wait_ready()
        self.layouts = apply_link(self.topology, self.profile.state_at(0.0))
        self.started_at = now()
        self._tcp_at_start = {side: tcp_counters(agent.pid) for side, agent in (agents or {}).items()}
        if not self.profile.is_static:
            self._follow_from_here()

    def _restart_timeline(self, agents: Mapping[Side, Agent]) -> float:
        """Stop following the timeline, wait until the link holds nothing of the last query
        (netem releases in order: the next query's first packet would wait behind them, in
        the old state's delay), ``change`` it back to the initial state (the new timeline's
        first change, at offset 0, recorded with the seconds it waited: ``drain_s``) and
        follow the timeline again from there."""
        self._stop_following()
        drain_s = self._drain()
        started_at = now()
        self.changes = []
        if self._change(0.0, started_at, self.changes):
            self.changes[0]["drain_s"] = round(drain_s, 6)
        self.started_at = started_at
        self._follow_from_here()
        return started_at

    def _drain(self) -> float:
        """Seconds until no qdisc of the link holds a packet (at most ``DRAIN_LIMIT_S``)."""
        started = now()
        while any(link_counters(self.topology)[direction]["queued_packets"]
                  for direction in SENDER):
            if now() - started >= self.DRAIN_LIMIT_S:
                log.warning("%s: the link still holds packets after %.1f s; restarting its "
                            "timeline anyway", self.prefix, self.DRAIN_LIMIT_S)
                break
            time.sleep(self.DRAIN_POLL_S)
        return now() - started

    def _follow_from_here(self) -> None:
        """Follow the timeline from ``started_at`` in a background thread."""
        self.timeline_starts += 1
        if self._change_times is None:
            self._change_times = self.profile.change_times(TIMELINE_HORIZON_S)
        self._stop = threading.Event()
        self._timeline = threading.Thread(
            target=self._follow_timeline, args=(self.started_at, self.changes, self._stop),
            name=f"{self.prefix}-timeline", daemon=True)
        self._timeline.start()

    def _stop_following(self) -> None:
        self._stop.set()
        if self._timeline is not None:
            self._timeline.join(timeout=5.0)
            self._timeline = None

    def close(self) -> None:
        self._stop_following()
        if self._owns_topology:
            self.topology.close()
        elif self.layouts and self.topology.health() is None:
            try:
                remove_link(self.topology)
            except Exception as error:      # the topology's owner removes it in the end
                log.warning("%s: removing the qdiscs: %s", self.prefix, error)
        self.layouts = {}

    def _follow_timeline(self, started_at: float, changes: list[dict[str, float]],
                         stop: threading.Event) -> None:
        for offset in self._change_times:
            if offset == 0.0:       # the initial state: applied by shape() or a restart
                continue
            if (stop.wait(max(0.0, started_at + offset - now()))
                    or not self._change(offset, started_at, changes)):
                return

    def _change(self, offset: float, started_at: float, changes: list[dict[str, float]]) -> bool:
        """``change`` the link to the profile's state at ``offset`` and record it in
        ``changes`` (the offsets of its sending and acknowledgement from ``started_at``, the
        start of the timeline it belongs to); False if that failed."""
        sent = now()
        try:
            self.layouts = change_link(self.topology, self.profile.state_at(offset), self.layouts)
        except Exception as error:    # reported by counters(); the run goes on unshaped
            log.error("%s: applying the change at %.3f s failed: %s", self.prefix, offset, error)
            self.timeline_error = error
            return False
        changes.append({"at_s": offset, "sent_s": round(sent - started_at, 6),
                        "applied_s": round(now() - started_at, 6)})
        self.changes_applied += 1
        return True

    def counters(self) -> dict[str, dict]:
        """Per direction: the kernel's qdisc counters where it is shaped; the timeline: how
        often it started (shaping, then each restart), the changes applied over all of them,
        those of the current one (a restart's first, at offset 0, sets the initial state
        again), the last change that failed, the seconds since the current one started."""
        found = link_counters(self.topology)
        for direction, side in SENDER.items():
            found[direction]["layout"] = self.layouts.get(side, "none")
        found["timeline"] = {"starts": self.timeline_starts,
                             "changes_applied": self.changes_applied, "changes": self.changes,
                             "error": str(self.timeline_error) if self.timeline_error else None,
                             "elapsed_s": round(now() - self.started_at, 3)
                             if self.started_at is not None else None}
        return found

    def stats(self, agents: Mapping[Side, Agent]) -> dict:
        """``counters``, each direction's TCP segments as its sender's namespace counted them
        since ``shape``, and the topology's prefix."""
        stats = self.counters()
        for direction, side in SENDER.items():
            if side in self._tcp_at_start:
                start, end = self._tcp_at_start[side], tcp_counters(agents[side].pid)
                stats[direction]["tcp"] = {name: end[name] - start[name] for name in end}
        stats["prefix"] = self.prefix
        return stats


class RouterLink(EmulatedLink):
    """An ``EmulatedLink`` whose namespaces meet in the router VM, which shapes."""

    def stats(self, agents: Mapping[Side, Agent]) -> dict:
        stats = super().stats(agents)
        router = self.topology
        stats["router"] = {"accel": router.router.accel, "kernel": router.guest["kernel"],
                           "interfaces": router.guest["interfaces"], "qemu_pid": router.router.pid}
        return stats
