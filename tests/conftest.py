"""Shared fixtures: checks that the suite leaves no agent, namespace, veth, owner file or qemu.

Tests marked ``needs_netem`` skip on a kernel without ``sch_netem``; the VM
test (``tests/test_vm.py``) runs them inside a VM whose kernel has it.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

# Agents this suite starts keep their settings under pytest's temporary folders.
AGENT_PATTERN = "agents[.](edge|cloud) --settings .*pytest-of-"


def running_agents() -> list[str]:
    found = subprocess.run(["pgrep", "-af", AGENT_PATTERN], capture_output=True, text=True)
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


@pytest.fixture(scope="session", autouse=True)
def no_agent_left_behind():
    before = set(running_agents())
    yield
    left = [line for line in running_agents() if line not in before]
    assert not left, f"agent processes left behind: {left}"


@pytest.fixture(scope="module")
def netns_ok():
    """Skip (with the reason) unless this test can create network namespaces."""
    from tests.netns_helpers import PrefixTracker
    problem = PrefixTracker("tn").netns_problem()
    if problem:
        pytest.skip(problem)


def qemu_processes() -> list[str]:
    found = subprocess.run(["pgrep", "-a", "qemu-system"], capture_output=True, text=True)
    return found.stdout.splitlines()


def host_network_state() -> tuple:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return ()
    from tests.netns_helpers import snapshot
    return snapshot()


@pytest.fixture(scope="session", autouse=True)
def nothing_left_on_the_host():
    """After the whole suite: no namespace, veth, owner file or qemu that was not there before."""
    network_before, qemu_before = host_network_state(), set(qemu_processes())
    yield
    network_after = host_network_state()
    left = {kind: sorted(set(after) - set(before))
            for kind, before, after in zip(("namespaces", "veths", "owner files"),
                                           network_before, network_after)}
    left["qemu"] = sorted(set(qemu_processes()) - qemu_before)
    assert not any(left.values()), f"left behind by the test suite: {left}"


def pytest_collection_modifyitems(config, items):
    needs = [item for item in items if item.get_closest_marker("needs_netem")]
    if not needs:
        return
    from shaping.qdisc import netem_available
    if os.geteuid() == 0 and netem_available():
        return
    skip = pytest.mark.skip(reason="needs root and sch_netem (tests/test_vm.py runs these in a VM)")
    for item in needs:
        item.add_marker(skip)
