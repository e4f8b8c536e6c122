#!/usr/bin/env bash
# Sets up everything the testbed and its tests need on a fresh Debian/Ubuntu machine:
# a virtual environment in .venv with the project installed (editable) with the transformers
# backend (torch 2.13.0; a CPU build where pip finds one locally) and the test tools.
# Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")"

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: Python 3.11 or newer is required (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if ! command -v pgrep >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq procps >/dev/null
  else
    echo "setup: pgrep (package procps) is missing and this is not a root Debian shell" >&2
    exit 1
  fi
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[hf,dev]'
echo "setup: ready (.venv/bin/orchestrator)"
