"""The emulated link: two network namespaces joined by one veth pair.

For a run prefix ``P`` (``es`` + 8 hex digits unless the caller picks one)
``LinkTopology`` creates

- namespaces ``P-edge`` and ``P-cloud``,
- a veth pair ``P-e`` (in ``P-edge``) / ``P-c`` (in ``P-cloud``), created
  directly inside the namespaces, so it never appears in the root namespace,
- addresses ``10.77.x.1/30`` (edge) and ``10.77.x.2/30`` (cloud), ``x`` from a
  hash of the prefix (each run has its own namespaces, so equal ``x`` for two
  runs would not clash; the hash only makes addresses tell runs apart in logs),
- loopback and the veth up in each namespace.

Offloads that distort shaping are turned off on both veth ends:

- TSO, GSO and GRO with the legacy ethtool ioctls (``ETHTOOL_STSO``,
  ``ETHTOOL_SGSO``, ``ETHTOOL_SGRO``) through pyroute2's ``IoctlEthtool``.
  Its socket is created in the root namespace, and ``SIOCETHTOOL`` acts on the
  namespace of the socket it is issued on, so we swap in a socket made inside
  the link's namespace (``pyroute2.netns.create_socket``).
- ``gso_max_segs`` = 1 over netlink (``IFLA_GSO_MAX_SEGS``).  Since Linux 4.19
  TCP always builds GSO super-packets and segments them in software *after*
  the qdisc when the device lacks GSO, so switching GSO off alone still lets a
  64 KB super-packet through netem as one unit (one delay, one loss draw).
  With at most one segment per GSO packet TCP hands the qdisc MSS-sized skbs.
- IPv6 address generation off (``IFLA_INET6_ADDR_GEN_MODE`` = none): no
  link-local address, hence no DAD / router solicitation / MLD packets on the
  shaped link.

Teardown (``close``, also run by ``__exit__`` and when ``create`` fails half
way) deletes the veth and removes only the namespaces this object created; it
is idempotent.  Before anything of a topology exists, an owner file
``/run/edgespec/<prefix>.owner`` names the owning process, so
``shaping.cleanup`` can tell a live run from what a ``kill -9`` left behind, and each
namespace is recorded as the topology's before it is created (``create_namespace``),
so a creation cut short anywhere still leaves nothing that ``close`` does not remove;
the owner file goes last, once nothing of the prefix is left.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from pyroute2 import IPRoute, netns
from pyroute2.ethtool.ioctl import IoctlEthtool

from shaping.profile import SENDER

log = logging.getLogger(__name__)

# Naming scheme -------------------------------------------------------------

PREFIX_RE = re.compile(r"[a-z][a-z0-9]{1,11}")      # <= 12 chars: "P-e" fits IFNAMSIZ (15)
DEFAULT_PREFIX_PATTERN = r"es[0-9a-f]{8}"            # what new_prefix() makes
NAMESPACE_ROLES = ("edge", "cloud", "probe")         # "<prefix>-<role>"
VETH_ROLES = ("e", "c")                              # "<prefix>-<role>"
OWNER_DIR = Path("/run/edgespec")

IFNAMSIZ = 16                                        # including the trailing NUL
ADDRESS_BLOCK = ipaddress.IPv4Network("10.77.0.0/16")
PREFIXLEN = 30

OFFLOAD_FLAGS = ("tcp-segmentation-offload", "generic-segmentation-offload",
                 "generic-receive-offload")
_IN6_ADDR_GEN_MODE_NONE = 1
_LINK_UP_TIMEOUT_S = 3.0
_LINK_UP_POLL_S = 0.02


def new_prefix() -> str:
    """A fresh run prefix: ``es`` + 8 random hex digits."""
    return "es" + secrets.token_hex(4)


def validate_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not PREFIX_RE.fullmatch(prefix):
        raise ValueError(
            f"prefix {prefix!r}: need 2-12 characters, a lowercase letter then "
            "lowercase letters or digits")
    return prefix


def namespace_name(prefix: str, role: str) -> str:
    if role not in NAMESPACE_ROLES:
        raise ValueError(f"unknown namespace role {role!r}")
    return f"{validate_prefix(prefix)}-{role}"


def veth_name(prefix: str, role: str) -> str:
    if role not in VETH_ROLES:
        raise ValueError(f"unknown veth role {role!r}")
    name = f"{validate_prefix(prefix)}-{role}"
    assert len(name) < IFNAMSIZ
    return name


def subnet_for(prefix: str) -> ipaddress.IPv4Network:
    """The /30 of a prefix: ``10.77.x.0/30`` with ``x`` from a hash of the prefix."""
    x = hashlib.sha256(validate_prefix(prefix).encode()).digest()[0]
    return ipaddress.IPv4Network(f"10.77.{x}.0/{PREFIXLEN}")


def run_in(namespace: str, argv: list[str]) -> list[str]:
    """The argv that starts ``argv`` inside ``namespace``.

    This is the one place the product shells out to ``ip``: only to start
    agent processes (``ip netns exec`` also bind-mounts the namespace's
    ``/etc/netns/<name>`` files and remounts ``/sys`` as a tool users know).
    Everything that configures the network goes through pyroute2 netlink.
    """
    return ["ip", "netns", "exec", namespace, *argv]


# Owner files -----------------------------------------------------------------

def _process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` (clock ticks since boot), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])           # field 22 of the whole line


def owner_file(prefix: str) -> Path:
    return OWNER_DIR / f"{prefix}.owner"


def write_owner(prefix: str) -> Path:
    OWNER_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = owner_file(prefix)
    pid = os.getpid()
    path.write_text(f"{pid} {_process_start_ticks(pid)}\n")
    return path


def owner_alive(prefix: str) -> bool:
    """Whether the process that wrote ``prefix``'s owner file still runs."""
    try:
        pid_text, start_text = owner_file(prefix).read_text().split()
        pid, start = int(pid_text), int(start_text)
    except (OSError, ValueError):
        return False
    return _process_start_ticks(pid) == start


