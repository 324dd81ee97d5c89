"""The README keeps its promises: every setting documented, .ci/run runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

from backend.schemas import SimulationSettings
from backend.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_process_setting_is_in_the_table() -> None:
    for name in Settings.model_fields:
        assert re.search(rf"^\| {name} \| `[A-Z_]+", README, re.M), f"{name} missing"
        assert f"BOTSIM_{name.upper()}" in README or name == "database_url"


def test_every_operator_setting_is_in_the_table() -> None:
    for name in SimulationSettings.model_fields:
        assert f"| `{name}` |" in README, f"{name} missing"


def test_ci_runs_the_readme_test_command() -> None:
    marker = README.split("<!-- test-command -->", 1)[1].splitlines()
    command = marker[2].strip()
    assert "pytest" in command
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "<!-- test-command -->" in ci and 'exec bash -c "$cmd"' in ci


def test_the_test_command_runs_in_parallel_and_names_the_slowest_tests() -> None:
    command = README.split("<!-- test-command -->", 1)[1].splitlines()[2]
    assert "-n 4" in command and "--dist loadgroup" in command  # pytest-xdist, 4 workers
    assert "--durations=15" in command


def test_the_test_command_type_checks_and_byte_compiles_in_parallel() -> None:
    command = README.split("<!-- test-command -->", 1)[1].splitlines()[2]
    assert "--no-compile" in command and "compileall -q -j 0 .venv/lib" in command
    # mypy is a test of the suite (it shares the cores with the waiting tests)
    assert "mypy" not in command
    assert "def test_mypy_finds_no_error" in (
        ROOT / "tests" / "unit" / "test_typecheck.py").read_text(encoding="utf-8")


def test_the_test_command_checks_the_floors() -> None:
    command = README.split("<!-- test-command -->", 1)[1].splitlines()[2]
    assert "lint-imports" in command
    config = (ROOT / ".importlinter").read_text(encoding="utf-8")
    for floor in ("sandbox", "the ground", "bots imports", "behavior_engine imports"):
        assert f"name = {floor}" in config
