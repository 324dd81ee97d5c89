"""Readiness: whether the database answers."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession


async def ping(session: AsyncSession) -> None:
    """Send ``SELECT 1`` on ``session`` (one round trip).

    Raises:
        sqlalchemy.exc.SQLAlchemyError, OSError: whatever the driver raises when the
            database does not answer; readiness checks report it.
    """
    await session.execute(select(1))
