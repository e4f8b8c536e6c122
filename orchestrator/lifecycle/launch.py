"""Starting and stopping the processes of a run.

``ChildProcess`` is one OS process the orchestrator owns: it gets its own
session (a Ctrl-C in the terminal reaches only the orchestrator, which then
stops its children in order), dies with the orchestrator even after a
``kill -9`` (PR_SET_PDEATHSIG), and runs on the host CPUs it is given.
``AgentProcess`` adds the control plane.  ``process_cpus`` places a run's
processes: the two agents stand for two machines, so each computes on CPUs of
its own (the edge on the lower half of this process's CPUs, the cloud on the
rest), and the router VM (vm mode) forwards on the edge's.  In a cycle the
edge waits while its draft and the verdict cross the router, and while the
cloud streams the edge only receives, so the router's wake-ups land where
nothing computes; left to float, qemu's real-time threads preempt whichever
agent computes.  Measured on 2 cores, one sitting, placed and floating runs
rotated: placed, vm over sim per token 0.92-0.99 (cloud-only's cloud step,
fixed-k5's cloud and draft steps, edge-only's step); floating, 1.03-1.26.
``ProcessWatch`` is the one place that looks after the processes a run depends
on (its agents, the router VM): every wait for an agent's answer asks it every
``agents.control.WAIT_SLICE_S``, so a dead agent ends the wait at once, named
with how it ended, whatever the wait's own timeout.
``Deployment`` starts and stops the two agents of a run on the ``shaping.link``
of its mode (``make_link``): on loopback with the sim link, or each in its own
network namespace of a kernel-shaped link (a veth, or the router VM); its data
plane is CURVE-authenticated where the run's security says so
(``agents.security``), with keys made for the run in its socket folder; it hands
each query to the edge right after restarting the link's timeline, so that
every query of every strategy meets the same link (``Deployment.query``).
Each of its steps that changes the host runs ``interrupts.shielded()``, its
teardown ``interrupts.deferred()``: a signal ends the run between steps, never
inside one.
"""

from __future__ import annotations

import ctypes
import json
import os
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
from agents.security import DataPlaneSecurity, chosen_security, create_run_keys
from agents.settings import AgentSettings
from orchestrator import interrupts
from shaping.cleanup import socket_folder_prefix
from shaping.link import EmulatedLink, Link, RouterLink, SimLink
from shaping.profile import NetworkProfile
from shaping.router import RouterError
from shaping.topology import LinkTopology
from validation.link_probe import Baseline, ProbePlan, measure_path_baseline

