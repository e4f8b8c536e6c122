"""Control plane between the orchestrator and an agent: msgpack maps over ``ipc://``.

``ipc://`` sockets are filesystem paths, so they work across network
namespaces and keep control traffic off the shaped link.  The agent answers
each request (REP); the orchestrator calls with a timeout (REQ) and treats a
missing answer as a dead agent.
"""

from __future__ import annotations

import traceback
from typing import Any, Callable

import msgpack
import zmq

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class AgentError(RuntimeError):
    """The agent answered a control request with an error, or did not answer."""


class ControlServer:
    def __init__(self, context: zmq.Context, address: str) -> None:
        self.socket = context.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(address)

    def serve_one(self, handlers: dict[str, Handler]) -> str:
        """Answer one pending request; return its command name."""
        request = msgpack.unpackb(self.socket.recv(), raw=False)
        command = request.get("cmd", "")
        try:
            handler = handlers[command]
        except KeyError:
            reply = {"error": f"unknown command {command!r}"}
        else:
            try:
                reply = handler(request)
            except Exception as error:  # report to the orchestrator, keep serving
                reply = {"error": f"{type(error).__name__}: {error}",
                         "traceback": traceback.format_exc()}
        self.socket.send(msgpack.packb(reply, use_bin_type=True))
        return command

    def close(self) -> None:
        self.socket.close(linger=0)


class ControlClient:
    def __init__(self, context: zmq.Context, address: str) -> None:
        self.address = address
        self.socket = context.socket(zmq.REQ)
        self.socket.setsockopt(zmq.LINGER, 0)
        # A request may go unanswered (timeout, Ctrl-C): allow the next one,
        # and drop any late answer to the abandoned request.
        self.socket.setsockopt(zmq.REQ_RELAXED, 1)
        self.socket.setsockopt(zmq.REQ_CORRELATE, 1)
        self.socket.connect(address)

    def call(self, command: str, timeout_s: float, **arguments: Any) -> dict[str, Any]:
        self.socket.send(msgpack.packb({"cmd": command, **arguments}, use_bin_type=True))
        if not self.socket.poll(int(timeout_s * 1000)):
            raise AgentError(f"{command!r} got no answer from {self.address} within {timeout_s:.0f} s")
        reply = msgpack.unpackb(self.socket.recv(), raw=False)
        if "error" in reply:
            raise AgentError(f"{command!r} failed in the agent: {reply['error']}")
        return reply

    def close(self) -> None:
        self.socket.close(linger=0)
