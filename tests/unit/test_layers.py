"""The two top-level process modules keep to their floor.

import-linter (``.importlinter``) sees ``worker`` and ``message_listener`` only as names
others import (they are modules, not packages, so it does not read them); what they import
themselves is checked here: neither imports the other, the admin API, the CLI, the demo or
the load tests (the processes are siblings under the CLI, over ``botsim.bootstrap``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FACES = ("worker", "message_listener", "backend.api", "botsim.cli", "botsim.demo", "loadtest")


def imported(source: str) -> set[str]:
    """Every module name ``source`` imports, at any depth (function-level imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def wrong_way(module: str, source: str) -> list[str]:
    """The imports of ``module`` that reach another face (itself excluded)."""
    return sorted(n for n in imported(source) for face in FACES
                  if face != module and (n == face or n.startswith(face + ".")))


@pytest.mark.parametrize("module", ["worker", "message_listener"])
def test_the_processes_import_no_other_face(module: str) -> None:
    source = (ROOT / f"{module}.py").read_text(encoding="utf-8")
    assert wrong_way(module, source) == []
    assert "botsim.bootstrap" in imported(source)  # they start through the one bootstrap


def test_a_wrong_way_import_is_caught() -> None:
    source = ("import asyncio\n\ndef main():\n"
              "    from botsim.cli import main as m\n    import message_listener\n")
    assert wrong_way("worker", source) == ["botsim.cli", "botsim.cli.main", "message_listener"]
