"""The listener process: takes the groups' updates over webhooks, one route per bot id.

``POST /webhook/{bot_id}``

1. Unknown bot id → 404. Missing, wrong or repeated ``X-Telegram-Bot-Api-Secret-Token`` →
   403 and nothing is stored (compared in constant time, exact case; TELEGRAM.md "Webhooks").
2. A body over :data:`MAX_BODY_BYTES` → 413, counted while it is read. A body that is not a
   JSON update → 400 naming the field; the update schema is strict (:class:`TgUpdate`):
   integers are JSON integers (not strings, booleans or floats), ids and dates within the Bot
   API's ranges, one payload per update, text ≤ 4096 and caption ≤ 1024 characters, no NUL
   character, valid JSON (no lone UTF-16 surrogate, nesting within the parser's limit).
3. In one transaction: the update is taken once per (bot, update_id), and its message is
   stored once per (chat, Telegram message id): the same group message reaches every member
   bot as its own update. A human's text message is marked ``reply_wanted`` for the worker.
4. Then 200. Storing is a couple of small inserts, so the answer is still immediate; the slow
   work (choosing a replier, generating, sending) is the worker's. A database that is
   unreachable answers 500, so Telegram retries the update: a human message is never
   acknowledged unstored while it could be stored. Any other error storing it (a value the
   database refuses) is logged by class only, with no traceback (its SQL parameters hold
   names and text), counted, and answered 200 ``{"ok": false}``: Telegram would retry it for
   24 h, holding back the chat's later updates.

Messages sent by our own bots are not stored from updates (they may arrive in Bot-to-Bot
mode): the worker records them from the ``Message`` that sendMessage returns.
Routes are by bot id, never by token (tokens in URLs end up in proxy logs).
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from backend.crypto import Secrets, webhook_secret_for
from backend.invalidation import KIND_HISTORY
from backend.metrics import metrics_app
from backend.schemas import MessageMeta, TopicWeights
from backend.settings import Settings
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from backend.stores import health
from backend.stores import messages as message_store
from behavior_engine.membership import HistoryIntake, ReplyIntake, reply_intake_for
from behavior_engine.reads import CachedReads, HistoryItem
from bots.telegram import BotClient

log = logging.getLogger("botsim.listener")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_BODY_BYTES = 1_000_000
#: Bot API: an Integer field is 32-bit signed unless it says it "may have more than 32
#: significant bits" (message_id, update_id, date do not).
INT32_MAX = 2**31 - 1
#: Bot API, Chat.id and User.id: "at most 52 significant bits".
ID52_MAX = 2**52
#: Bot API: a message's text is 1-4096 characters, a caption 0-1024 (sendMessage,
#: sendPhoto). Python counts code points, never more than Telegram's UTF-16 units.
TEXT_MAX = 4096
CAPTION_MAX = 1024
#: Longest name, username or title stored (the ``sender_name`` and chat title columns).
NAME_MAX = 255
_STRICT = ConfigDict(extra="ignore", strict=True)


def _no_nul(value: str | None) -> str | None:
    """Refuse a NUL character (PostgreSQL's text type cannot hold one)."""
    if value is not None and "\x00" in value:
        raise ValueError("contains a NUL character")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]


class TgUser(BaseModel):
    """The part of Telegram's ``User`` the listener reads."""

    model_config = _STRICT
    id: int = Field(ge=-ID52_MAX, le=ID52_MAX)
    is_bot: bool = False
    first_name: Text = Field(default="", max_length=NAME_MAX)
    last_name: Text | None = Field(default=None, max_length=NAME_MAX)
    username: Text | None = Field(default=None, max_length=NAME_MAX)

    def display_name(self) -> str:
        """First and last name, or the username, or the id."""
        full = " ".join(p for p in (self.first_name, self.last_name) if p)
        return full or self.username or str(self.id)


class TgChat(BaseModel):
    """The part of Telegram's ``Chat`` the listener reads."""

    model_config = _STRICT
    id: int = Field(ge=-ID52_MAX, le=ID52_MAX)
    type: Text = Field(max_length=32)
    title: Text | None = Field(default=None, max_length=NAME_MAX)


class TgReplyRef(BaseModel):
    """A replied-to message, by id."""

    model_config = _STRICT
    message_id: int = Field(ge=1, le=INT32_MAX)


