"""What the per-message path reads, served from the two-layer cache.

The worker and the listener read bots, chats, chat history and the operator settings
through :class:`CachedReads`; a warm cache answers without the database. Writers keep it
true: a stored message is appended to its chat's cached history
(:meth:`CachedReads.appended`), and a change made through the stores invalidates its key
after the commit (``backend.invalidation.invalidate_after_commit``), which reaches every
process's L1 over Redis pub/sub.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel, ConfigDict
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.cache import PydanticCodec, TwoLayerCache
from backend.db.models import Bot, Message
from backend.invalidation import KIND_BOT, KIND_CHATS, KIND_EVENTS, KIND_HISTORY, KIND_SETTINGS
from backend.schemas import Holding, PersonaProfile, SimulationSettings, Stance
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from backend.stores import events as event_store
from backend.stores import messages as message_store
from backend.stores import settings as settings_store

#: Messages of a chat kept in the cached history (≥ the largest per-minute cap, 20, so the
#: per-minute count can be read from it).
HISTORY_LEN = 50



class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BotProfile(_Frozen):
    """A bot as the engine reads it (no token: tokens never enter the cache)."""

    id: int
    name: str
    username: str
    telegram_user_id: int | None
    persona: PersonaProfile
    stances: list[Stance]
    holdings: list[Holding]
    enabled: bool


class ChatInfo(_Frozen):
    """An enabled chat and the ids of its enabled member bots; ``talkativeness``: the
    members whose talkativeness in this chat overrides their persona's (bot id → 0.05–10);
    ``member_talk``: every member's talkativeness here (the override, else the persona's),
    so a tick weighs a chat's speakers without reading their profiles (issue 20)."""

    id: int
    telegram_chat_id: int
    title: str
    topics: dict[str, float]
    bot_ids: list[int]
    talkativeness: dict[int, float] = {}
    member_talk: dict[int, float] = {}


class HistoryItem(_Frozen):
    """One message of a chat's cached history.

    Attributes:
        message_id: ``messages.id``; telegram_message_id: Telegram's id in the chat.
        bot_id: our bot, or None; speaker / speaker_username: display name and username.
        is_human: a person (not a bot of ours or anyone's).
        reply_to: the Telegram id it replies to; reply_wanted: a human waits for an answer.
        topic: the turn's topic for bot messages.
        thread_id: the forum topic it is in (None: none, or the General topic).
        mentions: usernames it mentions (``MessageMeta.mentions``).
    """

    message_id: int
    telegram_message_id: int
    bot_id: int | None
    speaker: str
    speaker_username: str | None
    is_human: bool
    text: str
    created_at: datetime
    reply_to: int | None = None
    reply_wanted: bool = False
    topic: str | None = None
    thread_id: int | None = None
    mentions: tuple[str, ...] = ()


class ChatList(_Frozen):
    """The cached list of enabled chats."""

    chats: list[ChatInfo]


_BOT = PydanticCodec(BotProfile)
_CHATS = PydanticCodec(ChatList)
_ITEM = PydanticCodec(HistoryItem)
_SETTINGS = PydanticCodec(SimulationSettings)
_INT = PydanticCodec(int)


def item_from_row(msg: Message, name: str | None, username: str | None) -> HistoryItem:
    """A history item from a stored message and its bot's name and username (if a bot's)."""
    return HistoryItem(
        message_id=msg.id,
        telegram_message_id=msg.telegram_message_id,
        bot_id=msg.bot_id,
        speaker=name or msg.sender_name or str(msg.sender_id),
        speaker_username=username or msg.meta.sender_username,
        is_human=msg.bot_id is None and not msg.meta.sender_is_bot,
        text=msg.text,
        created_at=msg.created_at,
        reply_to=msg.reply_to_telegram_message_id,
        reply_wanted=msg.reply_wanted,
        topic=msg.meta.topic,
        thread_id=msg.meta.thread_id,
        mentions=msg.meta.mentions,
    )


#: Bots per :meth:`CachedReads.bots` read: a query's parameters stay far below the drivers'
#: limits (asyncpg 32,767, SQLite 32,766), and the event loop is held for tens of ms at most
#: by a batch's decoding (what the turns in flight then wait).
BOTS_BATCH = 100


