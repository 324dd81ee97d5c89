"""The bots as Telegram sees them: one python-telegram-bot ``Bot`` per token.

Every call goes through python-telegram-bot against ``base_url`` (real Telegram or the
sandbox: the same code path). Telegram's errors are turned into ``backend.errors``:

=====================================  ==========================================
python-telegram-bot                    botsim
=====================================  ==========================================
``RetryAfter``                         ``TelegramRetryAfter(retry_after)``
``ChatMigrated``                       ``TelegramChatMigrated(new_chat_id)``
``BadRequest`` "replied not found"     ``TelegramReplyNotFound``
``BadRequest`` (other)                 ``TelegramBadRequest``
``Forbidden``                          ``TelegramForbidden``
``InvalidToken``                       ``TelegramInvalidToken``
``TimedOut`` / ``NetworkError``        ``TelegramUnavailable(delivered_unknown=...)``
=====================================  ==========================================

A worker's bots share one HTTP connection pool (:class:`SharedPool`, issue 20): the token
is in each request's path, so one pool of keep-alive connections serves every token, and a
worker driving 2,500 bots holds a few dozen connections to the Bot API instead of one or
more per bot (each a TLS handshake with the real Telegram). python-telegram-bot closes its
request object when a bot shuts down (TELEGRAM.md, "Clients"); the shared pool ignores a
bot's shutdown and is closed by its owner (:meth:`SharedPool.close`). A client made without
a pool gets one of its own, closed with it.
"""

from __future__ import annotations

import logging
import ssl
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import telegram
from telegram import ReplyParameters
from telegram import error as tg_error
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

from backend import metrics
from backend.errors import (
    TelegramBadRequest,
    TelegramChatMigrated,
    TelegramError,
    TelegramForbidden,
    TelegramInvalidToken,
    TelegramReplyNotFound,
    TelegramRetryAfter,
    TelegramUnavailable,
)

log = logging.getLogger(__name__)

#: Errors of httpx after which the request certainly did not reach the server.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

#: The update kinds setWebhook asks for. Telegram leaves ``chat_member`` out unless it is
#: listed (Bot API, setWebhook ``allowed_updates``); the listener keeps membership from it
#: and from ``my_chat_member``.
ALLOWED_UPDATES = ("message", "edited_message", "my_chat_member", "chat_member")


def webhook_url_for(public_url: str, bot_id: int) -> str:
    """The webhook URL of bot ``bot_id`` (our id): ``<public_url>/webhook/<bot_id>``, the
    URL ``message_listener.register_webhooks`` sets (routed by bot id, never by token:
    TELEGRAM.md, "Webhooks")."""
    return f"{public_url.rstrip('/')}/webhook/{bot_id}"


@dataclass(frozen=True, slots=True)
class BotIdentity:
    """getMe's answer: who the token belongs to (Bot API, ``User``).

    Attributes:
        can_read_all_group_messages: False while privacy mode is on (BotFather
            ``/setprivacy``): the bot hears only commands, replies and mentions in groups.
        can_join_groups: False when BotFather's ``/setjoingroups`` forbids adding it to groups.
    """

    user_id: int
    username: str
    first_name: str
    can_join_groups: bool
    can_read_all_group_messages: bool


#: getChatMember statuses (Bot API, ``ChatMember``).
MEMBER_STATUSES = ("creator", "administrator", "member", "restricted", "left", "kicked")


@dataclass(frozen=True, slots=True)
class Membership:
    """getChatMember's answer about one user in one chat (Bot API, ``ChatMember``).

    Attributes:
        status: one of :data:`MEMBER_STATUSES`.
        is_member: in the chat now (``restricted`` carries it; true for creator,
            administrator and member, false for left and kicked).
        can_send_messages: may post text (``restricted`` carries it; true for creator,
            administrator and member, false for left and kicked).
    """

    status: str
    is_member: bool
    can_send_messages: bool


@dataclass(frozen=True, slots=True)
class WebhookState:
    """getWebhookInfo's answer (Bot API, ``WebhookInfo``).

    Attributes:
        url: the webhook URL; empty when none is set.
        pending_update_count: updates waiting for delivery.
        last_error_date: when the last delivery failed (aware UTC), or None.
        last_error_message: Telegram's description of that failure, or None.
    """

    url: str
    pending_update_count: int
    last_error_date: datetime | None
    last_error_message: str | None