class TgMessage(BaseModel):
    """The part of Telegram's ``Message`` the listener reads."""

    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)
    message_id: int = Field(ge=1, le=INT32_MAX)
    date: int = Field(ge=0, le=INT32_MAX)
    chat: TgChat
    from_user: TgUser | None = Field(default=None, alias="from")
    text: Text | None = Field(default=None, max_length=TEXT_MAX)
    caption: Text | None = Field(default=None, max_length=CAPTION_MAX)
    reply_to_message: TgReplyRef | None = None
    photo: list[Any] | None = None
    sticker: dict[str, Any] | None = None
    document: dict[str, Any] | None = None
    voice: dict[str, Any] | None = None

    def kind(self) -> str:
        """``text`` or the kind of a non-text message."""
        for name in ("photo", "sticker", "document", "voice"):
            if getattr(self, name):
                return name
        return "text" if self.text is not None else "other"


class TgUpdate(BaseModel):
    """The part of Telegram's ``Update`` the listener reads; any other payload (a
    ``my_chat_member``, a ``callback_query``...) is taken and ignored, but an update carries
    at most one payload (Bot API, Update: "At most one of the optional parameters can be
    present in any given update")."""

    model_config = _STRICT
    update_id: int = Field(ge=0, le=INT32_MAX)
    message: TgMessage | None = None
    edited_message: TgMessage | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_payload(cls, data: Any) -> Any:
        if isinstance(data, dict):
            payloads = sorted(k for k in data if k != "update_id")
            if len(payloads) > 1:
                raise ValueError(f"an update carries one payload, got {', '.join(payloads)}")
        return data


@dataclass
class ListenerState:
    """What the webhook routes need.

    Attributes:
        sessionmaker: database sessions.
        webhook_secret: the master secret each bot's ``secret_token`` is derived from.
        reads: the cached reads whose chat histories new messages are appended to (None:
            no cache to keep true).
        bots: cache of bot id → Telegram user id, refreshed from the database on a miss.
        intake: how a new human message reaches the workers
            (:func:`behavior_engine.membership.reply_intake_for`; default: the history).
        stats: counters (``updates``, ``duplicates``, ``stored``, ``rejected``, ``malformed``,
            ``store_failed``: answered 500 for a retry, ``unstorable``: acknowledged unstored).
    """

    sessionmaker: async_sessionmaker[AsyncSession]
    webhook_secret: str
    reads: CachedReads | None = None
    bots: dict[int, int | None] = field(default_factory=dict)
    intake: ReplyIntake = field(default_factory=HistoryIntake)
    stats: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("updates", "duplicates", "stored", "rejected", "malformed", "ignored",
             "dispatch_failed", "store_failed", "unstorable"), 0
        )
    )

    async def refresh_bots(self) -> None:
        """Reload the bot id → Telegram user id map."""
        async with self.sessionmaker() as session:
            self.bots = await bot_store.telegram_user_ids(session)


def _error(status: int, description: str) -> JSONResponse:
    return JSONResponse({"ok": False, "description": description}, status_code=status)


async def _store_message(
    session: AsyncSession, state: ListenerState, bot_id: int, update_id: int, msg: TgMessage,
    *, edited: bool,
) -> tuple[bool, int | None, HistoryItem | None]:
    """Store ``msg`` (once per chat and message id).

    Returns:
        (a row was written, our chat id, the new message as a history item — None for an
        edit or a message already stored).
    """
    sender = msg.from_user
    our_bot_ids = {t for t in state.bots.values() if t is not None}
    if sender is not None and sender.id in our_bot_ids:
        return False, None, None  # our own bot: recorded from the send response
    chat = await chat_store.get_chat_by_telegram_id(session, telegram_chat_id=msg.chat.id)
    if chat is None:
        # A chat the operator has not registered yet: keep its messages, do not talk there.
        chat = await chat_store.upsert_chat(
            session,
            telegram_chat_id=msg.chat.id,
            title=msg.chat.title or str(msg.chat.id),
            topics=TopicWeights(weights={"general": 1.0}).weights, enabled_if_new=False,
        )
        log.warning("update for unregistered chat %s: stored, chat added disabled", msg.chat.id)
    text = msg.text if msg.text is not None else (msg.caption or "")
    is_human = sender is not None and not sender.is_bot
    sender_id = sender.id if sender is not None else msg.chat.id
    meta = MessageMeta(
        sender_is_bot=bool(sender and sender.is_bot),
        sender_username=sender.username if sender else None,
        kind=msg.kind(),
        update_id=update_id,
        edited=edited,
    )
    created = datetime.fromtimestamp(msg.date, UTC)
    sender_name = sender.display_name() if sender else (msg.chat.title or "channel")
    reply_to = msg.reply_to_message.message_id if msg.reply_to_message else None
    reply_wanted = is_human and bool(text.strip()) and chat.enabled and not edited
    new_id = await message_store.record_incoming(
        session,
        chat_id=chat.id,
        telegram_message_id=msg.message_id,
        text=text,
        sender_id=sender_id,
        sender_name=sender_name,
        meta=meta,
        created_at=created,
        reply_to_telegram_message_id=reply_to,
        reply_wanted=reply_wanted,
    )
    if new_id is None and edited:
        await message_store.record_edit(session, chat_id=chat.id,
                                        telegram_message_id=msg.message_id, text=text, meta=meta)
        return True, chat.id, None
    if new_id is None:
        return False, chat.id, None
    item = HistoryItem(
        message_id=new_id, telegram_message_id=msg.message_id, bot_id=None,
        speaker=sender_name, speaker_username=meta.sender_username, is_human=is_human,
        text=text, created_at=created, reply_to=reply_to, reply_wanted=reply_wanted,
    )
    return True, chat.id, item


