"""The ``bot_reflections`` table: the insights a bot drew from its memories (issue 16,
item 4; ``behavior_engine.memory``, ``docs/memory.md``).

Kept apart from :mod:`backend.db.models` only until the class moves there; it shares its
:class:`~backend.db.models.Base` (so its metadata and naming convention), and migration
``0008_bot_reflections`` creates the table.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Index, Integer, Text
from sqlalchemy.orm import Mapped, mapped_column

from backend.db.models import Base
from backend.db.types import UTCDateTime, utcnow


class BotReflection(Base):
    """One reflection of a bot: a short first-person insight written by the LLM from the
    bot's most important recent memories.

    Attributes:
        bot_id: the bot (its reflections go with it: ON DELETE CASCADE).
        text: the insight (one or two sentences).
        importance: 0–1 (``behavior_engine.memory.importance``).
        created_at: when it was drawn (aware UTC).
        expires_at: when it is forgotten (``created_at`` + 30 days by default; deleted by
            ``backend.stores.memories.expire_reflections``).
    """

    __tablename__ = "bot_reflections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    bot_id: Mapped[int] = mapped_column(ForeignKey("bots.id", ondelete="CASCADE"))
    text: Mapped[str] = mapped_column(Text)
    importance: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_bot_reflections_bot_created", "bot_id", "created_at"),)
