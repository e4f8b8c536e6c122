"""The vm mode's link: two namespaces whose TAP devices meet in a router VM that shapes.

For a run prefix ``P`` ``RouterTopology`` creates what ``LinkTopology`` does
(namespaces ``P-edge`` and ``P-cloud``, owner file), but instead of a veth
pair each namespace gets one end of a TAP device, ``P-e`` and ``P-c``, whose
other end is a virtio NIC of a small VM that routes between them (a netem
middlebox: only packets cross the VM, the agents run natively):

- the TAPs are opened here (``/dev/net/tun``, not persistent), moved into
  their namespaces and handed to qemu by file descriptor; once qemu has them
  this process closes its copies, so a TAP lives exactly as long as the VM
  and no TAP can outlive it (a qemu crash or a ``kill -9`` takes both away);
- addresses: the edge side ``10.77.x.0/30`` (edge ``.1``, router ``.2``), the
  cloud side the next ``/30`` (cloud ``.5``, router ``.6``); each namespace
  routes the other side's /30 through the router;
- neighbours are static on all four ends (each namespace knows the router's
  MAC, the router each namespace's): nothing on the shaped path waits for
  ARP.  With ARP, the edge's requests sent while the guest boots go
  unanswered, and its first packets afterwards waited in the neighbour
  queue for the next retry (up to a second) or were dropped from it;
- offloads off on both TAP ends exactly as on a veth end
  (``shaping.topology``: TSO, GSO, GRO and ``gso_max_segs`` = 1), IPv6
  address generation off, MTU 1500 on all four ends; in the guest,
  ``shaping.router_guest`` turns TSO, GSO and GRO off and makes the kernel
  a plain router (forwarding, no IPv6, no redirects, no echo replies);
- the VM itself is booted by the caller's ``boot`` (``orchestrator.lifecycle.vm``
  owns qemu; this module never imports it): ``boot(taps)`` gets the TAP
  ends and returns a ``Router``: its control connection and its health.

Shaping: uplink leaves the router through its NIC on the cloud side, downlink
through its NIC on the edge side; ``egress(direction)`` hands ``shaping.qdisc``
a ``GuestNetlink`` for that NIC, so the very same netem/tbf requests the
emulated mode sends to the host kernel go to the guest kernel, encoded here
(natively) and relayed by ``shaping.router_guest``.

The guest boots while the caller does other things (the agents load their
models); ``wait_ready`` waits for its hello and configures its NICs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from pyroute2 import IPRoute
from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    nlmsg,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTM_GETLINK,
    RTM_GETQDISC,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_NEWQDISC,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import NUD_PERMANENT, ndmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.tcmsg import tcmsg

from shaping.profile import RECEIVER
from shaping.router_guest import FRAME
from shaping.topology import LinkTopology, open_netns, subnet_for

MTU = 1500
GUEST_PORT = "edgespec.ctl"            # the virtio-serial port's name, as the guest sees it
READY_TIMEOUT_S = 180.0                # boot to hello under software emulation on a busy host
REQUEST_TIMEOUT_S = 10.0
WAIT_SLICE_S = 0.5
SIDES = ("edge", "cloud")

_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000


class RouterError(RuntimeError):
    """The router VM is gone, did not come up, or its control channel broke."""


def open_tap(name: str) -> int:
    """A new (non-persistent) TAP device ``name`` in this namespace; returns its fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TAP | _IFF_NO_PI))
    except BaseException:
        os.close(fd)
        raise
    return fd


def router_mac(prefix: str, side: str) -> str:
    """A locally administered MAC for the router's NIC on ``side``, from the prefix."""
    digest = hashlib.sha256(prefix.encode()).digest()
    return "52:54:{:02x}:{:02x}:{:02x}:{:02x}".format(*digest[:3], SIDES.index(side) + 1)


@dataclass(frozen=True)
class TapEnd:
    side: str
    name: str
    fd: int
    mac: str            # of the router's NIC on this TAP


class Router(Protocol):
    """What ``boot`` returns: the running VM, as this module needs it."""

    connection: socket.socket

    def alive(self) -> bool: ...
    def failure(self) -> str: ...
    def close(self) -> None: ...


# The control channel ----------------------------------------------------------------------------