def _membership(member: telegram.ChatMember) -> Membership:
    status = str(member.status)
    if isinstance(member, telegram.ChatMemberRestricted):
        return Membership(status, bool(member.is_member), bool(member.can_send_messages))
    ok = status in ("creator", "administrator", "member")
    return Membership(status, ok, ok)


def _aware(at: datetime | None) -> datetime | None:
    if at is None:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class SentMessage:
    """Telegram's answer to a send: the message id in its chat, its time (aware UTC), and the
    message it shows as replied to (None: none; with ``allow_sending_without_reply`` a reply
    whose target is gone is posted without it, Bot API, ReplyParameters)."""

    message_id: int
    date: datetime
    chat_id: int
    reply_to_message_id: int | None = None


def retry_after_seconds(exc: tg_error.RetryAfter) -> float:
    """Seconds to wait from a ``RetryAfter`` (an int or a timedelta, by PTB version)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = exc.retry_after
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def translate_error(exc: tg_error.TelegramError, *, bot_id: int | None,
                    method: str = "other") -> TelegramError:
    """Map a python-telegram-bot error to botsim's error tree (see the module table), and
    count it in ``botsim_telegram_errors_total{method, error}``.

    Args:
        exc: what python-telegram-bot raised.
        bot_id: our id of the bot (carried by the error; the token never is).
        method: the Bot API method called (``sendMessage``…), the metric's label.
    """
    error = translated(exc, bot_id=bot_id)
    metrics.TELEGRAM_ERRORS.labels(method=method, error=_error_label(exc)).inc()
    return error


def _error_label(exc: tg_error.TelegramError) -> str:
    """The ``error`` label of ``botsim_telegram_errors_total`` for a python-telegram-bot
    error: retry_after (429), forbidden (403), unauthorized (401), bad_request (400 and
    other refusals), timeout, network (no HTTP answer), server (an HTTP 5xx answer)."""
    if isinstance(exc, tg_error.RetryAfter):
        return "retry_after"
    if isinstance(exc, tg_error.InvalidToken):
        return "unauthorized"
    if isinstance(exc, tg_error.Forbidden):
        return "forbidden"
    if isinstance(exc, tg_error.TimedOut):
        return "timeout"
    if isinstance(exc, tg_error.BadRequest):  # PTB: a BadRequest is a NetworkError
        return "bad_request"
    if isinstance(exc, tg_error.NetworkError):
        # an HTTP answer (5xx) raises NetworkError itself; a transport failure chains
        # httpx's error as the cause
        return "network" if isinstance(exc.__cause__, httpx.HTTPError) else "server"
    return "bad_request"


def translated(exc: tg_error.TelegramError, *, bot_id: int | None) -> TelegramError:
    """Map a python-telegram-bot error to botsim's error tree (see the module table),
    counting nothing."""
    if isinstance(exc, tg_error.RetryAfter):
        return TelegramRetryAfter(retry_after_seconds(exc), bot_id=bot_id)
    if isinstance(exc, tg_error.ChatMigrated):
        return TelegramChatMigrated(int(exc.new_chat_id), bot_id=bot_id)
    if isinstance(exc, tg_error.InvalidToken):
        # python-telegram-bot's text may quote the token ("The token `…` was rejected").
        return TelegramInvalidToken("Telegram refused the bot token (401 Unauthorized)",
                                    bot_id=bot_id)
    if isinstance(exc, tg_error.Forbidden):
        return TelegramForbidden(exc.message, bot_id=bot_id)
    if isinstance(exc, tg_error.BadRequest):
        if "replied not found" in exc.message.lower():
            return TelegramReplyNotFound(exc.message, bot_id=bot_id)
        return TelegramBadRequest(exc.message, bot_id=bot_id)
    if isinstance(exc, tg_error.NetworkError):
        cause = exc.__cause__
        unknown = not isinstance(cause, _NOT_SENT)
        return TelegramUnavailable(
            f"{type(exc).__name__}: {exc.message}", delivered_unknown=unknown, bot_id=bot_id
        )
    return TelegramBadRequest(str(exc), bot_id=bot_id)


_SSL_CONTEXT: ssl.SSLContext | None = None


def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context (certifi's CA bundle, as httpx's default) for every bot client.

    Building a context per client loads the CA bundle each time: about 60 ms of CPU per bot
    (measured: 61 ms with a context per client, 0.2 ms with this shared one), which is
    minutes for a worker taking thousands of bots.
    """
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        import certifi

        _SSL_CONTEXT = ssl.create_default_context(cafile=certifi.where())
    return _SSL_CONTEXT


