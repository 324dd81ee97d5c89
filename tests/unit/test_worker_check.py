"""``botsim worker --check`` without Redis: the id file's age is the heartbeat."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from backend.settings import Settings
from worker import check


def test_fresh_id_file_is_healthy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(data_dir=tmp_path, heartbeat_ttl_s=5)
    settings.effective_worker_id_file.write_text("w-1-abc\n")
    assert check(settings) == 0
    assert "healthy: worker w-1-abc" in capsys.readouterr().out


def test_stale_id_file_is_unhealthy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(data_dir=tmp_path, heartbeat_ttl_s=5)
    path = settings.effective_worker_id_file
    path.write_text("w-1-abc\n")
    old = time.time() - 60
    os.utime(path, (old, old))
    assert check(settings) == 1
    assert "unhealthy: worker w-1-abc, last heartbeat" in capsys.readouterr().out


def test_missing_id_file_is_unhealthy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(data_dir=tmp_path, worker_id_file=tmp_path / "nope" / "worker.id")
    assert check(settings) == 1
    assert "no worker id file" in capsys.readouterr().out


def test_redis_heartbeat_is_checked(tmp_path: Path, redis_url: str) -> None:
    import redis

    from backend import keys

    settings = Settings(data_dir=tmp_path, redis_url=redis_url, redis_namespace="chk")
    settings.effective_worker_id_file.write_text("w-2-def\n")
    assert check(settings) == 1  # no heartbeat key yet
    client = redis.Redis.from_url(redis_url)
    try:
        client.set(keys.worker_key("w-2-def", "chk"), "{}", px=3000)
        assert check(settings) == 0
        client.delete(keys.worker_key("w-2-def", "chk"))
        assert check(settings) == 1
    finally:
        client.close()
