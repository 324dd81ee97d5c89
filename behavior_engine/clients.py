"""The Telegram clients of the bots a worker drives, and their sends of the last hour."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend import metrics
from backend.crypto import Secrets
from backend.errors import TelegramInvalidToken
from backend.stores import bots as bot_store
from backend.stores import messages as message_store
from behavior_engine.membership import Membership
from behavior_engine.pipeline import Sender
from bots.telegram import BotClient, SharedPool

log = logging.getLogger("botsim.clients")

#: getMe calls at once while taking bots on: thousands at once time out (a worker taking
#: 2,500 bots at once saw every call time out against the sandbox, and retried forever).
CONNECT_CONCURRENCY = 16


class BotClients:
    """Connected :class:`~bots.telegram.BotClient` s by bot id, with each bot's send times
    in the last hour (its hourly budget; loaded from the database when the bot is taken on:
    one worker drives a bot at a time). The clients share one HTTP connection pool
    (:class:`~bots.telegram.SharedPool`, made at the first connect, closed by
    :meth:`close`).

    Args:
        sessionmaker: database sessions (tokens, send times).
        secrets: the Fernet key that decrypts bot tokens.
        api_url: the Bot API base URL (``Settings.telegram_api_url``).
        on_refused: awaited with a bot id whose token Telegram refused (401).
    """

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], secrets: Secrets,
                 api_url: str, *,
                 on_refused: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.sessionmaker = sessionmaker
        self.secrets = secrets
        self.api_url = api_url
        self.on_refused = on_refused
        self._clients: dict[int, BotClient] = {}
        self._pool: SharedPool | None = None
        self._sent: dict[int, deque[datetime]] = defaultdict(deque)

    def __contains__(self, bot_id: object) -> bool:
        return bot_id in self._clients

    def __len__(self) -> int:
        return len(self._clients)

    def get(self, bot_id: int) -> BotClient | None:
        """The bot's connected client, or None."""
        return self._clients.get(bot_id)

    def ids(self) -> list[int]:
        """The connected bots' ids."""
        return list(self._clients)

    async def connect(self, bot_ids: Sequence[int], now: datetime) -> list[int]:
        """Connect the enabled bots of ``bot_ids`` (getMe, :data:`CONNECT_CONCURRENCY` at a
        time) and load their sends since ``now`` − 1 h; returns those connected. A refused
        token goes to ``on_refused``; other failures are logged (tried again later)."""
        if not bot_ids:
            return []
        cipher = self.secrets.cipher()
        async with self.sessionmaker() as session:
            rows = {b.id: b for b in await bot_store.list_bots(
                session, enabled_only=True, bot_ids=bot_ids)}
        if self._pool is None:  # made in the event loop that uses it
            self._pool = SharedPool()
        clients = {
            b: BotClient(bot_id=b, token=cipher.decrypt(rows[b].token_encrypted),
                         base_url=self.api_url, pool=self._pool)
            for b in bot_ids if b in rows
        }
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def start(client: BotClient) -> None:
            async with gate:
                await client.start()

        results = await asyncio.gather(*(start(c) for c in clients.values()),
                                       return_exceptions=True)
        ok: list[int] = []
        for (bot_id, client), res in zip(clients.items(), results, strict=True):
            if isinstance(res, BaseException):
                await client.close()
                if isinstance(res, TelegramInvalidToken):
                    log.error("bot %s (@%s): token refused by Telegram; disabled", bot_id,
                              rows[bot_id].username)
                    if self.on_refused is not None:
                        await self.on_refused(bot_id)
                else:
                    log.warning("bot %s: not connected (%s); tried again later", bot_id, res)
                continue
            self._clients[bot_id] = client
            ok.append(bot_id)
        async with self.sessionmaker() as session:
            times = await message_store.bot_send_times(
                session, since=now - timedelta(hours=1), bot_ids=ok)
        for b in ok:
            self._sent[b].clear()
        wanted = set(ok)
        for bot_id, when in times:
            if bot_id in wanted:
                self._sent[bot_id].append(when)
        return ok

    async def disconnect(self, bot_ids: Sequence[int]) -> None:
        """Close the clients of ``bot_ids`` (those connected)."""
        for b in bot_ids:
            client = self._clients.pop(b, None)
            if client is not None:
                await client.close()

    async def close(self) -> None:
        """Close every client, then the shared pool (a later :meth:`connect` makes a new
        one). Idempotent."""
        await self.disconnect(self.ids())
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def sent(self, bot_id: int, when: datetime) -> None:
        """Count a send of ``bot_id`` at ``when`` (aware UTC) in its hour."""
        self._sent[bot_id].append(when)

    def sent_last_hour(self, bot_id: int, now: datetime) -> int:
        """Sends of ``bot_id`` in the hour before ``now``."""
        times = self._sent[bot_id]
        while times and times[0] < now - timedelta(hours=1):
            times.popleft()
        return len(times)


class HeldBots:
    """The bots a worker drives: held by its membership and connected
    (:class:`behavior_engine.pipeline.BotHolder` for the turn pipeline).

    Args:
        membership: which bots are held, under which fencing tokens.
        clients: the connected clients.
    """

    def __init__(self, membership: Membership, clients: BotClients) -> None:
        self.membership = membership
        self.clients = clients

    def driven(self) -> set[int]:
        """The bots held and connected."""
        return {b for b in self.membership.tokens if b in self.clients}

    def client(self, bot_id: int) -> Sender | None:
        """The bot's connected client, or None."""
        return self.clients.get(bot_id)

    def token(self, bot_id: int) -> int | None:
        """The bot's fencing token while held."""
        return self.membership.tokens.get(bot_id)

    def valid(self, bot_id: int) -> bool:
        """True while this worker may act for the bot."""
        return self.membership.valid(bot_id)

    async def let_go(self, bot_id: int) -> None:
        """Stop driving ``bot_id`` here (fenced out, or its token refused)."""
        self.membership.forget(bot_id)
        await self.disconnect([bot_id])

    async def disconnect(self, bot_ids: Sequence[int]) -> None:
        """Close the clients of ``bot_ids`` and report the bots driven."""
        await self.clients.disconnect(bot_ids)
        metrics.BOTS_DRIVEN.set(len(self.driven()))
