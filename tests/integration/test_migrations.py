"""Alembic owns the schema: after upgrading to head, the database matches the models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from backend.db.models import Base
from backend.db.session import make_engine


def _compare(conn: Any) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


async def _diff(url: str) -> list[Any]:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_compare)
    finally:
        await engine.dispose()


async def test_sqlite_schema_matches_the_models(sqlite_template: Path) -> None:
    assert await _diff(f"sqlite+aiosqlite:///{sqlite_template}") == []


@pytest.mark.postgres
async def test_postgresql_schema_matches_the_models(pg_url: str) -> None:
    assert await _diff(pg_url) == []