class GuestNetlink:
    """The few ``IPRoute`` calls ``shaping.qdisc`` makes, answered by the router VM's kernel.

    Each request is encoded here with pyroute2's message classes and sent to
    ``shaping.router_guest``, which writes it to its netlink socket and sends
    back whatever the kernel answered; replies are parsed with pyroute2's
    ``MarshalRtnl``.  One request at a time (a lock): the run's timeline
    thread and the main thread share it.  ``with`` on it does nothing: it
    lives as long as the VM.
    """

    def __init__(self, connection: socket.socket, describe_failure=lambda: "") -> None:
        self._connection = connection
        self._describe_failure = describe_failure
        self._lock = threading.Lock()
        self._local = threading.local()
        self._seq = 0
        self._indices: dict[str, int] = {}

    def __enter__(self) -> "GuestNetlink":
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    # frames
    def _read_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            try:
                chunk = self._connection.recv(n - len(data))
            except socket.timeout:
                raise RouterError(f"the router VM did not answer within "
                                  f"{self._connection.gettimeout():.0f} s"
                                  f"{self._describe_failure()}") from None
            if not chunk:
                raise RouterError("the router VM's control channel closed"
                                  f"{self._describe_failure()}")
            data += chunk
        return data

    def _read_frame(self) -> tuple[str, bytes]:
        length, kind = FRAME.unpack(self._read_exact(FRAME.size))
        return chr(kind), self._read_exact(length - 1)

    def _write_frame(self, kind: str, payload: bytes) -> None:
        try:
            self._connection.sendall(FRAME.pack(len(payload) + 1, ord(kind)) + payload)
        except OSError as error:
            raise RouterError(f"the router VM's control channel broke: {error}"
                              f"{self._describe_failure()}") from None

    def hello(self, timeout_s: float, while_waiting=None) -> dict:
        """Wait for the guest's hello (it comes once, when the guest is up);
        ``while_waiting`` is called every ``WAIT_SLICE_S`` meanwhile (it may raise)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while not select.select([self._connection], [], [], WAIT_SLICE_S)[0]:
                if time.monotonic() > deadline:
                    raise RouterError(f"the router VM did not come up within {timeout_s:.0f} s"
                                      f"{self._describe_failure()}")
                if while_waiting is not None:
                    while_waiting()
            self._connection.settimeout(REQUEST_TIMEOUT_S)
            kind, payload = self._read_frame()
        if kind != "H":
            raise RouterError(f"the router VM said {kind!r} before its hello")
        return json.loads(payload)

    def quit(self) -> None:
        with contextlib.suppress(OSError, RouterError), self._lock:
            self._write_frame("Q", b"")

    # netlink
    def nlm_request(self, msg: nlmsg, msg_type: int, msg_flags: int) -> list[nlmsg]:
        """Send ``msg`` to the guest kernel; its answer (``NetlinkError`` on a NACK)."""
        return self.nlm_requests([(msg, msg_type, msg_flags)])

    @contextlib.contextmanager
    def batch(self):
        """Inside: this thread's changes are held (and answer nothing); at the end they go
        to the guest in one round trip, in order.  For changes that must land together.
        A read (a dump, a lookup) first sends what is held."""
        self._local.held = []
        try:
            yield
            held = self._local.held
        finally:
            self._local.held = None
        if held:
            self.nlm_requests(held)

    def nlm_requests(self, requests: list[tuple[nlmsg, int, int]]) -> list[nlmsg]:
        """Send several requests in one go (one round trip; the kernel takes them in
        order); every answer, or the first ``NetlinkError``."""
        if not requests:
            return []
        held = getattr(self._local, "held", None)
        if held is not None:
            if not any(_is_read(msg_type) for _, msg_type, _ in requests):
                held.extend(requests)
                return []
            self._local.held = None        # a read sees every change held before it
            try:
                self.nlm_requests(held)
            finally:
                self._local.held = []
        with self._lock:
            data = b""
            for msg, msg_type, msg_flags in requests:
                self._seq += 1
                msg["header"]["type"] = msg_type
                msg["header"]["flags"] = msg_flags
                msg["header"]["sequence_number"] = self._seq
                msg["header"]["pid"] = 0
                msg.encode()
                data += bytes(msg.data)
            self._write_frame("N", data)
            kind, payload = self._read_frame()
        if kind == "E":
            raise RouterError(f"the router VM could not relay a netlink request: "
                              f"{payload.decode(errors='replace')}")
        replies = list(MarshalRtnl().parse(payload))
        for reply in replies:
            error = reply["header"].get("error")
            if error is not None:
                raise error
        return [reply for reply in replies if reply["header"]["type"] > 3]   # not ACK/DONE

    def tc(self, command: str) -> list[nlmsg]:
        if command != "dump":
            raise ValueError(f"GuestNetlink.tc supports only 'dump', not {command!r}")
        msg = tcmsg()
        msg["family"] = socket.AF_UNSPEC
        return [reply for reply in self.nlm_request(msg, RTM_GETQDISC,
                                                    NLM_F_REQUEST | NLM_F_DUMP)
                if reply["header"]["type"] == RTM_NEWQDISC]

    def link_lookup(self, ifname: str) -> list[int]:
        if ifname not in self._indices:
            msg = ifinfmsg()
            msg["family"] = socket.AF_UNSPEC
            msg["attrs"] = [["IFLA_IFNAME", ifname]]
            try:
                (reply,) = self.nlm_request(msg, RTM_GETLINK, NLM_F_REQUEST)
            except NetlinkError:
                return []
            self._indices[ifname] = reply["index"]
        return [self._indices[ifname]]

    def link_up(self, index: int, mtu: int) -> None:
        msg = ifinfmsg()
        msg["family"] = socket.AF_UNSPEC
        msg["index"] = index
        msg["flags"] = IFF_UP
        msg["change"] = IFF_UP
        msg["attrs"] = [["IFLA_MTU", mtu]]
        self.nlm_request(msg, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK)

    def address_add(self, index: int, address: str, prefixlen: int) -> None:
        msg = ifaddrmsg()
        msg["family"] = socket.AF_INET
        msg["prefixlen"] = prefixlen
        msg["index"] = index
        msg["attrs"] = [["IFA_LOCAL", address], ["IFA_ADDRESS", address]]
        self.nlm_request(msg, RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)

    def neighbour_add(self, index: int, address: str, mac: str) -> None:
        """A permanent ARP entry: ``address`` is at ``mac`` on ``index``, replacing the
        incomplete one the guest makes when a packet for ``address`` arrives between
        raising the NIC and this call (agents may already be connecting)."""
        msg = ndmsg()
        msg["family"] = socket.AF_INET
        msg["ifindex"] = index
        msg["state"] = NUD_PERMANENT
        msg["attrs"] = [["NDA_DST", address], ["NDA_LLADDR", mac]]
        self.nlm_request(msg, RTM_NEWNEIGH,
                         NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE)


def _is_read(msg_type: int) -> bool:
    """RTM_GET* (18, 22, 26, ... : type % 4 == 2) asks; the others change something."""
    return msg_type % 4 == 2


# The topology -------------------------------------------------------------------------------------

class RouterTopology(LinkTopology):
    """Namespaces ``P-edge``/``P-cloud`` joined through a router VM by TAPs ``P-e``/``P-c``.

    ``boot(taps: list[TapEnd]) -> Router`` starts the VM.  ``create`` returns
    once the namespaces are configured and the VM is starting;
    ``wait_ready`` (called by everything that needs the guest) waits for it,
    calling ``while_waiting`` (if given) every half second: it may raise to
    give up (a Ctrl-C whose exception was lost).
    ``close`` stops the VM (the TAPs go with it), then removes the rest.
    """

    netem = True        # the guest kernel's: the VM is only booted with sch_netem at hand
    UP_STATES = ("UP", "UNKNOWN")     # a TAP reports no link state of its own

    def __init__(self, boot, prefix: str | None = None, while_waiting=None) -> None:
        super().__init__(prefix)
        self._boot = boot
        self._while_waiting = while_waiting
        edge_net = subnet_for(self.prefix)
        cloud_net = ipaddress.IPv4Network((int(edge_net.network_address) + edge_net.num_addresses,
                                           edge_net.prefixlen))
        self.subnets = {"edge": edge_net, "cloud": cloud_net}
        self.edge_ip, self.cloud_ip = (str(next(net.hosts())) for net in (edge_net, cloud_net))
        self.router_ips = {side: str(list(net.hosts())[1]) for side, net in self.subnets.items()}
        self.router: Router | None = None
        self.netlink: GuestNetlink | None = None
        self.guest: dict | None = None          # the guest's hello, once ready
        self.guest_interfaces: dict[str, str] = {}
        self.tap_macs: dict[str, str] = {}     # of each namespace's TAP end
        self.died: str | None = None            # why the VM was gone when it was closed

    def _join(self) -> None:
        taps = []
        try:
            for side in SIDES:
                name = self.interface(side)
                taps.append(TapEnd(side, name, open_tap(name), router_mac(self.prefix, side)))
                with IPRoute() as ipr:
                    ipr.link("set", index=ipr.link_lookup(ifname=name)[0],
                             net_ns_fd=self.namespace(side))
            self.router = self._boot(taps)
            self.netlink = GuestNetlink(self.router.connection, self._router_failure)
        finally:
            for tap in taps:          # qemu holds them now (or nothing does and they vanish)
                os.close(tap.fd)

    def create(self) -> "RouterTopology":
        try:
            return super().create()
        except Exception as error:      # close() has run: did the VM die under it?
            if self.died is None:
                raise
            raise RouterError(self.died) from error

    def _configured(self) -> None:
        for side in SIDES:
            other = "cloud" if side == "edge" else "edge"
            with open_netns(self.namespace(side)) as ipr:
                index = ipr.link_lookup(ifname=self.interface(side))[0]
                ipr.link("set", index=index, mtu=MTU)
                ipr.neigh("add", dst=self.router_ips[side], ifindex=index,
                          lladdr=router_mac(self.prefix, side), state=NUD_PERMANENT)
                ipr.route("add", dst=str(self.subnets[other]), gateway=self.router_ips[side])
                self.tap_macs[side] = ipr.link("get", index=index)[0].get("IFLA_ADDRESS")

    def _router_failure(self) -> str:
        if self.router is None or self.router.alive():
            return ""
        return f": {self.router.failure()}"

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait for the guest's hello, then address and raise its two NICs and give each
        the static neighbour behind it (once)."""
        if self.guest is not None:
            return
        hello = self.netlink.hello(timeout_s, self._while_waiting)
        by_mac = {info["mac"]: name for name, info in hello["interfaces"].items()}
        for side in SIDES:
            mac = router_mac(self.prefix, side)
            if mac not in by_mac:
                raise RouterError(f"the router VM has no NIC with MAC {mac}: {hello}")
            self.guest_interfaces[side] = by_mac[mac]
            index = self.netlink.link_lookup(ifname=by_mac[mac])[0]
            self.netlink.address_add(index, self.router_ips[side], self.prefixlen)
            self.netlink.link_up(index, MTU)
            self.netlink.neighbour_add(index, self.ip(side), self.tap_macs[side])
        still_on = {name: [flag for flag, on in info["offloads"].items() if on]
                    for name, info in hello["interfaces"].items()}
        if any(still_on.values()):
            raise RouterError(f"the router VM could not turn off its offloads: {still_on}")
        self.guest = hello

    def egress(self, direction: str):
        self.wait_ready()
        return self.netlink, self.guest_interfaces[RECEIVER[direction]]  # the NIC facing the receiver

    def batch(self):
        """Changes of both directions in one round trip to the guest."""
        return self.netlink.batch()

    def watched(self) -> list:
        """What can die under a run on its own: the VM (``alive()``, ``failure()``)."""
        return [self.router] if self.router is not None else []

    def health(self) -> str | None:
        """None while the router runs; else why it is gone."""
        if self.router is None or self.router.alive():
            return None
        return self.router.failure()

    def close(self) -> None:
        if self.router is not None:
            self.died = self.health()
            if self.netlink is not None and self.died is None:
                self.netlink.quit()
            self.router.close()
            self.router = None
        super().close()

    def __repr__(self) -> str:
        return (f"RouterTopology({self.prefix!r}, {self.edge_ns}/{self.edge_if} {self.edge_ip} "
                f"<-> router <-> {self.cloud_ns}/{self.cloud_if} {self.cloud_ip})")

