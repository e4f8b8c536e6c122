"""The router VM's only program: a netlink relay on a virtio-serial port (guest side).

Runs inside the router VM (``orchestrator.lifecycle.vm.RouterVm``) as
``python3 -S router_guest.py PORT_NAME``, so it uses the standard library
only (importing pyroute2 or numpy under software emulation takes seconds).
Everything that decides *what* to configure stays on the host, in
``shaping.router`` and ``shaping.qdisc``, which encode the netlink requests
natively; this program only hands each request to the guest kernel and the
kernel's answer back.

At start it makes the guest a plain router, then says hello:

- IPv4 forwarding on, IPv6 off on every interface (no autoconf, DAD, router
  solicitations or MLD on the shaped path), no ICMP redirects, no answer to
  pings (the guest answers nothing but forwarding: ARP for its next hops
  and the ICMP errors a router owes);
- TSO, GSO and GRO off on every Ethernet interface (ethtool ioctls): GRO
  would merge the segments it receives into one super-packet that netem
  delays and drops as a unit;
- hello: a JSON object with the sysctls read back, each interface's MAC,
  MTU and offload flags, the kernel and its clock source.

Frames on the port, both ways: a 4-byte big-endian length, one kind byte,
the payload.  Kinds from the host: ``N`` netlink requests, one or several
back to back (the reply is ``N`` with every netlink message the kernel
answered, up to each request's ACK or, for a dump, ``NLMSG_DONE``); ``Q``
quit.  From the guest: ``H`` hello (JSON),
``N`` replies, ``E`` an error text.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import socket
import struct
import sys
import time

FRAME = struct.Struct("!IB")
NLMSG_HEADER = struct.Struct("=IHHII")     # len, type, flags, seq, pid
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_MULTI = 2
NLM_F_ACK = 4
NLM_F_DUMP = 0x300
SIOCETHTOOL = 0x8946
ETHTOOL_SET = {"tcp-segmentation-offload": 0x1F, "generic-segmentation-offload": 0x24,
               "generic-receive-offload": 0x2C}
ETHTOOL_GET = {"tcp-segmentation-offload": 0x1E, "generic-segmentation-offload": 0x23,
               "generic-receive-offload": 0x2B}
SYSCTLS = {"net/ipv4/ip_forward": "1", "net/ipv4/icmp_echo_ignore_all": "1",
           "net/ipv4/conf/all/send_redirects": "0", "net/ipv4/conf/default/send_redirects": "0",
           "net/ipv4/conf/all/accept_redirects": "0", "net/ipv4/conf/all/rp_filter": "0",
           "net/ipv4/conf/default/rp_filter": "0", "net/ipv6/conf/all/disable_ipv6": "1",
           "net/ipv6/conf/default/disable_ipv6": "1"}
PORT_WAIT_S = 30.0


def find_port(name: str) -> str:
    """The /dev node of the virtio-serial port called ``name``."""
    deadline = time.monotonic() + PORT_WAIT_S
    while time.monotonic() < deadline:
        for entry in os.listdir("/sys/class/virtio-ports"):
            with open(f"/sys/class/virtio-ports/{entry}/name") as label:
                if label.read().strip() == name and os.path.exists(f"/dev/{entry}"):
                    return f"/dev/{entry}"
        time.sleep(0.05)
    raise SystemExit(f"router_guest: no virtio-serial port named {name}")


def set_sysctls() -> dict[str, str]:
    """Make the guest a plain router; returns the values read back."""
    for key, value in SYSCTLS.items():
        with open(f"/proc/sys/{key}", "w") as knob:
            knob.write(value)
    for interface in os.listdir("/proc/sys/net/ipv6/conf"):
        with open(f"/proc/sys/net/ipv6/conf/{interface}/disable_ipv6", "w") as knob:
            knob.write("1")
    found = {}
    for key in SYSCTLS:
        with open(f"/proc/sys/{key}") as knob:
            found[key] = knob.read().strip()
    return found


def ethtool_value(sock: socket.socket, ifname: str, command: int, value: int = 0) -> int:
    """One ``struct ethtool_value`` ioctl on ``ifname``; returns the value the kernel left."""
    data = array.array("I", [command, value])
    address, _ = data.buffer_info()
    request = struct.pack("16sP", ifname.encode(), address)
    fcntl.ioctl(sock, SIOCETHTOOL, request)
    return data[1]


def interfaces() -> list[str]:
    return sorted(name for name in os.listdir("/sys/class/net")
                  if os.path.exists(f"/sys/class/net/{name}/device"))


def offloads_off(sock: socket.socket) -> dict[str, dict]:
    found = {}
    for name in interfaces():
        for flag, command in ETHTOOL_SET.items():
            try:
                ethtool_value(sock, name, command, 0)
            except OSError:
                pass        # a flag the device cannot change is reported as read below
        with open(f"/sys/class/net/{name}/address") as mac, \
                open(f"/sys/class/net/{name}/mtu") as mtu:
            found[name] = {"mac": mac.read().strip(), "mtu": int(mtu.read()),
                           "offloads": {flag: bool(ethtool_value(sock, name, command))
                                        for flag, command in ETHTOOL_GET.items()}}
    return found


def read_exact(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, left)
        if not chunk:           # the host side is not connected yet (or went away)
            time.sleep(0.01)
            continue
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def write_frame(fd: int, kind: bytes, payload: bytes) -> None:
    data = FRAME.pack(len(payload) + 1, kind[0]) + payload
    while data:
        data = data[os.write(fd, data):]


def _last(kind: int, flags: int, request_flags: int) -> bool:
    """Whether a reply message ends the kernel's answer to a request with ``request_flags``."""
    if kind == NLMSG_ERROR:
        return True
    if request_flags & NLM_F_DUMP == NLM_F_DUMP:
        return kind == NLMSG_DONE
    return not request_flags & NLM_F_ACK and not flags & NLM_F_MULTI


