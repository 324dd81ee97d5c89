"""Bots and their personas. Keyword-only async functions over an ``AsyncSession``."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select, update
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


def apply_persona(bot: Bot, persona: Persona) -> None:
    """Set ``bot``'s name, username, profile, stances and holdings from ``persona`` (in
    memory: the caller's flush or commit writes them; mood and token are left alone)."""
    bot.name = persona.name
    bot.username = persona.username
    bot.persona = persona.profile()
    bot.stances = StanceList(items=list(persona.stances))
    bot.holdings = HoldingList(items=list(persona.holdings))


def set_token(bot: Bot, token: str, cipher: TokenCipher) -> None:
    """Store ``token`` on ``bot`` encrypted with ``cipher``, and its Telegram user id (in
    memory, as :func:`apply_persona`).

    Raises:
        ValidationFailed: the token does not look like ``<digits>:<secret>``.
    """
    bot.telegram_user_id = bot_id_from_token(token)
    bot.token_encrypted = cipher.encrypt(token)


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
    apply_persona(bot, persona)
    set_token(bot, token, cipher)
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


async def set_enabled(
    session: AsyncSession, *, bot_id: int, enabled: bool, cache: TwoLayerCache | None = None
) -> tuple[Bot, bool]:
    """Let ``bot_id`` take turns (``enabled``) or stop it; a no-op when it already is so.

    On a change the row is flushed and, with a ``cache``, the bot's cached profile and the
    cached list of enabled chats are invalidated in every process once the transaction
    commits; nothing is invalidated when nothing changed.

    Returns:
        ``(bot, changed)``: the bot row, and whether ``enabled`` changed.

    Raises:
        NotFound: there is no such bot.
    """
    bot = await get_bot(session, bot_id=bot_id)
    if bot.enabled == enabled:
        return bot, False
    bot.enabled = enabled
    await session.flush()
    invalidate_after_commit(session, cache, KIND_BOT, str(bot.id))
    invalidate_after_commit(session, cache, KIND_CHATS, "enabled")
    return bot, True


async def update_bot(
    session: AsyncSession,
    *,
    bot: Bot,
    persona: Persona,
    enabled: bool | None = None,
    mood: float | None = None,
    token: str | None = None,
    cipher: TokenCipher | None = None,
    cache: TwoLayerCache | None = None,
) -> None:
    """Write an edit of ``bot`` (a row of this session): its persona fields
    (:func:`apply_persona`), and ``enabled``, ``mood`` and the token when given (None: left
    alone; the token stored encrypted with ``cipher``, :func:`set_token`). Flushes, and
    with a ``cache`` invalidates the bot's cached profile and the cached list of enabled
    chats in every process once the transaction commits (always, even when nothing
    changed). Uniqueness of the username and token is the caller's to check first.

    Args:
        mood: stored as given (the API bounds it to [-1, 1]).

    Raises:
        ValidationFailed: the token does not look like ``<digits>:<secret>``.
        ValueError: a ``token`` without a ``cipher``.
    """
    apply_persona(bot, persona)
    if enabled is not None:
        bot.enabled = enabled
    if mood is not None:
        bot.mood = mood
    if token is not None:
        if cipher is None:
            raise ValueError("a token needs a cipher to be stored")
        set_token(bot, token, cipher)
    await session.flush()
    invalidate_after_commit(session, cache, KIND_BOT, str(bot.id))
    invalidate_after_commit(session, cache, KIND_CHATS, "enabled")


async def find_bot(session: AsyncSession, *, bot_id: int) -> Bot | None:
    """Return the bot with ``bot_id``, or None when there is none."""
    return await session.get(Bot, bot_id)


async def bot_with_username(
    session: AsyncSession, *, username: str, other_than: int | None = None
) -> Bot | None:
    """Return a bot whose username is ``username`` ignoring case, or None.

    Args:
        other_than: a bot id left out of the search (the bot being edited).
    """
    stmt = select(Bot).where(func.lower(Bot.username) == username.lower())
    if other_than is not None:
        stmt = stmt.where(Bot.id != other_than)
    return (await session.execute(stmt)).scalars().first()


async def bot_with_telegram_user_id(
    session: AsyncSession, *, telegram_user_id: int, other_than: int | None = None
) -> Bot | None:
    """Return a bot with this Telegram user id (a token's numeric head), or None.

    Args:
        other_than: a bot id left out of the search (the bot being edited).
    """
    stmt = select(Bot).where(Bot.telegram_user_id == telegram_user_id)
    if other_than is not None:
        stmt = stmt.where(Bot.id != other_than)
    return (await session.execute(stmt)).scalars().first()


async def page_bots(
    session: AsyncSession, *, limit: int, before_id: int | None = None
) -> list[Bot]:
    """Return at most ``limit`` bots, newest (highest id) first, for keyset pagination.

    Args:
        limit: rows at most (>= 1; pass one more than the page size to learn whether
            another page follows).
        before_id: only bots with a smaller id (the previous page's last id).
    """
    stmt = select(Bot).order_by(Bot.id.desc()).limit(limit)
    if before_id is not None:
        stmt = stmt.where(Bot.id < before_id)
    return list((await session.execute(stmt)).scalars().all())


async def bot_names(session: AsyncSession) -> dict[int, str]:
    """Return bot id → display name of every bot."""
    rows = (await session.execute(select(Bot.id, Bot.name))).all()
    return {int(i): str(n) for i, n in rows}