# Loading torch and a model takes seconds (the agents always run natively, also in vm mode);
# waiting ends at once when the agent exits, so a long limit only bounds a hang.
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 5.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def process_cpus(available: frozenset[int] | None = None) -> dict[str, frozenset[int]]:
    """The host CPUs of a run's processes (``available``: this process's, by default), by
    name: ``edge``, ``cloud`` and ``router`` (the router VM's qemu, on the edge's).  Each
    agent gets half, the cloud the larger half of an odd count; {} (no placement) with
    fewer than two CPUs."""
    cpus = sorted(os.sched_getaffinity(0) if available is None else available)
    if len(cpus) < 2:
        return {}
    edge, cloud = frozenset(cpus[:len(cpus) // 2]), frozenset(cpus[len(cpus) // 2:])
    return {"edge": edge, "cloud": cloud, "router": edge}


LOG = object()   # ChildProcess(stdout=LOG): stdout goes to the log file with stderr
PACKAGES_ROOT = Path(agents.__file__).resolve().parent.parent


class ChildProcess:
    """One child: stderr (and stdout, unless ``stdout`` says where else) to ``log_path``.

    It runs in the folder that holds the ``agents`` package (a checkout's root, or
    site-packages), so ``python -m agents...`` imports the very code this process runs,
    not in the user's: every path handed to it must be absolute.
    """

    def __init__(self, name: str, argv: list[str], log_path: Path, stdout=LOG,
                 pass_fds: list[int] = (), cpus: frozenset[int] | None = None) -> None:
        """``cpus``: the host CPUs it runs on, every thread of it (None: this process's)."""
        self.name = name
        self.log_path = log_path.resolve()
        self._log = open(log_path, "wb")

        def in_child() -> None:
            _die_with_parent()
            if cpus:
                os.sched_setaffinity(0, cpus)

        with interrupts.deferred():      # the fork's at-fork hooks would drop its exception
            self.process = subprocess.Popen(
                argv, stdout=self._log if stdout is LOG else stdout,
                stderr=subprocess.STDOUT if stdout is LOG else self._log,
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=in_child,
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

    @property
    def title(self) -> str:
        """What the process is, for messages."""
        return self.name

    def failure(self) -> str:
        """Why the process is gone, in one line: how it ended, the last line of its log when
        it ended on its own (an agent's own error), and where the log is."""
        code = self.process.returncode
        if code < 0:
            how = f"died (killed by {signal.Signals(-code).name}, exit code {code})"
        else:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
            how = (f"{'died' if code else 'ended'} (exit code {code}"
                   + (f": {lines[-1].strip()})" if lines else ")"))
        return f"the {self.title} {how}; its log: {self.log_path}"

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


class ProcessWatch:
    """The processes a run depends on: its agents and what its link runs (the router VM).

    Each needs ``alive()`` and ``failure()`` (how it ended, one line).  ``check`` raises
    ``AgentError`` with the failure of the first one that is gone; it is the one test of
    process health, called by every wait for an agent (``AgentProcess``).
    """

    def __init__(self) -> None:
        self.processes: list = []

    def add(self, *processes) -> None:
        self.processes.extend(processes)

    def check(self) -> None:
        for process in self.processes:
            if not process.alive():
                raise AgentError(process.failure())


class AgentProcess(ChildProcess):
    """An agent and its control client.  While a call waits, the orchestrator keeps looking:
    at Ctrl-C (``interrupts``), and at ``watch`` (the run's: both agents and the router VM),
    so a dead agent ends the call within ``agents.control.WAIT_SLICE_S``, named with how it
    ended, whichever agent it was."""

    def __init__(self, name: str, module: str, settings: AgentSettings, folder: Path,
                 context: zmq.Context, watch: ProcessWatch, argv_prefix: list[str] = (),
                 cpus: frozenset[int] | None = None) -> None:
        settings_path = folder.resolve() / f"{name}.settings.json"
        settings_path.write_text(settings.model_dump_json(indent=2))
        super().__init__(name, [*argv_prefix, sys.executable, "-m", module,
                                "--settings", str(settings_path)], folder / f"{name}.log",
                         cpus=cpus)
        self.control = ControlClient(context, settings.control_address)
        self.watch = watch

    @property
    def title(self) -> str:
        return f"{self.name} agent"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stats(self) -> dict:
        return self.call("stats", 5.0)

    def held_until(self) -> float | None:
        return self.call("held_until", 5.0)["due"]

    def restart_timeline(self, started_at: float) -> None:
        self.call("restart_timeline", 5.0, started_at=started_at)

    def _while_waiting(self) -> None:
        interrupts.raise_if_interrupted()
        self.watch.check()

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

    def stop(self, ask_first: bool = True) -> None:
        """Ask the agent to stop (it logs that and closes its sockets), then
        ``ChildProcess.stop``.  Without ``ask_first`` (after a failure: the agent may still be
        busy with what the run gave up on, and could not answer) it gets SIGTERM at once."""
        if ask_first and self.alive():
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
    baseline of the still unshaped path (``validation.link_probe.measure_path_baseline``: what
    the path itself costs, recorded in ``link_stats.json``), then the shaping and its
    timeline.  The control plane is ``ipc://`` sockets, which reach across network
    namespaces (they are files).  Nothing is made before ``__enter__``.

    ``security`` is the data plane's as the job asks for it; ``self.security`` is what the
    run uses (``agents.security.chosen_security`` on the link).  For CURVE the agents' keys
    are made in the socket folder (private to the run's user, removed at teardown and by
    `orchestrator cleanup`): the settings beside the results name only that folder.
    """

    LINK_STATS = "link_stats.json"
    BASELINE_PLAN = ProbePlan(baseline_packets=100, interval_s=0.005, drain_s=0.5,
                              baseline_bulk_bytes=4 * 1024 * 1024)

    def __init__(self, run_dir: Path, model_pair: ModelPairConfig, link: Link,
                 receive_timeout_s: float, emulation: DeviceEmulation | None = None,
                 security: DataPlaneSecurity = "auto") -> None:
        self.run_dir = run_dir
        self.model_pair = model_pair
        self.emulation = emulation     # device emulation (None: none), in both agents' settings
        self.link = link
        self.security = chosen_security(security, link.data_host, link.own_namespaces)
        self.receive_timeout_s = receive_timeout_s
        self.agents: list[AgentProcess] = []
        self.edge: AgentProcess | None = None
        self.cloud: AgentProcess | None = None
        self.watch = ProcessWatch()
        self.baseline: Baseline | None = None
        self.context: zmq.Context | None = None
        self.socket_dir: Path | None = None

    def __enter__(self) -> "Deployment":
        try:
            self._start()
        except RouterError as error:
            self.close(failed=True)
            raise LinkError(str(error)) from None
        except BaseException:
            self.close(failed=True)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        gone = self.link.health()
        self.close(failed=exc_type is not None)
        if gone is not None and exc_type is not None and issubclass(exc_type, Exception):
            raise LinkError(f"the link failed mid-run: {gone}") from exc
        if exc_type is None:
            interrupts.raise_if_interrupted()       # a signal during the teardown

    def _start(self) -> None:
        with interrupts.shielded():
            self.context = zmq.Context()
            # named for its owner: `orchestrator cleanup` removes it once the owner is gone
            self.socket_dir = Path(tempfile.mkdtemp(prefix=socket_folder_prefix()))
            keys = (create_run_keys(self.socket_dir / "curve") if self.security == "curve"
                    else None)
            self.link.create(shape=False)
            for name, module in (("cloud", "agents.cloud"), ("edge", "agents.edge")):
                settings = AgentSettings(model_pair=self.model_pair,
                                         data_address=self.link.data_address,
                                         control_address=f"ipc://{self.socket_dir}/{name}.ctl",
                                         receive_timeout_s=self.receive_timeout_s,
                                         sim_link=self.link.sim_link, emulation=self.emulation,
                                         curve_keys=keys)
                agent = AgentProcess(name, module, settings, self.run_dir, self.context,
                                     self.watch, self.link.agent_argv(name),
                                     process_cpus().get(name))
                self.agents.append(agent)
                self.watch.add(agent)
            self.cloud, self.edge = self.agents
            self.watch.add(*self.link.watched())      # a call also ends when the link's VM dies
        for agent in self.agents:
            agent.wait_ready()
        self.link.wait_ready()
        with interrupts.shielded():       # pyroute2 forks: a signal in an at-fork hook is lost
            if self.link.topology is not None:
                self.baseline = measure_path_baseline(self.link.topology, self.BASELINE_PLAN)
            self.link.shape(self.sides)

    @property
    def sides(self) -> dict[str, AgentProcess]:
        return {"edge": self.edge, "cloud": self.cloud}

    def query(self, request: QueryRequest, timeout_s: float) -> dict:
        """The edge's reply to ``request``, run on a link whose timeline starts again right
        before (``Link.restart_timeline``; the request carries the instant, which the query
        record gives relative to its submit)."""
        with interrupts.shielded():
            started_at = self.link.restart_timeline(self.sides)
        if started_at is not None:
            request = request.model_copy(update={"timeline_started_at": started_at})
        return self.edge.call("query", timeout_s, request=request.model_dump(mode="json"))

    def write_link_stats(self) -> dict:
        """What each direction of the link carried and lost, saved beside the results."""
        with interrupts.shielded():
            stats = self.link.stats(self.sides)
        if self.baseline is not None:
            stats["baseline"] = self.baseline.summary()
        (self.run_dir / self.LINK_STATS).write_text(json.dumps(stats, indent=2))
        return stats

    def close(self, failed: bool = False) -> None:
        """Stop everything started, whole (a signal meanwhile is only recorded); after a
        failure without asking the agents first (``AgentProcess.stop``)."""
        with interrupts.deferred():
            for agent in reversed(self.agents):
                agent.stop(ask_first=not failed)
            self.agents.clear()
            if self.context is not None:
                self.context.term()
            if self.socket_dir is not None:
                shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.link.close()