def netlink_exchange(nl: socket.socket, requests: bytes) -> bytes:
    """Send one or more requests (one send: the kernel takes them in order); collect the
    kernel's messages until each has its ACK or error, the end of its dump, or (a request
    without ACK) its one answer."""
    pending, offset = {}, 0
    while offset + NLMSG_HEADER.size <= len(requests):
        length, _, flags, seq, _ = NLMSG_HEADER.unpack_from(requests, offset)
        pending[seq] = flags
        offset += (length + 3) & ~3
    nl.send(requests)
    answer = []
    while pending:
        data = nl.recv(1 << 20)
        answer.append(data)
        offset = 0
        while offset + NLMSG_HEADER.size <= len(data):
            length, kind, flags, seq, _ = NLMSG_HEADER.unpack_from(data, offset)
            if seq in pending and _last(kind, flags, pending[seq]):
                del pending[seq]
            offset += (length + 3) & ~3
    return b"".join(answer)


def main() -> None:
    port = os.open(find_port(sys.argv[1]), os.O_RDWR)
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)     # NETLINK_ROUTE
    nl.bind((0, 0))
    ioctl_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with open("/sys/devices/system/clocksource/clocksource0/current_clocksource") as clock:
        clocksource = clock.read().strip()
    hello = {"sysctls": set_sysctls(), "interfaces": offloads_off(ioctl_socket),
             "kernel": os.uname().release, "clocksource": clocksource}
    write_frame(port, b"H", json.dumps(hello).encode())
    while True:
        length, kind = FRAME.unpack(read_exact(port, FRAME.size))
        payload = read_exact(port, length - 1)
        if kind == ord("Q"):
            return
        try:
            write_frame(port, b"N", netlink_exchange(nl, payload))
        except OSError as error:
            write_frame(port, b"E", str(error).encode())


if __name__ == "__main__":
    main()
