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

from pyroute2 import netns

from shaping.topology import OWNER_DIR

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


@functools.cache
def before_the_suite() -> frozenset[str]:
    """Every namespace, veth, owner file and TAP on the host when the suite began (the session
    fixture in conftest takes it first): what another process left is never counted as ours."""
    return frozenset([*sum(snapshot(), []), *taps()])


def made_by_the_suite(names) -> list[str]:
    return sorted(name for name in names if name not in before_the_suite())


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
