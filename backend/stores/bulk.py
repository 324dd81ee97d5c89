"""Batched writes for seeding whole worlds: thousands of bots, chats, memberships and messages
in a handful of statements (the load tests' generated worlds, the benchmarks' fixtures).

The row-at-a-time stores (:func:`backend.stores.bots.upsert_persona_bot`,
:func:`backend.stores.chats.upsert_chat`, :func:`backend.stores.chats.add_bot`) spend a
SELECT, an INSERT and a flush per row: 45 s on SQLite for 10,000 bots and 1,000 chats. Here
existing rows are looked up ``IN (...)`` :data:`CHUNK` at a time and new ones inserted with
one executemany per table.

Keyword-only async functions over an ``AsyncSession``; the caller owns the transaction.
Nothing here invalidates the cache: seed before the workers start, or invalidate yourself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.crypto import TokenCipher
from backend.db.models import Bot, Chat, ChatBot, Message
from backend.schemas import HoldingList, Persona, StanceList, TopicWeights
from backend.stores.bots import bot_id_from_token

#: Values per ``IN (...)`` lookup (below every driver's bound-parameter limit).
CHUNK = 500


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    return (items[i:i + size] for i in range(0, len(items), size))


async def upsert_persona_bots(
    session: AsyncSession, *, bots: Sequence[tuple[Persona, str]], cipher: TokenCipher
) -> dict[str, int]:
    """Create or update one bot per ``(persona, token)``, as
    :func:`backend.stores.bots.upsert_persona_bot` does for one, in batches.

    A bot is matched by username. A match gets the persona's name, profile, stances and
    holdings, the token (``cipher.encrypt(token)``) and its Telegram user id (the number
    before ``:``); its mood and ``enabled`` are left alone. Others are created with the same
    fields, mood at the persona's baseline, enabled. Existing bots are updated first (one
    flush), then new ones inserted in one executemany; their ids are read back by username.

    Args:
        bots: ``(persona, plain token)`` pairs, usernames distinct.

    Returns:
        username → ``bots.id`` for every bot given.

    Raises:
        ValidationFailed: a token does not look like ``<digits>:<secret>``.
    """
    usernames = [p.username for p, _ in bots]
    old: dict[str, Bot] = {}
    for part in _chunks(usernames):
        found = await session.execute(select(Bot).where(Bot.username.in_(part)))
        old.update((bot.username, bot) for bot in found.scalars())
    new_rows: list[dict[str, Any]] = []
    for persona, token in bots:
        values: dict[str, Any] = {
            "name": persona.name, "telegram_user_id": bot_id_from_token(token),
            "token_encrypted": cipher.encrypt(token), "persona": persona.profile(),
            "stances": StanceList(items=list(persona.stances)),
            "holdings": HoldingList(items=list(persona.holdings)),
        }
        bot = old.get(persona.username)
        if bot is None:
            new_rows.append({**values, "username": persona.username,
                             "mood": persona.mood_baseline, "enabled": True})
        else:
            for key, value in values.items():
                setattr(bot, key, value)
    await session.flush()  # the updates, before the inserts
    if new_rows:
        await session.execute(insert(Bot), new_rows)
    ids = {name: bot.id for name, bot in old.items()}
    for part in _chunks([r["username"] for r in new_rows]):
        found_ids = await session.execute(
            select(Bot.username, Bot.id).where(Bot.username.in_(part)))
        ids.update((r.username, r.id) for r in found_ids)
    return ids


async def upsert_chats(
    session: AsyncSession, *, chats: Sequence[tuple[int, str, Mapping[str, float]]]
) -> dict[int, int]:
    """Create or update one chat per ``(telegram chat id, title, topic weights)``, as
    :func:`backend.stores.chats.upsert_chat` does for one, in batches.

    A chat is matched by Telegram chat id: a match gets the title and topics (``enabled``
    left alone); others are created enabled, in one executemany after one flush of the
    updates.

    Args:
        chats: Telegram chat ids distinct; topic weights as :class:`TopicWeights` takes.

    Returns:
        Telegram chat id → ``chats.id`` for every chat given.
    """
    tg_ids = [tg for tg, _, _ in chats]
    old: dict[int, Chat] = {}
    for part in _chunks(tg_ids):
        found = await session.execute(select(Chat).where(Chat.telegram_chat_id.in_(part)))
        old.update((chat.telegram_chat_id, chat) for chat in found.scalars())
    ids: dict[int, int] = {}
    new_rows: list[dict[str, Any]] = []
    for tg, title, topics in chats:
        chat = old.get(tg)
        if chat is None:
            new_rows.append({"telegram_chat_id": tg, "title": title,
                             "topics": TopicWeights(weights=dict(topics)), "enabled": True})
        else:
            chat.title = title
            chat.topics = TopicWeights(weights=dict(topics))
            ids[tg] = chat.id
    await session.flush()
    if new_rows:
        await session.execute(insert(Chat), new_rows)
    for part in _chunks([r["telegram_chat_id"] for r in new_rows]):
        found_ids = await session.execute(
            select(Chat.telegram_chat_id, Chat.id).where(Chat.telegram_chat_id.in_(part)))
        ids.update((r.telegram_chat_id, r.id) for r in found_ids)
    return ids


async def memberships(session: AsyncSession, *, chat_ids: Sequence[int]) -> set[tuple[int, int]]:
    """The ``(chat id, bot id)`` memberships of ``chat_ids`` (our ids), looked up
    :data:`CHUNK` chats at a time; no query when ``chat_ids`` is empty."""
    found: set[tuple[int, int]] = set()
    for part in _chunks(list(chat_ids)):
        rows = await session.execute(
            select(ChatBot.chat_id, ChatBot.bot_id).where(ChatBot.chat_id.in_(part)))
        found.update((r.chat_id, r.bot_id) for r in rows)
    return found


async def insert_bots(session: AsyncSession, *, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` into ``bots`` in one executemany (no upsert, no id read back).

    Args:
        rows: one mapping per bot, keys the :class:`~backend.db.models.Bot` attributes
            (``name``, ``username``, ``telegram_user_id``, ``token_encrypted``,
            ``persona``, ``stances``, ``holdings``, ``mood``, ``enabled``, optional
            ``created_at`` / ``updated_at``); every row the same keys. Nothing is sent when
            empty.

    Raises:
        sqlalchemy.exc.IntegrityError: a username or Telegram user id is taken.
    """
    if rows:
        await session.execute(insert(Bot), list(rows))


