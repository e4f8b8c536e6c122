"""Control plane between the orchestrator and an agent: msgpack maps over ``ipc://``.

``ipc://`` sockets are filesystem paths, so they work across network
namespaces and keep control traffic off the shaped link.  The agent answers
each request (REP); the orchestrator calls with a timeout (REQ) and treats a
missing answer as a dead agent.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any, Callable

import msgpack
import zmq

Handler = Callable[[dict[str, Any]], dict[str, Any]]
WAIT_SLICE_S = 0.2   # how often a waiting caller gets to look elsewhere (agent alive? Ctrl-C?)


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
                logging.getLogger(__name__).exception("control command %r failed", command)
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

    def call(self, command: str, timeout_s: float, while_waiting: Callable[[], None] | None = None,
             **arguments: Any) -> dict[str, Any]:
        """Send ``command`` and return the agent's answer.

        ``while_waiting`` is called every ``WAIT_SLICE_S`` until the answer
        comes; it may raise to abandon the call (the agent died, Ctrl-C).
        """
        self.socket.send(msgpack.packb({"cmd": command, **arguments}, use_bin_type=True))
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AgentError(f"{command!r} got no answer from {self.address} "
                                 f"within {timeout_s:.0f} s")
            if self.socket.poll(int(1000 * min(left, WAIT_SLICE_S if while_waiting else left))):
                break
            if while_waiting is not None:
                while_waiting()
        reply = msgpack.unpackb(self.socket.recv(), raw=False)
        if "error" in reply:
            raise AgentError(f"{command!r} failed in the agent: {reply['error']}")
        return reply

    def close(self) -> None:
        self.socket.close(linger=0)
