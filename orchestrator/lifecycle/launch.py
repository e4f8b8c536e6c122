"""Starting and stopping the processes of a run.

``ChildProcess`` is one OS process the orchestrator owns: it gets its own
session (a Ctrl-C in the terminal reaches only the orchestrator, which then
stops its children in order) and dies with the orchestrator even after a
``kill -9`` (PR_SET_PDEATHSIG).  ``AgentProcess`` adds the control plane.
``Deployment`` starts and stops the two agents of a run: ``SimDeployment``
on loopback, each agent emulating the link direction it receives on;
``EmulatedDeployment`` each in its own network namespace of an
``EmulatedLink`` (kernel netem + tbf on a veth); ``VmDeployment`` the same
with the namespaces joined through a router VM that shapes (the agents stay
native).
"""

from __future__ import annotations

import ctypes
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

import agents
from agents.backends import ModelPairConfig
from agents.control import AgentError, ControlClient
from agents.settings import AgentSettings
from orchestrator import interrupts
from shaping.clock import now
from shaping.emulated import EmulatedLink
from shaping.profile import NetworkProfile
from shaping.router import RouterError
from shaping.simlink import SimLinkSettings
from shaping.topology import LinkTopology
from validation.link_probe import Baseline, KernelPaths, ProbePlan, measure_baseline

# Loading torch and a model takes seconds (the agents always run natively, also in vm mode);
# waiting ends at once when the agent exits, so a long limit only bounds a hang.
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 5.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


LOG = object()   # ChildProcess(stdout=LOG): stdout goes to the log file with stderr
PACKAGES_ROOT = Path(agents.__file__).resolve().parent.parent