def _profile(b: Bot) -> BotProfile:
    """The cached profile of a stored bot."""
    return BotProfile(id=b.id, name=b.name, username=b.username,
                      telegram_user_id=b.telegram_user_id, persona=b.persona,
                      stances=list(b.stances.items), holdings=list(b.holdings.items),
                      enabled=b.enabled)


class CachedReads:
    """The per-message reads, cached (see the module docstring).

    Args:
        cache: the two-layer cache.
        sessionmaker: the database, read on a miss.
    """

    def __init__(
        self, cache: TwoLayerCache, sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        self.cache = cache
        self.sessionmaker = sessionmaker

    async def settings(self) -> SimulationSettings:
        """The operator settings."""

        async def load() -> SimulationSettings:
            async with self.sessionmaker() as session:
                return await settings_store.get_settings(session)

        return await self.cache.get(KIND_SETTINGS, "simulation", load, codec=_SETTINGS)

    async def chats(self) -> list[ChatInfo]:
        """Enabled chats with their enabled member bots (one query on a miss)."""

        async def load() -> ChatList:
            async with self.sessionmaker() as session:
                chats = await chat_store.enabled_chats_with_talkativeness(session)
            return ChatList(chats=[
                ChatInfo(id=c.id, telegram_chat_id=c.telegram_chat_id, title=c.title,
                         topics=c.topics.weights, bot_ids=list(talk),
                         talkativeness={b: t for b, (t, _own) in talk.items() if t is not None},
                         member_talk={b: own if t is None else t
                                      for b, (t, own) in talk.items()})
                for c, talk in chats
            ])

        return (await self.cache.get(KIND_CHATS, "enabled", load, codec=_CHATS)).chats

    async def bot(self, bot_id: int) -> BotProfile:
        """One bot's profile (one query on a miss).

        Raises:
            NotFound: no such bot.
        """

        async def load() -> BotProfile:
            async with self.sessionmaker() as session:
                return _profile(await bot_store.get_bot(session, bot_id=bot_id))

        return await self.cache.get(KIND_BOT, str(bot_id), load, codec=_BOT)

    async def bots(self, bot_ids: Sequence[int], *, refresh: bool = False
                   ) -> dict[int, BotProfile]:
        """Many bots' profiles at once (:meth:`TwoLayerCache.get_many`: one Redis read and
        at most one query per :data:`BOTS_BATCH` bots on a miss), e.g. to warm the cache
        for the bots a worker takes on, whose first turns would otherwise load them one
        query each; ``refresh``: read them all again and restart their cache lifetimes (a
        worker does so for its bots before their entries expire one query each). A bot
        that does not exist is left out."""
        out: dict[int, BotProfile] = {}

        async def load(keys: list[str]) -> dict[str, BotProfile]:
            async with self.sessionmaker() as session:
                rows = await bot_store.list_bots(session, bot_ids=[int(k) for k in keys])
            return {str(b.id): _profile(b) for b in rows}

        for i in range(0, len(bot_ids), BOTS_BATCH):
            got = await self.cache.get_many(
                KIND_BOT, [str(b) for b in bot_ids[i:i + BOTS_BATCH]], load, codec=_BOT,
                refresh=refresh)
            out.update((int(k), v) for k, v in got.items())
        return out

    async def history(self, chat_id: int) -> list[HistoryItem]:
        """The chat's last :data:`HISTORY_LEN` messages, oldest first (one query on a miss)."""

        async def load() -> Sequence[HistoryItem]:
            async with self.sessionmaker() as session:
                rows = await message_store.chat_history(session, chat_id=chat_id,
                                                        limit=HISTORY_LEN)
            return [item_from_row(m, n, u) for m, n, u in rows]

        return await self.cache.get_list(KIND_HISTORY, str(chat_id), load, codec=_ITEM,
                                         max_len=HISTORY_LEN)

    async def latest_event_id(self) -> int:
        """The newest world event's id, 0 for none (one query on a miss; invalidated by
        ``backend.stores.events.add_event`` and ``cancel_event`` when given the cache)."""

        async def load() -> int:
            async with self.sessionmaker() as session:
                return await event_store.latest_event_id(session)

        return await self.cache.get(KIND_EVENTS, event_store.LATEST, load, codec=_INT)

    async def appended(self, chat_id: int, item: HistoryItem) -> None:
        """A message was stored (committed): add it to the chat's cached history."""
        await self.cache.append(KIND_HISTORY, str(chat_id), item, codec=_ITEM,
                                max_len=HISTORY_LEN)

