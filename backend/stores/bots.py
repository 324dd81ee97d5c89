"""Bots and their personas. Keyword-only async functions over an ``AsyncSession``."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from backend.cache import TwoLayerCache
from backend.crypto import TokenCipher
from backend.db.models import Bot
from backend.errors import NotFound, ValidationFailed
from backend.invalidation import KIND_BOT, KIND_CHATS, invalidate_after_commit
from backend.schemas import HoldingList, Persona, StanceList


def bot_id_from_token(token: str) -> int:
    """Return the Telegram user id at the start of a bot token (``123456:AA...``).

    Raises:
        ValidationFailed: when the token does not look like ``<digits>:<secret>``.
    """
    head, sep, rest = token.partition(":")
    if not (sep and head.isdigit() and len(rest) >= 8):
        raise ValidationFailed("bot token", [("token", "expected '<bot id>:<secret>'")])
    return int(head)


async def upsert_persona_bot(
    session: AsyncSession, *, persona: Persona, token: str, cipher: TokenCipher,
    cache: TwoLayerCache | None = None,
) -> Bot:
    """Create the bot for ``persona`` or update the one with its username.

    The token is stored encrypted; the persona's mood starts at its baseline. With a
    ``cache``, the bot's cached profile is invalidated in every process after the commit.

    Returns:
        The bot row (flushed, with its id).
    """
    bot = (
        await session.execute(select(Bot).where(Bot.username == persona.username))
    ).scalar_one_or_none()
    if bot is None:
        bot = Bot(username=persona.username, mood=persona.mood_baseline, enabled=True)
        session.add(bot)
    bot.name = persona.name
    bot.telegram_user_id = bot_id_from_token(token)
    bot.token_encrypted = cipher.encrypt(token)
    bot.persona = persona.profile()
    bot.stances = StanceList(items=list(persona.stances))
    bot.holdings = HoldingList(items=list(persona.holdings))
    await session.flush()
    invalidate_after_commit(session, cache, KIND_BOT, str(bot.id))
    invalidate_after_commit(session, cache, KIND_CHATS, "enabled")
    return bot


async def get_bot(session: AsyncSession, *, bot_id: int) -> Bot:
    """Return the bot with ``bot_id``.

    Raises:
        NotFound: when there is none.
    """
    bot = await session.get(Bot, bot_id)
    if bot is None:
        raise NotFound("bot", bot_id)
    return bot


async def list_bots(
    session: AsyncSession, *, enabled_only: bool = False, bot_ids: Sequence[int] | None = None
) -> Sequence[Bot]:
    """Return bots ordered by id (only enabled ones if ``enabled_only``; only ``bot_ids``
    if given)."""
    stmt = select(Bot).order_by(Bot.id)
    if enabled_only:
        stmt = stmt.where(Bot.enabled.is_(True))
    if bot_ids is not None:
        stmt = stmt.where(Bot.id.in_(list(bot_ids)))
    return (await session.execute(stmt)).scalars().all()


async def telegram_user_ids(session: AsyncSession) -> dict[int, int | None]:
    """Every bot's Telegram user id, enabled or not (one query).

    Returns:
        ``{bot id: Telegram user id}``; the user id is None for a bot whose token has not
        been resolved to one yet.
    """
    rows = (await session.execute(select(Bot.id, Bot.telegram_user_id))).all()
    return {int(i): (int(t) if t is not None else None) for i, t in rows}


async def set_mood(session: AsyncSession, *, bot_id: int, mood: float) -> None:
    """Store a bot's mood, clamped to [-1, 1] (one UPDATE, no read)."""
    await session.execute(
        update(Bot).where(Bot.id == bot_id).values(mood=max(-1.0, min(1.0, mood)))
    )


async def disable_bot(
    session: AsyncSession, *, bot_id: int, cache: TwoLayerCache | None = None
) -> None:
    """Disable ``bot_id`` (Telegram refused its token: 401) and drop it from the cached
    bot and chat lists once the transaction commits. Idempotent.

    Raises:
        NotFound: there is no such bot.
    """
    bot = await get_bot(session, bot_id=bot_id)
    bot.enabled = False
    await session.flush()
    invalidate_after_commit(session, cache, KIND_BOT, str(bot_id))
    invalidate_after_commit(session, cache, KIND_CHATS, "enabled")