def remove_owner(prefix: str) -> None:
    try:
        owner_file(prefix).unlink()
    except FileNotFoundError:
        pass


# Netlink helpers -----------------------------------------------------------

def open_netns(namespace: str) -> IPRoute:
    """An ``IPRoute`` bound to an existing namespace (never creates one)."""
    return IPRoute(netns=namespace, flags=0)


def namespace_exists(namespace: str) -> bool:
    return namespace in netns.listnetns()


def create_namespace(namespace: str, owned: list[str]) -> None:
    """Create ``namespace``, entered in ``owned`` (what its owner's teardown removes) before
    it exists: whatever cuts the creation short, a kill of pyroute2's helper or an error
    after the mount, the teardown still finds it.  A name that turns out to be someone
    else's is entered in nothing."""
    if namespace_exists(namespace):
        raise FileExistsError(
            errno.EEXIST,
            f"network namespace {namespace} already exists "
            "(a leftover of a killed run? see `orchestrator cleanup`)", namespace)
    owned.append(namespace)
    try:
        netns.create(namespace)
    except FileExistsError:
        owned.remove(namespace)
        raise


@contextlib.contextmanager
def scratch_namespace(role: str = "probe") -> Iterator[str]:
    """A throwaway namespace ``<new prefix>-<role>``: its owner file is written before it is
    created, and both are gone when the block ends, however it ends.  Its creation's
    ``OSError`` (no namespaces on this host) comes out of the ``with``."""
    prefix = new_prefix()
    owned: list[str] = []
    write_owner(prefix)
    try:
        create_namespace(namespace_name(prefix, role), owned)
        yield owned[0]
    finally:
        left = [name for name in owned if name not in remove_namespaces(owned)]
        if not left:
            remove_owner(prefix)


def remove_namespaces(names: Iterable[str]) -> dict[str, bool]:
    """Remove these namespaces, in this order; returns the ones gone now, each with whether
    it was removed here (False: it was gone already).  One that cannot be removed is logged
    and left out."""
    gone = {}
    for name in names:
        try:
            netns.remove(name)
        except FileNotFoundError:
            gone[name] = False
        except OSError as error:
            log.warning("could not remove namespace %s: %s", name, error)
        else:
            gone[name] = True
    return gone


def _ethtool_in(namespace: str, ifname: str) -> IoctlEthtool:
    """pyroute2's ioctl ethtool, issuing its ioctls from inside ``namespace``."""
    ethtool = IoctlEthtool()
    ethtool.sock.close()
    ethtool.sock = netns.create_socket(namespace, socket.AF_INET, socket.SOCK_DGRAM)
    ethtool.change_ifname(ifname)
    return ethtool