#: Connections a :class:`SharedPool` keeps at most by default: above a worker's turns in
#: flight (``Settings.max_turns_in_flight``) and its getMe calls while taking bots on.
SHARED_POOL_SIZE = 128


def _request(pool_size: int, timeout: float) -> HTTPXRequest:
    return HTTPXRequest(connection_pool_size=pool_size, connect_timeout=timeout,
                        read_timeout=timeout, write_timeout=timeout, pool_timeout=timeout,
                        httpx_kwargs={"verify": shared_ssl_context()})


class SharedPool(HTTPXRequest):
    """One python-telegram-bot request object (an httpx connection pool) for many bots'
    clients in one process and event loop: a bot's shutdown leaves it open; :meth:`close`
    closes it, once no client uses it.

    Args:
        size: connections at most (default :data:`SHARED_POOL_SIZE`); a request waits up to
            ``timeout`` for one (then ``TelegramUnavailable``, as any time-out).
        timeout: connect/read/write/pool timeout of each request, seconds.
    """

    def __init__(self, size: int = SHARED_POOL_SIZE, timeout: float = 10.0) -> None:
        super().__init__(connection_pool_size=size, connect_timeout=timeout,
                         read_timeout=timeout, write_timeout=timeout, pool_timeout=timeout,
                         httpx_kwargs={"verify": shared_ssl_context()})

    async def shutdown(self) -> None:
        """A bot's ``Bot.shutdown()``: the pool stays open for the other bots."""

    async def close(self) -> None:
        """Close the pool's connections (its owner, when no client uses it any more)."""
        await super().shutdown()


