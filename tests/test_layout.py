"""The architecture, checked from the imports (ARCHITECTURE.md draws it): every package and
``orchestrator`` room imports only the floors below it, and no module-level imports form a
cycle."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# area -> the areas it may import (besides itself); an area is a top-level package or an
# orchestrator room.  Read bottom-up: shaping and nasd stand alone, cli sits on everything.
FLOORS = {
    "configs": set(),
    "shaping": set(),
    "nasd": set(),
    "agents": {"nasd", "shaping"},
    "validation": {"agents", "nasd", "shaping"},
    "orchestrator": set(),
    "orchestrator.interrupts": set(),
    "orchestrator.progress": set(),
    "orchestrator.config": {"agents", "shaping", "nasd", "configs"},
    "orchestrator.results": {"orchestrator.config", "shaping"},
    "orchestrator.reporting": {"orchestrator.config", "orchestrator.results", "agents",
                               "shaping", "nasd", "validation"},
    "orchestrator.lifecycle": {"orchestrator.config", "orchestrator.results",
                               "orchestrator.reporting", "orchestrator.interrupts",
                               "orchestrator.progress", "agents", "shaping", "nasd",
                               "validation"},
    "orchestrator.cli": {"orchestrator.config", "orchestrator.results", "orchestrator.reporting",
                         "orchestrator.lifecycle", "orchestrator.interrupts",
                         "orchestrator.progress", "agents", "shaping", "nasd", "validation"},
    "orchestrator.__main__": {"orchestrator.interrupts", "orchestrator.cli"},
    "training": {"agents", "validation", "nasd"},
}
PACKAGES = ("configs", "shaping", "nasd", "agents", "validation", "orchestrator", "training")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def area(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "orchestrator" and len(parts) > 1:
        return "orchestrator." + parts[1]
    return parts[0]


def imports(path: Path, module_level_only: bool) -> set[str]:
    """First-party modules ``path`` imports (``from a import b``: ``a.b`` when that is a module)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    return {name for name in found if name.split(".")[0] in PACKAGES}


MODULES = {module_name(path): path for package in PACKAGES
           for path in (ROOT / package).rglob("*.py")}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_import_points_down(module):
    mine = area(module)
    assert mine in FLOORS, f"{module}: its area {mine!r} has no floor in FLOORS"
    upward = sorted(name for name in imports(MODULES[module], module_level_only=False)
                    if area(name) != mine and area(name) not in FLOORS[mine])
    assert upward == [], f"{module} ({mine}) imports above its floor: {upward}"


def test_no_import_cycle():
    graph = {module: {name for name in imports(path, module_level_only=True)
                      if name in MODULES and name != module}
             for module, path in MODULES.items()}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")


@pytest.mark.parametrize("script", sorted(path.name for path in (ROOT / "benchmarks").glob("*.py")))
def test_every_benchmark_imports_and_says_how_to_run_it(script, tmp_path):
    """Run from outside the checkout, each benchmark's ``--help``: its imports resolve (a
    renamed module once left ``draft_ahead.py`` unable to start) and it prints its usage."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
