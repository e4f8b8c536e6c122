"""Every SIGINT or SIGTERM ends the orchestrator with 128 + its number, wherever it lands.

A signal whose exception Python drops (it landed in a finalizer or an at-fork
hook while ``subprocess`` forked an agent) must still end the command: the
next wait raises it, and the exit code reports it even if the command got to
its end.  Signals during start-up (imports, agents starting) count the same,
and so do signals inside the creation of namespaces (the host check's and the
run's own), which must leave none behind.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shaping.topology import DEFAULT_PREFIX_PATTERN, OWNER_DIR
from tests.conftest import ROOT, running_agents
from tests.netns_helpers import foreign, snapshot

LOST_IN_A_FINALIZER = textwrap.dedent("""
    import os, signal, sys
    from orchestrator import interrupts
    from orchestrator.cli import main

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(1000))           # the handler runs here: Python drops what it raises

    interrupts.install()
    Finalized()
    try:
        interrupts.raise_if_interrupted()
    except interrupts.Interrupted as lost:
        print("checkpoint raised", lost.exit_code)
    sys.exit(main(["profiles"]))    # runs to its end, and still reports the signal
""")


def test_a_signal_whose_exception_python_dropped_is_raised_at_the_next_checkpoint():
    done = subprocess.run([sys.executable, "-c", LOST_IN_A_FINALIZER], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert "Exception ignored in" in done.stderr            # the drop really happened
    assert "checkpoint raised 130" in done.stdout
    assert done.returncode == 130, done.stderr
    assert "interrupted (SIGINT)" in done.stderr


HELD_WHILE_FORKING = textwrap.dedent("""
    import os, signal
    from orchestrator import interrupts

    interrupts.install()
    with interrupts.deferred():       # as around subprocess's fork
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(1000))
        print("not raised inside")
    try:
        interrupts.raise_if_interrupted()
    except interrupts.Interrupted as held:
        print("raised after", held.exit_code)
""")


def test_a_signal_while_forking_is_held_to_the_next_checkpoint():
    done = subprocess.run([sys.executable, "-c", HELD_WHILE_FORKING], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split("\n")[:2] == ["not raised inside", "raised after 143"], done
    assert done.stderr == ""


def _block_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM))


@pytest.mark.slow
@pytest.mark.parametrize("delay_s, stop", [(0.0, "SIGINT"), (0.0, "SIGTERM"), (1.5, "SIGINT"),
                                           (2.5, "SIGTERM"), (4.0, "SIGINT")])
def test_a_signal_at_any_point_of_a_run_ends_it_with_128_plus_its_number(tmp_path, stop,
                                                                         delay_s):
    """0 s: sent before the interpreter even started (held blocked until the handler is in,
    so it lands in the import window); later: imports, agents starting, queries."""
    child = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", "--mode", "sim", "--job", "smoke",
         "--profile", "rtt050-bw010", "--strategy", "fixed-k", "--max-new-tokens", "200",
         "--results", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_block_signals)
    try:
        time.sleep(delay_s)
        child.send_signal(getattr(signal, stop))
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 128 + getattr(signal, stop), err
    assert "interrupted" in err and "Traceback" not in err, err
    if "results: " in out:   # the run had begun: what finished is named, and how to report it
        folder, = tmp_path.iterdir()
        assert f"orchestrator report {folder}" in out, out
    deadline = time.monotonic() + 10
    while running_agents(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running_agents(tmp_path)


def run_command(tmp_path: Path, mode: str) -> list[str]:
    """``orchestrator run`` as the tests and the docs start it (``python -m orchestrator.cli``)."""
    return [sys.executable, "-m", "orchestrator.cli", "run", "--mode", mode, "--job", "smoke",
            "--profile", "rtt000-bw010", "--results", str(tmp_path)]


def handles_sigterm(pid: int) -> bool:
    """Whether ``pid`` has a handler for SIGTERM yet (its ``SigCgt`` mask)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)", status, re.M)[1], 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def assert_interrupted(child: subprocess.Popen, stop: str) -> str:
    """The child's stderr, once it ended with 128 + ``stop`` and one line, no traceback."""
    err = child.communicate(timeout=60)[1]
    assert child.returncode == 128 + getattr(signal, stop), err
    assert "interrupted" in err and "Traceback" not in err, err
    return err


@pytest.mark.slow
def test_a_signal_the_instant_the_handlers_are_in_ends_the_imports_with_one_line(tmp_path):
    """The very start of ``python -m orchestrator.cli``: the handlers go in before the second
    of imports, so a Ctrl-C there is one line and 130, not a KeyboardInterrupt traceback."""
    child = subprocess.Popen(run_command(tmp_path, "sim"), cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        while child.poll() is None and not handles_sigterm(child.pid):
            time.sleep(0.001)
        child.send_signal(signal.SIGINT)
        err = assert_interrupted(child, "SIGINT")
    finally:
        child.kill()
    assert err.strip() == "interrupted while starting: nothing was started"
    assert not list(tmp_path.iterdir())


def scheme_namespaces() -> set[str]:
    return {name for name in snapshot()[0]
            if re.fullmatch(DEFAULT_PREFIX_PATTERN + r"-\w+", name)}


def owned_by(pid: int) -> set[str]:
    """The prefixes whose owner file names ``pid``."""
    found = set()
    for path in OWNER_DIR.glob("*.owner"):
        try:
            if int(path.read_text().split()[0]) == pid:
                found.add(path.name.removesuffix(".owner"))
        except (OSError, ValueError, IndexError):
            continue        # written or removed right now
    return found


@pytest.mark.slow
@pytest.mark.parametrize("owner_files, stop", [(1, "SIGTERM"), (4, "SIGINT")])
def test_a_signal_inside_namespace_creation_leaves_nothing(netns_ok, tmp_path, owner_files, stop):
    """Sent the instant the run's ``owner_files``-th owner file appears: ownership is recorded
    before anything is created, so the signal lands in the creation that follows.  The
    first is the host check's (a veth pair between two namespaces), the fourth the run's own
    topology (after the check's netem and tbf probes)."""
    before = scheme_namespaces()
    child = subprocess.Popen(run_command(tmp_path, "emulated"), cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    prefixes: set[str] = set()
    try:
        while child.poll() is None and len(prefixes) < owner_files:
            prefixes |= owned_by(child.pid)
            time.sleep(0.001)
        assert len(prefixes) == owner_files, f"the run wrote owner files for {prefixes} only"
        child.send_signal(getattr(signal, stop))
        assert_interrupted(child, stop)
    finally:
        child.kill()
    namespaces, veths, owners = snapshot()
    assert not [name for name in namespaces + veths + owners
                if name.split("-")[0].removesuffix(".owner") in prefixes]
    assert not [name for name in scheme_namespaces() - before if not foreign(name)]
    assert not running_agents(tmp_path)