class BotClient:
    """One bot account speaking the Bot API through python-telegram-bot.

    Args:
        bot_id: our id of the bot (for errors and logs; the token is never logged).
        token: the bot token.
        base_url: Bot API base, e.g. ``https://api.telegram.org/bot`` or the sandbox's.
        timeout: read/write/connect timeout of each request, seconds (ignored with ``pool``:
            the pool's).
        pool: the process's :class:`SharedPool` (None: a pool of 4 connections of this
            client's own, closed by :meth:`close`).
    """

    def __init__(self, *, bot_id: int, token: str, base_url: str, timeout: float = 10.0,
                 pool: SharedPool | None = None) -> None:
        self.bot_id = bot_id
        request = pool if pool is not None else _request(4, timeout)
        self._request = request
        # getUpdates is never used (webhooks): the same request object serves both slots,
        # so no second HTTP client is built per bot.
        self._bot = telegram.Bot(token, base_url=base_url, request=request,
                                 get_updates_request=request)

    async def start(self) -> None:
        """Initialize the client (calls getMe).

        Raises:
            TelegramInvalidToken: when Telegram refuses the token.
            TelegramUnavailable: when Telegram cannot be reached.
        """
        try:
            await self._bot.initialize()
        except tg_error.TelegramError as exc:
            raise translate_error(exc, bot_id=self.bot_id, method="getMe") from exc

    async def close(self) -> None:
        """Close the client's own connections (also when :meth:`start` was never called);
        a :class:`SharedPool` stays open for the other bots."""
        try:
            await self._bot.shutdown()
        except tg_error.TelegramError as exc:  # pragma: no cover - shutdown is local
            log.warning("bot %s shutdown: %s", self.bot_id, exc)
        # Bot.shutdown() does nothing for a bot that was never initialized.
        await self._request.shutdown()

    async def send_message(
        self, *, chat_id: int, text: str, reply_to_message_id: int | None = None,
        message_thread_id: int | None = None,
    ) -> SentMessage:
        """sendMessage as plain text (no ``parse_mode``: a text can never fail to parse); a
        reply uses ``reply_parameters`` with ``allow_sending_without_reply``;
        ``message_thread_id`` posts inside a forum topic (Bot API, sendMessage).

        Raises:
            TelegramError: a subclass per the module table.
        """
        reply = (
            ReplyParameters(message_id=reply_to_message_id, allow_sending_without_reply=True)
            if reply_to_message_id is not None
            else None
        )
        try:
            msg = await self._bot.send_message(
                chat_id=chat_id, text=text, reply_parameters=reply,
                message_thread_id=message_thread_id,
            )
        except tg_error.TelegramError as exc:
            raise translate_error(exc, bot_id=self.bot_id, method="sendMessage") from exc
        date = msg.date if msg.date.tzinfo else msg.date.replace(tzinfo=UTC)
        shown = msg.reply_to_message.message_id if msg.reply_to_message is not None else None
        return SentMessage(message_id=msg.message_id, date=date, chat_id=msg.chat_id,
                           reply_to_message_id=shown)

    async def send_typing(self, *, chat_id: int) -> None:
        """sendChatAction ``typing`` (limited by Telegram to 20 per 5 s per chat).

        Raises:
            TelegramError: a subclass per the module table.
        """
        try:
            await self._bot.send_chat_action(chat_id=chat_id, action="typing")
        except tg_error.TelegramError as exc:
            raise translate_error(exc, bot_id=self.bot_id, method="sendChatAction") from exc

    async def set_webhook(
        self, *, url: str, secret_token: str, allowed_updates: list[str] | None = None
    ) -> None:
        """setWebhook with a secret token (sent back in ``X-Telegram-Bot-Api-Secret-Token``).

        Raises:
            TelegramError: a subclass per the module table.
        """
        try:
            await self._bot.set_webhook(
                url=url,
                secret_token=secret_token,
                allowed_updates=allowed_updates or list(ALLOWED_UPDATES),
            )
        except tg_error.TelegramError as exc:
            raise translate_error(exc, bot_id=self.bot_id, method="setWebhook") from exc

    async def get_me(self) -> BotIdentity:
        """getMe: the bot the token belongs to and its settings (privacy mode, joining).

        Raises:
            TelegramInvalidToken: the token is wrong or revoked (401/404).
            TelegramError: another subclass per the module table.
        """
        try:
            user = await self._bot.get_me()
        except tg_error.TelegramError as exc:
            raise translate_error(exc, bot_id=self.bot_id, method="getMe") from exc
        return BotIdentity(
            user_id=int(user.id), username=user.username or "", first_name=user.first_name,
            can_join_groups=bool(user.can_join_groups),
            can_read_all_group_messages=bool(user.can_read_all_group_messages),
        )

    async def get_chat_member(self, *, chat_id: int, user_id: int) -> Membership:
        """getChatMember: ``user_id``'s status in ``chat_id`` (a bot may ask about itself).

        Raises:
            TelegramForbidden: the bot is not in the chat or was kicked (403).
            TelegramBadRequest: e.g. "chat not found" (400: the bot cannot see the chat).
            TelegramChatMigrated: the group became a supergroup (``new_chat_id``).
            TelegramUnavailable: no answer, or an answer that is not a ChatMember.
            TelegramError: another subclass per the module table.
        """
        try:
            member = await self._bot.get_chat_member(chat_id=chat_id, user_id=user_id)
        except tg_error.TelegramError as exc:
            raise translate_error(exc, bot_id=self.bot_id, method="getChatMember") from exc
        except (TypeError, KeyError, ValueError) as exc:  # a ChatMember missing its fields
            raise TelegramUnavailable(f"malformed getChatMember answer: {type(exc).__name__}",
                                      delivered_unknown=False, bot_id=self.bot_id) from exc
        return _membership(member)

    async def get_webhook_info(self) -> WebhookState:
        """getWebhookInfo: the bot's webhook URL, its queue and its last delivery error.

        Raises:
            TelegramError: a subclass per the module table.
        """
        try:
            info = await self._bot.get_webhook_info()
        except tg_error.TelegramError as exc:
            raise translate_error(exc, bot_id=self.bot_id, method="getWebhookInfo") from exc
        return WebhookState(
            url=info.url or "", pending_update_count=int(info.pending_update_count or 0),
            last_error_date=_aware(info.last_error_date),
            last_error_message=info.last_error_message,
        )