async def insert_chats(session: AsyncSession, *, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` into ``chats`` in one executemany (as :func:`insert_bots`).

    Args:
        rows: keys ``telegram_chat_id``, ``title``, ``topics`` (a :class:`TopicWeights` or
            its dict), ``enabled``, optional ``created_at``.

    Raises:
        sqlalchemy.exc.IntegrityError: a Telegram chat id is taken.
    """
    if rows:
        await session.execute(insert(Chat), list(rows))


async def insert_memberships(
    session: AsyncSession, *, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Insert ``rows`` into ``chat_bots`` in one executemany (as :func:`insert_bots`).

    Args:
        rows: keys ``chat_id``, ``bot_id`` (our ids), optional ``added_at``.

    Raises:
        sqlalchemy.exc.IntegrityError: a membership exists already, or an id names nothing
            (PostgreSQL; SQLite checks foreign keys only when enabled).
    """
    if rows:
        await session.execute(insert(ChatBot), list(rows))


async def insert_messages(session: AsyncSession, *, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` into ``messages`` in one executemany (as :func:`insert_bots`).

    Args:
        rows: keys the :class:`~backend.db.models.Message` attributes (``chat_id``,
            ``bot_id``, ``sender_id``, ``telegram_message_id``, ``text``, ``meta`` (a
            :class:`MessageMeta`), ``turn_id``, ``reply_wanted``, ``created_at``...);
            every row the same keys. Attribute names, not column names: a key that names
            no attribute (``metadata``, the column of ``meta``) is silently dropped and
            the column gets its default.

    Raises:
        sqlalchemy.exc.IntegrityError: a turn id is taken.
    """
    if rows:
        await session.execute(insert(Message), list(rows))


async def delete_bot_and_chat(session: AsyncSession, *, bot_id: int, chat_id: int) -> None:
    """Delete a scratch bot and chat and everything that hangs on them: the chat's messages,
    the bot's messages elsewhere, the chat's memberships, the chat, the bot (five DELETEs,
    in that order). Ids that name nothing delete nothing; no cache is invalidated.
    """
    await session.execute(delete(Message).where(Message.chat_id == chat_id))
    await session.execute(delete(Message).where(Message.bot_id == bot_id))
    await session.execute(delete(ChatBot).where(ChatBot.chat_id == chat_id))
    await session.execute(delete(Chat).where(Chat.id == chat_id))
    await session.execute(delete(Bot).where(Bot.id == bot_id))
