"""Starting and stopping the processes of a run.

``ChildProcess`` is one OS process the orchestrator owns: it gets its own
session (a Ctrl-C in the terminal reaches only the orchestrator, which then
stops its children in order) and dies with the orchestrator even after a
``kill -9`` (PR_SET_PDEATHSIG).  ``AgentProcess`` adds the control plane.
``Deployment`` starts and stops the two agents of a run on the ``shaping.link``
of its mode (``make_link``): on loopback with the sim link, or each in its own
network namespace of a kernel-shaped link (a veth, or the router VM); it hands
each query to the edge right after restarting the link's timeline, so that
every query of every strategy meets the same link (``Deployment.query``).
"""

from __future__ import annotations

import ctypes
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

import agents
from agents.backends import ModelPairConfig
from agents.backends.emulated import DeviceEmulation
from agents.control import AgentError, ControlClient
from agents.edge import QueryRequest
from agents.settings import AgentSettings
from orchestrator import interrupts
from shaping.cleanup import socket_folder_prefix
from shaping.link import EmulatedLink, Link, RouterLink, SimLink
from shaping.profile import NetworkProfile
from shaping.router import RouterError
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

    @property
    def pid(self) -> int:
        return self.process.pid

    def stats(self) -> dict:
        return self.call("stats", 5.0)

    def ping(self) -> None:
        self.call("ping", 5.0)

    def restart_timeline(self, started_at: float) -> None:
        self.call("restart_timeline", 5.0, started_at=started_at)

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


class LinkError(AgentError):
    """The link under the agents failed (the router VM died, or never came up)."""


def kernel_topology(mode: str) -> LinkTopology:
    """The topology a kernel-shaped mode runs on: a veth pair (emulated), or namespaces
    joined through a router VM (vm): the one the command shares, else a new one."""
    if mode != "vm":
        return LinkTopology()
    from orchestrator.lifecycle import vm  # here: vm imports this module
    return vm.current_router() or vm.router_topology()


def make_link(mode: str, profile: NetworkProfile, seed: int) -> Link:
    """The link of ``mode`` for ``profile`` (not created yet)."""
    if mode == "sim":
        return SimLink(profile, seed)
    if mode == "vm":
        return RouterLink(profile, topology=kernel_topology(mode))
    return EmulatedLink(profile, topology=kernel_topology(mode))


class Deployment:
    """Cloud and edge agents of one run on a link; a context manager: everything started
    is stopped on exit, also after an error or a signal.

    Order: the link, the agents (loading their models), then on a kernel path the
    baseline of the still unshaped path (``validation.link_probe.measure_baseline``: what
    the path itself costs, recorded in ``link_stats.json``), then the shaping and its
    timeline.  The control plane is ``ipc://`` sockets, which reach across network
    namespaces (they are files).
    """

    LINK_STATS = "link_stats.json"
    BASELINE_PLAN = ProbePlan(baseline_packets=100, interval_s=0.005, drain_s=0.5,
                              baseline_bulk_bytes=4 * 1024 * 1024)

    def __init__(self, run_dir: Path, model_pair: ModelPairConfig, link: Link,
                 receive_timeout_s: float, emulation: DeviceEmulation | None = None) -> None:
        self.run_dir = run_dir
        self.model_pair = model_pair
        self.emulation = emulation     # device emulation (None: none), in both agents' settings
        self.link = link
        self.receive_timeout_s = receive_timeout_s
        self.agents: list[AgentProcess] = []
        self.edge: AgentProcess | None = None
        self.cloud: AgentProcess | None = None
        self.baseline: Baseline | None = None
        self.context = zmq.Context()
        # named for its owner: `orchestrator cleanup` removes it once the owner is gone
        self.socket_dir = Path(tempfile.mkdtemp(prefix=socket_folder_prefix()))

    def __enter__(self) -> "Deployment":
        try:
            self._start()
        except RouterError as error:
            self.close()
            raise LinkError(str(error)) from None
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        gone = self.link.health()
        self.close()
        if gone is not None and exc_type is not None and issubclass(exc_type, Exception):
            raise LinkError(f"the link failed mid-run: {gone}; the queries that finished are "
                            f"kept in {self.run_dir}") from exc

    def _start(self) -> None:
        self.link.create(shape=False)
        for name, module in (("cloud", "agents.cloud"), ("edge", "agents.edge")):
            settings = AgentSettings(model_pair=self.model_pair,
                                     data_address=self.link.data_address,
                                     control_address=f"ipc://{self.socket_dir}/{name}.ctl",
                                     receive_timeout_s=self.receive_timeout_s,
                                     sim_link=self.link.sim_link, emulation=self.emulation)
            self.agents.append(AgentProcess(name, module, settings, self.run_dir, self.context,
                                            self.link.agent_argv(name), self.agents))
        self.cloud, self.edge = self.agents
        for agent in self.agents:         # a call also ends when the link's VM dies
            agent.watched = [*self.agents, *self.link.watched()]
        for agent in self.agents:
            agent.wait_ready()
        self.link.wait_ready()
        if self.link.topology is not None:
            self.baseline = measure_baseline(KernelPaths(self.link.topology), self.BASELINE_PLAN)
        self.link.shape(self.sides)

    @property
    def sides(self) -> dict[str, AgentProcess]:
        return {"edge": self.edge, "cloud": self.cloud}

    def query(self, request: QueryRequest, timeout_s: float) -> dict:
        """The edge's reply to ``request``, run on a link whose timeline starts again right
        before (``Link.restart_timeline``; the request carries the instant, which the query
        record gives relative to its submit)."""
        started_at = self.link.restart_timeline(self.sides)
        if started_at is not None:
            request = request.model_copy(update={"timeline_started_at": started_at})
        return self.edge.call("query", timeout_s, request=request.model_dump(mode="json"))

    def write_link_stats(self) -> dict:
        """What each direction of the link carried and lost, saved beside the results."""
        stats = self.link.stats(self.sides)
        if self.baseline is not None:
            stats["baseline"] = self.baseline.summary()
        (self.run_dir / self.LINK_STATS).write_text(json.dumps(stats, indent=2))
        return stats

    def close(self) -> None:
        for agent in reversed(self.agents):
            agent.stop()
        self.agents.clear()
        self.context.term()
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        self.link.close()
