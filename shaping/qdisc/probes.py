"""What this kernel can shape with: netem, tbf (``orchestrator doctor``, the mode choice).

Each probe adds its qdisc on ``lo`` of a throwaway namespace
``<prefix>-probe`` (``shaping.topology.scratch_namespace``: named by its scheme
and owned before it exists, so ``orchestrator cleanup`` finds it if the probe is
killed), removes it and the namespace again, and is answered once per process.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWQDISC, TC_H_ROOT

from shaping import topology
from shaping.profile import DirectionSpec
from shaping.qdisc.messages import (ADD_FLAGS, ROOT_HANDLE, Request, delete_request,
                                    netem_message, send, tbf_message)
from shaping.qdisc.parameters import netem_params, tbf_params

log = logging.getLogger(__name__)


def _probe(kind: str) -> bool:
    """Add then remove a ``kind`` qdisc on ``lo`` of a throwaway namespace."""
    with contextlib.ExitStack() as stack:
        try:
            namespace = stack.enter_context(topology.scratch_namespace("probe"))
        except OSError as error:
            log.info("cannot probe for %s: no network namespace (%s)", kind, error)
            return False
        with topology.open_netns(namespace) as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            if kind == "netem":
                msg = netem_message(lo, netem_params(DirectionSpec()))
            else:
                msg = tbf_message(lo, tbf_params(DirectionSpec(bandwidth_mbps=1.0)))
            try:
                send(ipr, Request(msg, RTM_NEWQDISC, ADD_FLAGS))
            except NetlinkError as error:
                if error.code in (errno.ENOENT, errno.EOPNOTSUPP):
                    log.info("the kernel has no %s qdisc: %s", kind, error)
                    return False
                raise
            send(ipr, delete_request(lo, ROOT_HANDLE, TC_H_ROOT))
            return True


@functools.lru_cache(maxsize=None)
def netem_available() -> bool:
    """Whether this kernel can add a netem qdisc (probed once per process)."""
    return _probe("netem")


@functools.lru_cache(maxsize=None)
def tbf_available() -> bool:
    """Whether this kernel can add a tbf qdisc (probed once per process)."""
    return _probe("tbf")


__all__ = ["netem_available", "tbf_available"]
