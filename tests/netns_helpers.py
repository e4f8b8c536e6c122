"""What tests that touch the kernel's networking share: prefixes, skips and leak snapshots.

Each test module makes its namespaces, veths and owner files with a prefix
of its own (``PrefixTracker("tp")`` -> ``tp<8 hex>``), so a snapshot can tell
what that module made from anything else on the host.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import subprocess
from pathlib import Path

from pyroute2 import netns

from shaping.topology import OWNER_DIR, owner_alive, owner_file

PROBE_NAMESPACE = re.compile(r"es[0-9a-f]{8}-probe")    # capability probes (shaping.qdisc.probes)


def ip(*argv: str) -> str:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=10,
                          check=True).stdout


def snapshot() -> tuple[list[str], list[str], list[str]]:
    """(namespaces, root-namespace veths, owner files) on the host now."""
    namespaces = [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]
    veths = [line.split(":")[1].strip().split("@")[0]
             for line in ip("-o", "link", "show", "type", "veth").splitlines() if line.strip()]
    owners = sorted(path.name for path in OWNER_DIR.glob("*.owner"))
    return namespaces, veths, owners


def taps() -> list[str]:
    """TAP (tun) devices in the root namespace."""
    return re.findall(r"^\d+: ([^:@]+)", ip("-o", "link", "show", "type", "tun"), re.M)


def parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def in_this_process_tree(pid: int | None) -> bool:
    """Whether ``pid`` is this process or descends from it."""
    while pid is not None and pid > 1:
        if pid == os.getpid():
            return True
        pid = parent_pid(pid)
    return False


def foreign(name: str) -> bool:
    """Whether ``name`` (namespace, veth, TAP or owner file) belongs to a live process outside
    this test run, such as a second suite on the same host: its prefix's owner file names a
    running process that does not descend from this one.  A dead owner's leftovers count as
    ours: they may be what this run leaked."""
    prefix = re.split(r"[-.]", name, maxsplit=1)[0]
    if not owner_alive(prefix):
        return False
    try:
        pid = int(owner_file(prefix).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return not in_this_process_tree(pid)


@functools.cache
def before_the_suite() -> frozenset[str]:
    """Every namespace, veth, owner file and TAP on the host when the suite began (the session
    fixture in conftest takes it first): what another process left is never counted as ours."""
    return frozenset([*sum(snapshot(), []), *taps()])


def made_by_the_suite(names) -> list[str]:
    """``names`` less what was there before the suite and what another live run owns."""
    return sorted(name for name in names if name not in before_the_suite() and not foreign(name))


class PrefixTracker:
    """Hands out prefixes ``<letters><8 hex>`` and finds what carries one of them."""

    def __init__(self, letters: str) -> None:
        self.letters = letters
        self.used: set[str] = set()

    def fresh(self) -> str:
        prefix = self.letters + secrets.token_hex(4)
        self.used.add(prefix)
        return prefix

    def ours(self, found=None) -> tuple[list[str], ...]:
        """The parts of a snapshot that carry one of our prefixes (or are a capability probe)."""
        def mine(name: str) -> bool:
            return (any(name.startswith(prefix + "-") or name.startswith(prefix + ".")
                        for prefix in self.used) or bool(PROBE_NAMESPACE.fullmatch(name)))
        return tuple(sorted(name for name in part if mine(name))
                     for part in (snapshot() if found is None else found))

    def netns_problem(self) -> str | None:
        """Why namespaces cannot be tested here, or None."""
        if os.geteuid() != 0:
            return "needs root to create network namespaces"
        name = f"{self.fresh()}-probe"
        try:
            netns.create(name)
        except OSError as error:
            return f"network namespaces are unavailable: {error}"
        netns.remove(name)
        return None
