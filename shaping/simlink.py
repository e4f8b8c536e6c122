"""The sim-mode link: a ZeroMQ proxy that applies the pure link model.

The edge connects here instead of to the cloud; each edge identity gets its
own DEALER towards the cloud, so the agents speak exactly the protocol they
speak across a veth pair.  Every message is held until the link model says
it arrives (delay, jitter, loss as TCP retransmission after an RTO,
serialization through a token bucket), per direction, in order.  The profile's
timeline is applied as time passes, like ``netlink change`` in emulated mode.

Run as a process: ``python -m shaping.simlink --profile FILE --listen ADDR
--connect ADDR``.  It prints ``ready`` once bound, stops on SIGTERM or SIGINT
and then writes its counters to ``--stats``.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import signal
import sys
from dataclasses import dataclass, field

import numpy as np
import zmq

from shaping.clock import now, sleep_until
from shaping.link import DirectionLink, zmtp_wire_bytes
from shaping.profile import LinkState, NetworkProfile

# Below this much waiting left, stop polling ZeroMQ (millisecond resolution)
# and wait precisely for the next release.
PRECISE_WAIT_S = 0.0015


def tcp_estimates(state: LinkState) -> tuple[float, float]:
    """(srtt, rttvar) seconds that TCP would settle on for this link state."""
    srtt = state.rtt_ms / 1000.0
    rttvar = (state.uplink.jitter_ms + state.downlink.jitter_ms) / 2000.0
    return srtt, rttvar


@dataclass(order=True)
class _Pending:
    deliver_at: float
    order: int
    direction: str = field(compare=False)
    peer: bytes = field(compare=False)
    frames: list = field(compare=False)


class LinkEmulator:
    """Both directions of one link, driven by a profile and a seed."""

    def __init__(self, profile: NetworkProfile, seed: int, started_at: float) -> None:
        self.profile = profile
        self.started_at = started_at
        state = profile.state_at(0.0)
        srtt, rttvar = tcp_estimates(state)
        seeds = np.random.SeedSequence(seed).spawn(2)
        self.directions = {
            "uplink": DirectionLink(state.uplink, np.random.default_rng(seeds[0]), srtt, rttvar),
            "downlink": DirectionLink(state.downlink, np.random.default_rng(seeds[1]), srtt, rttvar),
        }
        self.changes = iter(profile.change_times(horizon_s=7 * 24 * 3600.0))
        self.next_change = next(self.changes, None)
        self.bytes = {"uplink": 0, "downlink": 0}
        self.messages = {"uplink": 0, "downlink": 0}

    def apply_timeline(self, t: float) -> None:
        while self.next_change is not None and t - self.started_at >= self.next_change:
            state = self.profile.state_at(self.next_change)
            srtt, rttvar = tcp_estimates(state)
            self.directions["uplink"].update(state.uplink, srtt, rttvar)
            self.directions["downlink"].update(state.downlink, srtt, rttvar)
            self.next_change = next(self.changes, None)

    def deliver_at(self, direction: str, sent_at: float, payload_bytes: int) -> float:
        self.apply_timeline(sent_at)
        delivery = self.directions[direction].transit(sent_at - self.started_at, payload_bytes)
        self.bytes[direction] += payload_bytes
        self.messages[direction] += 1
        return self.started_at + delivery.deliver_at_s

    def stats(self) -> dict:
        return {name: {"messages": self.messages[name], "payload_bytes": self.bytes[name],
                       "packets": link.packets_sent, "lost_packets": link.packets_lost}
                for name, link in self.directions.items()}


class ProxyLink:
    """Edge-facing ROUTER, cloud-facing DEALERs, and the release schedule between them."""

    def __init__(self, emulator: LinkEmulator, listen: str, connect: str) -> None:
        self.emulator = emulator
        self.context = zmq.Context()
        self.frontend = self.context.socket(zmq.ROUTER)
        self.frontend.setsockopt(zmq.LINGER, 0)
        self.frontend.bind(listen)
        self.connect = connect
        self.backends: dict[bytes, zmq.Socket] = {}
        self.peer_of: dict[zmq.Socket, bytes] = {}
        self.poller = zmq.Poller()
        self.poller.register(self.frontend, zmq.POLLIN)
        self.pending: list[_Pending] = []
        self.order = itertools.count()
        self.running = True

    def _backend(self, peer: bytes) -> zmq.Socket:
        socket = self.backends.get(peer)
        if socket is None:
            socket = self.context.socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            socket.connect(self.connect)
            self.backends[peer] = socket
            self.peer_of[socket] = peer
            self.poller.register(socket, zmq.POLLIN)
        return socket

    def _accept(self, socket: zmq.Socket) -> None:
        received_at = now()
        frames = socket.recv_multipart(copy=True)
        if socket is self.frontend:
            peer, frames, direction = frames[0], frames[1:], "uplink"
            self._backend(peer)
        else:
            peer, direction = self.peer_of[socket], "downlink"
        deliver_at = self.emulator.deliver_at(direction, received_at, zmtp_wire_bytes(frames))
        heapq.heappush(self.pending, _Pending(deliver_at, next(self.order), direction, peer, frames))

    def _release_due(self) -> None:
        while self.pending and self.pending[0].deliver_at <= now():
            item = heapq.heappop(self.pending)
            if item.direction == "uplink":
                self.backends[item.peer].send_multipart(item.frames)
            else:
                self.frontend.send_multipart([item.peer, *item.frames])

    def run(self) -> None:
        while self.running:
            wait = 1.0 if not self.pending else self.pending[0].deliver_at - now()
            if wait <= PRECISE_WAIT_S and self.pending:
                sleep_until(self.pending[0].deliver_at)
                self._release_due()
                continue
            for socket, _ in self.poller.poll(int((wait - PRECISE_WAIT_S) * 1000)):
                self._accept(socket)
            self._release_due()

    def close(self) -> None:
        for socket in [self.frontend, *self.backends.values()]:
            socket.close(linger=0)
        self.context.term()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Sim-mode link emulator (started by the orchestrator)")
    parser.add_argument("--profile", required=True, help="resolved NetworkProfile JSON")
    parser.add_argument("--listen", required=True, help="address the edge connects to")
    parser.add_argument("--connect", required=True, help="the cloud's data-plane address")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stats", help="write per-direction counters here on exit")
    args = parser.parse_args(argv)
    with open(args.profile) as handle:
        profile = NetworkProfile.model_validate_json(handle.read())
    proxy = ProxyLink(LinkEmulator(profile, args.seed, now()), args.listen, args.connect)

    def stop(*_) -> None:
        proxy.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)
    try:
        proxy.run()
    finally:
        proxy.close()
        if args.stats:
            with open(args.stats, "w") as handle:
                json.dump(proxy.emulator.stats(), handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
