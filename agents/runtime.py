"""What every agent process has: settings from the command line, its log, a
ZeroMQ context, the control server, the data-plane channel (CURVE with the
run's keys where the settings name them, ``agents.security``; emulating the
direction it receives on, in sim mode), its models, and the control
commands common to all agents.

The log goes to stderr, which the orchestrator writes to ``edge.log`` /
``cloud.log`` in the run folder: start-up (versions, addresses, where the
link is shaped, the models, their device and load time), one line per
session or query, and every error with its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from importlib import metadata
from typing import Any, Callable

import zmq

from agents.backends import Host, HostModels, ModelPairConfig, build_models
from agents.backends.emulated import DeviceEmulation
from agents.control import ControlServer, Handler
from agents.protocol import Channel
from agents.security import describe_data_plane, new_routing_id, secure_data_socket
from agents.settings import AgentSettings
from shaping.profile import Side, received_by
from shaping.simlink import SimulatedDirection

LOG_FORMAT = "%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s"
VERSIONED = ("numpy", "pyzmq", "torch", "transformers")


def settings_from_argv(argv: list[str] | None, description: str) -> AgentSettings:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--settings", required=True, help="agent settings JSON")
    args = parser.parse_args(argv)
    with open(args.settings) as handle:
        return AgentSettings.model_validate_json(handle.read())


def start_log(host: Host, settings: AgentSettings) -> logging.Logger:
    """The agent's logger, on stderr; logs what this process is and where it talks."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format=LOG_FORMAT,
                        datefmt="%H:%M:%S")
    log = logging.getLogger(host)
    versions = []
    for package in VERSIONED:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    log.info("started: pid %d on CPUs %s, python %s, %s", os.getpid(),
             ",".join(map(str, sorted(os.sched_getaffinity(0)))), platform.python_version(),
             ", ".join(versions))
    link = ("sim link model on the direction received" if settings.sim_link is not None
            else f"kernel link; network namespace {_namespace()}")
    log.info("data plane %s (%s); control %s", settings.data_address, link,
             settings.control_address)
    return log


def _namespace() -> str:
    """The named network namespace this process runs in (``ip netns exec``), or the host's."""
    try:
        own = os.stat("/proc/self/ns/net").st_ino
        for entry in os.scandir("/run/netns"):
            if os.stat(entry.path).st_ino == own:
                return entry.name
    except OSError:
        pass
    return "of the host"


def load_models(config: ModelPairConfig, host: Host, log: logging.Logger,
                emulation: DeviceEmulation | None = None) -> HostModels:
    """``build_models``, timed and logged (backend, models, device, load time, and the device
    it emulates)."""
    started = time.perf_counter()
    models = build_models(config, host, emulation)
    if config.backend == "hf":
        device = config.edge_device if host == "edge" else config.cloud_device
        what = (f"draft {config.draft}" + (f", target {config.target}" if host == "cloud" else "")
                + f" ({config.dtype} on {device})")
    else:
        what = f"acceptance {config.acceptance_law}, vocabulary {config.vocab_size}"
    log.info("models of pair %r (%s): %s, loaded in %.2f s", config.name, config.backend, what,
             time.perf_counter() - started)
    if emulation is not None:
        log.info("%s", emulation.describe())
    return models


class AgentRuntime:
    def __init__(self, settings: AgentSettings, socket_type: int, side: Side) -> None:
        self.settings = settings
        self.context = zmq.Context()
        self.control = ControlServer(self.context, settings.control_address)
        self.socket = self.context.socket(socket_type)
        self.authenticator = None
        if settings.curve_keys is not None:
            self.authenticator = secure_data_socket(self.socket, side, settings.curve_keys)
        logging.getLogger(side).info("data plane %s",
                                     describe_data_plane(side, settings.curve_keys))
        if socket_type == zmq.DEALER:
            self.socket.setsockopt(zmq.ROUTING_ID, new_routing_id())
        sim_link = None
        if settings.sim_link is not None:
            link = settings.sim_link
            sim_link = lambda stream: SimulatedDirection(link, received_by(side), stream)  # noqa: E731
        # The channel sets the size cap, which ZeroMQ applies only to later connections.
        self.channel = Channel(self.socket, settings.receive_timeout_s,
                               settings.max_message_bytes, sim_link,
                               settings.cloud_limits.peer_queue_messages
                               if socket_type == zmq.ROUTER else None)
        if socket_type == zmq.ROUTER:
            self.socket.bind(settings.data_address)
        else:
            self.socket.connect(settings.data_address)

    def handlers(self, agent_stats: Callable[[], dict[str, Any]] | None = None,
                 **specific: Handler) -> dict[str, Handler]:
        """``ping``, ``stop``, ``stats`` (with the agent's own under ``agent``),
        ``held_until`` (sim: when the last message its link model holds is due) and
        ``restart_timeline`` (sim: the link's timeline counts from the request's
        ``started_at`` on) plus the agent's own commands."""
        def stats(_: dict[str, Any]) -> dict[str, Any]:
            return {"bytes_sent": self.channel.bytes_sent,
                    "bytes_received": self.channel.bytes_received,
                    "sim_link": self.channel.link_stats(),
                    **({"agent": agent_stats()} if agent_stats else {})}

        def restart_timeline(request: dict[str, Any]) -> dict[str, Any]:
            self.channel.restart_timeline(float(request["started_at"]))
            return {"ok": True}
        return {"ping": lambda _: {"ok": True}, "stop": lambda _: {"ok": True}, "stats": stats,
                "held_until": lambda _: {"due": self.channel.held_until()},
                "restart_timeline": restart_timeline, **specific}

    def close(self) -> None:
        self.socket.close(linger=0)
        self.control.close()
        if self.authenticator is not None:
            self.authenticator.stop()
        self.context.term()
