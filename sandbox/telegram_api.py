"""In-process stand-in for the Telegram Bot API that enforces Telegram's limits.

Speaks the Bot API wire format (``POST|GET /bot<token>/<method>``, answers
``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": N, "description": ...}``)
so the real python-telegram-bot client can be pointed at it::

    sandbox = TelegramSandbox()
    sandbox.add_bot("123456:ABC-secret", "alice_bot", "Alice")
    sandbox.add_chat(-1001, "Lounge")
    sandbox.add_bot_to_chat(-1001, 123456)
    await sandbox.start()
    bot = telegram.Bot("123456:ABC-secret", base_url=sandbox.bot_api_url)

Sources for every limit and message: core.telegram.org/bots/faq, /bots/api,
tdlib/telegram-bot-api, summarised in ``/work/shared/TELEGRAM.md``.
This module imports nothing from the project (stdlib and third-party only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import html
import json
import logging
import math
import re
import secrets
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger(__name__)

TOKEN_RE = re.compile(r"^([1-9]\d{0,19}):([A-Za-z0-9_-]+)$")
#: Bots registered through ``POST /sandbox/bots`` get ids above this one.
NEW_BOT_BASE_ID = 7900000000
SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_TEXT_LENGTH = 4096  # Telegram: sendMessage text 1-4096 chars, core.telegram.org/bots/api
UPDATE_TTL = 24 * 3600.0  # Telegram: updates are kept at most 24 h, core.telegram.org/bots/api
WEBHOOK_PORTS = (443, 80, 88, 8443)  # Telegram: core.telegram.org/bots/api#setwebhook
CHAT_ACTIONS = frozenset(
    "typing upload_photo record_video upload_video record_voice upload_voice upload_document"
    " choose_sticker find_location record_video_note upload_video_note".split()
)
GROUP_TYPES = frozenset({"group", "supergroup"})
#: Update kinds that an empty (default) ``allowed_updates`` does NOT deliver (Bot API,
#: setWebhook/getUpdates: "all update types except chat_member, message_reaction, and
#: message_reaction_count").
OPT_IN_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
#: Service-message fields (Bot API, Message). Privacy mode always lets these through.
SERVICE_FIELDS = frozenset({
    "new_chat_members", "left_chat_member", "new_chat_title", "new_chat_photo",
    "delete_chat_photo", "group_chat_created", "supergroup_chat_created", "migrate_to_chat_id",
    "migrate_from_chat_id", "pinned_message", "forum_topic_created", "forum_topic_edited",
    "forum_topic_closed", "forum_topic_reopened",
})
#: Sender of anonymous group admins' messages (Bot API, Message.from: "GroupAnonymousBot").
GROUP_ANONYMOUS_BOT = {"id": 1087968824, "is_bot": True, "first_name": "Group",
                       "username": "GroupAnonymousBot"}
#: Sender of linked channels' automatic forwards (Bot API, Message.from: user 777000).
TELEGRAM_USER = {"id": 777000, "is_bot": False, "first_name": "Telegram"}
#: Sender of messages a member sends "as" a channel (Bot API, Message.from: Channel_Bot).
CHANNEL_BOT = {"id": 136817688, "is_bot": True, "first_name": "Channel",
               "username": "Channel_Bot"}
#: Who did an admin action when a helper is not told (a made-up chat owner).
DEFAULT_OWNER = {"id": 1, "is_bot": False, "first_name": "Owner"}
#: Rights of an administrator bot (Bot API, ChatMemberAdministrator).
ADMIN_RIGHTS: dict[str, Any] = {
    "can_be_edited": False, "is_anonymous": False, "can_manage_chat": True,
    "can_delete_messages": True, "can_manage_video_chats": True, "can_restrict_members": True,
    "can_promote_members": False, "can_change_info": True, "can_invite_users": True,
    "can_post_stories": False, "can_edit_stories": False, "can_delete_stories": False,
    "can_pin_messages": True, "can_manage_topics": True,
}
#: Rights of a restricted bot that may not write (Bot API, ChatMemberRestricted).
RESTRICTED_RIGHTS: dict[str, Any] = {
    "is_member": True, "can_send_messages": False, "can_send_audios": False,
    "can_send_documents": False, "can_send_photos": False, "can_send_videos": False,
    "can_send_video_notes": False, "can_send_voice_notes": False, "can_send_polls": False,
    "can_send_other_messages": False, "can_add_web_page_previews": False,
    "can_change_info": False, "can_invite_users": False, "can_pin_messages": False,
    "can_manage_topics": False, "can_edit_tag": False, "can_react_to_messages": False,
    "until_date": 0,
}
#: Tags of parse_mode HTML (Bot API, Formatting options).
HTML_TAGS = frozenset("b strong i em u ins s strike del span tg-spoiler a code pre blockquote "
                      "tg-emoji".split())
MARKDOWN_V2_RESERVED = "_*[]()~`>#+-=|{}.!"
_MD_NAMES = {"*": "Bold", "_": "Italic", "__": "Underline", "~": "Strikethrough",
             "||": "Spoiler", "`": "Code", "```": "Pre", "[": "TextUrl"}
#: Colours Telegram allows for a topic icon (Bot API, createForumTopic.icon_color).
TOPIC_COLORS = (7322096, 16766590, 13338331, 9367192, 16749490, 16478047)
#: Bot API methods (lower case) of this sandbox that send or act in a chat: the ones a 429
#: storm (:meth:`TelegramSandbox.storm`) refuses. Add new send methods here.
STORM_METHODS = frozenset({"sendmessage", "sendchataction"})
#: Longest storm (``seconds``) and largest ``retry_after`` ``POST /sandbox/storm`` accepts.
MAX_STORM_SECONDS = 3600.0


@dataclass(frozen=True)
class Limits:
    """Per-bot-token rate limits (all times in seconds).

    Attributes:
        chat_rate: Token refill rate per chat, messages/s. Telegram: "avoid sending more
            than one message per second" per chat (core.telegram.org/bots/faq).
        chat_burst: Bucket capacity per chat. Telegram tolerates short bursts before a 429;
            the exact size is unpublished, the sandbox allows 3.
        group_per_minute: Messages per sliding ``group_window`` per group/supergroup.
            Telegram: "no more than 20 messages per minute" in a group (bots/faq).
        group_window: Window for ``group_per_minute``, 60 s.
        global_per_second: Messages per sliding second across all chats. Telegram: "about
            30 messages per second" for bulk notifications (bots/faq).
        chat_actions: ``(count, window)`` pairs for sendChatAction per chat: 20 per 5 s and
            40 per 30 s (tdlib/telegram-bot-api behaviour, TELEGRAM.md).
        set_webhook_interval: Minimum gap between setWebhook calls, 1 s (telegram-bot-api).
    """

    chat_rate: float = 1.0
    chat_burst: float = 3.0
    group_per_minute: int = 20
    group_window: float = 60.0
    global_per_second: int = 30
    chat_actions: tuple[tuple[int, float], ...] = ((20, 5.0), (40, 30.0))
    set_webhook_interval: float = 1.0


#: No rate limit worth the name: for measuring a client's own cost (``--no-limits``).
UNLIMITED = Limits(chat_rate=1e9, chat_burst=1e9, group_per_minute=10**9,
                   global_per_second=10**9, chat_actions=((10**9, 1.0),),
                   set_webhook_interval=0.0)


class SandboxError(ValueError):
    """Bad input to a sandbox helper (not a Bot API error).

    Attributes:
        status: HTTP status the human endpoint answers with (400 bad input, 404 unknown).
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status

    def json(self) -> JSONResponse:
        """The sandbox endpoints' error answer ``{"ok": false, "error_code", "description"}``."""
        return JSONResponse({"ok": False, "error_code": self.status, "description": str(self)},
                            status_code=self.status)


class ApiError(Exception):
    """A Bot API error answer: HTTP ``code`` with ``{"ok": false, ...}`` body."""

    def __init__(self, code: int, description: str, **parameters: int) -> None:
        super().__init__(description)
        self.code, self.description, self.parameters = code, description, parameters

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"ok": False, "error_code": self.code,
                                "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return JSONResponse(body, status_code=self.code)


@dataclass(eq=False)
class _Webhook:
    url: str
    secret: str | None
    max_connections: int
    allowed_updates: list[str]


@dataclass(eq=False)
class _Bot:
    token: str
    user: dict[str, Any]
    webhook: _Webhook | None = None
    allowed_updates: list[str] = field(default_factory=list)
    pending: deque[tuple[float, dict[str, Any]]] = field(default_factory=deque)
    next_update_id: int = 1
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    poll_generation: int = 0
    last_set_webhook: float | None = None
    last_error_date: int | None = None
    last_error_message: str | None = None
    delivery: asyncio.Task[None] | None = None
    privacy: bool = False


