"""The netlink requests that shape: netem and tbf ``tcmsg``s as ``tc`` encodes them; sending.

pyroute2's own netem request has no distribution table and no Gilbert-Elliott
loss, and its tbf request has no ``TCA_TBF_BURST``/``TCA_TBF_RATE64``, so
``ShapingTcmsg`` has its own ``TCA_OPTIONS`` classes, laid out as in the
kernel uapi ``<linux/pkt_sched.h>``.  A request goes to this host's kernel
through ``IPRoute``, or to the router VM's through
``shaping.router.GuestNetlink``, which encodes it with these classes for
``shaping.router_guest`` to write to the guest kernel unchanged.

What a netem request carries, as iproute2 sends it:

- latency and jitter twice: in ``tc_netem_qopt`` in psched ticks,
  saturating at 2^32-1 (iproute2 <= 6.8), and in ns as
  ``TCA_NETEM_LATENCY64``/``TCA_NETEM_JITTER64`` (>= 6.9); kernels >= 4.15
  use the 64-bit values, and both agree;
- ``TCA_NETEM_CORR`` and ``TCA_NETEM_RATE`` always, zeros included: a change
  keeps the old value of any attribute that is absent, so leaving them out
  would keep a previous correlation or in-order rate in force;
- Gilbert-Elliott loss as a nested ``TCA_NETEM_LOSS | NLA_F_NESTED`` holding
  ``NETEM_LOSS_GE``; an absent ``TCA_NETEM_LOSS`` resets the kernel to random
  loss, so random loss (the qopt's ``loss``) needs no attribute;
- ``TCA_NETEM_DELAY_DIST``: the s16 entries of the table, where
  ``parameters.netem_jitter`` gives one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink import (NLA_F_NESTED, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
                              nla, nlmsg)
from pyroute2.netlink.rtnl import RTM_DELQDISC, RTM_NEWQDISC, TC_H_ROOT

from shaping.qdisc.parameters import UINT32_MAX, NetemParams, TbfParams

TC_LINKLAYER_ETHERNET = 1

# Where our qdiscs sit: the root, and tbf under netem's single class.
ROOT_HANDLE = 0x0001_0000           # "1:"
TBF_CHILD_PARENT = 0x0001_0001      # "1:1"
TBF_CHILD_HANDLE = 0x0010_0000      # "10:"

ADD_FLAGS = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL     # `tc qdisc add`
CHANGE_FLAGS = NLM_F_REQUEST | NLM_F_ACK                             # `tc qdisc change`
DELETE_FLAGS = NLM_F_REQUEST | NLM_F_ACK


class NetemOptions(nla):
    """``TCA_OPTIONS`` of netem: ``struct tc_netem_qopt`` then ``TCA_NETEM_*`` attributes."""

    fields = (
        ("latency", "I"),
        ("limit", "I"),
        ("loss", "I"),
        ("gap", "I"),
        ("duplicate", "I"),
        ("jitter", "I"),
    )
    nla_map = (
        ("TCA_NETEM_UNSPEC", "none"),
        ("TCA_NETEM_CORR", "netem_corr"),
        ("TCA_NETEM_DELAY_DIST", "cdata"),
        ("TCA_NETEM_REORDER", "netem_pair"),
        ("TCA_NETEM_CORRUPT", "netem_pair"),
        ("TCA_NETEM_LOSS", "netem_loss"),
        ("TCA_NETEM_RATE", "netem_rate"),
        ("TCA_NETEM_ECN", "uint32"),
        ("TCA_NETEM_RATE64", "uint64"),
        ("TCA_NETEM_PAD", "hex"),
        ("TCA_NETEM_LATENCY64", "int64"),
        ("TCA_NETEM_JITTER64", "int64"),
        ("TCA_NETEM_SLOT", "hex"),
        ("TCA_NETEM_SLOT_DIST", "hex"),
        ("TCA_NETEM_PRNG_SEED", "uint64"),
    )

    class netem_corr(nla):
        fields = (("delay_corr", "I"), ("loss_corr", "I"), ("dup_corr", "I"))

    class netem_pair(nla):
        fields = (("probability", "I"), ("correlation", "I"))

    class netem_rate(nla):
        fields = (("rate", "I"), ("packet_overhead", "i"),
                  ("cell_size", "I"), ("cell_overhead", "i"))

    class netem_loss(nla):
        nla_flags = NLA_F_NESTED
        nla_map = (
            ("NETEM_LOSS_UNSPEC", "none"),
            ("NETEM_LOSS_GI", "netem_gimodel"),
            ("NETEM_LOSS_GE", "netem_gemodel"),
        )

        class netem_gimodel(nla):
            fields = (("p13", "I"), ("p31", "I"), ("p32", "I"), ("p14", "I"), ("p23", "I"))

        class netem_gemodel(nla):
            fields = (("p", "I"), ("r", "I"), ("h", "I"), ("k1", "I"))


_RATESPEC = (("cell_log", "B"), ("linklayer", "B"), ("overhead", "H"),
             ("cell_align", "h"), ("mpu", "H"), ("rate", "I"))


class TbfOptions(nla):
    """``TCA_OPTIONS`` of tbf: nested ``TCA_TBF_*`` attributes."""

    nla_map = (
        ("TCA_TBF_UNSPEC", "none"),
        ("TCA_TBF_PARMS", "tbf_qopt"),
        ("TCA_TBF_RTAB", "hex"),
        ("TCA_TBF_PTAB", "hex"),
        ("TCA_TBF_RATE64", "uint64"),
        ("TCA_TBF_PRATE64", "uint64"),
        ("TCA_TBF_BURST", "uint32"),
        ("TCA_TBF_PBURST", "uint32"),
        ("TCA_TBF_PAD", "hex"),
    )

    class tbf_qopt(nla):
        fields = tuple((f"rate_{name}", fmt) for name, fmt in _RATESPEC) + tuple(
            (f"peak_{name}", fmt) for name, fmt in _RATESPEC) + (
            ("limit", "I"), ("buffer", "I"), ("mtu", "I"))


_OPTIONS_BY_KIND = {"netem": NetemOptions, "tbf": TbfOptions}


class ShapingTcmsg(nlmsg):
    """``struct tcmsg`` whose options use the classes above (requests only)."""

    prefix = "TCA_"
    fields = (
        ("family", "B"),
        ("pad1", "B"),
        ("pad2", "H"),
        ("index", "i"),
        ("handle", "I"),
        ("parent", "I"),
        ("info", "I"),
    )
    nla_map = (
        ("TCA_UNSPEC", "none"),
        ("TCA_KIND", "asciiz"),
        ("TCA_OPTIONS", "get_options"),
    )

    @staticmethod
    def get_options(self, *argv, **kwarg):
        return _OPTIONS_BY_KIND[self.get_attr("TCA_KIND")]


@dataclass(frozen=True)
class Request:
    """One netlink request: a message, its type and its flags."""

    msg: ShapingTcmsg
    msg_type: int
    flags: int


def _tcmsg(kind: str | None, ifindex: int, handle: int, parent: int,
           options: dict | None = None) -> ShapingTcmsg:
    msg = ShapingTcmsg()
    msg["family"] = 0    # AF_UNSPEC
    msg["index"] = ifindex
    msg["handle"] = handle
    msg["parent"] = parent
    msg["attrs"] = []
    if kind is not None:
        msg["attrs"].append(["TCA_KIND", kind])
    if options is not None:
        msg["attrs"].append(["TCA_OPTIONS", options])
    return msg


def netem_options(params: NetemParams) -> dict:
    attrs: list[list] = [
        ["TCA_NETEM_LATENCY64", params.latency_ns],
        ["TCA_NETEM_JITTER64", params.jitter_ns],
        ["TCA_NETEM_CORR", {"delay_corr": params.delay_corr_u32, "loss_corr": 0, "dup_corr": 0}],
    ]
    if params.gemodel is not None:
        p, r, h, k1 = params.gemodel
        attrs.append(["TCA_NETEM_LOSS", {"attrs": [
            ["NETEM_LOSS_GE", {"p": p, "r": r, "h": h, "k1": k1}]]}])
    attrs.append(["TCA_NETEM_RATE", {"rate": params.in_order_rate, "packet_overhead": 0,
                                     "cell_size": 0, "cell_overhead": 0}])
    if params.dist_table is not None:
        attrs.append(["TCA_NETEM_DELAY_DIST",
                      struct.pack(f"={len(params.dist_table)}h", *params.dist_table)])
    return {
        "latency": params.latency_ticks,
        "limit": params.limit_packets,
        "loss": params.loss_u32,
        "gap": 0,
        "duplicate": 0,
        "jitter": params.jitter_ticks,
        "attrs": attrs,
    }


def tbf_options(params: TbfParams) -> dict:
    rate32 = min(params.rate_bytes_per_s, UINT32_MAX)
    qopt = {f"rate_{name}": 0 for name, _ in _RATESPEC}
    qopt.update({f"peak_{name}": 0 for name, _ in _RATESPEC})
    qopt.update({"rate_linklayer": TC_LINKLAYER_ETHERNET, "rate_rate": rate32,
                 "limit": params.limit_bytes, "buffer": params.buffer_ticks, "mtu": 0})
    attrs: list[list] = [["TCA_TBF_PARMS", qopt]]
    if params.rate_bytes_per_s >= 1 << 32:
        attrs.append(["TCA_TBF_RATE64", params.rate_bytes_per_s])
    attrs.append(["TCA_TBF_BURST", params.burst_bytes])
    return {"attrs": attrs}


def netem_message(ifindex: int, params: NetemParams, *, handle: int = ROOT_HANDLE,
                  parent: int = TC_H_ROOT) -> ShapingTcmsg:
    return _tcmsg("netem", ifindex, handle, parent, netem_options(params))


def tbf_message(ifindex: int, params: TbfParams, *, handle: int = ROOT_HANDLE,
                parent: int = TC_H_ROOT) -> ShapingTcmsg:
    return _tcmsg("tbf", ifindex, handle, parent, tbf_options(params))


def delete_request(ifindex: int, handle: int, parent: int) -> Request:
    """``tc qdisc del``: where the qdisc is, no kind, no options."""
    return Request(_tcmsg(None, ifindex, handle, parent), RTM_DELQDISC, DELETE_FLAGS)


def send(ipr: IPRoute, request: Request) -> None:
    """Send one request and wait for its ACK (raises ``NetlinkError`` on a NACK)."""
    # pyroute2 0.9's sync IPRoute never sets the status key its nlm_request reads.
    if isinstance(ipr, IPRoute) and "nlm_generator" not in ipr.asyncore.status:
        ipr.asyncore.status["nlm_generator"] = False
    tuple(ipr.nlm_request(request.msg, msg_type=request.msg_type, msg_flags=request.flags))


def send_together(ipr: IPRoute, requests: list[Request]) -> None:
    """Send requests in order; through a relay (``shaping.router.GuestNetlink``) all in one
    round trip (and held by its ``batch()``)."""
    if isinstance(ipr, IPRoute):
        for request in requests:
            send(ipr, request)
    else:
        ipr.nlm_requests([(request.msg, request.msg_type, request.flags)
                          for request in requests])


def encode(msg: ShapingTcmsg, msg_type: int = RTM_NEWQDISC, flags: int = ADD_FLAGS) -> bytes:
    """The wire bytes of a request (nlmsghdr + tcmsg + attributes), for tests and logs."""
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = flags
    msg.encode()
    return bytes(msg.data)


__all__ = [
    "ADD_FLAGS", "CHANGE_FLAGS", "DELETE_FLAGS", "ROOT_HANDLE", "TBF_CHILD_HANDLE",
    "TBF_CHILD_PARENT", "NetemOptions", "Request", "ShapingTcmsg", "TbfOptions",
    "delete_request", "encode", "netem_message", "netem_options", "send", "send_together",
    "tbf_message", "tbf_options",
]
