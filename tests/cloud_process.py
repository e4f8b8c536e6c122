"""A real cloud agent process (``python -m agents.cloud``) on loopback, for the tests and the
benchmark that attack its data plane: raw peers (DEALER sockets) made here send it whatever
they like, and a legitimate query runs the real edge agent, in this process, against it.
With ``curve`` the cloud has keys of its own run (``agents.security``): a peer made here
holds the run's edge keys unless it is given other keys, or none."""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import msgpack
import zmq

from agents.backends import ModelPairConfig, build_models
from agents.edge import EdgeAgent, QueryRequest
from agents.protocol import Channel
from agents.records import QueryRecord
from agents.security import create_run_keys, secure_data_socket
from agents.settings import AgentSettings, CloudLimits
from orchestrator.config.loading import load_model_pair
from orchestrator.lifecycle.launch import AgentProcess, ProcessWatch
from shaping.link import SimLink
from shaping.profile import ProfileFile, resolve

_queries = itertools.count()


def raw_frames(kind: object = "draft", session: object = "s", seq: object = 0,
               sent_at: object = 0.0, fields: object = None, arrays: object = (),
               buffers: tuple[bytes, ...] = ()) -> list[bytes]:
    """A message's frames as a peer may forge them: any value in any header field."""
    header = {"type": kind, "session": session, "seq": seq, "sent_at": sent_at,
              "fields": {} if fields is None else fields, "arrays": list(arrays)}
    return [msgpack.packb(header), *buffers]


class CloudUnderTest:
    """The cloud process, its address, and the peers and legitimate edge made against it."""

    def __init__(self, process: AgentProcess, settings: AgentSettings,
                 pair: ModelPairConfig) -> None:
        self.process, self.settings, self.pair = process, settings, pair
        self.context = zmq.Context()
        self.sockets: list[zmq.Socket] = []
        self._edge_models = build_models(pair, "edge")

    def peer(self, receive_timeout_s: float = 5.0, options: dict[int, int | bytes] | None = None,
             keys: Callable[[zmq.Socket], object] | None = None) -> Channel:
        """A new peer connected to the cloud, its socket ``options`` set first (by default
        ZeroMQ gives it an identity of its own: ``zmq.ROUTING_ID`` chooses it); ``keys`` sets
        its CURVE keys (default: the run's edge keys, where the cloud has keys)."""
        socket = self.context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        for option, value in (options or {}).items():
            socket.setsockopt(option, value)
        if keys is not None:
            keys(socket)
        elif self.settings.curve_keys is not None:
            secure_data_socket(socket, "edge", self.settings.curve_keys)
        socket.connect(self.settings.data_address)
        self.sockets.append(socket)
        return Channel(socket, receive_timeout_s)

    def legit_query(self, strategy: str = "fixed-k", k: int | None = 5,
                    max_new_tokens: int = 12, query_id: str | None = None,
                    peer: Channel | None = None, **request: object) -> QueryRecord:
        """A query of the real edge agent (on ``peer``, by default a new one) against the
        cloud; its session is ``legit/<query_id>/0``."""
        edge = EdgeAgent(self._edge_models, peer or self.peer())
        query = QueryRequest(strategy=strategy, label="legit", k=k,
                             query_id=query_id or f"auto{next(_queries)}",
                             prompt="What is 12 + 30?", max_new_tokens=max_new_tokens,
                             **request)
        record, _ = edge.run_query(query)
        return record

    def alive(self) -> bool:
        return self.process.alive()

    def log(self) -> str:
        return self.process.log_path.read_text()

    def counts(self) -> dict[str, int]:
        """What the cloud counted of its data plane (``CloudAgent.counts``)."""
        return self.process.stats()["agent"]["counts"]

    def sessions(self) -> int:
        return self.process.stats()["agent"]["sessions"]

    def rss_kib(self) -> int:
        """The cloud process's resident memory (``VmRSS``), in KiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def close(self) -> None:
        for socket in self.sockets:
            socket.close(linger=0)
        self.context.term()


@contextmanager
def cloud_process(folder: Path, pair: str = "synthetic", rtt_ms: float = 0.0,
                  limits: CloudLimits | None = None,
                  curve: bool = False) -> Iterator[CloudUnderTest]:
    """A cloud agent process on loopback in sim mode (a link of ``rtt_ms``), its settings,
    log and control socket in ``folder`` (with ``curve``, its run's keys too); stopped on
    exit."""
    folder.mkdir(parents=True, exist_ok=True)
    link = SimLink(resolve(ProfileFile(rtt_ms=rtt_ms), "test"), seed=0).create()
    model_pair = load_model_pair(pair)
    settings = AgentSettings(model_pair=model_pair, data_address=link.data_address,
                             control_address=f"ipc://{folder.resolve()}/cloud.ctl",
                             receive_timeout_s=5.0, sim_link=link.sim_link,
                             cloud_limits=limits or CloudLimits(),
                             curve_keys=create_run_keys(folder / "curve") if curve else None)
    context = zmq.Context()
    watch = ProcessWatch()
    process = AgentProcess("cloud", "agents.cloud", settings, folder, context, watch)
    watch.add(process)
    cloud = None
    try:
        process.wait_ready()
        cloud = CloudUnderTest(process, settings, model_pair)
        yield cloud
    finally:
        if cloud is not None:
            cloud.close()
        process.stop()
        context.term()
