"""Find and remove what a killed run left behind: namespaces, veths, owner files, and the
folders of its agents' control sockets.

Only names that follow the tool's naming schemes (``shaping.topology``, and
``socket_folder_prefix`` for the socket folders) are
ever considered: namespaces ``<prefix>-edge``, ``<prefix>-cloud`` and
``<prefix>-probe``, veths ``<prefix>-e`` and ``<prefix>-c`` in the root
namespace (the tool creates its veths inside its namespaces, where they die
with them; a root-namespace one can only be a leftover), and owner files
``/run/edgespec/<prefix>.owner``, where ``<prefix>`` must fully match
``prefix_pattern`` (a regular expression; default: the prefixes
``new_prefix()`` makes) and the tool's prefix grammar.  Anything else is
never touched, whatever it is called.

A prefix whose owner file names a process that still runs is a live run and
is left alone unless ``include_live`` is set.  A socket folder
(``<tmp>/edgespec-<pid>-<start ticks>-<8 random>``, made in every mode, sim
included) names its owner in its own name, and holds nothing but ``*.ctl``
sockets; one whose owner is gone is a leftover too.  Processes still inside a
leftover namespace are reported, not killed: removing the namespace's name
does not stop them, and deciding to is the caller's business.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute, netns

from shaping.topology import (DEFAULT_PREFIX_PATTERN, NAMESPACE_ROLES, OWNER_DIR, PREFIX_RE,
                              VETH_ROLES, _process_start_ticks, owner_alive, remove_namespaces,
                              remove_owner)

log = logging.getLogger(__name__)


SOCKET_FOLDER = re.compile(r"edgespec-(?P<pid>\d+)-(?P<start>\d+)-[a-z0-9_]{8}")


def socket_folder_prefix() -> str:
    """The ``tempfile.mkdtemp`` prefix of this process's socket folders: its pid and start
    time, so that ``leftovers`` knows a folder whose owner is gone (a reused pid has
    another start time)."""
    pid = os.getpid()
    return f"edgespec-{pid}-{_process_start_ticks(pid)}-"


@dataclass
class Leftovers:
    namespaces: list[str] = field(default_factory=list)
    veths: list[str] = field(default_factory=list)              # in the root namespace
    owner_files: list[str] = field(default_factory=list)        # prefixes
    socket_folders: list[str] = field(default_factory=list)     # paths
    processes: dict[str, list[int]] = field(default_factory=dict)  # namespace -> pids

    def __bool__(self) -> bool:
        return bool(self.namespaces or self.veths or self.owner_files or self.socket_folders)


def _matcher(prefix_pattern: str, roles: tuple[str, ...]) -> re.Pattern:
    return re.compile(rf"(?P<prefix>{prefix_pattern})-(?P<role>{'|'.join(roles)})")


def _split(name: str, matcher: re.Pattern) -> str | None:
    """The prefix of a name that follows the scheme, else None."""
    match = matcher.fullmatch(name)
    if match is None or not PREFIX_RE.fullmatch(match["prefix"]):
        return None
    return match["prefix"]


def _root_veths() -> list[str]:
    with IPRoute() as ipr:
        names = []
        for link in ipr.link("dump"):
            info = link.get_attr("IFLA_LINKINFO")
            if info is not None and info.get_attr("IFLA_INFO_KIND") == "veth":
                names.append(link.get_attr("IFLA_IFNAME"))
        return names


def _owner_prefixes() -> list[str]:
    if not OWNER_DIR.is_dir():
        return []
    return [path.name[: -len(".owner")] for path in OWNER_DIR.glob("*.owner")]


def _socket_folders(include_live: bool) -> list[str]:
    """Socket folders in the temporary directory whose owner is gone (or all: ``include_live``)
    and that hold only control sockets."""
    found = []
    for path in sorted(Path(tempfile.gettempdir()).glob("edgespec-*")):
        match = SOCKET_FOLDER.fullmatch(path.name)
        if match is None or not path.is_dir() or path.is_symlink():
            continue
        alive = _process_start_ticks(int(match["pid"])) == int(match["start"])
        if (include_live or not alive) and all(entry.suffix == ".ctl"
                                               for entry in path.iterdir()):
            found.append(str(path))
    return found


def leftovers(prefix_pattern: str = DEFAULT_PREFIX_PATTERN, *,
              include_live: bool = False) -> Leftovers:
    """What matches the naming scheme with a prefix matching ``prefix_pattern``."""
    re.compile(prefix_pattern)      # a bad pattern fails here, with re's message
    ns_matcher = _matcher(prefix_pattern, NAMESPACE_ROLES)
    veth_matcher = _matcher(prefix_pattern, VETH_ROLES)
    prefix_matcher = re.compile(prefix_pattern)
    found = Leftovers()

    def wanted(prefix: str | None) -> bool:
        return prefix is not None and (include_live or not owner_alive(prefix))

    for name in sorted(netns.listnetns()):
        if wanted(_split(name, ns_matcher)):
            found.namespaces.append(name)
    for name in sorted(_root_veths()):
        if wanted(_split(name, veth_matcher)):
            found.veths.append(name)
    for prefix in sorted(_owner_prefixes()):
        if prefix_matcher.fullmatch(prefix) and PREFIX_RE.fullmatch(prefix) and wanted(prefix):
            found.owner_files.append(prefix)
    if found.namespaces:
        pids = netns.ns_pids()
        found.processes = {name: sorted(pids[name]) for name in found.namespaces if name in pids}
    found.socket_folders = _socket_folders(include_live)
    return found


def remove_leftovers(prefix_pattern: str = DEFAULT_PREFIX_PATTERN, *,
                     include_live: bool = False) -> Leftovers:
    """Remove what ``leftovers`` finds; returns what was removed."""
    found = leftovers(prefix_pattern, include_live=include_live)
    removed = Leftovers(processes=found.processes)
    if found.veths:
        with IPRoute() as ipr:
            for name in found.veths:
                indices = ipr.link_lookup(ifname=name)
                if not indices:          # its peer's deletion took it along
                    removed.veths.append(name)
                    continue
                try:
                    ipr.link("del", index=indices[0])
                except Exception as error:
                    log.warning("could not delete veth %s: %s", name, error)
                    continue
                removed.veths.append(name)
    removed.namespaces = [name for name, here in remove_namespaces(found.namespaces).items()
                          if here]
    for prefix in found.owner_files:
        remove_owner(prefix)
        removed.owner_files.append(prefix)
    for path in found.socket_folders:
        shutil.rmtree(path, ignore_errors=True)
        removed.socket_folders.append(path)
    return removed


__all__ = ["Leftovers", "leftovers", "remove_leftovers", "socket_folder_prefix"]
