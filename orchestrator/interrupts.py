"""Ctrl-C and SIGTERM in the orchestrator: every signal ends the command, deterministically.

This module is the one place that handles them.  ``run_command`` is the
process's entry: the handlers go in before the command's imports and are
released (default actions again) once it returned, so a signal at any instant
ends the process with 128 + its number (only the interpreter's own first ~30 ms,
before any of this runs, keep Python's defaults: SIGTERM still ends it, SIGINT
with a ``KeyboardInterrupt`` traceback).  The handler records the first signal
and raises ``Interrupted`` in the main thread, which unwinds the stack and with
it every ``with`` that started something (agents, namespaces, the VM).

A signal must never cut a step that changes the host in half: a namespace
made but not yet recorded as the run's is one that no teardown and no
``orchestrator cleanup`` can find, and an exception raised inside pyroute2's
netlink code leaves its event loop broken for the teardown that follows.  So
every such step runs ``shielded()``: a signal inside it is only recorded, and
raised once the step is whole (creating and recording what it made), while
the waits inside it (for an agent, for the router VM) stay checkpoints that
raise it at once.  Teardown runs ``deferred()``: recorded, never raised inside
it, so it always runs to its end.

Python also drops an exception raised while the main thread runs a finalizer
or an at-fork hook (``Exception ignored in: <function _releaseLock ...>``: a
signal that lands while ``subprocess`` forks an agent), so the record is what
counts: the waits of the normal flow call ``raise_if_interrupted`` (a
checkpoint), and ``cli`` turns a recorded signal into its exit status even
when the command got to its end.  Later signals while the first unwinds are
noted, not raised, so teardown runs to completion.

Only the orchestrator's own process unwinds: pyroute2 and ``subprocess``
fork helpers that inherit the handler, and a fork must die on a signal, not
run a copy of the orchestrator's teardown.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The orchestrator got SIGINT or SIGTERM; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    main_pid: int | None = None
    received: int | None = None
    deferring: int = 0


def _handler(signum: int, frame) -> None:
    if os.getpid() != _State.main_pid:
        os._exit(128 + signum)
    if _State.received is not None:
        return                       # already unwinding (or about to, at the next checkpoint)
    _State.received = signum
    if not _State.deferring:
        raise Interrupted(signum)


@contextmanager
def deferred():
    """Record a signal inside the block without raising: for teardown, and for code whose
    exceptions Python drops (``subprocess`` forking runs at-fork hooks); a checkpoint
    after it raises."""
    _State.deferring += 1
    try:
        yield
    finally:
        _State.deferring -= 1


@contextmanager
def shielded():
    """Run a step that changes the host to its end: a signal inside it is recorded and
    raised when the outermost shielded (or deferred) block completes, not halfway through
    it; checkpoints inside it (``raise_if_interrupted``) still raise at once."""
    with deferred():
        yield
    if not _State.deferring:
        raise_if_interrupted()


def run_command(module: str, argv: list[str] | None = None) -> int:
    """Run ``module``'s ``main(argv)`` as this process's command, its exit code: the handlers
    go in before ``module`` is imported (a second of pandas, ZeroMQ, pyroute2), and out again
    once it returned (``release``), so a signal at any instant gives 128 + its number."""
    try:
        install()          # a signal pending since start-up is raised right here
        command = importlib.import_module(module).main
    except BaseException:
        # a C extension that was initializing turns the interrupt into an ImportError
        if _State.received is None:
            raise
        print("interrupted while starting: nothing was started", file=sys.stderr)
        return exit_code()
    try:
        code = command(argv)
        release()
    except Interrupted:             # the first signal, as the command returned
        release()
        code = None
    if _State.received is None or code == exit_code():
        return code
    print(f"interrupted ({signal.Signals(_State.received).name}) as the command ended: it had "
          "stopped everything it started", file=sys.stderr)
    return exit_code()


def install() -> None:
    """Handle SIGINT and SIGTERM in this process from now on, even if the parent left them
    ignored or blocked (a signal pending since start-up is handled at once)."""
    _State.main_pid, _State.received = os.getpid(), None
    for signum in SIGNALS:
        signal.signal(signum, _handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def install_once() -> None:
    """``install``, unless this process did already (it keeps what it received so far)."""
    if _State.main_pid != os.getpid():
        install()


def release() -> None:
    """For the process's last instants (its interpreter shutting down): SIGINT and SIGTERM
    get their default action back, so a signal from here ends the process as signals do
    (a shell reads 128 + n) instead of landing in a handler that nothing checks any more.
    One that came in before is still ``received()``: look after this."""
    with deferred():
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_DFL)      # runs the handler for a pending one first
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def received() -> int | None:
    """The first signal this process got since ``install``, if any."""
    return _State.received


def raise_if_interrupted() -> None:
    """A checkpoint: raise ``Interrupted`` if a signal came in whose exception was lost."""
    if _State.received is not None:
        raise Interrupted(_State.received)


def exit_code(default_signum: int = signal.SIGINT) -> int:
    """128 + the received signal (or ``default_signum``: a plain KeyboardInterrupt)."""
    return 128 + (_State.received or default_signum)
