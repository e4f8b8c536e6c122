"""Shared fixtures: checks that the suite leaves no agent, namespace, veth, owner file or qemu.

Tests that need kernel netem take the ``netem_mode`` fixture: this host's
kernel where it has ``sch_netem``, else one router VM shared by the session.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL_SWEEP_JOB = ROOT / "tests" / "fixtures" / "sweep-small.yaml"

# Agents keep their settings in their run's folder: this session's are under its own
# temporary folder, which tells them from the agents of any other run on the host.
AGENT_PATTERN = "agents[.](edge|cloud) --settings "


def running_agents(under: Path | str = "pytest-of-") -> list[str]:
    """Agent processes whose settings file lies under ``under`` (by default: any pytest's)."""
    found = subprocess.run(["pgrep", "-af", AGENT_PATTERN + f".*{under}"], capture_output=True,
                           text=True)
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


@pytest.fixture(scope="session", autouse=True)
def no_agent_left_behind(tmp_path_factory):
    """After the whole suite: no agent this session started is still running."""
    ours = tmp_path_factory.getbasetemp()
    yield
    left = running_agents(ours)
    assert not left, f"agent processes left behind: {left}"


@dataclass
class ResumedSweep:
    path: Path
    finished_before_interrupt: list[str]
    interrupt_exit_code: int
    resume_output: str


def _finished_cells(path: Path) -> list[str]:
    done = path / "cells.jsonl"
    return ([json.loads(line)["cell"] for line in done.read_text().splitlines()]
            if done.exists() else [])


@pytest.fixture(scope="session")
def resumed_sweep(tmp_path_factory) -> ResumedSweep:
    """``tests/fixtures/sweep-small.yaml`` in sim mode, interrupted (SIGINT) once two cells
    have finished, then finished with ``--resume``: shared by the sweep and report tests.
    Run from a folder outside the checkout, into its default results folder."""
    root = tmp_path_factory.mktemp("sweep")
    command = [sys.executable, "-m", "orchestrator.cli", "sweep", "--mode", "sim"]
    first = subprocess.Popen(command + ["--job", str(SMALL_SWEEP_JOB)], cwd=root, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    path = None
    while time.monotonic() < deadline and first.poll() is None:
        folders = list(root.glob("results/*-sweep-small-sim"))
        if folders and len(_finished_cells(folders[0])) >= 2:
            path = folders[0]
            break
        time.sleep(0.2)
    assert path is not None, first.communicate(timeout=30)[0]
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=60)
    finished = _finished_cells(path)
    resumed = subprocess.run(command + ["--resume", str(path)], cwd=root, text=True,
                             capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    return ResumedSweep(path, finished, first.returncode, resumed.stdout)


@pytest.fixture(scope="module")
def netns_ok():
    """Skip (with the reason) unless this test can create network namespaces."""
    from tests.netns_helpers import PrefixTracker
    problem = PrefixTracker("tn").netns_problem()
    if problem:
        pytest.skip(problem)


def qemu_processes() -> list[str]:
    """qemu processes ("pid argv") but those a live process outside this run started (a
    second suite on the same host); an orphan counts, since this run may have leaked it."""
    from tests.netns_helpers import in_this_process_tree, parent_pid
    found = subprocess.run(["pgrep", "-a", "qemu-system"], capture_output=True, text=True)
    ours = []
    for line in found.stdout.splitlines():
        parent = parent_pid(int(line.split()[0]))
        if parent is None or parent == 1 or in_this_process_tree(parent):
            ours.append(line)
    return ours


def host_network_state() -> tuple:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return ()
    from tests.netns_helpers import before_the_suite, snapshot
    before_the_suite()
    return snapshot()


@pytest.fixture(scope="session", autouse=True)
def nothing_left_on_the_host():
    """After the whole suite: no namespace, veth, owner file or qemu that was not there before
    and that no other live run owns."""
    network_before, qemu_before = host_network_state(), set(qemu_processes())
    yield
    from tests.netns_helpers import foreign
    network_after = host_network_state()
    left = {kind: sorted(name for name in set(after) - set(before) if not foreign(name))
            for kind, before, after in zip(("namespaces", "veths", "owner files"),
                                           network_before, network_after)}
    left["qemu"] = sorted(set(qemu_processes()) - qemu_before)
    assert not any(left.values()), f"left behind by the test suite: {left}"


@pytest.fixture(scope="session")
def router_vm():
    """One router VM (``orchestrator.lifecycle.vm.shared_router``) for the whole session: every vm-mode
    run in this process shapes it instead of booting its own.  Skips without root or qemu."""
    if os.geteuid() != 0:
        pytest.skip("the router VM needs root")
    from orchestrator.lifecycle import vm
    missing = vm.VmHost.missing()
    if missing:
        pytest.skip("the router VM needs " + "; ".join(missing) + " (./setup.sh as root)")
    with vm.shared_router() as router:
        router.wait_ready()
        yield router


@pytest.fixture(scope="session")
def netem_mode(request) -> str:
    """Where this suite shapes with kernel netem: "emulated" (this host's kernel has it) or
    "vm" (the session's router VM); skips, with the reason, where neither works."""
    from shaping.qdisc.probes import netem_available
    if os.geteuid() == 0 and netem_available():
        return "emulated"
    request.getfixturevalue("router_vm")
    return "vm"
