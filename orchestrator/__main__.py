"""``orchestrator`` (also ``python -m orchestrator`` and ``python -m orchestrator.cli``): the
command line, with Ctrl-C and SIGTERM handled from the first instant.

Importing the CLI (pandas, matplotlib, ZeroMQ, pyroute2) takes about a second;
the signal handlers go in before that (``interrupts.run_command``), so a signal
during start-up ends the command with 128 + its number and one line, like a signal
at any later time.  Once the command is done they go again: a signal while the
interpreter shuts down ends the process by its default action, which a shell reads
as 128 + its number too.
"""

from __future__ import annotations

import sys

from orchestrator import interrupts


def main(argv: list[str] | None = None) -> int:
    return interrupts.run_command("orchestrator.cli", argv)


if __name__ == "__main__":
    sys.exit(main())
