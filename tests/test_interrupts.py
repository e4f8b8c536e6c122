"""Every SIGINT or SIGTERM ends the orchestrator with 128 + its number, wherever it lands.

A signal whose exception Python drops (it landed in a finalizer or an at-fork
hook while ``subprocess`` forked an agent) must still end the command: the
next wait raises it, and the exit code reports it even if the command got to
its end.  Signals during start-up (imports, agents starting) count the same.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import ROOT, running_agents

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
@pytest.mark.parametrize("delay_s, stop", [(0.0, "SIGINT"), (0.0, "SIGTERM"), (0.7, "SIGTERM"),
                                           (1.5, "SIGINT"), (2.5, "SIGTERM"), (4.0, "SIGINT")])
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
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 128 + getattr(signal, stop), err
    assert "interrupted" in err and "Traceback" not in err, err
    deadline = time.monotonic() + 10
    while running_agents(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running_agents(tmp_path)