class ChildProcess:
    """One child: stderr (and stdout, unless ``stdout`` says where else) to ``log_path``.

    It runs in the folder that holds the ``agents`` package (a checkout's root, or
    site-packages), so ``python -m agents...`` imports the very code this process runs,
    not in the user's: every path handed to it must be absolute.
    """

    def __init__(self, name: str, argv: list[str], log_path: Path, stdout=LOG,
                 pass_fds: list[int] = ()) -> None:
        self.name = name
        self.log_path = log_path.resolve()
        self._log = open(log_path, "wb")
        with interrupts.deferred():      # the fork's at-fork hooks would drop its exception
            self.process = subprocess.Popen(
                argv, stdout=self._log if stdout is LOG else stdout,
                stderr=subprocess.STDOUT if stdout is LOG else self._log,
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
                pass_fds=pass_fds, cwd=PACKAGES_ROOT)

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout_s: float) -> int:
        """Its exit code once it ends (``subprocess.TimeoutExpired`` after ``timeout_s``);
        a Ctrl-C whose exception was lost ends the wait too (``interrupts``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            interrupts.raise_if_interrupted()
            try:
                return self.process.wait(min(0.5, max(deadline - time.monotonic(), 0.0)))
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    raise

    def failure(self) -> str:
        """Why the process is gone: exit code and the tail of its log."""
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
        return f"{self.name} exited with code {self.process.returncode}: " + " | ".join(tail)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; always reaps."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class AgentProcess(ChildProcess):
    """An agent and its control client.  While a call waits, the orchestrator keeps looking:
    at Ctrl-C, and at every process in ``watched`` (the run's agents), so a dead agent
    ends the call at once with its exit code and log, whichever agent it was."""

    def __init__(self, name: str, module: str, settings: AgentSettings, folder: Path,
                 context: zmq.Context, argv_prefix: list[str] = (),
                 watched: list[ChildProcess] | None = None) -> None:
        settings_path = folder.resolve() / f"{name}.settings.json"
        settings_path.write_text(settings.model_dump_json(indent=2))
        super().__init__(name, [*argv_prefix, sys.executable, "-m", module,
                                "--settings", str(settings_path)], folder / f"{name}.log")
        self.control = ControlClient(context, settings.control_address)
        self.watched = watched if watched is not None else [self]

    def _while_waiting(self) -> None:
        interrupts.raise_if_interrupted()
        for process in self.watched:
            if not process.alive():
                raise AgentError(process.failure())

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._while_waiting()
            try:
                self.control.call("ping", timeout_s=1.0, while_waiting=self._while_waiting)
                return
            except AgentError:
                continue
        raise AgentError(f"{self.name} did not answer within {timeout_s:.0f} s")

    def call(self, command: str, timeout_s: float, **arguments) -> dict:
        self._while_waiting()
        try:
            return self.control.call(command, timeout_s, while_waiting=self._while_waiting,
                                     **arguments)
        except AgentError:
            self._while_waiting()
            raise

    def stop(self) -> None:
        if self.alive():
            try:
                self.control.call("stop", timeout_s=2.0)
                self.process.wait(STOP_TIMEOUT_S)
            except (AgentError, subprocess.TimeoutExpired):
                pass
        self.control.close()
        super().stop()


class Deployment:
    """Cloud and edge agents of one run; subclasses say where they run and what shapes the link.

    Use as a context manager: everything started is stopped on exit, also
    after an error or a signal.
    """

    LINK_STATS = "link_stats.json"
    mode = ""

    def __init__(self, run_dir: Path, model_pair: ModelPairConfig, profile: NetworkProfile,
                 seed: int, receive_timeout_s: float) -> None:
        self.run_dir = run_dir
        self.model_pair = model_pair
        self.profile = profile
        self.seed = seed
        self.receive_timeout_s = receive_timeout_s
        self.agents: list[AgentProcess] = []
        self.edge: AgentProcess | None = None
        self.cloud: AgentProcess | None = None
        self.context = zmq.Context()
        self.socket_dir = Path(tempfile.mkdtemp(prefix="edgespec-"))

    def __enter__(self) -> "Deployment":
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _start(self) -> None:
        raise NotImplementedError

    def _start_agents(self, data_address: str, sim_link: SimLinkSettings | None = None,
                      argv_prefix: dict[str, list[str]] | None = None) -> None:
        for name, module in (("cloud", "agents.cloud"), ("edge", "agents.edge")):
            settings = AgentSettings(model_pair=self.model_pair, data_address=data_address,
                                     control_address=f"ipc://{self.socket_dir}/{name}.ctl",
                                     receive_timeout_s=self.receive_timeout_s, sim_link=sim_link)
            self.agents.append(AgentProcess(name, module, settings, self.run_dir, self.context,
                                            (argv_prefix or {}).get(name, []), self.agents))
        self.cloud, self.edge = self.agents
        for agent in self.agents:
            agent.wait_ready()

    def link_stats(self) -> dict:
        raise NotImplementedError

    def write_link_stats(self) -> dict:
        """What each direction of the link carried and lost, saved beside the results."""
        stats = self.link_stats()
        (self.run_dir / self.LINK_STATS).write_text(json.dumps(stats, indent=2))
        return stats

    def close(self) -> None:
        for agent in reversed(self.agents):
            agent.stop()
        self.agents.clear()
        self.context.term()
        shutil.rmtree(self.socket_dir, ignore_errors=True)


class SimDeployment(Deployment):
    """Sim mode: both agents on loopback; each receiving channel applies the link model."""

    mode = "sim"

    def _start(self) -> None:
        link = SimLinkSettings(profile=self.profile, seed=self.seed, started_at=now())
        self._start_agents(f"tcp://127.0.0.1:{free_tcp_port()}", sim_link=link)

    def link_stats(self) -> dict:
        return {"uplink": self.cloud.call("stats", 5.0)["sim_link"],
                "downlink": self.edge.call("stats", 5.0)["sim_link"]}


def tcp_counters(pid: int) -> dict[str, int]:
    """The TCP counters of the network namespace ``pid`` lives in (``/proc/PID/net/snmp``)."""
    lines = [line.split() for line in Path(f"/proc/{pid}/net/snmp").read_text().splitlines()
             if line.startswith("Tcp:")]
    names, values = lines[0][1:], lines[1][1:]
    counters = dict(zip(names, map(int, values)))
    return {"segments_out": counters["OutSegs"], "retransmitted_segments": counters["RetransSegs"]}


class LinkError(AgentError):
    """The link under the agents failed (the router VM died, or never came up)."""


def kernel_topology(mode: str) -> LinkTopology:
    """The topology a kernel-shaped mode runs on: a veth pair (emulated), or namespaces
    joined through a router VM (vm): the one the command shares, else a new one."""
    if mode != "vm":
        return LinkTopology()
    from orchestrator.lifecycle import vm  # here: vm imports this module
    return vm.current_router() or vm.router_topology()


class EmulatedDeployment(Deployment):
    """Emulated mode: each agent in its own namespace; the data plane crosses the shaped veth.

    The control plane stays on ``ipc://`` sockets, which reach across network
    namespaces (they are files).  The agents are started with ``ip netns exec``,
    which execs, so each agent's pid is the process inside the namespace.

    Order: the topology, the agents (loading their models), then the baseline
    on the still unshaped path (``validation.link_probe.measure_baseline``: what
    the path itself costs, recorded in ``link_stats.json``), then the shaping
    and its timeline.
    """

    mode = "emulated"
    DATA_PORT = 5555
    BASELINE_PLAN = ProbePlan(baseline_packets=100, interval_s=0.005, drain_s=0.5,
                              baseline_bulk_bytes=4 * 1024 * 1024)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.link: EmulatedLink | None = None
        self.baseline: Baseline | None = None
        self._tcp_at_start: dict[str, dict[str, int]] = {}

    def __enter__(self) -> "EmulatedDeployment":
        try:
            return super().__enter__()
        except RouterError as error:
            raise LinkError(str(error)) from None

    def __exit__(self, exc_type, exc, tb) -> None:
        gone = self.link.topology.health() if self.link is not None else None
        self.close()
        if gone is not None and exc_type is not None and issubclass(exc_type, Exception):
            raise LinkError(f"the link failed mid-run: {gone}; the queries that finished are "
                            f"kept in {self.run_dir}") from exc

    def _start(self) -> None:
        self.link = EmulatedLink(self.profile, topology=kernel_topology(self.mode))
        self.link.create(shape=False)
        topology = self.link.topology
        self._start_agents(f"tcp://{topology.cloud_ip}:{self.DATA_PORT}", argv_prefix={
            side: topology.run_in(side, []) for side in ("edge", "cloud")})
        for agent in self.agents:         # a call also ends when the link's VM dies
            agent.watched = [*self.agents, *topology.watched()]
        topology.wait_ready()
        self.baseline = measure_baseline(KernelPaths(topology), self.BASELINE_PLAN)
        self.link.shape()
        self._tcp_at_start = {agent.name: tcp_counters(agent.process.pid) for agent in self.agents}

    def link_stats(self) -> dict:
        stats = self.link.counters()
        for direction, agent in (("uplink", self.edge), ("downlink", self.cloud)):
            start, end = self._tcp_at_start[agent.name], tcp_counters(agent.process.pid)
            stats[direction]["tcp"] = {name: end[name] - start[name] for name in end}
        stats["prefix"] = self.link.prefix
        stats["baseline"] = self.baseline.summary()
        return stats

    def close(self) -> None:
        super().close()
        if self.link is not None:
            self.link.close()


class VmDeployment(EmulatedDeployment):
    """vm mode: as emulated, but the namespaces meet in a router VM that shapes
    (``shaping.router``, ``orchestrator.lifecycle.vm.RouterVm``); the agents run natively."""

    mode = "vm"

    def link_stats(self) -> dict:
        stats = super().link_stats()
        topology = self.link.topology
        stats["router"] = {"accel": topology.router.accel, "kernel": topology.guest["kernel"],
                           "interfaces": topology.guest["interfaces"],
                           "qemu_pid": topology.router.pid}
        return stats


DEPLOYMENTS = {"sim": SimDeployment, "emulated": EmulatedDeployment, "vm": VmDeployment}
