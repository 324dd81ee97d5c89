"""mypy (strict, ``[tool.mypy]`` in pyproject.toml) over the project's code, as a test.

It runs in the suite rather than before it so that xdist schedules its CPU beside the
end-to-end tests, which spend most of their time waiting for a chat's real-time rhythm (the
suite's wall time, README "Run the tests"). Its own process.

Its cache lives outside the checkout, in :func:`cache_dir`, shared by every checkout of
this machine's user: a fresh clone then checks only what differs from the last run (~3 s)
instead of every library it imports as well (~35 s of CPU cold, ~55 s inside the suite on a
2-core machine). mypy validates each cached module by its source's hash, so a cache written
by another checkout, branch or virtualenv is used only where it still holds; runs at once
share it safely (its SQLite cache).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """``$MYPY_CACHE_DIR`` when set; else ``$XDG_CACHE_HOME/botsim/mypy`` (by default
    ``~/.cache/botsim/mypy``); the checkout's own ``.mypy_cache`` when that cannot be
    created (a read-only home)."""
    if os.environ.get("MYPY_CACHE_DIR"):
        return Path(os.environ["MYPY_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    shared = base / "botsim" / "mypy"
    try:
        shared.mkdir(parents=True, exist_ok=True)
    except OSError:
        return ROOT / ".mypy_cache"
    return shared if os.access(shared, os.W_OK) else ROOT / ".mypy_cache"


@pytest.mark.timeout(600)
def test_mypy_finds_no_error() -> None:
    done = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache_dir())],
                          cwd=ROOT, capture_output=True, text=True, timeout=590,
                          stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    assert "Success: no issues found" in done.stdout


def test_the_cache_dir_is_shared_unless_it_cannot_be(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MYPY_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "botsim" / "mypy" and cache_dir().is_dir()
    monkeypatch.setenv("MYPY_CACHE_DIR", str(tmp_path / "own"))
    assert cache_dir() == tmp_path / "own"
    monkeypatch.delenv("MYPY_CACHE_DIR")
    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    assert cache_dir() == ROOT / ".mypy_cache"
