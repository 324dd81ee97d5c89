"""mypy (strict, ``[tool.mypy]`` in pyproject.toml) over the project's code, as a test.

It runs in the suite rather than before it so that xdist schedules its ~35 s of CPU beside the
end-to-end tests, which spend most of their time waiting for a chat's real-time rhythm (the
suite's wall time, README "Run the tests"). Its own process: mypy's cache lives in
``.mypy_cache`` as when it is run by hand.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_mypy_finds_no_error() -> None:
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True,
                          text=True, timeout=590, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    assert "Success: no issues found" in done.stdout