@dataclass(eq=False)
class _Chat:
    chat: dict[str, Any]
    members: dict[int, dict[str, Any]] = field(default_factory=dict)
    bots: set[int] = field(default_factory=set)
    kicked: set[int] = field(default_factory=set)
    #: user id -> "creator" | "administrator" | "restricted" (absent: plain "member").
    roles: dict[int, str] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    by_id: dict[int, dict[str, Any]] = field(default_factory=dict)
    next_message_id: int = 1
    migrated_to: int | None = None
    #: Forum topics: message_thread_id -> the forum_topic_created service message.
    topics: dict[int, dict[str, Any]] = field(default_factory=dict)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn server that leaves the host process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class BackgroundServer:
    """Serves an ASGI app with uvicorn in a background asyncio task.

    Use ``await BackgroundServer.start(app)``; ``url`` is ``http://host:port`` (port picked
    by the OS when 0); ``await stop()`` shuts it down gracefully (at most ~2 s).
    """

    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None], url: str) -> None:
        self._server, self._task, self.url = server, task, url

    @classmethod
    async def start(cls, app: Any, host: str = "127.0.0.1", port: int = 0) -> BackgroundServer:
        """Bind ``host:port`` and serve ``app``; raises OSError if the port is taken."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto=IPPROTO_TCP makes asyncio set TCP_NODELAY on accepted sockets (else ~40 ms
        # per request from Nagle + delayed ACK).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        # proxy_headers=False: no X-Forwarded-For is believed (uvicorn's default trusts it
        # from 127.0.0.1); these servers bind locally and stand behind no proxy.
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=2, proxy_headers=False)
        server = _EmbeddedServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                sock.close()
                task.result()
                raise RuntimeError("uvicorn exited during startup")
            await asyncio.sleep(0.01)
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        return cls(server, task, f"http://{shown}:{sock.getsockname()[1]}")

    async def stop(self) -> None:
        """Ask uvicorn to exit and wait for it."""
        self._server.should_exit = True
        await self._task


def _retry_after(wait: float) -> int:
    """Whole seconds until a wait of ``wait`` seconds is over, at least 1 (as Telegram)."""
    return max(1, math.ceil(wait - 1e-9))


def _entity_error(detail: str) -> ApiError:
    return ApiError(400, f"Bad Request: can't parse entities: {detail}")


def _byte_offset(text: str, index: int) -> int:
    """Telegram reports parse errors at UTF-8 byte offsets."""
    return len(text[:index].encode("utf-8"))


def _parse_html(text: str) -> str:
    """parse_mode HTML: check the tags (Bot API, Formatting options) and strip them.

    Errors as Telegram words them: 'Unsupported start tag "x" at byte offset N',
    'Unexpected end tag at byte offset N', 'Unmatched end tag at byte offset N, expected
    "</a>", found "</b>"', 'Can't find end tag corresponding to start tag "b"'.
    """
    out: list[str] = []
    stack: list[str] = []
    pos = 0
    for m in re.finditer(r"<(/?)([^<>\s/]*)([^<>]*)>|<", text):
        out.append(text[pos:m.start()])
        pos, at = m.end(), _byte_offset(text, m.start())
        if m.group(0) == "<":
            raise _entity_error(f'Unsupported start tag "" at byte offset {at}')
        closing, name, attrs = m.group(1), m.group(2).lower(), m.group(3)
        if closing:
            if not stack:
                raise _entity_error(f"Unexpected end tag at byte offset {at}")
            if stack[-1] != name:
                raise _entity_error(f'Unmatched end tag at byte offset {at}, expected '
                                    f'"</{stack[-1]}>", found "</{name}>"')
            stack.pop()
            continue
        if name not in HTML_TAGS:
            raise _entity_error(f'Unsupported start tag "{name}" at byte offset {at}')
        if name == "span" and "tg-spoiler" not in attrs:
            raise _entity_error('Tag "span" must have class "tg-spoiler"')
        stack.append(name)
    if stack:
        raise _entity_error(f'Can\'t find end tag corresponding to start tag "{stack[-1]}"')
    out.append(text[pos:])
    return html.unescape("".join(out))


def _parse_markdown(text: str, v2: bool) -> str:
    """parse_mode MarkdownV2 (``v2``) or legacy Markdown: check the markup and strip it.

    MarkdownV2 (Bot API, Formatting options): outside entities each of
    ``_*[]()~`>#+-=|{}.!`` must be escaped with a preceding backslash, else "Character 'c' is
    reserved and must be escaped with the preceding '\\'"; an unclosed entity answers "Can't
    find end of Bold entity at byte offset N". Legacy Markdown knows ``* _ ` ``` [..](..)``
    only and answers "Can't find end of the entity starting at byte offset N".
    """
    out: list[str] = []
    stack: list[tuple[str, int]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        code = stack[-1][0] if stack and stack[-1][0] in ("`", "```") else None
        if c == "\\" and v2 and i + 1 < n:
            out.append(text[i + 1])
            i += 2
            continue
        if code is not None:
            if text.startswith(code, i):
                stack.pop()
                i += len(code)
            else:
                out.append(c)
                i += 1
            continue
        marker = next((mk for mk in ("```", "__", "||") if text.startswith(mk, i)), c)
        if marker == "__" and not v2:
            marker = "_"
        if marker in ("```", "`", "*", "_", "__", "~", "||") and (v2 or marker in "```*_"):
            if stack and stack[-1][0] == marker:
                stack.pop()
            else:
                stack.append((marker, i))
                if marker == "```":  # skip the language name
                    lang = re.match(r"[A-Za-z0-9_+-]*\n", text[i + 3:])
                    i += len(lang.group(0)) if lang else 0
            i += len(marker)
            continue
        if c == "[" or (v2 and text.startswith("![", i)):
            stack.append(("[", i))
            i += 1 if c == "[" else 2
            continue
        if c == "]" and stack and stack[-1][0] == "[":
            start = stack.pop()[1]
            if i + 1 < n and text[i + 1] == "(":
                close = text.find(")", i + 2)
                if close < 0:
                    at = _byte_offset(text, start)
                    raise _entity_error(f"Can't find end of a URL at byte offset {at}")
                i = close + 1
            else:
                i += 1
            continue
        if v2 and c == ">" and (i == 0 or text[i - 1] == "\n"):  # block quotation
            i += 1
            continue
        if v2 and c in MARKDOWN_V2_RESERVED:
            raise _entity_error(f"Character '{c}' is reserved and must be escaped with the "
                                "preceding '\\'")
        out.append(c)
        i += 1
    if stack:
        marker, start = stack[-1]
        at = _byte_offset(text, start)
        if not v2:
            raise _entity_error(f"Can't find end of the entity starting at byte offset {at}")
        raise _entity_error(f"Can't find end of {_MD_NAMES[marker]} entity at byte offset {at}")
    return "".join(out)


def _text_of(params: dict[str, Any], name: str = "text") -> str:
    """The text after parse_mode (HTML, MarkdownV2, Markdown; none: verbatim)."""
    text = params.get(name)
    text = "" if text is None else str(text)
    mode = str(params.get("parse_mode") or "")
    if not mode:
        return text
    if mode.upper() == "HTML":
        return _parse_html(text)
    if mode.lower() in ("markdownv2", "markdown"):
        return _parse_markdown(text, v2=mode.lower() == "markdownv2")
    raise ApiError(400, "Bad Request: unsupported parse_mode")


def _utf16_len(text: str) -> int:
    """Length in UTF-16 code units (Telegram's entity offsets; non-BMP characters count 2)."""
    return len(text.encode("utf-16-le")) // 2


def _utf16_slice(text: str, offset: int, length: int) -> str:
    data = text.encode("utf-16-le")
    return data[2 * offset:2 * (offset + length)].decode("utf-16-le", "replace")


def _auto_entities(text: str) -> list[dict[str, Any]]:
    """MessageEntity list Telegram's apps produce for plain text: ``bot_command`` for a
    leading ``/cmd`` or ``/cmd@bot`` and ``mention`` for each ``@username``; offsets and
    lengths in UTF-16 code units (Bot API, MessageEntity)."""
    found: list[tuple[int, int, str]] = []
    cmd = re.match(r"/[A-Za-z0-9_]{1,64}(?:@[A-Za-z][A-Za-z0-9_]{3,31})?(?![\w@])", text)
    if cmd:
        found.append((0, cmd.end(), "bot_command"))
    for m in re.finditer(r"(?<![\w@/])@[A-Za-z][A-Za-z0-9_]{3,31}(?![\w@])", text):
        if not (cmd and m.start() < cmd.end()):
            found.append((m.start(), m.end(), "mention"))
    return [{"offset": _utf16_len(text[:a]), "length": _utf16_len(text[a:b]), "type": kind}
            for a, b, kind in sorted(found)]


def _check_text(text: str) -> str:
    """Telegram: 1-4096 characters after stripping (counted as Unicode code points here)."""
    if not text.strip():
        raise ApiError(400, "Bad Request: message text is empty")
    if len(text) > MAX_TEXT_LENGTH:
        raise ApiError(400, "Bad Request: message is too long")
    return text


def _int(params: dict[str, Any], name: str, default: int | None = None) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ApiError(400, f"Bad Request: invalid {name} specified")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"Bad Request: invalid {name} specified") from None


def _bool(params: dict[str, Any], name: str) -> bool:
    value = params.get(name)
    return value is True or str(value).lower() in ("true", "1")


def _json(params: dict[str, Any], name: str) -> Any:
    """A nested parameter: JSON value, or JSON encoded as a string (PTB form encoding)."""
    value = params.get(name)
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return json.loads(value)
        except ValueError:
            raise ApiError(400, f"Bad Request: can't parse {name} JSON object") from None
    return value


def _field(data: dict[str, Any], name: str, kind: type, required: bool = True) -> Any:
    """A JSON field of a sandbox endpoint, checked (bools are not ints); None if absent
    and not ``required``. Raises SandboxError (400) naming the field."""
    names = {int: "an integer", str: "a string", bool: "a boolean", dict: "an object",
             list: "an array"}
    value = data.get(name)
    if value is None:
        if required:
            raise SandboxError(f"field '{name}' is required and must be {names[kind]}")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SandboxError(f"field '{name}' must be {names[kind]}")
    return value


async def _read_params(request: Request) -> dict[str, Any]:
    """Merge query string and body (JSON, urlencoded or multipart/form-data)."""
    params: dict[str, Any] = dict(request.query_params)
    body = await request.body()
    ctype = request.headers.get("content-type", "").lower()
    if not body:
        return params
    if ctype.startswith("application/json"):
        try:
            data = json.loads(body)
        except ValueError:
            raise ApiError(400, "Bad Request: can't parse JSON object") from None
        if not isinstance(data, dict):
            raise ApiError(400, "Bad Request: JSON body must be an object")
        params.update(data)
    elif ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        async with request.form() as form:  # python-multipart parses both
            params.update({k: v for k, v in form.items() if isinstance(v, str)})
    else:
        params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    return params