def offload_state(namespace: str, ifname: str) -> dict[str, bool]:
    """The legacy ethtool offload flags of ``ifname`` in ``namespace`` (``ethtool -k``)."""
    ethtool = _ethtool_in(namespace, ifname)
    try:
        return ethtool.get_offload_flags()
    finally:
        ethtool.close()


def disable_offloads(namespace: str, ifname: str) -> dict[str, bool]:
    """Turn TSO, GSO and GRO off; returns the flags afterwards."""
    ethtool = _ethtool_in(namespace, ifname)
    try:
        for flag in OFFLOAD_FLAGS:
            ethtool.set_offload_flag(flag, 0)
        state = ethtool.get_offload_flags()
    finally:
        ethtool.close()
    still_on = [flag for flag in OFFLOAD_FLAGS if state.get(flag)]
    if still_on:
        raise RuntimeError(f"{namespace}/{ifname}: could not turn off {', '.join(still_on)}")
    return state


# The topology ----------------------------------------------------------------

class LinkTopology:
    """Namespaces ``P-edge``/``P-cloud`` joined by veth ``P-e``/``P-c``.

    Use as a context manager; ``close`` always runs and may be called again.
    """

    netem: bool | None = None      # the shaping kernel's netem: None = probe this host's
    UP_STATES = ("UP",)            # operational states that count as up

    def __init__(self, prefix: str | None = None, *, offloads_off: bool = True) -> None:
        self.prefix = validate_prefix(prefix if prefix is not None else new_prefix())
        self.edge_ns = namespace_name(self.prefix, "edge")
        self.cloud_ns = namespace_name(self.prefix, "cloud")
        self.edge_if = veth_name(self.prefix, "e")
        self.cloud_if = veth_name(self.prefix, "c")
        self.subnet = subnet_for(self.prefix)
        edge_address, cloud_address = list(self.subnet.hosts())
        self.edge_ip = str(edge_address)
        self.cloud_ip = str(cloud_address)
        self.prefixlen = PREFIXLEN
        self.offloads_off = offloads_off
        self._owned_namespaces: list[str] = []
        self._owner_written = False
        self._up = False

    # -- lifecycle ----------------------------------------------------------

    def __enter__(self) -> "LinkTopology":
        self.create()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    @property
    def is_up(self) -> bool:
        return self._up

    def create(self) -> "LinkTopology":
        if self._up or self._owned_namespaces:
            raise RuntimeError(f"topology {self.prefix} is already created")
        taken = [ns for ns in (self.edge_ns, self.cloud_ns) if namespace_exists(ns)]
        if taken or owner_alive(self.prefix):
            raise FileExistsError(
                errno.EEXIST,
                f"prefix {self.prefix} is in use: namespace {', '.join(taken) or '-'}, "
                f"owner file {owner_file(self.prefix)} (a leftover of a killed run? "
                "see `orchestrator cleanup`)", self.prefix)
        try:
            write_owner(self.prefix)
            self._owner_written = True
            for namespace in (self.edge_ns, self.cloud_ns):
                create_namespace(namespace, self._owned_namespaces)
            self._join()
            self._configure_end(self.edge_ns, self.edge_if, self.edge_ip)
            self._configure_end(self.cloud_ns, self.cloud_if, self.cloud_ip)
            self._configured()
            self._wait_until_up()
        except BaseException:
            self.close()
            raise
        self._up = True
        return self

    def close(self) -> None:
        """Delete the veth and the namespaces this object created; safe to repeat."""
        self._up = False
        if self._owned_namespaces:
            # Deleting one end deletes the pair, even if a stray process still
            # holds a namespace open and keeps it alive after its name is gone.
            try:
                with open_netns(self._owned_namespaces[0]) as ipr:
                    for ifname in (self.edge_if, self.cloud_if):
                        indices = ipr.link_lookup(ifname=ifname)
                        if indices:
                            ipr.link("del", index=indices[0])
            except Exception as error:   # the namespace removal below still runs
                log.debug("%s: deleting the veth: %s", self.prefix, error)
        gone = remove_namespaces(reversed(self._owned_namespaces))
        self._owned_namespaces = [name for name in self._owned_namespaces if name not in gone]
        if self._owner_written and not self._owned_namespaces:
            remove_owner(self.prefix)
            self._owner_written = False

    # -- helpers for callers ------------------------------------------------

    def namespace(self, side: str) -> str:
        return {"edge": self.edge_ns, "cloud": self.cloud_ns}[side]

    def interface(self, side: str) -> str:
        return {"edge": self.edge_if, "cloud": self.cloud_if}[side]

    def ip(self, side: str) -> str:
        return {"edge": self.edge_ip, "cloud": self.cloud_ip}[side]

    def ipr(self, side: str) -> IPRoute:
        """An ``IPRoute`` in ``side``'s namespace (close it, or use ``with``)."""
        return open_netns(self.namespace(side))

    def ifindex(self, side: str) -> int:
        with self.ipr(side) as ipr:
            return ipr.link_lookup(ifname=self.interface(side))[0]

    def egress(self, direction: str) -> tuple[IPRoute, str]:
        """Where ``direction`` ("uplink" or "downlink") is shaped: a netlink handle (use it
        with ``with``) and the interface whose egress carries it (the sender's veth end)."""
        return self.ipr(SENDER[direction]), self.interface(SENDER[direction])

    def wait_ready(self) -> None:
        """Everything is up once ``create`` returns (a router topology may still be booting)."""

    def batch(self) -> contextlib.AbstractContextManager:
        """Where changes of both directions can be sent together (a router); not here."""
        return contextlib.nullcontext()

    def health(self) -> str | None:
        """None: a veth cannot fail on its own."""
        return None

    def watched(self) -> list:
        """Processes a run on this topology depends on (none: the kernel is the link)."""
        return []

    def socket(self, side: str, family: int = socket.AF_INET,
               kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket living in ``side``'s namespace (for probes and tests)."""
        return netns.create_socket(self.namespace(side), family, kind)

    def run_in(self, side_or_namespace: str, argv: list[str]) -> list[str]:
        namespace = {"edge": self.edge_ns, "cloud": self.cloud_ns}.get(
            side_or_namespace, side_or_namespace)
        return run_in(namespace, argv)

    # -- internals ------------------------------------------------------------

    def _join(self) -> None:
        """Join the two namespaces: one veth pair, made inside them."""
        with open_netns(self.edge_ns) as ipr:
            ipr.link("add", ifname=self.edge_if, kind="veth",
                     peer={"ifname": self.cloud_if, "net_ns_fd": self.cloud_ns})

    def _configured(self) -> None:
        """After both ends have their addresses (a routed topology adds its routes here)."""

    def _configure_end(self, namespace: str, ifname: str, address: str) -> None:
        with open_netns(namespace) as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            ipr.link("set", index=lo, state="up")
            index = ipr.link_lookup(ifname=ifname)[0]
            ipr.link("set", index=index, IFLA_AF_SPEC={"attrs": [
                ["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", _IN6_ADDR_GEN_MODE_NONE]]}]]})
            if self.offloads_off:
                ipr.link("set", index=index, gso_max_segs=1)
            ipr.addr("add", index=index, address=address, prefixlen=self.prefixlen)
        if self.offloads_off:
            disable_offloads(namespace, ifname)
        with open_netns(namespace) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + _LINK_UP_TIMEOUT_S
        pending = [(self.edge_ns, self.edge_if), (self.cloud_ns, self.cloud_if)]
        while pending:
            namespace, ifname = pending[0]
            with open_netns(namespace) as ipr:
                link = ipr.link("get", index=ipr.link_lookup(ifname=ifname)[0])[0]
            if link.get("IFLA_OPERSTATE") in self.UP_STATES:
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"{namespace}/{ifname} did not come up "
                                   f"within {_LINK_UP_TIMEOUT_S} s")
            time.sleep(_LINK_UP_POLL_S)

    def __repr__(self) -> str:
        state = "up" if self._up else "down"
        return (f"LinkTopology({self.prefix!r}, {self.edge_ns}/{self.edge_if} {self.edge_ip}"
                f" <-> {self.cloud_ns}/{self.cloud_if} {self.cloud_ip}, {state})")


__all__ = [
    "DEFAULT_PREFIX_PATTERN", "LinkTopology", "NAMESPACE_ROLES", "PREFIX_RE", "VETH_ROLES",
    "create_namespace", "disable_offloads", "namespace_name", "new_prefix", "offload_state",
    "open_netns", "owner_alive", "remove_namespaces", "run_in", "scratch_namespace",
    "subnet_for", "validate_prefix", "veth_name",
]