def _transient(exc: BaseException) -> bool:
    """Whether storing may succeed if Telegram sends the update again: the database is
    unreachable, timed out or dropped the connection (not a value it refuses)."""
    if isinstance(exc, OperationalError | InterfaceError | OSError | TimeoutError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _error_kind(exc: BaseException) -> str:
    """The exception's class and its driver error's class, never its message (which may
    quote the human's text)."""
    orig = getattr(exc, "orig", None)
    return type(exc).__name__ + (f"/{type(orig).__name__}" if orig is not None else "")


async def _take(state: ListenerState, bot_id: int, upd: TgUpdate,
                ) -> JSONResponse | tuple[bool, int | None, HistoryItem | None]:
    """Take ``upd`` once and store its message, in one transaction: a response when there
    is nothing more to do (a duplicate, no message), else what :func:`_store_message` says.

    Raises:
        Exception: whatever the database raises (the caller sorts it out).
    """
    async with state.sessionmaker() as session, session.begin():
        if not await message_store.take_update(session, bot_id=bot_id, update_id=upd.update_id):
            state.stats["duplicates"] += 1
            return JSONResponse({"ok": True, "duplicate": True})
        msg = upd.message or upd.edited_message
        if msg is None:
            state.stats["ignored"] += 1
            log.info("bot %s update %s has no message: ignored", bot_id, upd.update_id)
            return JSONResponse({"ok": True, "ignored": True})
        return await _store_message(
            session, state, bot_id, upd.update_id, msg, edited=upd.message is None
        )


async def webhook(request: Request) -> JSONResponse:
    """``POST /webhook/{bot_id}``: take one Telegram update (see the module docstring)."""
    state: ListenerState = request.app.state.listener
    try:
        bot_id = int(request.path_params["bot_id"])
    except ValueError:
        return _error(404, "unknown bot")
    if bot_id not in state.bots:
        await state.refresh_bots()
        if bot_id not in state.bots:
            return _error(404, "unknown bot")
    expected = webhook_secret_for(state.webhook_secret, bot_id)
    sent = request.headers.getlist(SECRET_HEADER)
    got = sent[0] if len(sent) == 1 else ""  # a repeated header is refused, whatever its values
    if not hmac.compare_digest(expected.encode(), got.encode()):
        state.stats["rejected"] += 1
        log.warning("webhook for bot %s: missing, wrong or repeated secret token", bot_id)
        return _error(403, "wrong secret token")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():  # the limit holds while reading, not after
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            state.stats["malformed"] += 1
            return _error(413, f"update larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    try:
        upd = TgUpdate.model_validate_json(body)
    except ValidationError as exc:
        state.stats["malformed"] += 1
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            reason = "; ".join(e["msg"] for e in exc.errors())
            log.warning("webhook for bot %s: body is not JSON: %s", bot_id, reason)
            return _error(400, f"body is not JSON: {reason}")
        where = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'update'}: {e['msg']}" for e in exc.errors()
        )
        log.warning("webhook for bot %s: malformed update: %s", bot_id, where)
        return _error(400, f"malformed update: {where}")
    state.stats["updates"] += 1
    try:
        taken = await _take(state, bot_id, upd)
    except Exception as exc:  # never a traceback: its SQL parameters hold names and text
        what = _error_kind(exc)
        if _transient(exc):
            state.stats["store_failed"] += 1
            log.warning("bot %s update %s: storage unavailable (%s): 500, Telegram retries",
                        bot_id, upd.update_id, what)
            return _error(500, "storage unavailable, retry later")
        state.stats["unstorable"] += 1
        log.error("bot %s update %s cannot be stored (%s): acknowledged, as Telegram would "
                  "retry it for 24 h and hold the chat's later updates", bot_id,
                  upd.update_id, what)
        return JSONResponse({"ok": False, "stored": False,
                             "description": f"update cannot be stored ({what})"})
    if isinstance(taken, JSONResponse):
        return taken
    stored, chat_id, item = taken
    # Committed: now the cached history may show it (appended, or reloaded after an edit).
    if state.reads is not None and chat_id is not None and stored:
        if item is not None:
            await state.reads.appended(chat_id, item)
        else:
            await state.reads.cache.invalidate(KIND_HISTORY, str(chat_id))
    if stored:
        state.stats["stored"] += 1
    if item is not None and item.reply_wanted and chat_id:
        try:
            await state.intake.announce(chat_id, item)
        except Exception as exc:  # stored and waiting: the workers' sweep dispatches it
            state.stats["dispatch_failed"] += 1
            log.warning("human message %s stored, dispatch deferred to the sweep: %s",
                        item.message_id, exc)
    return JSONResponse({"ok": True, "stored": stored})