class TelegramSandbox:
    """World state (bots, chats, members, messages, webhooks, updates) plus the HTTP API.

    Bot API (``GET|POST /bot<token>/<method>``, method names case-insensitive; parameters
    from the query string and a JSON, urlencoded or multipart body; nested values may be
    JSON objects or JSON-encoded strings as python-telegram-bot sends them):
    getMe, sendMessage, sendChatAction, setWebhook, deleteWebhook, getWebhookInfo,
    getUpdates, getChat, getChatMember, close, logOut. Errors are ``{"ok": false,
    "error_code", "description", "parameters"?}`` with the same HTTP status: 401
    "Unauthorized" (unknown or revoked token), 404 "Not Found" (unknown method or malformed
    token), 400 "Bad Request: ..." (chat not found, text empty/too long, reply not found,
    can't parse entities, message thread not found, not enough rights, bad webhook;
    ``migrate_to_chat_id`` after :meth:`migrate_chat`), 403 "Forbidden: bot is not a member
    of the <type> chat" / "bot was kicked from the <type> chat", 409 "Conflict: ..."
    (getUpdates with a webhook or a newer poller), 429 "Too Many Requests: retry after N"
    with ``retry_after`` N (s).

    Delivery: a human message (:meth:`post_as_human`) becomes one Update per member bot
    (``update_id`` increasing per bot); bots' own messages are never delivered to bots;
    privacy mode (:meth:`set_privacy`) filters group messages. ``allowed_updates`` is one
    setting per bot (setWebhook/getUpdates; absent keeps the previous one); empty means
    every kind except ``chat_member``, ``message_reaction``, ``message_reaction_count``.
    With a webhook, updates are POSTed in order per bot with the
    ``X-Telegram-Bot-Api-Secret-Token`` header; a non-2xx answer or connection error is
    retried after ``retry_base_delay`` doubling up to ``retry_max_delay`` (Telegram: 1 s
    doubling to 60-120 s). ``max_connections`` is stored but delivery is sequential.

    World building, silent (no update): :meth:`add_bot`, :meth:`new_bot`, :meth:`add_chat`
    (``is_forum``), :meth:`add_member` (``status``), :meth:`add_bot_to_chat` (unless
    ``notify=True``), :meth:`load_world`, :meth:`set_privacy`, :meth:`revoke_token`,
    :meth:`delete_message`. Live events, delivering Telegram's updates: :meth:`post_as_human`
    (``message_thread_id``, ``entities``, ``forward_from``), :meth:`post_photo_as_human`,
    :meth:`edit_as_human` (``edited_message``), :meth:`post_as_anonymous_admin`,
    :meth:`post_as_channel`, :meth:`kick_bot`, :meth:`add_bot_to_chat` with notify,
    :meth:`promote_bot`, :meth:`restrict_bot` (``my_chat_member``/``chat_member``),
    :meth:`human_joins`, :meth:`human_leaves`, :meth:`set_title`, :meth:`create_topic`,
    :meth:`migrate_chat`, :meth:`deliver_raw` (any payload).

    Sandbox endpoints (JSON in, ``{"ok": true, "result": ...}`` out; bad input 400/404 with
    a description naming the field; ``by_user_id`` optional everywhere it appears):

    - ``POST /sandbox/chats/{chat_id}/messages`` ``{"user_id", "text",
      "reply_to_message_id"?, "message_thread_id"?, "entities"?, "forward_from"?,
      "first_name"?, "username"?}``: post as a human (added as a member if unknown and
      ``first_name`` is given) -> Message; ``GET`` on the path answers the chat log.
    - ``POST .../messages/{message_id}/edit`` ``{"text"}`` -> Message;
      ``POST .../messages/{message_id}/delete`` -> true.
    - ``POST /sandbox/chats/{chat_id}/bots`` ``{"bot_id", "by_user_id"?}``: add a bot, as a
      member does in the app (notify=True) -> true.
    - ``POST /sandbox/chats/{chat_id}/kick|promote|restrict`` ``{"bot_id", "by_user_id"?}``
      -> true.
    - ``POST /sandbox/chats/{chat_id}/migrate`` ``{"new_chat_id", "order"?: "to_first" |
      "from_first", "by_user_id"?}`` -> the new Chat.
    - ``POST /sandbox/chats/{chat_id}/topics`` ``{"name", "icon_color"?, "by_user_id"?}`` ->
      ``{"message_thread_id"}``.
    - ``POST /sandbox/chats/{chat_id}/anonymous`` ``{"text", "author_signature"?,
      "message_thread_id"?}`` -> Message.
    - ``POST /sandbox/chats/{chat_id}/channel_posts`` ``{"channel": {"id", "title"}, "text",
      "automatic_forward"?: true}`` -> Message.
    - ``POST /sandbox/chats/{chat_id}/members`` ``{"id", "first_name", "username"?}`` (a
      human joins) and ``POST /sandbox/chats/{chat_id}/members/{user_id}/leave`` -> the
      service Message; ``POST /sandbox/chats/{chat_id}/title`` ``{"title", "by_user_id"?}``.
    - ``POST /sandbox/bots`` ``{"username", "first_name"}``: BotFather's /newbot ->
      ``{"token", "user"}``; ``POST /sandbox/bots/{bot_id}/revoke`` -> ``{"token"}``;
      ``POST /sandbox/bots/{bot_id}/privacy`` ``{"enabled": bool}`` -> true;
      ``POST /sandbox/bots/{bot_id}/updates`` with one ``{kind: object}`` -> ``{"update_id"}``.
    - ``GET /sandbox/stats`` answers :attr:`stats`.
    - ``POST /sandbox/storm`` ``{"bot_ids": [int, ...], "seconds": number, "retry_after"?:
      int}``: a 429 storm (:meth:`storm`) -> the storms in force (:meth:`storms`);
      ``GET /sandbox/storm`` -> the same; ``DELETE /sandbox/storm`` ends them all -> ``{}``.

    Args:
        clock: Monotonic seconds used for rate limits and update expiry; inject a fake
            for deterministic tests. Default ``time.monotonic``.
        wall_clock: Unix seconds for ``Message.date`` and ``last_error_date``.
        limits: Rate limits, see :class:`Limits`.
        retry_base_delay: First webhook retry delay in s, doubled per failure (Telegram: 1 s).
        retry_max_delay: Cap of the retry delay in s (Telegram: 60-120 s).
        webhook_timeout: Timeout in s of one webhook POST.
        max_poll_timeout: Cap in s for getUpdates ``timeout`` (long polling).
        http_webhook_hosts: Hosts a webhook may reach over plain ``http://`` on any port.
            Real Telegram requires HTTPS on ports 443, 80, 88 or 8443; the sandbox allows
            plain HTTP to these hosts (default loopback) for local testing.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        limits: Limits | None = None,
        retry_base_delay: float = 1.0,
        retry_max_delay: float = 60.0,
        webhook_timeout: float = 5.0,
        max_poll_timeout: float = 10.0,
        http_webhook_hosts: Collection[str] = ("127.0.0.1", "localhost", "::1"),
    ) -> None:
        self.clock, self.wall_clock = clock, wall_clock
        self.limits = limits or Limits()
        self.retry_base_delay, self.retry_max_delay = retry_base_delay, retry_max_delay
        self.webhook_timeout, self.max_poll_timeout = webhook_timeout, max_poll_timeout
        self.http_webhook_hosts = frozenset(h.lower() for h in http_webhook_hosts)
        self._bots: dict[int, _Bot] = {}
        self._chats: dict[int, _Chat] = {}
        self._users: dict[int, dict[str, Any]] = {}
        self._channel_posts: dict[int, int] = {}
        self._buckets: dict[tuple[Any, ...], tuple[float, float]] = {}
        self._windows: dict[tuple[Any, ...], deque[float]] = {}
        self._penalties: dict[tuple[Any, ...], float] = {}
        self._counters: dict[str, int] = dict.fromkeys(
            ("too_many_requests", "ignored_retry_after", "webhook_ok", "webhook_failed",
             "updates_queued", "updates_expired", "chat_actions", "webhook_replies",
             "storm_refused"), 0)
        #: bot id -> (storm end on ``clock``, fixed retry_after or None).
        self._storms: dict[int, tuple[float, int | None]] = {}
        #: bot id -> ``clock`` time until which its last storm 429 told it to wait.
        self._storm_waits: dict[int, float] = {}
        self._sent: dict[int, int] = {}
        self._client: httpx.AsyncClient | None = None
        self._server: BackgroundServer | None = None
        self._closing = False
        self._methods: dict[str, Callable[[_Bot, dict[str, Any]], Any]] = {
            "getme": self._get_me, "sendmessage": self._send_message,
            "sendchataction": self._send_chat_action, "setwebhook": self._set_webhook,
            "deletewebhook": self._delete_webhook, "getwebhookinfo": self._get_webhook_info,
            "getupdates": self._get_updates, "close": self._true, "logout": self._true,
            "getchat": self._get_chat, "getchatmember": self._get_chat_member,
        }
        self._app = Starlette(
            routes=[
                Route("/bot{token}/{method}", self._handle_bot_api, methods=["GET", "POST"]),
                Route("/sandbox/chats/{chat_id}/messages", self._handle_human,
                      methods=["GET", "POST"]),
                Route("/sandbox/stats", self._handle_stats, methods=["GET"]),
                Route("/sandbox/storm", self._handle_storm, methods=["GET", "POST", "DELETE"]),
                Route("/sandbox/bots", self._handle_new_bot, methods=["POST"]),
                Route("/sandbox/chats/{chat_id}/bots", self._handle_add_bot,
                      methods=["POST"]),
                Route("/sandbox/chats/{chat_id}/messages/{message_id}/{action}",
                      self._handle_message_action, methods=["POST"]),
                Route("/sandbox/chats/{chat_id}/members/{user_id}/leave",
                      self._handle_leave, methods=["POST"]),
                Route("/sandbox/chats/{chat_id}/{action}", self._handle_chat_action,
                      methods=["POST"]),
                Route("/sandbox/bots/{bot_id}/updates", self._handle_raw_update,
                      methods=["POST"]),
                Route("/sandbox/bots/{bot_id}/revoke", self._handle_revoke, methods=["POST"]),
                Route("/sandbox/bots/{bot_id}/privacy", self._handle_privacy,
                      methods=["POST"]),
            ],
            lifespan=self._lifespan,
        )

    # ----------------------------------------------------------------- world building
    def add_bot(self, token: str, username: str, first_name: str) -> dict[str, Any]:
        """Register a bot; its user id is the integer before ':' in ``token``.

        Returns:
            The bot's User object ``{"id", "is_bot": True, "first_name", "username"}``.

        Raises:
            SandboxError: token is not ``<digits>:<[A-Za-z0-9_-]+>`` or the id is taken.
        """
        match = TOKEN_RE.match(token)
        if not match:
            raise SandboxError(f"token {token!r} is not of the form '123456:ABC-def_ghi'")
        bot_id = int(match.group(1))
        if bot_id in self._bots:
            raise SandboxError(f"a bot with id {bot_id} already exists")
        user = {"id": bot_id, "is_bot": True, "first_name": first_name, "username": username}
        self._bots[bot_id] = _Bot(token=token, user=user)
        return dict(user)

    def add_chat(self, chat_id: int, title: str, type: str = "supergroup", *,
                 is_forum: bool = False) -> dict[str, Any]:
        """Create a chat; returns the Chat object ``{"id", "title", "type", "is_forum"?}``.

        ``is_forum``: a supergroup with topics enabled (Bot API, Chat.is_forum); see
        :meth:`create_topic`.

        Raises:
            SandboxError: chat id exists, type not group/supergroup/channel/private, or a
                forum that is not a supergroup.
        """
        if chat_id in self._chats:
            raise SandboxError(f"chat {chat_id} already exists")
        if type not in ("group", "supergroup", "channel", "private"):
            raise SandboxError(f"type {type!r} must be group, supergroup, channel or private")
        if is_forum and type != "supergroup":
            raise SandboxError("only a supergroup can be a forum (is_forum)")
        chat: dict[str, Any] = {"id": chat_id, "title": title, "type": type}
        if is_forum:
            chat["is_forum"] = True
        self._chats[chat_id] = _Chat(chat=chat)
        return dict(chat)

    def add_member(self, chat_id: int, user: dict[str, Any],
                   status: str = "member") -> dict[str, Any]:
        """Add a human ``{"id": int, "first_name": str, "username"?: str}``; returns User.

        ``status``: "member", "administrator" or "creator" (what getChatMember answers; the
        creator is the default author of admin actions such as :meth:`kick_bot`). Silent:
        no update is delivered (see :meth:`human_joins` for the live event).
        """
        chat = self._chat(chat_id)
        if not isinstance(user.get("id"), int) or not user.get("first_name"):
            raise SandboxError("user needs an integer 'id' and a non-empty 'first_name'")
        if status not in ("member", "administrator", "creator"):
            raise SandboxError(f"status {status!r} must be member, administrator or creator")
        member = {"id": user["id"], "is_bot": False, "first_name": str(user["first_name"])}
        if user.get("username"):
            member["username"] = str(user["username"])
        chat.members[user["id"]] = member
        chat.kicked.discard(user["id"])
        if status == "member":
            chat.roles.pop(user["id"], None)
        else:
            chat.roles[user["id"]] = status
        self._users[user["id"]] = member
        return dict(member)

    def add_bot_to_chat(self, chat_id: int, token_or_bot_id: str | int, *,
                        notify: bool = False, by_user_id: int | None = None) -> None:
        """Make a registered bot (by token or user id) a member of ``chat_id`` (also after
        a kick). Silent unless ``notify``: then, as when a member adds it in the app, the bot
        gets ``my_chat_member`` (old status "left"/"kicked" -> "member", ``from`` the adder:
        ``by_user_id`` or the chat's creator, Bot API ChatMemberUpdated), every member bot
        including the new one gets a service message ``new_chat_members: [bot]`` (+ ``from``),
        and administrator bots get ``chat_member`` (opt-in kind, see allowed_updates)."""
        bot = self._bot(token_or_bot_id)
        chat = self._chat(chat_id)
        bot_id = bot.user["id"]

        def change() -> None:
            if bot_id not in chat.bots:
                chat.roles.pop(bot_id, None)
            chat.bots.add(bot_id)
            chat.kicked.discard(bot_id)

        if not notify or bot_id in chat.bots:  # already a member: nothing to tell
            change()
            return
        actor = self._actor(chat, by_user_id)
        self._member_change(chat, bot_id, change, actor)
        self._service(chat, actor, {"new_chat_members": [dict(bot.user)]})

    def kick_bot(self, chat_id: int, token_or_bot_id: str | int,
                 by_user_id: int | None = None) -> None:
        """Ban a bot (an admin removes it in the app); its sends then get 403 "Forbidden:
        bot was kicked from the <type> chat" and getChatMember about itself says "kicked".

        Delivers ``my_chat_member`` to the bot (``from`` the admin: ``by_user_id`` or the
        chat's creator; ``old_chat_member`` its previous status, ``new_chat_member``
        ``{"status": "kicked", "until_date": 0}``), a service message ``left_chat_member``
        to the other member bots, and ``chat_member`` to administrator bots (Bot API,
        ChatMemberUpdated, Message.left_chat_member).
        """
        bot = self._bot(token_or_bot_id)
        chat = self._chat(chat_id)
        bot_id = bot.user["id"]
        actor = self._actor(chat, by_user_id)
        if bot_id in chat.kicked and bot_id not in chat.bots:
            return  # already banned: nothing changes, nothing is delivered

        def change() -> None:
            chat.bots.discard(bot_id)
            chat.kicked.add(bot_id)
            chat.roles.pop(bot_id, None)

        was_member = bot_id in chat.bots
        self._member_change(chat, bot_id, change, actor)
        if was_member:  # banning a non-member posts no service message
            self._service(chat, actor, {"left_chat_member": dict(bot.user)})

    def promote_bot(self, chat_id: int, token_or_bot_id: str | int,
                    by_user_id: int | None = None) -> None:
        """Make a member bot an administrator (:data:`ADMIN_RIGHTS`); delivers
        ``my_chat_member`` (member -> administrator). Admin bots see every group message even
        with privacy mode on (core.telegram.org/bots/features)."""
        self._set_role(chat_id, token_or_bot_id, "administrator", by_user_id)

    def restrict_bot(self, chat_id: int, token_or_bot_id: str | int,
                     by_user_id: int | None = None) -> None:
        """Restrict a member bot (``can_send_messages: false``, :data:`RESTRICTED_RIGHTS`);
        delivers ``my_chat_member`` (-> restricted). sendMessage then answers 400 "Bad
        Request: not enough rights to send text messages to the chat"."""
        self._set_role(chat_id, token_or_bot_id, "restricted", by_user_id)

    def _set_role(self, chat_id: int, token_or_bot_id: str | int, role: str,
                  by_user_id: int | None) -> None:
        bot_id = self._bot(token_or_bot_id).user["id"]
        chat = self._chat(chat_id)
        if bot_id not in chat.bots:
            raise SandboxError(f"bot {bot_id} is not a member of chat {chat_id}", 404)
        actor = self._actor(chat, by_user_id)
        self._member_change(chat, bot_id, lambda: chat.roles.__setitem__(bot_id, role), actor)

    def human_joins(self, chat_id: int, user: dict[str, Any]) -> dict[str, Any]:
        """A human ``{"id", "first_name", "username"?}`` joins: member bots get a service
        message ``new_chat_members: [user]`` (``from`` the user), administrator bots a
        ``chat_member`` update (left -> member). Returns the service Message."""
        chat = self._chat(chat_id)
        if not isinstance(user.get("id"), int) or not user.get("first_name"):
            raise SandboxError("user needs an integer 'id' and a non-empty 'first_name'")
        if user["id"] in chat.members:
            raise SandboxError(f"user {user['id']} is already a member of chat {chat_id}")
        if user["id"] not in self._users:
            self._users[user["id"]] = {"id": user["id"], "is_bot": False,
                                       "first_name": str(user["first_name"])}
        member: dict[str, Any] = {}
        self._member_change(chat, user["id"],
                            lambda: member.update(self.add_member(chat_id, user)),
                            self._users[user["id"]])
        return self._service(chat, member, {"new_chat_members": [dict(member)]})

    def human_leaves(self, chat_id: int, user_id: int) -> dict[str, Any]:
        """A human member leaves: service message ``left_chat_member`` (``from`` the user)
        to member bots, ``chat_member`` (member -> left) to administrator bots. Returns the
        service Message."""
        chat = self._chat(chat_id)
        user = chat.members.get(user_id)
        if user is None:
            raise SandboxError(f"user_id {user_id} is not a member of chat {chat_id}", 404)

        def change() -> None:
            chat.members.pop(user_id, None)
            chat.roles.pop(user_id, None)

        self._member_change(chat, user_id, change, user)
        return self._service(chat, user, {"left_chat_member": dict(user)})

    def set_title(self, chat_id: int, title: str, by_user_id: int | None = None
                  ) -> dict[str, Any]:
        """Rename the chat: service message ``new_chat_title`` (Bot API, Message) from the
        admin (``by_user_id`` or the creator); later messages carry the new title."""
        chat = self._chat(chat_id)
        if not isinstance(title, str) or not 1 <= len(title.strip()) <= 128:
            raise SandboxError("title must be 1-128 characters")
        actor = self._actor(chat, by_user_id)
        chat.chat["title"] = title
        return self._service(chat, actor, {"new_chat_title": title})

    def create_topic(self, chat_id: int, name: str, by_user_id: int | None = None,
                     icon_color: int = TOPIC_COLORS[0]) -> int:
        """Create a forum topic (the chat needs ``is_forum``): a ``forum_topic_created``
        service message ``{"name", "icon_color"}`` whose message_id is the topic's
        ``message_thread_id`` (Bot API, ForumTopicCreated), delivered to the member bots.

        Returns:
            The new ``message_thread_id``.
        """
        chat = self._chat(chat_id)
        if not chat.chat.get("is_forum"):
            raise SandboxError(f"chat {chat_id} is not a forum (add_chat(..., is_forum=True))")
        if not isinstance(name, str) or not 1 <= len(name) <= 128:
            raise SandboxError("name must be 1-128 characters")
        if icon_color not in TOPIC_COLORS:
            raise SandboxError(f"icon_color must be one of {TOPIC_COLORS}")
        actor = self._actor(chat, by_user_id)
        thread_id = chat.next_message_id
        message = self._store(chat, actor, {"forum_topic_created": {
            "name": name, "icon_color": icon_color}}, thread_id=thread_id)
        chat.topics[thread_id] = message
        self._broadcast(chat, message)
        return thread_id

    async def post_as_anonymous_admin(self, chat_id: int, text: str,
                                      author_signature: str | None = None, *,
                                      message_thread_id: int | None = None
                                      ) -> dict[str, Any]:
        """An admin posts anonymously: ``from`` = GroupAnonymousBot (id 1087968824),
        ``sender_chat`` = the group itself, ``author_signature`` if given (Bot API,
        Message.sender_chat). Returns the Message."""
        chat = self._chat(chat_id)
        content = self._text_content(text)
        extra: dict[str, Any] = {"sender_chat": dict(chat.chat)}
        if author_signature:
            extra["author_signature"] = author_signature
        return self._post(chat, GROUP_ANONYMOUS_BOT, content, None, message_thread_id, extra)

    async def post_as_channel(self, chat_id: int, channel: dict[str, Any], text: str,
                              automatic_forward: bool = True) -> dict[str, Any]:
        """A channel's message in the group (Bot API, Message.sender_chat).

        ``automatic_forward``: the linked channel's post forwarded into its discussion
        group: ``from`` = Telegram (777000), ``sender_chat`` = ``{"id", "title", "type":
        "channel"}``, ``is_automatic_forward: true``, ``forward_origin`` ``{"type":
        "channel", "chat", "message_id" (the post's id in the channel), "date"}``. False:
        a member sends "as" the channel: ``from`` = Channel_Bot (136817688) and
        ``sender_chat`` = the channel. Returns the Message.
        """
        chat = self._chat(chat_id)
        if not isinstance(channel.get("id"), int) or not isinstance(channel.get("title"), str):
            raise SandboxError("channel needs an integer 'id' and a string 'title'")
        sender_chat = {"id": channel["id"], "title": channel["title"], "type": "channel"}
        content = self._text_content(text)
        extra: dict[str, Any] = {"sender_chat": sender_chat}
        if not automatic_forward:
            return self._post(chat, CHANNEL_BOT, content, None, None, extra)
        post_id = self._channel_posts.get(channel["id"], 0) + 1
        self._channel_posts[channel["id"]] = post_id
        extra["is_automatic_forward"] = True
        extra["forward_origin"] = {"type": "channel", "chat": dict(sender_chat),
                                   "message_id": post_id, "date": int(self.wall_clock())}
        return self._post(chat, TELEGRAM_USER, content, None, None, extra)

    async def post_photo_as_human(self, chat_id: int, user_id: int,
                                  caption: str | None = None,
                                  reply_to_message_id: int | None = None, *,
                                  message_thread_id: int | None = None) -> dict[str, Any]:
        """A human posts a photo: ``photo`` is an array of PhotoSize (90, 320 and 800 px
        wide), ``caption``/``caption_entities`` when captioned (Bot API, Message.photo)."""
        chat = self._chat(chat_id)
        user = chat.members.get(user_id)
        if user is None:
            raise SandboxError(f"user_id {user_id} is not a member of chat {chat_id}", 404)
        if caption is not None and (not isinstance(caption, str) or len(caption) > 1024):
            raise SandboxError("caption must be a string of at most 1024 characters")
        unique = secrets.token_urlsafe(12)
        content: dict[str, Any] = {"photo": [
            {"file_id": f"AgAC{unique}-{width}", "file_unique_id": f"AQAD{unique[:8]}{i}",
             "file_size": width * width * 3 // 40, "width": width, "height": width * 3 // 4}
            for i, width in enumerate((90, 320, 800))]}
        if caption:
            content["caption"] = caption
            if found := _auto_entities(caption):
                content["caption_entities"] = found
        return self._post(chat, user, content, reply_to_message_id, message_thread_id)

    async def edit_as_human(self, chat_id: int, message_id: int, text: str) -> dict[str, Any]:
        """The author edits a human message: it gets the new ``text`` (entities recomputed)
        and ``edit_date``; member bots that may see it get ``edited_message`` (Bot API)."""
        chat = self._chat(chat_id)
        message = chat.by_id.get(message_id)
        if message is None or "text" not in message:
            raise SandboxError(f"no text message {message_id} in chat {chat_id}", 404)
        if (message.get("from") or {}).get("id") in self._bots:
            raise SandboxError(f"message {message_id} was sent by a bot")
        content = self._text_content(text)
        message.pop("entities", None)
        message.update(content)
        message["edit_date"] = int(self.wall_clock())
        self._broadcast(chat, message, kind="edited_message")
        return copy.deepcopy(message)

    @staticmethod
    def _text_content(text: str) -> dict[str, Any]:
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT_LENGTH:
            raise SandboxError(f"text must be 1-{MAX_TEXT_LENGTH} non-blank characters")
        content: dict[str, Any] = {"text": text}
        if found := _auto_entities(text):
            content["entities"] = found
        return content

    def _actor(self, chat: _Chat, by_user_id: int | None) -> dict[str, Any]:
        """Who does an admin action: ``by_user_id`` (a known human), else the chat's
        creator (:meth:`add_member` status), else :data:`DEFAULT_OWNER`."""
        if by_user_id is not None:
            user = chat.members.get(by_user_id) or self._users.get(by_user_id)
            if user is None:
                raise SandboxError(f"unknown user {by_user_id} (by_user_id)", 404)
            return dict(user)
        creator = next((uid for uid, role in chat.roles.items() if role == "creator"), None)
        if creator is not None and creator in chat.members:
            return dict(chat.members[creator])
        return dict(DEFAULT_OWNER)

    def _member_change(self, chat: _Chat, user_id: int, change: Callable[[], None],
                       actor: dict[str, Any]) -> None:
        """Apply ``change`` and deliver ChatMemberUpdated: ``my_chat_member`` to the bot
        concerned, ``chat_member`` to the other administrator bots (Bot API, Update)."""
        old = self._member(chat, user_id) if user_id in self._users or (
            user_id in self._bots) else None
        change()
        new = self._member(chat, user_id)
        if old is None:
            old = {"status": "left", "user": new["user"]}
        if old == new:
            return
        update = {"chat": dict(chat.chat), "from": dict(actor), "date": int(self.wall_clock()),
                  "old_chat_member": old, "new_chat_member": new}
        if user_id in self._bots:
            self._enqueue(self._bots[user_id], {"my_chat_member": copy.deepcopy(update)})
        for bot_id in sorted(chat.bots):
            if bot_id != user_id and chat.roles.get(bot_id) in ("administrator", "creator"):
                self._enqueue(self._bots[bot_id], {"chat_member": copy.deepcopy(update)})

    def _service(self, chat: _Chat, actor: dict[str, Any], content: dict[str, Any]
                 ) -> dict[str, Any]:
        """Store a service message (Bot API, Message) and deliver it to the member bots."""
        message = self._store(chat, actor, content)
        self._broadcast(chat, message)
        return copy.deepcopy(message)

    def set_privacy(self, token_or_bot_id: str | int, enabled: bool) -> None:
        """BotFather's /setprivacy. Default off. On: getMe answers
        ``can_read_all_group_messages: false`` and, in groups and supergroups where the bot
        is not an administrator, it receives only messages with a ``bot_command`` (``/cmd``
        or ``/cmd@its_username``; BotFather: "messages that start with the '/' symbol"), a
        ``mention`` of "@its_username" (or a ``text_mention`` of it), replies to its own
        messages, and service messages (core.telegram.org/bots/features#privacy-mode)."""
        self._bot(token_or_bot_id).privacy = bool(enabled)

    def revoke_token(self, token_or_bot_id: str | int) -> str:
        """BotFather's /revoke: same bot id, new token ``f"{id}:{random}"`` (returned).

        The old token then answers 401 "Unauthorized" to every method and the webhook is
        removed (delivery stops; pending updates stay for getUpdates or a new webhook).
        """
        bot = self._bot(token_or_bot_id)
        self._stop_delivery(bot)
        bot.webhook = None
        bot.token = f"{bot.user['id']}:{secrets.token_urlsafe(26)}"
        bot.poll_generation += 1
        bot.wakeup.set()  # a long poll with the old token ends
        return bot.token

    def delete_message(self, chat_id: int, message_id: int) -> None:
        """A human admin deletes a message in the app: it leaves the chat (replies to it get
        400 "Bad Request: message to be replied not found") and the chat log marks it
        ``"deleted": true`` (a sandbox-only field)."""
        chat = self._chat(chat_id)
        message = chat.by_id.pop(message_id, None)
        if message is None:
            raise SandboxError(f"message_id {message_id} not found in chat {chat_id}", 404)
        message["deleted"] = True

    def migrate_chat(self, chat_id: int, new_chat_id: int, order: str = "to_first",
                     by_user_id: int | None = None) -> dict[str, Any]:
        """Upgrade a group to a supergroup with a new id (Bot API, Message:
        migrate_to_chat_id / migrate_from_chat_id).

        Sends to the old id then answer 400 "Bad Request: group chat was upgraded to a
        supergroup chat" with ``parameters.migrate_to_chat_id``. Each member bot gets a
        service message in the OLD group with ``migrate_to_chat_id: new`` and one in the
        NEW supergroup (whose message ids start at 1) with ``migrate_from_chat_id: old``,
        in ``order`` "to_first" or "from_first" (Telegram promises no order). Members,
        bots, roles and kicks carry over. Returns the new Chat.
        """
        if order not in ("to_first", "from_first"):
            raise SandboxError(f"order {order!r} must be 'to_first' or 'from_first'")
        old = self._chat(chat_id)
        if old.migrated_to is not None:
            raise SandboxError(f"chat {chat_id} already migrated to {old.migrated_to}")
        actor = self._actor(old, by_user_id)
        new = self.add_chat(new_chat_id, old.chat["title"], "supergroup")
        target = self._chats[new_chat_id]
        target.members = dict(old.members)
        target.bots = set(old.bots)
        target.kicked = set(old.kicked)
        target.roles = dict(old.roles)
        old.migrated_to = new_chat_id
        to_msg = self._store(old, actor, {"migrate_to_chat_id": new_chat_id})
        from_msg = self._store(target, actor, {"migrate_from_chat_id": chat_id})
        pairs = [(old, to_msg), (target, from_msg)]
        for chat, message in pairs if order == "to_first" else pairs[::-1]:
            self._broadcast(chat, message)
        return new

    def load_world(self, world: dict[str, Any]) -> None:
        """Load ``{"bots": [{token, username, first_name}], "chats": [{id, title, type?,
        members?: [user], bots?: [token or id]}]}`` (the CLI ``--world`` file)."""
        for b in world.get("bots", []):
            self.add_bot(b["token"], b["username"], b["first_name"])
        for c in world.get("chats", []):
            self.add_chat(int(c["id"]), c["title"], c.get("type", "supergroup"))
            for user in c.get("members", []):
                self.add_member(int(c["id"]), user)
            for bot in c.get("bots", []):
                self.add_bot_to_chat(int(c["id"]), bot)

    async def post_as_human(self, chat_id: int, user_id: int, text: str,
                            reply_to_message_id: int | None = None, *,
                            message_thread_id: int | None = None,
                            entities: list[dict[str, Any]] | None = None,
                            forward_from: dict[str, Any] | None = None) -> dict[str, Any]:
        """A human member posts ``text``; every member bot that may see it gets an Update.

        ``entities``: MessageEntity list used as given (e.g. a ``text_mention`` with
        ``user``); None computes ``mention``/``bot_command`` entities as the apps do
        (:func:`_auto_entities`, UTF-16 offsets). ``message_thread_id``: a forum topic
        (:meth:`create_topic`); the message then carries ``message_thread_id`` and
        ``is_topic_message: true`` and, replying to nothing else, ``reply_to_message`` =
        the topic's creation message (Bot API, Message). A reply to a topic message lands
        in its topic. ``forward_from``: a User; the message gets ``forward_origin``
        ``{"type": "user", "sender_user", "date"}`` (Bot API, MessageOriginUser).
        Privacy mode (:meth:`set_privacy`) decides which bots get it.

        Returns:
            The stored Message object. Message ids are chat-wide (as in supergroups).

        Raises:
            SandboxError: unknown chat/user (status 404), empty or > 4096-char text, or
                unknown ``reply_to_message_id``/``message_thread_id`` (status 400).
        """
        chat = self._chat(chat_id)
        user = chat.members.get(user_id)
        if user is None:
            raise SandboxError(f"user_id {user_id} is not a member of chat {chat_id}", 404)
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT_LENGTH:
            raise SandboxError(f"text must be 1-{MAX_TEXT_LENGTH} non-blank characters")
        content: dict[str, Any] = {"text": text}
        found = _auto_entities(text) if entities is None else copy.deepcopy(entities)
        if found:
            content["entities"] = found
        extra: dict[str, Any] = {}
        if forward_from is not None:
            extra["forward_origin"] = {"type": "user", "sender_user": dict(forward_from),
                                       "date": int(self.wall_clock())}
        return self._post(chat, user, content, reply_to_message_id, message_thread_id, extra)

    def _post(self, chat: _Chat, sender: dict[str, Any] | None, content: dict[str, Any],
              reply_to_message_id: int | None, thread_id: int | None,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Store a human-side message and deliver it to the member bots (a copy back)."""
        reply = None
        if reply_to_message_id is not None:
            reply = chat.by_id.get(reply_to_message_id)
            if reply is None:
                raise SandboxError(f"reply_to_message_id {reply_to_message_id} not found in "
                                   f"chat {chat.chat['id']}")
        try:
            thread_id, reply = self._resolve_thread(chat, thread_id, reply)
        except ApiError:
            raise SandboxError(f"message_thread_id {thread_id} is not a topic of chat "
                               f"{chat.chat['id']}") from None
        message = self._store(chat, sender, content, reply, thread_id=thread_id, extra=extra)
        self._broadcast(chat, message)
        return copy.deepcopy(message)

    def deliver_raw(self, token_or_bot_id: str | int, payload: dict[str, Any]) -> int:
        """Enqueue an update with any payload, e.g. ``{"callback_query": {...}}``,
        ``{"channel_post": {...}}``, ``{"poll": {...}}`` or ``{"message_reaction": {...}}``
        (Bot API, Update); ``allowed_updates`` still applies. Returns its ``update_id``."""
        bot = self._bot(token_or_bot_id)
        if not isinstance(payload, dict) or len(payload) != 1 or "update_id" in payload:
            raise SandboxError("payload must be one {kind: object} pair, without update_id")
        self._enqueue(bot, copy.deepcopy(payload))
        return int(bot.next_update_id - 1)

    def storm(self, bot_ids: Collection[int], seconds: float,
              retry_after: int | None = None) -> dict[str, dict[str, Any]]:
        """A "429 storm": for ``seconds`` (on :attr:`clock`), every call of a
        :data:`STORM_METHODS` method (sendMessage, sendChatAction) by one of ``bot_ids``,
        over HTTP or as a webhook reply, is refused before the method's own checks, with
        Telegram's flood-control answer: HTTP 429 ``{"ok": false, "error_code": 429,
        "description": "Too Many Requests: retry after N", "parameters": {"retry_after":
        N}}``, N the seconds to wait before repeating the request (Bot API,
        ResponseParameters.retry_after; core.telegram.org/bots/faq, "My bot is hitting
        limits"). Nothing is stored or sent; each refusal counts in ``too_many_requests`` and
        ``storm_refused``, and in ``ignored_retry_after`` when it comes before the N seconds
        of the previous refusal are over. The storm ends by itself; a new storm for a bot
        replaces its current one; :meth:`end_storms` ends all.

        Args:
            bot_ids: ids of registered bots (at least one).
            seconds: duration, 0 < seconds <= :data:`MAX_STORM_SECONDS`.
            retry_after: N, whole seconds 1-3600; None: the storm's remaining time rounded
                up (at least 1).

        Returns:
            :meth:`storms`.

        Raises:
            SandboxError: (400) naming the field: no bot ids, ids that are not integers,
                unknown bot ids (listed), bad ``seconds`` or ``retry_after``. Nothing changes.
        """
        ids = list(bot_ids)
        if not ids or any(not isinstance(b, int) or isinstance(b, bool) for b in ids):
            raise SandboxError("field 'bot_ids' must be a non-empty array of integer bot ids")
        unknown = sorted({b for b in ids if b not in self._bots})
        if unknown:
            raise SandboxError(f"field 'bot_ids': unknown bot ids {unknown}")
        if (not isinstance(seconds, int | float) or isinstance(seconds, bool)
                or not math.isfinite(seconds) or not 0 < seconds <= MAX_STORM_SECONDS):
            raise SandboxError(f"field 'seconds' must be a number > 0 and <= "
                               f"{MAX_STORM_SECONDS:g}, not {seconds!r}")
        if retry_after is not None and (
                not isinstance(retry_after, int) or isinstance(retry_after, bool)
                or not 1 <= retry_after <= MAX_STORM_SECONDS):
            raise SandboxError(f"field 'retry_after' must be an integer 1-"
                               f"{MAX_STORM_SECONDS:g}, not {retry_after!r}")
        end = self.clock() + seconds
        for bot_id in ids:
            self._storms[bot_id] = (end, retry_after)
        return self.storms()

    def end_storms(self) -> None:
        """End every 429 storm now."""
        self._storms.clear()
        self._storm_waits.clear()

    def storms(self) -> dict[str, dict[str, Any]]:
        """Storms in force: ``{"<bot_id>": {"seconds_left": float, "retry_after": int |
        None}}`` (``retry_after`` None: the remaining time is sent)."""
        now = self.clock()
        self._expire_storms(now)
        return {str(bot_id): {"seconds_left": round(end - now, 3), "retry_after": retry}
                for bot_id, (end, retry) in sorted(self._storms.items())}

    def _expire_storms(self, now: float) -> None:
        for bot_id, (end, _) in list(self._storms.items()):
            if now >= end:
                del self._storms[bot_id]
                self._storm_waits.pop(bot_id, None)

    def _storm_check(self, bot: _Bot) -> None:
        """Raise the storm's 429 if ``bot`` is in a storm (see :meth:`storm`)."""
        bot_id = bot.user["id"]
        if bot_id not in self._storms:
            return
        now = self.clock()
        self._expire_storms(now)
        if bot_id not in self._storms:
            return
        end, retry = self._storms[bot_id]
        left = retry if retry is not None else _retry_after(end - now)
        if self._storm_waits.get(bot_id, now) > now:
            self._counters["ignored_retry_after"] += 1
        self._storm_waits[bot_id] = now + left
        self._counters["too_many_requests"] += 1
        self._counters["storm_refused"] += 1
        raise ApiError(429, f"Too Many Requests: retry after {left}", retry_after=left)

    # ------------------------------------------------------------------ inspection
    def messages(self, chat_id: int) -> list[dict[str, Any]]:
        """The chat log, oldest first, humans' and bots' messages (copies)."""
        return copy.deepcopy(self._chat(chat_id).messages)

    def pending_updates(self, token_or_bot_id: str | int) -> list[dict[str, Any]]:
        """Updates not yet delivered/confirmed for a bot (copies)."""
        return [copy.deepcopy(u) for _, u in self._bot(token_or_bot_id).pending]

    @property
    def stats(self) -> dict[str, Any]:
        """Counters: ``sent`` ({bot_id: messages}), ``too_many_requests`` (429s returned),
        ``ignored_retry_after`` (sends during a retry_after penalty), ``webhook_ok``,
        ``webhook_failed``, ``updates_queued``, ``updates_expired``, ``chat_actions``,
        ``webhook_replies`` (Bot API calls made from webhook answers), ``storm_refused``
        (calls refused by a 429 storm, also in ``too_many_requests``)."""
        return {"sent": dict(self._sent), **self._counters}

    @property
    def app(self) -> Starlette:
        """The Starlette ASGI app (Bot API + ``/sandbox/...`` endpoints)."""
        return self._app

    @property
    def base_url(self) -> str:
        """``http://host:port`` once :meth:`start` has run."""
        if self._server is None:
            raise RuntimeError("sandbox not started")
        return self._server.url

    @property
    def bot_api_url(self) -> str:
        """``base_url + "/bot"``: pass as python-telegram-bot's ``Bot(base_url=...)``."""
        return self.base_url + "/bot"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve the app with uvicorn in a background task; returns :attr:`base_url`."""
        if self._server is not None:
            raise RuntimeError("sandbox already started")
        self._closing = False
        self._server = await BackgroundServer.start(self._app, host, port)
        return self._server.url

    async def stop(self) -> None:
        """Stop delivery loops, wake long polls, shut uvicorn down, close the HTTP client."""
        self._closing = True
        for bot in self._bots.values():
            bot.wakeup.set()
        await self._shutdown()
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop()

    # ---------------------------------------------------------------- internals
    def _bot(self, token_or_bot_id: str | int) -> _Bot:
        if isinstance(token_or_bot_id, int):
            bot = self._bots.get(token_or_bot_id)
        else:
            bot = next((b for b in self._bots.values() if b.token == token_or_bot_id), None)
        if bot is None:
            raise SandboxError(f"unknown bot {token_or_bot_id!r}", 404)
        return bot

    def _chat(self, chat_id: int) -> _Chat:
        chat = self._chats.get(chat_id)
        if chat is None:
            raise SandboxError(f"chat {chat_id} not found", 404)
        return chat

    def _store(self, chat: _Chat, sender: dict[str, Any] | None, content: dict[str, Any],
               reply: dict[str, Any] | None = None, *, thread_id: int | None = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Append a Message (Bot API field order) with the next chat-wide message_id."""
        message: dict[str, Any] = {"message_id": chat.next_message_id}
        if thread_id is not None:
            message["message_thread_id"] = thread_id
        if sender is not None:
            message["from"] = dict(sender)
        extra = dict(extra or {})
        if "sender_chat" in extra:
            message["sender_chat"] = extra.pop("sender_chat")
        message.update({"chat": dict(chat.chat), "date": int(self.wall_clock())})
        message.update(extra)
        if thread_id is not None:
            message["is_topic_message"] = True
        if reply is not None:  # Telegram does not nest reply_to_message further
            message["reply_to_message"] = {k: v for k, v in reply.items()
                                           if k not in ("reply_to_message", "deleted")}
        message.update(copy.deepcopy(content))
        chat.next_message_id += 1
        chat.messages.append(message)
        chat.by_id[message["message_id"]] = message
        return message

    def _resolve_thread(self, chat: _Chat, thread_id: int | None,
                        reply: dict[str, Any] | None) -> tuple[int | None,
                                                               dict[str, Any] | None]:
        """Forum topics: a reply inherits its target's topic; a topic message replying to
        nothing replies to the topic's creation message. Outside forums ``thread_id`` is
        ignored. Raises ApiError 400 "message thread not found" for an unknown topic."""
        if not chat.chat.get("is_forum"):
            return None, reply
        if thread_id is None and reply is not None:
            thread_id = reply.get("message_thread_id") if reply.get("is_topic_message") else None
        if thread_id is None:
            return None, reply
        topic = chat.topics.get(thread_id)
        if topic is None:
            raise ApiError(400, "Bad Request: message thread not found")
        return thread_id, reply if reply is not None else topic

    def _broadcast(self, chat: _Chat, message: dict[str, Any], kind: str = "message",
                   skip: Collection[int] = ()) -> None:
        """Deliver ``{kind: message}`` to every member bot that may see it (privacy mode);
        never to the bot that sent it."""
        sender = (message.get("from") or {}).get("id")
        for bot_id in sorted(chat.bots):
            bot = self._bots[bot_id]
            if bot_id in skip or bot_id == sender or not self._sees(bot, chat, message):
                continue
            self._enqueue(bot, {kind: copy.deepcopy(message)})

    def _sees(self, bot: _Bot, chat: _Chat, message: dict[str, Any]) -> bool:
        """Privacy mode (core.telegram.org/bots/features#privacy-mode), see set_privacy."""
        bot_id, username = bot.user["id"], str(bot.user.get("username", "")).lower()
        if not bot.privacy or chat.chat["type"] not in GROUP_TYPES:
            return True
        if chat.roles.get(bot_id) in ("administrator", "creator"):
            return True
        if SERVICE_FIELDS & message.keys():
            return True
        reply = message.get("reply_to_message") or {}
        if (reply.get("from") or {}).get("id") == bot_id:
            return True
        text = message.get("text") or message.get("caption") or ""
        for entity in message.get("entities") or message.get("caption_entities") or []:
            segment = _utf16_slice(text, int(entity["offset"]), int(entity["length"]))
            kind = entity.get("type")
            if kind == "mention" and segment[1:].lower() == username:
                return True
            if kind == "text_mention" and (entity.get("user") or {}).get("id") == bot_id:
                return True
            if kind == "bot_command" and entity["offset"] == 0:
                target = segment.partition("@")[2].lower()
                if not target or target == username:
                    return True
        return False

    def _member(self, chat: _Chat, user_id: int) -> dict[str, Any]:
        """ChatMember (Bot API): status creator/administrator/member/restricted/left/kicked."""
        user = self._bots[user_id].user if user_id in self._bots else self._users[user_id]
        if user_id in chat.kicked:
            status = "kicked"
        elif user_id in chat.bots or user_id in chat.members:
            status = chat.roles.get(user_id, "member")
        else:
            status = "left"
        member: dict[str, Any] = {"status": status, "user": dict(user)}
        if status == "administrator":
            member.update(ADMIN_RIGHTS)
        elif status == "restricted":
            member.update(RESTRICTED_RIGHTS)
        elif status == "kicked":
            member["until_date"] = 0
        elif status == "creator":
            member["is_anonymous"] = False
        return member

    def _enqueue(self, bot: _Bot, payload: dict[str, Any]) -> None:
        update = {"update_id": bot.next_update_id, **payload}
        bot.next_update_id += 1
        bot.pending.append((self.clock(), update))
        self._counters["updates_queued"] += 1
        bot.wakeup.set()
        self._ensure_delivery(bot)

    def _expire_and_filter(self, bot: _Bot, allowed: list[str]) -> None:
        """Drop updates older than 24 h and updates of kinds not in ``allowed``; an empty
        ``allowed`` (Telegram's default) means every kind but :data:`OPT_IN_UPDATES`."""
        now = self.clock()
        kept: deque[tuple[float, dict[str, Any]]] = deque()
        for queued_at, update in bot.pending:
            kind = next((k for k in update if k != "update_id"), "")
            if now - queued_at > UPDATE_TTL:
                self._counters["updates_expired"] += 1
            elif (kind in allowed) if allowed else (kind not in OPT_IN_UPDATES):
                kept.append((queued_at, update))
        bot.pending = kept

    # ------------------------------------------------------------------ limits
    def _window_wait(self, key: tuple[Any, ...], limit: int, window: float, now: float) -> float:
        events = self._windows.setdefault(key, deque())
        while events and events[0] <= now - window:
            events.popleft()
        return events[-limit] + window - now if len(events) >= limit else 0.0

    def _bucket_wait(self, key: tuple[Any, ...], now: float) -> float:
        lim = self.limits
        tokens, last = self._buckets.get(key, (lim.chat_burst, now))
        tokens = min(lim.chat_burst, tokens + max(0.0, now - last) * lim.chat_rate)
        self._buckets[key] = (tokens, now)
        return 0.0 if tokens >= 1 else (1 - tokens) / lim.chat_rate

    def _throttle(self, scopes: dict[tuple[Any, ...], float], now: float) -> None:
        """Raise 429 if a penalty is running or a wait in ``scopes`` (key -> wait) is > 0.

        A 429 starts a penalty for the scope that hit; requests during the penalty get 429
        again and count as ``ignored_retry_after``.
        """
        for key in scopes:
            until = self._penalties.get(key, 0.0)
            if until > now:
                self._counters["too_many_requests"] += 1
                self._counters["ignored_retry_after"] += 1
                left = _retry_after(until - now)
                raise ApiError(429, f"Too Many Requests: retry after {left}", retry_after=left)
        key, wait = max(scopes.items(), key=lambda kv: kv[1])
        if wait > 0:
            seconds = _retry_after(wait)
            self._penalties[key] = now + seconds
            self._counters["too_many_requests"] += 1
            raise ApiError(429, f"Too Many Requests: retry after {seconds}", retry_after=seconds)

    def _chat_for_bot(self, bot: _Bot, params: dict[str, Any]) -> _Chat:
        chat = self._known_chat(params)
        kind = chat.chat["type"]
        if bot.user["id"] in chat.kicked:
            raise ApiError(403, f"Forbidden: bot was kicked from the {kind} chat")
        if bot.user["id"] not in chat.bots:
            raise ApiError(403, f"Forbidden: bot is not a member of the {kind} chat")
        return chat

    def _known_chat(self, params: dict[str, Any]) -> _Chat:
        chat_id = params.get("chat_id")
        if chat_id is None or chat_id == "":
            raise ApiError(400, "Bad Request: chat_id is empty")
        try:
            chat = self._chats.get(int(chat_id))
        except (TypeError, ValueError):
            chat = None
        if chat is None:
            raise ApiError(400, "Bad Request: chat not found")
        if chat.migrated_to is not None:
            raise ApiError(400, "Bad Request: group chat was upgraded to a supergroup chat",
                           migrate_to_chat_id=chat.migrated_to)
        return chat

    # ------------------------------------------------------------------ methods
    async def _true(self, bot: _Bot, params: dict[str, Any]) -> bool:
        return True

    async def _get_me(self, bot: _Bot, params: dict[str, Any]) -> dict[str, Any]:
        return {**bot.user, "can_join_groups": True,
                "can_read_all_group_messages": not bot.privacy,
                "supports_inline_queries": False}

    async def _get_chat(self, bot: _Bot, params: dict[str, Any]) -> dict[str, Any]:
        """getChat: ChatFullInfo (id, type, title, is_forum when set, and the fields
        python-telegram-bot requires). Same chat errors as sendMessage."""
        chat = self._chat_for_bot(bot, params)
        gifts = dict.fromkeys(("unlimited_gifts", "limited_gifts", "unique_gifts",
                               "premium_subscription", "gifts_from_channels"), False)
        return {**chat.chat, "accent_color_id": 0, "max_reaction_count": 11,
                "accepted_gift_types": gifts}

    async def _get_chat_member(self, bot: _Bot, params: dict[str, Any]) -> dict[str, Any]:
        """getChatMember: a ChatMember (see :meth:`_member`).

        A bot asking about itself always gets its own status ("kicked" with until_date 0
        after :meth:`kick_bot`, "left" if never added), as a bot learns it was removed.
        Asking about others needs membership: the same errors as sendMessage (400 "chat not
        found" for an unknown chat or the migrate_to_chat_id answer, 403 "bot was kicked
        from"/"bot is not a member of" the chat). Unknown user: 400 "Bad Request: user not
        found"; bad user_id: 400 "Bad Request: invalid user_id specified".
        """
        user_id = _int(params, "user_id")
        if user_id is None:
            raise ApiError(400, "Bad Request: invalid user_id specified")
        chat = self._known_chat(params)
        if user_id != bot.user["id"]:
            self._chat_for_bot(bot, params)
            if user_id not in self._bots and user_id not in self._users:
                raise ApiError(400, "Bad Request: user not found")
        return self._member(chat, user_id)

    async def _send_message(self, bot: _Bot, params: dict[str, Any]) -> dict[str, Any]:
        """sendMessage: chat checks, rights, parse_mode, text 1-4096, reply_parameters,
        message_thread_id (forums), then rate limits."""
        chat = self._chat_for_bot(bot, params)
        if chat.roles.get(bot.user["id"]) == "restricted":
            raise ApiError(400, "Bad Request: not enough rights to send text messages to the "
                                "chat")
        text = _check_text(_text_of(params))
        reply_params = _json(params, "reply_parameters")
        if reply_params is not None and not isinstance(reply_params, dict):
            raise ApiError(400, "Bad Request: can't parse reply parameters JSON object")
        reply_params = reply_params or {}
        reply_id = _int(reply_params, "message_id", _int(params, "reply_to_message_id"))
        allow_missing = _bool(reply_params, "allow_sending_without_reply") or _bool(
            params, "allow_sending_without_reply")
        reply = chat.by_id.get(reply_id) if reply_id else None
        if reply_id and reply is None and not allow_missing:
            raise ApiError(400, "Bad Request: message to be replied not found")
        thread_id, reply = self._resolve_thread(chat, _int(params, "message_thread_id"), reply)
        now, bot_id, chat_id = self.clock(), bot.user["id"], chat.chat["id"]
        lim, is_group = self.limits, chat.chat["type"] in GROUP_TYPES
        chat_key: tuple[Any, ...] = ("chat", bot_id, chat_id)
        chat_wait = self._bucket_wait(chat_key, now)
        if is_group:
            chat_wait = max(chat_wait, self._window_wait(
                ("group", bot_id, chat_id), lim.group_per_minute, lim.group_window, now))
        global_wait = self._window_wait(("global", bot_id), lim.global_per_second, 1.0, now)
        self._throttle({chat_key: chat_wait, ("bot", bot_id): global_wait}, now)
        tokens, last = self._buckets[chat_key]
        self._buckets[chat_key] = (tokens - 1, last)
        if is_group:
            self._windows[("group", bot_id, chat_id)].append(now)
        self._windows[("global", bot_id)].append(now)
        self._sent[bot_id] = self._sent.get(bot_id, 0) + 1
        # Bots' messages are not delivered to other bots (Telegram, TELEGRAM.md).
        return copy.deepcopy(self._store(chat, bot.user, {"text": text}, reply,
                                         thread_id=thread_id))

    async def _send_chat_action(self, bot: _Bot, params: dict[str, Any]) -> bool:
        """sendChatAction: 20 per 5 s and 40 per 30 s per chat."""
        chat = self._chat_for_bot(bot, params)
        if not params.get("action"):
            raise ApiError(400, "Bad Request: action is empty")
        if params["action"] not in CHAT_ACTIONS:
            raise ApiError(400, "Bad Request: wrong parameter action in request")
        now, key = self.clock(), ("action", bot.user["id"], chat.chat["id"])
        waits = [self._window_wait((*key, n, w), n, w, now) for n, w in self.limits.chat_actions]
        self._throttle({key: max(waits, default=0.0)}, now)
        for n, w in self.limits.chat_actions:
            self._windows[(*key, n, w)].append(now)
        self._counters["chat_actions"] += 1
        return True

    def _check_webhook_url(self, url: str) -> None:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if not host or parts.scheme not in ("http", "https"):
            raise ApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for "
                                "webhook")
        if host in self.http_webhook_hosts:
            return
        if parts.scheme != "https":
            raise ApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for "
                                "webhook")
        if (parts.port or 443) not in WEBHOOK_PORTS:
            raise ApiError(400, "Bad Request: bad webhook: Webhook can be set up only on "
                                "ports 80, 88, 443 or 8443")

    async def _set_webhook(self, bot: _Bot, params: dict[str, Any]) -> bool:
        """setWebhook: url, secret_token, max_connections, allowed_updates, drop_pending."""
        now = self.clock()
        if bot.last_set_webhook is not None:
            wait = bot.last_set_webhook + self.limits.set_webhook_interval - now
            if wait > 0:
                self._counters["too_many_requests"] += 1
                raise ApiError(429, "Too Many Requests: retry after 1", retry_after=1)
        url = str(params.get("url") or "")
        if not url:  # Telegram: an empty url removes the webhook
            bot.last_set_webhook = now
            return await self._delete_webhook(bot, params)
        self._check_webhook_url(url)
        secret = params.get("secret_token") or None
        if secret is not None and not SECRET_RE.match(str(secret)):
            raise ApiError(400, "Bad Request: secret token contains unallowed characters")
        max_conn = _int(params, "max_connections", 40) or 40
        if not 1 <= max_conn <= 100:
            raise ApiError(400, "Bad Request: max_connections must be between 1 and 100")
        allowed = _json(params, "allowed_updates")
        if allowed is not None and not isinstance(allowed, list):
            raise ApiError(400, "Bad Request: can't parse allowed updates JSON object")
        if allowed is not None:  # Bot API: "If not specified, the previous setting is used"
            bot.allowed_updates = [str(a) for a in allowed]
        bot.last_set_webhook = now
        if _bool(params, "drop_pending_updates"):
            bot.pending.clear()
        self._stop_delivery(bot)
        bot.webhook = _Webhook(url, secret, max_conn, list(bot.allowed_updates))
        bot.poll_generation += 1
        bot.wakeup.set()  # terminates a running long poll
        bot.last_error_date = bot.last_error_message = None
        self._ensure_delivery(bot)
        return True

    async def _delete_webhook(self, bot: _Bot, params: dict[str, Any]) -> bool:
        self._stop_delivery(bot)
        bot.webhook = None
        if _bool(params, "drop_pending_updates"):
            bot.pending.clear()
        return True

    async def _get_webhook_info(self, bot: _Bot, params: dict[str, Any]) -> dict[str, Any]:
        wh = bot.webhook
        self._expire_and_filter(bot, wh.allowed_updates if wh else bot.allowed_updates)
        info: dict[str, Any] = {"url": wh.url if wh else "", "has_custom_certificate": False,
                                "pending_update_count": len(bot.pending)}
        if wh is not None:
            info["max_connections"] = wh.max_connections
            if wh.allowed_updates:
                info["allowed_updates"] = list(wh.allowed_updates)
            if bot.last_error_date is not None:
                info["last_error_date"] = bot.last_error_date
                info["last_error_message"] = bot.last_error_message
        return info

    async def _get_updates(self, bot: _Bot, params: dict[str, Any]) -> list[dict[str, Any]]:
        """getUpdates: 409 while a webhook is set or when a newer poll starts."""
        if bot.webhook is not None:
            raise ApiError(409, "Conflict: can't use getUpdates method while webhook is "
                                "active; use deleteWebhook to delete the webhook first")
        offset = _int(params, "offset", 0) or 0
        limit = min(100, max(1, _int(params, "limit", 100) or 100))
        timeout = min(self.max_poll_timeout, max(0, _int(params, "timeout", 0) or 0))
        allowed = _json(params, "allowed_updates")
        if isinstance(allowed, list):
            bot.allowed_updates = [str(a) for a in allowed]
        bot.poll_generation += 1
        generation, token = bot.poll_generation, bot.token
        bot.wakeup.set()  # wake an older poller so it can be terminated
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if offset > 0:
                while bot.pending and bot.pending[0][1]["update_id"] < offset:
                    bot.pending.popleft()
            elif offset < 0:
                while len(bot.pending) > -offset:
                    bot.pending.popleft()
            self._expire_and_filter(bot, bot.allowed_updates)
            remaining = deadline - loop.time()
            if bot.pending or remaining <= 0 or self._closing:
                return [copy.deepcopy(u) for _, u in list(bot.pending)[:limit]]
            bot.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(bot.wakeup.wait(), remaining)
            if bot.token != token:  # revoke_token during the long poll
                raise ApiError(401, "Unauthorized")
            if bot.poll_generation != generation:
                raise ApiError(409, "Conflict: terminated by other getUpdates request; make "
                                    "sure that only one bot instance is running")

    # ---------------------------------------------------------------- webhooks
    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.webhook_timeout, trust_env=False)
        return self._client

    def _ensure_delivery(self, bot: _Bot) -> None:
        if bot.webhook is None or self._closing:
            return
        if bot.delivery is None or bot.delivery.done():
            bot.delivery = asyncio.get_running_loop().create_task(
                self._deliver(bot, bot.webhook))

    def _stop_delivery(self, bot: _Bot) -> None:
        if bot.delivery is not None:
            bot.delivery.cancel()
            bot.delivery = None

    async def _deliver(self, bot: _Bot, webhook: _Webhook) -> None:
        """POST pending updates in order; retry failures with doubling delay."""
        delay = self.retry_base_delay
        headers = {SECRET_HEADER: webhook.secret} if webhook.secret else {}
        while bot.webhook is webhook and not self._closing:
            self._expire_and_filter(bot, webhook.allowed_updates)
            if not bot.pending:
                bot.wakeup.clear()
                await bot.wakeup.wait()
                continue
            update = bot.pending[0][1]
            error: str | None = None
            try:
                response = await self._http().post(webhook.url, json=update, headers=headers)
                if not 200 <= response.status_code < 300:
                    error = (f"Wrong response from the webhook: {response.status_code} "
                             f"{response.reason_phrase}")
            except httpx.ConnectError:
                error = "Connection refused"
            except httpx.TimeoutException:
                error = "Read timeout expired"
            except httpx.HTTPError as exc:
                error = f"Connection failed: {type(exc).__name__}"
            if error is None:
                self._counters["webhook_ok"] += 1
                if bot.pending and bot.pending[0][1] is update:
                    bot.pending.popleft()
                delay = self.retry_base_delay
                await self._webhook_reply(bot, response)
                continue
            self._counters["webhook_failed"] += 1
            bot.last_error_date, bot.last_error_message = int(self.wall_clock()), error
            log.info("webhook delivery to %s failed: %s; retry in %.2fs", webhook.url, error,
                     delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max_delay)

    async def _webhook_reply(self, bot: _Bot, response: httpx.Response) -> None:
        """A webhook's answer may carry one Bot API call (``{"method": ..., params}``), which
        Telegram then makes for the bot; its result and errors are not reported back (Bot
        API, "Making requests when getting updates"). Counted in ``webhook_replies``."""
        try:
            body = response.json()
        except ValueError:
            return
        if not isinstance(body, dict) or not isinstance(body.get("method"), str):
            return
        handler = self._methods.get(body["method"].lower())
        if handler is None:
            return
        params = {k: v for k, v in body.items() if k != "method"}
        try:
            if body["method"].lower() in STORM_METHODS:
                self._storm_check(bot)
            await handler(bot, params)
            self._counters["webhook_replies"] += 1
        except ApiError as exc:
            log.info("webhook reply %s of bot %s refused: %s", body["method"],
                     bot.user["id"], exc.description)

    async def _shutdown(self) -> None:
        tasks = [b.delivery for b in self._bots.values() if b.delivery is not None]
        for bot in self._bots.values():
            self._stop_delivery(bot)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        self._closing = True
        for bot in self._bots.values():
            bot.wakeup.set()
        await self._shutdown()

    # ------------------------------------------------------------------- HTTP
    async def _handle_bot_api(self, request: Request) -> Response:
        token, method = request.path_params["token"], request.path_params["method"].lower()
        try:
            if not TOKEN_RE.match(token):
                raise ApiError(404, "Not Found")  # Telegram: malformed token -> 404
            bot = next((b for b in self._bots.values() if b.token == token), None)
            if bot is None:
                raise ApiError(401, "Unauthorized")
            handler = self._methods.get(method)
            if handler is None:
                raise ApiError(404, "Not Found")
            try:
                params = await _read_params(request)
            except ClientDisconnect:
                # The client hung up before its request arrived whole (a send cancelled by a
                # worker's stop): like Telegram, nothing was done; nobody is left to answer.
                return Response(status_code=499)
            if method in STORM_METHODS:
                self._storm_check(bot)
            result = await handler(bot, params)
        except ApiError as exc:
            return exc.response()
        return JSONResponse({"ok": True, "result": result})

    async def _handle_human(self, request: Request) -> JSONResponse:
        """``GET|POST /sandbox/chats/{chat_id}/messages``: chat log / post as a human."""
        try:
            try:
                chat_id = int(request.path_params["chat_id"])
            except ValueError:
                raise SandboxError("chat_id in the path must be an integer") from None
            chat = self._chat(chat_id)
            if request.method == "GET":
                return JSONResponse({"ok": True, "result": self.messages(chat_id)})
            data = await self._json_object(request)
            user_id, text = data.get("user_id"), data.get("text")
            reply = _field(data, "reply_to_message_id", int, required=False)
            if not isinstance(user_id, int) or isinstance(user_id, bool):
                raise SandboxError("field 'user_id' is required and must be an integer")
            if not isinstance(text, str):
                raise SandboxError("field 'text' is required and must be a string")
            thread = _field(data, "message_thread_id", int, required=False)
            entities = _field(data, "entities", list, required=False)
            forward_from = _field(data, "forward_from", dict, required=False)
            if user_id not in chat.members:
                if not data.get("first_name"):
                    raise SandboxError(f"user_id {user_id} is not a member of chat {chat_id}; "
                                       "pass 'first_name' (and 'username') to add them", 404)
                self.add_member(chat_id, {"id": user_id, "first_name": data["first_name"],
                                          "username": data.get("username")})
            message = await self.post_as_human(
                chat_id, user_id, text, reply, message_thread_id=thread, entities=entities,
                forward_from=forward_from)
        except SandboxError as exc:
            return exc.json()
        return JSONResponse({"ok": True, "result": message})

    def new_bot(self, username: str, first_name: str) -> dict[str, Any]:
        """Register a bot with a fresh id and random token, as BotFather's /newbot does.

        Returns:
            ``{"token": str, "user": User}``.

        Raises:
            SandboxError: ``username`` is not 5-32 characters of ``[A-Za-z0-9_]`` ending in
            "bot" (Telegram's rule), is taken, or ``first_name`` is empty.
        """
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{3,30}[Bb][Oo][Tt]", username or "") or (
                len(username) > 32):
            raise SandboxError(f"username {username!r} must be 5-32 letters, digits or "
                               "underscores, start with a letter and end in 'bot'")
        if any(b.user.get("username", "").lower() == username.lower()
               for b in self._bots.values()):
            raise SandboxError(f"username {username!r} is taken")
        if not first_name or not first_name.strip():
            raise SandboxError("first_name must not be empty")
        bot_id = max([NEW_BOT_BASE_ID, *self._bots]) + 1
        token = f"{bot_id}:{secrets.token_urlsafe(26)}"
        return {"token": token, "user": self.add_bot(token, username, first_name.strip())}

    async def _json_object(self, request: Request) -> dict[str, Any]:
        try:
            data = json.loads(await request.body())
        except ValueError:
            raise SandboxError("body must be a JSON object") from None
        if not isinstance(data, dict):
            raise SandboxError("body must be a JSON object")
        return data

    async def _handle_new_bot(self, request: Request) -> JSONResponse:
        """``POST /sandbox/bots``: register a bot (BotFather's /newbot)."""
        try:
            data = await self._json_object(request)
            username, first_name = data.get("username"), data.get("first_name")
            if not isinstance(username, str) or not isinstance(first_name, str):
                raise SandboxError("fields 'username' and 'first_name' are required strings")
            result = self.new_bot(username, first_name)
        except SandboxError as exc:
            return exc.json()
        return JSONResponse({"ok": True, "result": result})

    async def _handle_add_bot(self, request: Request) -> JSONResponse:
        """``POST /sandbox/chats/{chat_id}/bots``: add a registered bot to the chat."""
        try:
            try:
                chat_id = int(request.path_params["chat_id"])
            except ValueError:
                raise SandboxError("chat_id in the path must be an integer") from None
            data = await self._json_object(request)
            bot_id = data.get("bot_id")
            if not isinstance(bot_id, int) or isinstance(bot_id, bool):
                raise SandboxError("field 'bot_id' is required and must be an integer")
            self.add_bot_to_chat(chat_id, bot_id, notify=True,
                                 by_user_id=_field(data, "by_user_id", int, required=False))
        except SandboxError as exc:
            return exc.json()
        return JSONResponse({"ok": True, "result": True})

    async def _handle_chat_action(self, request: Request) -> JSONResponse:
        """``POST /sandbox/chats/{chat_id}/{action}``: the live events (class docstring)."""
        try:
            chat_id = self._path_int(request, "chat_id")
            action = request.path_params["action"]
            data = await self._json_object(request)
            by = _field(data, "by_user_id", int, required=False)
            result: Any = True
            if action in ("kick", "promote", "restrict"):
                bot_id = _field(data, "bot_id", int)
                {"kick": self.kick_bot, "promote": self.promote_bot,
                 "restrict": self.restrict_bot}[action](chat_id, bot_id, by)
            elif action == "migrate":
                result = self.migrate_chat(chat_id, _field(data, "new_chat_id", int),
                                           _field(data, "order", str, False) or "to_first", by)
            elif action == "topics":
                color = _field(data, "icon_color", int, required=False)
                thread = self.create_topic(chat_id, _field(data, "name", str), by,
                                           TOPIC_COLORS[0] if color is None else color)
                result = {"message_thread_id": thread}
            elif action == "anonymous":
                result = await self.post_as_anonymous_admin(
                    chat_id, _field(data, "text", str),
                    _field(data, "author_signature", str, required=False),
                    message_thread_id=_field(data, "message_thread_id", int, required=False))
            elif action == "channel_posts":
                auto = _field(data, "automatic_forward", bool, required=False)
                result = await self.post_as_channel(
                    chat_id, _field(data, "channel", dict), _field(data, "text", str),
                    automatic_forward=auto is not False)
            elif action == "members":
                result = self.human_joins(chat_id, data)
            elif action == "title":
                result = self.set_title(chat_id, _field(data, "title", str), by)
            else:
                raise SandboxError(f"unknown action {action!r}", 404)
        except SandboxError as exc:
            return exc.json()
        return JSONResponse({"ok": True, "result": result})

    async def _handle_message_action(self, request: Request) -> JSONResponse:
        """``POST /sandbox/chats/{chat_id}/messages/{message_id}/delete|edit``."""
        try:
            chat_id = self._path_int(request, "chat_id")
            message_id = self._path_int(request, "message_id")
            action = request.path_params["action"]
            result: Any = True
            if action == "delete":
                self.delete_message(chat_id, message_id)
            elif action == "edit":
                data = await self._json_object(request)
                result = await self.edit_as_human(chat_id, message_id, _field(data, "text", str))
            else:
                raise SandboxError(f"unknown action {action!r}", 404)
        except SandboxError as exc:
            return exc.json()
        return JSONResponse({"ok": True, "result": result})

    async def _handle_leave(self, request: Request) -> JSONResponse:
        """``POST /sandbox/chats/{chat_id}/members/{user_id}/leave``: :meth:`human_leaves`."""
        try:
            result = self.human_leaves(self._path_int(request, "chat_id"),
                                       self._path_int(request, "user_id"))
        except SandboxError as exc:
            return exc.json()
        return JSONResponse({"ok": True, "result": result})

    async def _handle_raw_update(self, request: Request) -> JSONResponse:
        """``POST /sandbox/bots/{bot_id}/updates`` with the payload: :meth:`deliver_raw`."""
        try:
            bot_id = self._path_int(request, "bot_id")
            update_id = self.deliver_raw(bot_id, await self._json_object(request))
        except SandboxError as exc:
            return exc.json()
        return JSONResponse({"ok": True, "result": {"update_id": update_id}})

    @staticmethod
    def _path_int(request: Request, name: str) -> int:
        try:
            return int(request.path_params[name])
        except ValueError:
            raise SandboxError(f"{name} in the path must be an integer") from None

    async def _handle_revoke(self, request: Request) -> JSONResponse:
        """``POST /sandbox/bots/{bot_id}/revoke``: :meth:`revoke_token`."""
        try:
            token = self.revoke_token(self._path_int(request, "bot_id"))
        except SandboxError as exc:
            return exc.json()
        return JSONResponse({"ok": True, "result": {"token": token}})

    async def _handle_privacy(self, request: Request) -> JSONResponse:
        """``POST /sandbox/bots/{bot_id}/privacy`` ``{"enabled": bool}``: :meth:`set_privacy`."""
        try:
            bot_id = self._path_int(request, "bot_id")
            enabled = (await self._json_object(request)).get("enabled")
            if not isinstance(enabled, bool):
                raise SandboxError("field 'enabled' is required and must be a boolean")
            self.set_privacy(bot_id, enabled)
        except SandboxError as exc:
            return exc.json()
        return JSONResponse({"ok": True, "result": True})

    async def _handle_storm(self, request: Request) -> JSONResponse:
        """``POST|GET|DELETE /sandbox/storm``: :meth:`storm`, :meth:`storms`,
        :meth:`end_storms` (class docstring)."""
        try:
            if request.method == "DELETE":
                self.end_storms()
            elif request.method == "POST":
                data = await self._json_object(request)
                unknown = sorted(set(data) - {"bot_ids", "seconds", "retry_after"})
                if unknown:
                    raise SandboxError(f"field '{unknown[0]}' is unknown (the body takes "
                                       "bot_ids, seconds, retry_after)")
                bot_ids = _field(data, "bot_ids", list)
                seconds = data.get("seconds")
                if seconds is None:
                    raise SandboxError("field 'seconds' is required and must be a number")
                return JSONResponse({"ok": True, "result": self.storm(
                    bot_ids, seconds, data.get("retry_after"))})
        except SandboxError as exc:
            return exc.json()
        return JSONResponse({"ok": True, "result": self.storms()})

    async def _handle_stats(self, request: Request) -> JSONResponse:
        stats = self.stats
        stats["sent"] = {str(k): v for k, v in stats["sent"].items()}
        return JSONResponse({"ok": True, "result": stats})


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m sandbox.telegram_api --port 8081 --world world.json [--no-limits]``."""
    parser = argparse.ArgumentParser(description="Telegram Bot API sandbox")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--world", help="JSON file: {bots: [...], chats: [...]}")
    parser.add_argument("--http-webhook-host", action="append", default=[],
                        help="extra host allowed as plain-http webhook target (repeatable)")
    parser.add_argument("--no-limits", action="store_true",
                        help="lift the rate limits (for client-side micro-benchmarks only)")
    args = parser.parse_args(argv)
    sandbox = TelegramSandbox(
        limits=UNLIMITED if args.no_limits else None,
        http_webhook_hosts=["127.0.0.1", "localhost", "::1", *args.http_webhook_host])
    if args.world:
        with open(args.world, encoding="utf-8") as fh:
            sandbox.load_world(json.load(fh))
    # No access log: request paths contain bot tokens.
    uvicorn.run(sandbox.app, host=args.host, port=args.port, log_level="info", access_log=False,
                proxy_headers=False)


if __name__ == "__main__":
    main()
