"""A wheel built from this tree works without it: installed in a fresh venv outside the
checkout, `orchestrator run --profile lan --mode sim` finds the shipped profiles, job, prompts
and the tiny pair's weights as package data and runs the real models.

The fresh venv gets the wheel alone (``--no-deps``); its dependencies (torch, transformers,
...) come from this project's .venv through a ``.pth`` line, which adds that folder to the
path without running its editable-install hook, so nothing of the checkout is importable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def sh(*argv, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``argv``; without PYTHONPATH, which could make the checkout importable."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    done = subprocess.run([str(arg) for arg in argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the tree (setuptools writes build/ and egg-info into the source)."""
    out = tmp_path_factory.mktemp("wheel")
    source = out / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "results", "__pycache__", "*.egg-info", ".pytest_cache"))
    sh(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
       "--wheel-dir", out, source, cwd=out)
    return next(out.glob("edgespec_testbed-*.whl"))


def test_the_wheel_carries_every_shipped_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {path.relative_to(REPO).as_posix() for path in (REPO / "configs").rglob("*")
               if path.is_file() and "__pycache__" not in path.parts}
    assert shipped - names == set()
    assert not [name for name in names if name.startswith(("tests/", "training/", "benchmarks/"))]


@pytest.mark.slow
def test_an_installed_wheel_runs_the_shipped_pair_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    sh(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    sh(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", wheel,
       cwd=tmp_path)
    site = Path(sh(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                   cwd=tmp_path).stdout.strip())
    (site / "project-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    where = sh(python, "-c", "import configs, orchestrator, agents; print(configs.__file__, "
               "orchestrator.__file__, agents.__file__)", cwd=tmp_path).stdout.split()
    assert all(path.startswith(str(site)) for path in where), where
    results = tmp_path / "results"
    done = sh(venv / "bin" / "orchestrator", "run", "--profile", "lan", "--mode", "sim",
              "--queries", "2", "--strategy", "cloud-only", "--strategy", "fixed-k",
              "--k", "5", "--results", results, cwd=tmp_path)
    folder = next(results.iterdir())
    resolved = (folder / "config.yaml").read_text()
    assert f"{site}/configs/models/tiny-arith/target" in resolved
    queries = [json.loads(line) for line in (folder / "queries.jsonl").read_text().splitlines()]
    assert {query["label"] for query in queries} == {"cloud-only", "fixed-k5"}
    assert all(query["n_tokens"] > 0 for query in queries)
    assert "fixed-k5" in done.stdout
