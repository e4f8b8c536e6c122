"""The real edge and cloud agents in one process: ZeroMQ over inproc, the cloud serving in a
thread.  Fast enough to run whole queries by the hundred (tests/test_stretches.py,
tests/test_draft_ahead.py) and messages by the thousand (tests/test_wire_fuzz.py)."""

from __future__ import annotations

import itertools
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import zmq

from agents.backends import ModelPairConfig, build_models
from agents.backends.emulated import DeviceEmulation
from agents.cloud import CloudAgent
from agents.edge import EdgeAgent
from agents.protocol import Channel
from agents.settings import CloudLimits
from nasd.policy import KPolicy, make_policy

_endpoints = itertools.count()


@dataclass
class ServedCloud:
    """A cloud agent serving ``endpoint`` from a thread of this process (its loop's turns as
    ``agents.cloud.serve`` takes them); ``alive`` until something raises out of a turn."""

    agent: CloudAgent
    context: zmq.Context
    endpoint: str
    thread: threading.Thread | None = None
    sockets: list[zmq.Socket] = field(default_factory=list)

    def peer(self, receive_timeout_s: float = 5.0) -> Channel:
        """A new peer (a DEALER of its own identity) connected to the cloud."""
        socket = self.context.socket(zmq.DEALER)
        socket.connect(self.endpoint)
        self.sockets.append(socket)
        return Channel(socket, receive_timeout_s)

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


@contextmanager
def served_cloud(pair: ModelPairConfig, limits: CloudLimits = CloudLimits(),
                 emulation: DeviceEmulation | None = None) -> Iterator[ServedCloud]:
    """A cloud agent on ``pair`` granting ``limits`` (timed as ``emulation``'s cloud device
    where it is given), served in a thread until exit."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    endpoint = f"inproc://agents-{next(_endpoints)}"
    cloud = ServedCloud(CloudAgent(build_models(pair, "cloud", emulation),
                                   Channel(router, receive_timeout_s=5.0), limits),
                        context, endpoint)
    router.bind(endpoint)
    stop = threading.Event()

    def serve() -> None:
        agent = cloud.agent
        while not stop.is_set():
            agent.turn(agent.channel.poll(agent.wait_s(0.05)))

    cloud.thread = threading.Thread(target=serve, daemon=True)
    cloud.thread.start()
    try:
        yield cloud
    finally:
        stop.set()
        cloud.thread.join(timeout=5.0)
        for socket in [router, *cloud.sockets]:
            socket.close(linger=0)
        context.term()


@contextmanager
def edge_and_cloud(pair: ModelPairConfig, policy_for: Callable[..., KPolicy] = make_policy,
                   emulation: DeviceEmulation | None = None
                   ) -> Iterator[tuple[EdgeAgent, CloudAgent]]:
    """An edge agent on ``pair`` (its policies made by ``policy_for``), served by a cloud
    agent on the same pair, both timed as ``emulation``'s devices where it is given."""
    with served_cloud(pair, emulation=emulation) as cloud:
        yield EdgeAgent(build_models(pair, "edge", emulation), cloud.peer(),
                        policy_for=policy_for), cloud.agent
