"""Kernel shaping of a link: netem and tbf on the egress of each direction, over rtnetlink.

Everything goes through pyroute2's netlink; nothing shells out to ``tc``.

The object model
----------------
A link has two directions, each shaped on the egress of the interface that
sends it: the edge's veth end for uplink and the cloud's for downlink
(emulated mode), or the router VM's NIC facing the receiver (vm mode,
``shaping.router``: the same requests, relayed to the guest kernel).  A
direction's settings are a ``shaping.profile.DirectionSpec``; the qdiscs on
one egress form its *layout*::

    "netem+tbf"   root 1: netem, and 10: tbf at netem's class 1:1
    "netem"       root 1: netem                 (no bandwidth limit)
    "tbf"         root 1: tbf                   (a kernel without sch_netem)
    "none"        the device's default qdisc

Where the kernel has netem it is always the root, even at zero delay, so a
schedule change never swaps the root: netem is *changed* in place (``tc
qdisc change``: its queue and counters stay) and the tbf child is changed,
added or deleted as the rate comes and goes.  Where it has not (the hosts
this project is built on; the vm mode brings a kernel that has), tbf alone
shapes the rate, and a spec that needs netem (delay, jitter or loss) raises
``NetemUnavailable`` before anything is touched.

What happens to a packet
------------------------
1. netem takes it: its loss model may drop it; else it gets a send time,
   now + the delay + a jitter draw from the distribution table, never before
   the send time of the packet ahead (so packets stay in order unless the
   spec allows reordering), and waits in netem's time-ordered queue.
2. At its send time netem hands it to tbf, whose byte FIFO holds it until
   the token bucket (rate, burst) lets it go, or drops it when full.
3. Then the device: the veth peer, or the VM's NIC.

Why netem above tbf
-------------------
netem stamps a packet's send time when it is enqueued, whatever sits above
or below it, so both orders give "delay, then rate" and neither makes the
delay depend on the rate.  What differs is the queues: with netem at the
root, its time queue holds only packets still in their delay (its packet
limit sized from rate x delay) and tbf's byte FIFO the rate backlog (its
byte limit sized from the bandwidth-delay product), so each limit means one
thing; with tbf at the root, netem would replace tbf's FIFO and one packet
limit would have to cover both.  It is also the arrangement the netem
documentation shows.  For a constant delay this equals rate-then-delay
exactly (a token bucket is shift invariant), which is what ``shaping.link_model``
models; jitter is applied before the bucket, so a backlogged bucket smooths
it.

The modules, bottom up
----------------------
- ``parameters``: netem and tbf settings from a ``DirectionSpec`` (queue
  sizes, jitter tables, units); pure math.
- ``messages``: the netlink requests (``tcmsg`` with netem/tbf options),
  their encoding, and sending them.
- ``probes``: whether this kernel has netem and tbf.
- ``operations``: layouts; apply, change and remove a direction or both
  directions of a topology; read the qdiscs and their counters.
"""
