"""What every agent process has: settings from the command line, a ZeroMQ
context, the control server, the data-plane channel (emulating the direction
it receives on, in sim mode) and the control commands common to all agents.
"""

from __future__ import annotations

import argparse
from typing import Any

import zmq

from agents.control import ControlServer, Handler
from agents.protocol import Channel
from agents.settings import AgentSettings
from shaping.simlink import Direction, SimulatedDirection


def settings_from_argv(argv: list[str] | None, description: str) -> AgentSettings:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--settings", required=True, help="agent settings JSON")
    args = parser.parse_args(argv)
    with open(args.settings) as handle:
        return AgentSettings.model_validate_json(handle.read())


class AgentRuntime:
    def __init__(self, settings: AgentSettings, socket_type: int, receives_on: Direction) -> None:
        self.settings = settings
        self.context = zmq.Context()
        self.control = ControlServer(self.context, settings.control_address)
        self.socket = self.context.socket(socket_type)
        sim_link = None
        if settings.sim_link is not None:
            link = settings.sim_link
            sim_link = lambda stream: SimulatedDirection(link, receives_on, stream)  # noqa: E731
        # The channel sets the size cap, which ZeroMQ applies only to later connections.
        self.channel = Channel(self.socket, settings.receive_timeout_s,
                               settings.max_message_bytes, sim_link)
        if socket_type == zmq.ROUTER:
            self.socket.bind(settings.data_address)
        else:
            self.socket.connect(settings.data_address)

    def handlers(self, **specific: Handler) -> dict[str, Handler]:
        """``ping``, ``stop`` and ``stats`` plus the agent's own commands."""
        def stats(_: dict[str, Any]) -> dict[str, Any]:
            return {"bytes_sent": self.channel.bytes_sent,
                    "bytes_received": self.channel.bytes_received,
                    "sim_link": self.channel.link_stats()}
        return {"ping": lambda _: {"ok": True}, "stop": lambda _: {"ok": True}, "stats": stats,
                **specific}

    def close(self) -> None:
        self.socket.close(linger=0)
        self.control.close()
        self.context.term()
