"""Shaping a direction, or both of a link, over a netlink handle: apply, change, remove, read.

The handle is an ``IPRoute`` in the namespace of the interface, or a
``shaping.router.GuestNetlink`` for a NIC of the router VM; both take the
same requests.  A topology (``LinkTopology``, ``shaping.router.RouterTopology``)
says where each direction is shaped: ``egress(direction)`` -> (handle,
interface), whether that kernel has netem (``netem``: None = this host's,
probed) and ``batch()`` (changes of both directions that go together).
Layouts of a link are keyed by the direction's sending side: "edge"
(uplink), "cloud" (downlink).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWQDISC, TC_H_ROOT

from shaping.profile import SENDER, DirectionSpec, LinkState
from shaping.qdisc.messages import (ADD_FLAGS, CHANGE_FLAGS, ROOT_HANDLE, TBF_CHILD_HANDLE,
                                    TBF_CHILD_PARENT, Request, ShapingTcmsg, delete_request,
                                    netem_message, send, send_together, tbf_message)
from shaping.qdisc.parameters import needs_netem, netem_params, tbf_params
from shaping.qdisc.probes import netem_available


class NetemUnavailable(RuntimeError):
    """The spec needs netem (delay, jitter or loss) and this kernel has no sch_netem."""


# Layouts: the qdiscs at each place (handle, parent), root first ----------------------

_ROOT = (ROOT_HANDLE, TC_H_ROOT)
_CHILD = (TBF_CHILD_HANDLE, TBF_CHILD_PARENT)
LAYOUTS: dict[str, dict[tuple[int, int], str]] = {
    "none": {},
    "tbf": {_ROOT: "tbf"},
    "netem": {_ROOT: "netem"},
    "netem+tbf": {_ROOT: "netem", _CHILD: "tbf"},
}


def layout_for(spec: DirectionSpec, netem: bool) -> str:
    """The layout that shapes ``spec``: netem at the root wherever ``netem`` (even at zero
    delay, so that no later change has to swap the root), tbf for the rate."""
    rated = spec.bandwidth_mbps is not None
    if netem:
        return "netem+tbf" if rated else "netem"
    return "tbf" if rated else "none"


def layout_after(layout: str, spec: DirectionSpec) -> str | None:
    """The layout a change of ``layout`` to ``spec`` leaves (its root stays); None where that
    root cannot express ``spec``, nothing applied yet or a tbf root and a spec that needs
    netem: that takes ``apply_direction``."""
    root = LAYOUTS[layout].get(_ROOT)
    if root == "netem" or (root == "tbf" and not needs_netem(spec)):
        return layout_for(spec, netem=root == "netem")
    return None


def _message(kind: str, ifindex: int, spec: DirectionSpec, place: tuple[int, int], *,
             for_change: bool) -> ShapingTcmsg:
    handle, parent = place
    if kind == "netem":
        params = netem_params(spec, for_change=for_change)
        return netem_message(ifindex, params, handle=handle, parent=parent)
    return tbf_message(ifindex, tbf_params(spec), handle=handle, parent=parent)


def _requests(ifindex: int, spec: DirectionSpec, layout: str, target: str) -> list[Request]:
    """What turns ``layout`` into ``target`` shaping ``spec``, place by place, root first: a
    *change* where the same qdisc stays (it keeps its queue and counters), an add where one
    appears, a delete where one goes."""
    before, after = LAYOUTS[layout], LAYOUTS[target]
    requests = []
    for place in (_ROOT, _CHILD):
        kind = after.get(place)
        if kind is None:
            if place in before:
                requests.append(delete_request(ifindex, *place))
            continue
        stays = before.get(place) == kind
        requests.append(Request(_message(kind, ifindex, spec, place, for_change=stays),
                                RTM_NEWQDISC, CHANGE_FLAGS if stays else ADD_FLAGS))
    return requests


def change_requests(layout: str, ifindex: int, spec: DirectionSpec) -> list[Request] | None:
    """The requests that move a direction shaped as ``layout`` to ``spec`` in place (pure):
    netem and tbf are changed, the tbf child comes and goes with the rate.  None where
    ``layout_after`` is."""
    target = layout_after(layout, spec)
    return None if target is None else _requests(ifindex, spec, layout, target)


# Reading what is there ------------------------------------------------------------

@dataclass(frozen=True)
class QdiscInfo:
    kind: str
    handle: int
    parent: int
    options: dict
    bytes_sent: int
    packets_sent: int = 0
    drops: int = 0          # netem counts the packets its loss model drops here
    queued_packets: int = 0  # held now (netem's delay line; a child's are the child's)


def current_qdiscs(ipr: IPRoute, ifindex: int) -> list[QdiscInfo]:
    found = []
    for msg in ipr.tc("dump"):
        if msg["index"] != ifindex:
            continue
        options = msg.get_attr("TCA_OPTIONS")
        stats = msg.get_attr("TCA_STATS2")
        basic = stats.get_attr("TCA_STATS_BASIC") if stats is not None else None
        queue = stats.get_attr("TCA_STATS_QUEUE") if stats is not None else None
        found.append(QdiscInfo(
            kind=msg.get_attr("TCA_KIND"),
            handle=msg["handle"],
            parent=msg["parent"],
            options=dict(options) if options is not None else {},
            bytes_sent=basic["bytes"] if basic is not None else 0,
            packets_sent=basic["packets"] if basic is not None else 0,
            drops=queue["drops"] if queue is not None else 0,
            queued_packets=queue["qlen"] if queue is not None else 0,
        ))
    return found


def root_qdisc(qdiscs: list[QdiscInfo]) -> QdiscInfo | None:
    """The root qdisc somebody added, or None when the device runs its default (handle 0:)."""
    for qdisc in qdiscs:
        if qdisc.parent == TC_H_ROOT and qdisc.handle != 0:
            return qdisc
    return None


def current_layout(ipr: IPRoute, ifindex: int) -> str:
    """How the direction is shaped now; a foreign child at netem's class is deleted, a
    foreign root refused."""
    qdiscs = current_qdiscs(ipr, ifindex)
    root = root_qdisc(qdiscs)
    if root is None:
        return "none"
    if root.handle != ROOT_HANDLE or root.kind not in ("netem", "tbf"):
        raise RuntimeError(f"interface {ifindex} has a root qdisc this tool did not make: "
                           f"{root.kind} {root.handle >> 16:x}:")
    if root.kind == "tbf":
        return "tbf"
    child = next((qdisc for qdisc in qdiscs if qdisc.parent == TBF_CHILD_PARENT), None)
    if child is not None and child.kind != "tbf":
        send(ipr, delete_request(ifindex, child.handle, child.parent))
        child = None
    return "netem+tbf" if child is not None else "netem"


# One direction --------------------------------------------------------------------------

def apply_direction(ipr: IPRoute, ifindex: int, spec: DirectionSpec, *,
                    use_netem: bool | None = None) -> str:
    """Shape the egress of ``ifindex`` (in ``ipr``'s namespace) as ``spec`` says.

    Replaces whatever root qdisc is there.  ``use_netem``: None picks netem
    when the kernel has it; True insists; False forbids it (then a spec that
    needs netem is refused).  Returns the layout.
    """
    if use_netem is None:
        use_netem = netem_available()
    if needs_netem(spec) and not use_netem:
        raise NetemUnavailable(
            "delay, jitter and loss need sch_netem, which this kernel lacks "
            "(use the vm or sim mode)")
    layout = layout_for(spec, netem=use_netem)
    # built first: a spec the kernel cannot take (jitter range, tbf limit) touches nothing
    requests = _requests(ifindex, spec, "none", layout)
    remove(ipr, ifindex)
    try:
        for request in requests:
            try:
                send(ipr, request)
            except NetlinkError as error:
                if (request.msg.get_attr("TCA_KIND") == "netem"
                        and error.code in (errno.ENOENT, errno.EOPNOTSUPP)):
                    raise NetemUnavailable(f"the kernel refused netem: {error}") from error
                raise
    except BaseException:
        remove(ipr, ifindex)
        raise
    return layout


def change_direction(ipr: IPRoute, ifindex: int, spec: DirectionSpec, *,
                     use_netem: bool | None = None, layout: str | None = None) -> str:
    """Move a shaped direction to ``spec`` in place (netlink change, not delete + add).

    ``layout``: how it is shaped now, when the caller knows (it made it: no
    dump of the qdiscs first).  Where ``layout_after`` says the root cannot
    express ``spec``, this is ``apply_direction``.  Returns the new layout.
    """
    layout = current_layout(ipr, ifindex) if layout is None else layout
    target = layout_after(layout, spec)
    if target is None:
        return apply_direction(ipr, ifindex, spec, use_netem=use_netem)   # raises if no netem
    send_together(ipr, _requests(ifindex, spec, layout, target))
    return target


def remove(ipr: IPRoute, ifindex: int) -> bool:
    """Delete the root qdisc (and its child); the device goes back to its default.

    Returns whether there was anything to delete.
    """
    root = root_qdisc(current_qdiscs(ipr, ifindex))
    if root is None:
        return False
    try:
        send(ipr, delete_request(ifindex, root.handle, TC_H_ROOT))
    except NetlinkError as error:
        if error.code in (errno.ENOENT, errno.EINVAL):   # gone meanwhile
            return False
        raise
    return True


# Both directions of a topology -----------------------------------------------------------

def _each_direction(state: LinkState):
    for direction, side in SENDER.items():
        yield side, direction, getattr(state, direction)


def shapes_with_netem(topo) -> bool:
    """Whether the kernel that shapes ``topo`` (a topology or its class) has netem: its
    ``netem``, or this host's where that is None."""
    return netem_available() if topo.netem is None else topo.netem


def apply_link(topo, state: LinkState, *, use_netem: bool | None = None) -> dict[str, str]:
    """Shape uplink and downlink, each on the egress its topology names."""
    use_netem = shapes_with_netem(topo) if use_netem is None else use_netem
    layouts = {}
    for side, direction, spec in _each_direction(state):
        handle, ifname = topo.egress(direction)
        with handle as ipr:
            index = ipr.link_lookup(ifname=ifname)[0]
            layouts[side] = apply_direction(ipr, index, spec, use_netem=use_netem)
    return layouts


def change_link(topo, state: LinkState, layouts: dict[str, str] | None = None) -> dict[str, str]:
    """Change both directions in place; ``layouts``: how they are shaped now, as
    ``apply_link``/``change_link`` returned it (skips reading the qdiscs first)."""
    changed = {}
    with topo.batch():
        for side, direction, spec in _each_direction(state):
            handle, ifname = topo.egress(direction)
            with handle as ipr:
                index = ipr.link_lookup(ifname=ifname)[0]
                changed[side] = change_direction(ipr, index, spec, use_netem=topo.netem,
                                                 layout=(layouts or {}).get(side))
    return changed


def remove_link(topo) -> None:
    for direction in ("uplink", "downlink"):
        handle, ifname = topo.egress(direction)
        with handle as ipr:
            remove(ipr, ipr.link_lookup(ifname=ifname)[0])


def link_counters(topo) -> dict[str, dict]:
    """Per direction: the root qdisc's packets and bytes, the drops of all (netem counts the
    packets its loss model drops), the packets all hold now, the qdiscs there."""
    found = {}
    for direction in ("uplink", "downlink"):
        handle, ifname = topo.egress(direction)
        with handle as ipr:
            qdiscs = current_qdiscs(ipr, ipr.link_lookup(ifname=ifname)[0])
        root = next((q for q in qdiscs if q.parent == TC_H_ROOT), None)
        found[direction] = {"qdiscs": [q.kind for q in qdiscs],
                            "packets": root.packets_sent if root else 0,
                            "bytes": root.bytes_sent if root else 0,
                            "dropped_packets": sum(q.drops for q in qdiscs),
                            "queued_packets": sum(q.queued_packets for q in qdiscs)}
    return found


__all__ = [
    "LAYOUTS", "NetemUnavailable", "QdiscInfo", "apply_direction", "apply_link",
    "change_direction", "change_link", "change_requests", "current_layout", "current_qdiscs",
    "layout_after", "layout_for", "link_counters", "remove", "remove_link", "root_qdisc",
]