async def live(_request: Request) -> JSONResponse:
    """``GET /health/live``: the process answers."""
    return JSONResponse({"status": "live"})


async def ready(request: Request) -> JSONResponse:
    """``GET /health/ready``: the database answers (503 otherwise)."""
    state: ListenerState = request.app.state.listener
    try:
        async with state.sessionmaker() as session:
            await health.ping(session)
    except Exception as exc:  # readiness reports any failure
        return JSONResponse({"status": "not ready", "reason": str(exc)}, status_code=503)
    return JSONResponse({"status": "ready"})


def create_app(state: ListenerState) -> Starlette:
    """The listener's ASGI app (webhook route, health routes, ``/metrics``)."""
    app = Starlette(
        routes=[
            Route("/webhook/{bot_id}", webhook, methods=["POST"]),
            Route("/health/live", live),
            Route("/health/ready", ready),
            Mount("/metrics", app=metrics_app()),
        ]
    )
    app.state.listener = state
    return app


async def register_webhooks(
    *, sessionmaker: async_sessionmaker[AsyncSession], secrets: Secrets, api_url: str,
    public_url: str,
) -> int:
    """setWebhook for every enabled bot to ``<public_url>/webhook/<bot_id>`` with its secret.

    Telegram allows one setWebhook per second per bot; this calls it once per bot.

    Returns:
        How many webhooks were set.

    Raises:
        TelegramError: when Telegram refuses one (the message names the bot id).
    """
    import asyncio

    cipher = secrets.cipher()
    async with sessionmaker() as session:
        bots = await bot_store.list_bots(session, enabled_only=True)
    gate = asyncio.Semaphore(16)  # different bots' calls may overlap (limits are per bot)

    async def one(bot_id: int, token: str) -> None:
        async with gate:
            client = BotClient(bot_id=bot_id, token=token, base_url=api_url)
            try:
                await client.set_webhook(
                    url=f"{public_url.rstrip('/')}/webhook/{bot_id}",
                    secret_token=webhook_secret_for(secrets.webhook_secret, bot_id),
                )
            finally:
                await client.close()

    await asyncio.gather(*(one(b.id, cipher.decrypt(b.token_encrypted)) for b in bots))
    return len(bots)


async def serve(settings: Settings, secrets: Secrets, *, register: bool = False) -> None:
    """Run the listener until cancelled (``register``: setWebhook for every bot first).

    The process starts through :func:`botsim.bootstrap.runtime` (migrations, engine, cache,
    reads, Redis); with ``redis_url`` set, new human messages are dispatched to the sharded
    workers over the reply stream.

    Raises:
        StorageError: the database cannot be reached or migrated.
        TelegramError: ``register`` and Telegram refuses a setWebhook.
    """
    import uvicorn

    from botsim.bootstrap import runtime

    async with runtime(settings) as rt:
        intake = reply_intake_for(settings, rt.reads, rt.sessionmaker, redis=rt.redis)
        state = ListenerState(sessionmaker=rt.sessionmaker,
                              webhook_secret=secrets.webhook_secret, reads=rt.reads,
                              intake=intake)
        await state.refresh_bots()
        if register:
            await register_webhooks(
                sessionmaker=rt.sessionmaker, secrets=secrets, api_url=settings.telegram_api_url,
                public_url=settings.public_webhook_url,
            )
        config = uvicorn.Config(
            create_app(state), host=settings.listener_host, port=settings.listener_port,
            log_level="warning", access_log=False,
        )
        await uvicorn.Server(config).serve()
