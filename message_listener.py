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
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from backend import logcontext, metrics, tracing
from backend.cache import TwoLayerCache
from backend.crypto import Secrets, webhook_secret_for
from backend.db.models import Chat
from backend.invalidation import KIND_HISTORY
from backend.metrics import metrics_app
from backend.schemas import MessageMeta, TopicWeights
from backend.settings import Settings
from backend.stores import bots as bot_store
from backend.stores import chats as chat_store
from backend.stores import health
from backend.stores import members as member_store
from backend.stores import messages as message_store
from behavior_engine.membership import HistoryIntake, ReplyIntake, reply_intake_for
from behavior_engine.reads import CachedReads, HistoryItem
from bots.disclosure import disclosure, parse_command
from bots.telegram import BotClient, webhook_url_for
from bots.updates import (
    CAPTION_MAX,
    ID52_MAX,
    INT32_MAX,
    NAME_MAX,
    TEXT_MAX,
    TgChat,
    TgChatMemberUpdated,
    TgMessage,
    TgUpdate,
)

log = logging.getLogger("botsim.listener")

#: What storing a message gives: (a row was written, our chat id, the new message as a
#: history item, the Bot API call answering a command).
Taken = tuple[bool, int | None, HistoryItem | None, dict[str, Any] | None]

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_BODY_BYTES = 1_000_000
__all__ = ["CAPTION_MAX", "ID52_MAX", "INT32_MAX", "MAX_BODY_BYTES", "NAME_MAX", "SECRET_HEADER",
           "TEXT_MAX", "ListenerState", "TgUpdate", "create_app", "register_webhooks", "serve"]


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
            ``service``: service messages applied, ``membership``: member changes applied,
            ``ignored``: kinds not used, ``store_failed``: answered 500 for a retry,
            ``unstorable``: acknowledged unstored, ``unexpected``: any other error,
            acknowledged: :func:`webhook`).
        kinds: updates taken by kind (``message``, ``my_chat_member``, ``callback_query``...,
            and ``service:<kind>`` for service messages); also exported as
            ``botsim_listener_updates_total{kind}``.
    """

    sessionmaker: async_sessionmaker[AsyncSession]
    webhook_secret: str
    reads: CachedReads | None = None
    privacy_text: str | None = None
    bots: dict[int, int | None] = field(default_factory=dict)
    intake: ReplyIntake = field(default_factory=HistoryIntake)
    stats: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("updates", "duplicates", "stored", "rejected", "malformed", "ignored",
             "service", "membership", "commands", "dispatch_failed", "store_failed",
             "unstorable", "unexpected"), 0
        )
    )
    kinds: Counter[str] = field(default_factory=Counter)
    _reverse: dict[int, int] = field(default_factory=dict, repr=False)
    _reverse_of: dict[int, int | None] | None = field(default=None, repr=False)

    async def refresh_bots(self) -> None:
        """Reload the bot id → Telegram user id map."""
        async with self.sessionmaker() as session:
            self.bots = await bot_store.telegram_user_ids(session)

    def bot_of(self, telegram_user_id: int) -> int | None:
        """Our bot id for a Telegram user id, or None (a reverse map of :attr:`bots`, built
        again whenever ``bots`` is replaced: one dict lookup per message at 10,000 bots)."""
        if self._reverse_of is not self.bots:
            self._reverse = {t: b for b, t in self.bots.items() if t is not None}
            self._reverse_of = self.bots
        return self._reverse.get(telegram_user_id)


def _error(status: int, description: str) -> JSONResponse:
    return JSONResponse({"ok": False, "description": description}, status_code=status)


def _cache(state: ListenerState) -> TwoLayerCache | None:
    return state.reads.cache if state.reads is not None else None


async def _chat_for(session: AsyncSession, state: ListenerState, tg: TgChat) -> Chat:
    """Our chat for Telegram's ``tg`` (by its id, or its id before a migration); a chat the
    operator has not registered is added disabled: its messages are kept, no bot talks
    there."""
    chat = await chat_store.get_chat_by_telegram_id(session, telegram_chat_id=tg.id)
    if chat is None:
        chat = await chat_store.upsert_chat(
            session, telegram_chat_id=tg.id, title=tg.title or str(tg.id),
            topics=TopicWeights(weights={"general": 1.0}).weights, enabled_if_new=False,
            cache=_cache(state))
        log.warning("update for unregistered chat %s: stored, chat added disabled", tg.id)
    return chat


def _our_bot(state: ListenerState, telegram_user_id: int) -> int | None:
    """Our bot id for a Telegram user id, or None (:meth:`ListenerState.bot_of`)."""
    return state.bot_of(telegram_user_id)


async def _store_message(
    session: AsyncSession, state: ListenerState, bot_id: int, update_id: int, msg: TgMessage,
    *, edited: bool,
) -> Taken:
    """Store ``msg`` (once per chat and message id).

    A person's ``/start``, ``/help`` or ``/privacy`` (:mod:`bots.disclosure`) is stored but
    wants no reply in the conversation: the bot it addresses (``/privacy@name``; unaddressed:
    the bot whose copy of the update arrives first, or the bot of a private chat) answers it
    in the webhook's answer.

    Returns:
        (a row was written, our chat id, the new message as a history item — None for an
        edit or a message already stored, the Bot API call answering a command or None).
    """
    sender = msg.from_user
    if msg.sender_chat is None and sender is not None and _our_bot(state, sender.id):
        return False, None, None, None  # our own bot: recorded from the send response
    chat = await _chat_for(session, state, msg.chat)
    logcontext.update(chat_id=chat.id)
    # A late message from the group a supergroup came from: its ids live in the negated
    # range (backend.stores.chats.map_migration).
    sign = -1 if msg.chat.id == chat.migrated_from_telegram_chat_id else 1
    text = msg.body()
    sender_id, sender_name, username, is_human = msg.speaker()
    meta = MessageMeta(
        sender_is_bot=not is_human,
        sender_username=username,
        kind=msg.kind(),
        update_id=update_id,
        edited=edited,
        thread_id=msg.thread(),
        mentions=msg.mentions(),
        forwarded_from=msg.forward_origin.name()[:NAME_MAX] if msg.forward_origin else None,
        sender_chat=msg.sender_chat is not None,
    )
    created = datetime.fromtimestamp(msg.date, UTC)
    target = msg.reply_target()
    reply_to = sign * target if target is not None else None
    telegram_message_id = sign * msg.message_id
    command = parse_command(text) if is_human and not edited else None
    reply_wanted = (is_human and bool(text.strip()) and chat.enabled and not edited
                    and command is None)
    new_id = await message_store.record_incoming(
        session,
        chat_id=chat.id,
        telegram_message_id=telegram_message_id,
        text=text,
        sender_id=sender_id,
        sender_name=sender_name[:NAME_MAX],
        meta=meta,
        created_at=created,
        reply_to_telegram_message_id=reply_to,
        reply_wanted=reply_wanted,
    )
    if new_id is None and edited:
        await message_store.record_edit(session, chat_id=chat.id,
                                        telegram_message_id=telegram_message_id, text=text,
                                        meta=meta)
        return True, chat.id, None, None
    answer = None
    if command is not None:
        answer = await _command_answer(session, state, bot_id, msg, command,
                                       first=new_id is not None)
    if new_id is None:
        return False, chat.id, None, answer
    log.debug("update %s stored as message %s", update_id, new_id)  # never the text
    item = HistoryItem(
        message_id=new_id, telegram_message_id=telegram_message_id, bot_id=None,
        speaker=sender_name, speaker_username=username, is_human=is_human,
        text=text, created_at=created, reply_to=reply_to, reply_wanted=reply_wanted,
        thread_id=meta.thread_id, mentions=meta.mentions,
    )
    return True, chat.id, item, answer


async def _command_answer(session: AsyncSession, state: ListenerState, bot_id: int,
                          msg: TgMessage, command: tuple[str, str | None], *,
                          first: bool) -> dict[str, Any] | None:
    """The sendMessage this bot answers ``command`` with (:mod:`bots.disclosure`), as the
    webhook's answer (Bot API, "Making requests when getting updates"), or None when another
    bot answers: one addressed by name, or (unaddressed, in a group) the bot whose copy of
    the message was stored first."""
    cmd, addressed = command
    bot = await bot_store.find_bot(session, bot_id=bot_id)
    if bot is None:
        return None
    if addressed is not None:
        if addressed.lower() != bot.username.lower():
            return None
    elif msg.chat.type != "private" and not first:
        return None
    state.stats["commands"] += 1
    answer: dict[str, Any] = {
        "method": "sendMessage", "chat_id": msg.chat.id,
        "text": disclosure(cmd, name=bot.name, language=bot.persona.language,
                           privacy_text=state.privacy_text),
        "reply_parameters": {"message_id": msg.message_id,
                             "allow_sending_without_reply": True},
    }
    if msg.thread() is not None:
        answer["message_thread_id"] = msg.thread()
    return answer


async def _apply_service(session: AsyncSession, state: ListenerState, msg: TgMessage,
                         kind: str) -> None:
    """A service message changes the chat's state and never enters its history: members
    joining or leaving (``chat_members``), a new title, a migration to a supergroup (one
    chat: :func:`backend.stores.chats.map_migration`). Other kinds (a pin, a topic created,
    a video chat...) are counted only."""
    cache = _cache(state)
    if msg.migrate_to_chat_id is not None:
        await chat_store.map_migration(session, old_telegram_chat_id=msg.chat.id,
                                       new_telegram_chat_id=msg.migrate_to_chat_id,
                                       cache=cache)
        return
    if msg.migrate_from_chat_id is not None:
        await chat_store.map_migration(session, old_telegram_chat_id=msg.migrate_from_chat_id,
                                       new_telegram_chat_id=msg.chat.id, title=msg.chat.title,
                                       cache=cache)
        return
    if kind not in ("new_chat_members", "left_chat_member", "new_chat_title"):
        return
    chat = await _chat_for(session, state, msg.chat)
    at = datetime.fromtimestamp(msg.date, UTC)
    by = f"{kind} from {msg.from_user.id}" if msg.from_user else kind
    for user in msg.new_chat_members or ():
        await member_store.set_member(session, chat_id=chat.id, user_id=user.id,
                                      status="member", name=user.display_name(),
                                      bot_id=_our_bot(state, user.id), reason=by, at=at,
                                      cache=cache, keep=_RANKED)
    if msg.left_chat_member is not None:
        user = msg.left_chat_member
        await member_store.set_member(session, chat_id=chat.id, user_id=user.id,
                                      status="left", name=user.display_name(),
                                      bot_id=_our_bot(state, user.id), reason=by, at=at,
                                      cache=cache, keep=_KICKED)
    if msg.new_chat_title is not None:
        await chat_store.set_title(session, chat_id=chat.id, title=msg.new_chat_title,
                                   cache=cache)


async def _apply_member(session: AsyncSession, state: ListenerState,
                        change: TgChatMemberUpdated, kind: str) -> None:
    """``my_chat_member`` (this bot's own membership changed) or ``chat_member`` (anyone's):
    the member's new status is recorded (:func:`backend.stores.members.set_member`); a bot
    of ours kicked, left or restricted from sending takes no more turns there."""
    new = change.new_chat_member
    if new.status not in member_store.STATUSES:
        raise _Refused(f"{kind}.new_chat_member.status: {new.status!r} is not a status")
    chat = await _chat_for(session, state, change.chat)
    await member_store.set_member(
        session, chat_id=chat.id, user_id=new.user.id, status=new.status,
        name=new.user.display_name(), bot_id=_our_bot(state, new.user.id),
        can_send=new.can_send_messages, reason=f"{kind} from {change.from_user.id}",
        at=datetime.fromtimestamp(change.date, UTC), cache=_cache(state))


#: What a service message does not overwrite (:func:`backend.stores.members.set_member`).
_RANKED = frozenset({"creator", "administrator", "restricted"})
_KICKED = frozenset({"kicked"})


class _Refused(ValueError):
    """An update valid as JSON whose meaning the Bot API does not allow (answered 400)."""


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
                ) -> JSONResponse | Taken:
    """Take ``upd`` once and act on it, in one transaction: a response when there is
    nothing more to do (a duplicate, a service message, a membership change, a kind we do
    not use), else what :func:`_store_message` says.

    Raises:
        _Refused: the update means something the Bot API does not allow.
        Exception: whatever the database raises (the caller sorts it out).
    """
    kind = upd.kind()
    async with state.sessionmaker() as session, session.begin():
        if not await message_store.take_update(session, bot_id=bot_id, update_id=upd.update_id):
            state.stats["duplicates"] += 1
            return JSONResponse({"ok": True, "duplicate": True})
        state.kinds[kind] += 1
        metrics.LISTENER_UPDATES.labels(kind=kind).inc()
        msg = upd.message or upd.edited_message
        change = upd.my_chat_member or upd.chat_member
        if msg is not None:
            service = msg.service_kind()
            if service is None:
                return await _store_message(
                    session, state, bot_id, upd.update_id, msg, edited=upd.message is None)
            state.kinds[f"service:{service}"] += 1
            metrics.LISTENER_UPDATES.labels(kind=f"service:{service}").inc()
            state.stats["service"] += 1
            await _apply_service(session, state, msg, service)
            return JSONResponse({"ok": True, "service": service})
        if change is not None:
            state.stats["membership"] += 1
            await _apply_member(session, state, change, kind)
            return JSONResponse({"ok": True, "membership": change.new_chat_member.status})
        state.stats["ignored"] += 1
        log.info("bot %s update %s is a %s: counted, not used", bot_id, upd.update_id, kind)
        return JSONResponse({"ok": True, "ignored": True, "kind": kind})


@logcontext.scoped
async def webhook(request: Request) -> JSONResponse:
    """``POST /webhook/{bot_id}``: take one Telegram update (see the module docstring).

    Any error not answered on purpose below (looking the bot up, the cache after the commit,
    a bug) is logged by class only, never with a traceback (it may quote the human's text),
    and counted: 500 when the database is unreachable (Telegram retries, and may succeed),
    else 200 ``{"ok": false}`` (a retry would fail again, and Telegram retries for 24 h,
    holding back the chat's later updates).

    Every answer is counted in ``botsim_webhook_requests_total{status}``. The request is a
    ``webhook`` server span, the root of the human message's trace (a ``traceparent`` sent
    by the caller is not followed: Telegram is outside our traces), with ``store`` and
    ``dispatch`` (:meth:`behavior_engine.replies.ReplyDispatcher.dispatch`) as children.
    """
    with tracing.span("webhook", kind=SpanKind.SERVER, context=Context(), attributes={
            "http.request.method": "POST", "http.route": "/webhook/{bot_id}"}) as span:
        response = await _answer(request)
        _traced_answer(span, request, response)
    metrics.WEBHOOK_REQUESTS.labels(status=str(response.status_code)).inc()
    return response


async def _answer(request: Request) -> JSONResponse:
    """:func:`webhook`'s answer, its unexpected errors included."""
    state: ListenerState = request.app.state.listener
    try:
        return await _webhook(request, state)
    except Exception as exc:
        what = _error_kind(exc)
        if _transient(exc):
            state.stats["store_failed"] += 1
            log.warning("webhook: storage unavailable (%s): 500, Telegram retries", what)
            return _error(500, "storage unavailable, retry later")
        state.stats["unexpected"] += 1
        log.error("webhook: unexpected %s: acknowledged so that Telegram does not retry it "
                  "for 24 h", what)
        return JSONResponse({"ok": False, "description": f"unexpected error ({what})"})


async def _webhook(request: Request, state: ListenerState) -> JSONResponse:
    """:func:`webhook`'s body (its unexpected errors are the caller's)."""
    try:
        bot_id = int(request.path_params["bot_id"])
    except ValueError:
        return _error(404, "unknown bot")
    if bot_id not in state.bots:
        await state.refresh_bots()
        if bot_id not in state.bots:
            return _error(404, "unknown bot")
    logcontext.update(bot_id=bot_id)  # this request's log lines (webhook() undoes it)
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
        with tracing.span("store", attributes={"botsim.update_id": upd.update_id}) as span:
            taken = await _take(state, bot_id, upd)
            _traced_store(span, upd, taken)
    except _Refused as exc:
        state.stats["malformed"] += 1
        log.warning("webhook for bot %s: malformed update: %s", bot_id, exc)
        return _error(400, f"malformed update: {exc}")
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
    stored, chat_id, item, answer = taken
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
    if answer is not None:  # the command's answer rides on the webhook's answer
        return JSONResponse(answer)
    return JSONResponse({"ok": True, "stored": stored})


def _traced_answer(span: Span, request: Request, response: JSONResponse) -> None:
    """The webhook span's bot id and status code; a 5xx sets the status ERROR."""
    if not span.is_recording():
        return
    raw = request.path_params.get("bot_id", "")
    if isinstance(raw, str) and raw.isdigit():
        span.set_attribute(tracing.BOT_ID, int(raw))
    span.set_attribute("http.response.status_code", response.status_code)
    if response.status_code >= 500:
        tracing.failed(span, str(response.status_code))


def _traced_store(span: Span, upd: TgUpdate, taken: JSONResponse | Taken) -> None:
    """The store span's update kind, chat and message ids (never the text)."""
    if not span.is_recording():
        return
    span.set_attribute("botsim.update_kind", upd.kind())
    if isinstance(taken, JSONResponse):
        return
    stored, chat_id, item, _answer = taken
    span.set_attribute("botsim.stored", stored)
    if chat_id is not None:
        span.set_attribute(tracing.CHAT_ID, chat_id)
    if item is not None:
        span.set_attributes({"botsim.message_id": item.message_id,
                             "messaging.message.id": str(item.telegram_message_id),
                             "botsim.reply_wanted": item.reply_wanted})


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
                    url=webhook_url_for(public_url, bot_id),
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

    metrics.init_series("listener")

    async with runtime(settings, pre_ping=False) as rt:  # the hot path (make_engine)
        intake = reply_intake_for(settings, rt.reads, rt.sessionmaker, redis=rt.redis)
        state = ListenerState(sessionmaker=rt.sessionmaker,
                              webhook_secret=secrets.webhook_secret, reads=rt.reads,
                              intake=intake, privacy_text=settings.privacy_text)
        await state.refresh_bots()
        if register:
            await register_webhooks(
                sessionmaker=rt.sessionmaker, secrets=secrets, api_url=settings.telegram_api_url,
                public_url=settings.public_webhook_url,
            )
        config = uvicorn.Config(
            create_app(state), host=settings.listener_host, port=settings.listener_port,
            log_level="warning", access_log=False,
            log_config=None,  # uvicorn's lines go through ours (BOTSIM_LOG_FORMAT)
            **settings.proxy_options(),  # X-Forwarded-* only from BOTSIM_TRUSTED_PROXIES
        )
        await uvicorn.Server(config).serve()
