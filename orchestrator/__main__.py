"""``orchestrator`` (also ``python -m orchestrator`` and ``python -m orchestrator.cli``): the
command line, with Ctrl-C and SIGTERM handled from the first instant.

Importing the CLI (pandas, matplotlib, ZeroMQ, pyroute2) takes about a second;
the signal handlers go in before that, so a signal during start-up ends the
command with 128 + its number and one line, like a signal at any later time.
"""

from __future__ import annotations

import sys

from orchestrator import interrupts


def main(argv: list[str] | None = None) -> int:
    try:
        interrupts.install()          # a signal pending since start-up is raised right here
        from orchestrator.cli import main as cli_main
    except BaseException:
        # a C extension that was initializing turns the interrupt into an ImportError
        if interrupts.received() is None:
            raise
        print("interrupted while starting: nothing was started", file=sys.stderr)
        return interrupts.exit_code()
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
