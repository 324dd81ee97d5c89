"""Whether the database answers (the admin API's readiness)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession


async def ping(session: AsyncSession) -> None:
    """Run ``SELECT 1`` on ``session``'s connection.

    Returns:
        None once the database has answered.

    Raises:
        sqlalchemy.exc.SQLAlchemyError, OSError: the database refused or is unreachable
            (whatever the driver raises; the readiness route reports any failure).
    """
    await session.execute(select(1))
