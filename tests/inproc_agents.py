"""The real edge and cloud agents in one process: ZeroMQ over inproc, the cloud serving in a
thread.  Fast enough to run whole queries by the hundred (tests/test_stretches.py,
tests/test_draft_ahead.py)."""

from __future__ import annotations

import itertools
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import zmq

from agents.backends import ModelPairConfig, build_models
from agents.backends.emulated import DeviceEmulation
from agents.cloud import CloudAgent
from agents.edge import EdgeAgent
from agents.protocol import Channel, ReceiveTimeout
from nasd.policy import KPolicy, make_policy
from shaping.clock import now

_endpoints = itertools.count()


@contextmanager
def edge_and_cloud(pair: ModelPairConfig, policy_for: Callable[..., KPolicy] = make_policy,
                   emulation: DeviceEmulation | None = None
                   ) -> Iterator[tuple[EdgeAgent, CloudAgent]]:
    """An edge agent on ``pair`` (its policies made by ``policy_for``), served by a cloud
    agent on the same pair, both timed as ``emulation``'s devices where it is given."""
    context = zmq.Context()
    router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    endpoint = f"inproc://agents-{next(_endpoints)}"
    router.bind(endpoint)
    dealer.connect(endpoint)
    cloud = CloudAgent(build_models(pair, "cloud", emulation),
                       Channel(router, receive_timeout_s=5.0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                message, peer, _ = cloud.channel.recv(timeout_s=0.05)
            except ReceiveTimeout:
                continue
            cloud.handle(message, peer, now())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield EdgeAgent(build_models(pair, "edge", emulation),
                        Channel(dealer, receive_timeout_s=5.0),
                        policy_for=policy_for), cloud
    finally:
        stop.set()
        thread.join(timeout=5.0)
        router.close(linger=0)
        dealer.close(linger=0)
        context.term()
