"""Shared fixtures: quiet consoles, and a check that no test leaves an agent behind."""

from __future__ import annotations

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
