"""setup.sh's system-package step, without installing anything.

``id``, ``dpkg-query``, ``apt-get`` and ``apt-cache`` are replaced by stubs on PATH (what is
"installed" and "available" comes from the environment; apt-get only logs its arguments), and
``PYTHON=false`` makes the script stop at its Python check, right after the package step and
before it touches ``.venv``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SETUP = REPO / "setup.sh"
PYTHON_STOP = "setup: Python 3.11 or newer is required"

STUBS = {
    "id": 'echo "$FAKE_UID"\n',
    # dpkg-query -W -f='${Status}' PKG: installed unless PKG is listed in FAKE_MISSING.
    "dpkg-query": 'for p; do :; done\n'
                  'case " $FAKE_MISSING " in *" $p "*) echo "no packages found matching $p" >&2; exit 1;; esac\n'
                  'printf "install ok installed"\n',
    "apt-get": 'echo "DEBIAN_FRONTEND=$DEBIAN_FRONTEND $*" >> "$APT_LOG"\n',
    "apt-cache": 'for p; do :; done\n'
                 'case " $FAKE_UNAVAILABLE " in *" $p "*) echo "  Candidate: (none)";; '
                 '*) echo "  Candidate: 1.0-1";; esac\n',
}


def run_setup(tmp_path: Path, *, uid: int, missing=(), unavailable=()):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in STUBS.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "apt.log"
    log.write_text("")
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHON="false",
               FAKE_UID=str(uid), FAKE_MISSING=" ".join(missing),
               FAKE_UNAVAILABLE=" ".join(unavailable), APT_LOG=str(log))
    env.pop("DEBIAN_FRONTEND", None)
    done = subprocess.run(["bash", str(SETUP)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and PYTHON_STOP in done.stderr, done.stdout + done.stderr
    return done, log.read_text().splitlines()


def test_setup_script_parses():
    subprocess.run(["bash", "-n", str(SETUP)], check=True)


def test_nothing_missing_runs_no_apt(tmp_path):
    done, apt = run_setup(tmp_path, uid=0)
    assert apt == []
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [PYTHON_STOP + " (set PYTHON=/path/to/python3.11)"]


def test_root_installs_only_what_is_missing(tmp_path):
    done, apt = run_setup(tmp_path, uid=0, missing=("cpio", "vagrant"))
    assert apt == ["DEBIAN_FRONTEND=noninteractive update -qq",
                   "DEBIAN_FRONTEND=noninteractive install -y -qq --no-install-recommends cpio vagrant"]
    assert "setup: installing cpio vagrant (apt-get)" in done.stdout


def test_root_skips_a_package_the_release_lacks(tmp_path):
    done, apt = run_setup(tmp_path, uid=0, missing=("qemu-system-x86", "vagrant"),
                          unavailable=("vagrant",))
    assert apt == ["DEBIAN_FRONTEND=noninteractive update -qq",
                   "DEBIAN_FRONTEND=noninteractive install -y -qq --no-install-recommends qemu-system-x86"]
    assert "setup: vagrant is not available from apt here (no Vagrantfile test)" in done.stderr


@pytest.mark.parametrize("missing, says", [
    (("iproute2", "busybox-static"), "iproute2 (no emulated mode), busybox-static (no VM mode)"),
    (("vagrant",), "vagrant (no Vagrantfile test)"),
])
def test_not_root_names_what_is_missing_and_goes_on(tmp_path, missing, says):
    done, apt = run_setup(tmp_path, uid=1000, missing=missing)
    assert apt == []
    lines = [line for line in done.stderr.splitlines() if not line.startswith(PYTHON_STOP)]
    assert lines == [f"setup: not installing (needs root and apt-get): {says}; sim mode still works"]
