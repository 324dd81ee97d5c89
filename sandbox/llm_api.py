"""In-process stand-in for LLM providers: OpenAI, Groq and Gemini wire formats on 127.0.0.1.

One server plays several providers: the first path segment is the *provider name*, the rest
is the provider's own path, so each SDK is pointed at ``url_for(name)``::

    sandbox = LLMSandbox()
    await sandbox.start()
    openai.AsyncOpenAI(base_url=sandbox.url_for("openai") + "/v1", api_key="k", max_retries=0)
    groq.AsyncGroq(base_url=sandbox.url_for("groq"), api_key="k", max_retries=0)
    genai.Client(api_key="k", http_options=types.HttpOptions(base_url=sandbox.url_for("gemini")))

Routes (``POST``): ``/{name}/v1/chat/completions`` (OpenAI and compatibles),
``/{name}/openai/v1/chat/completions`` (Groq), ``/{name}/{v1|v1beta|v1alpha}/models/{model}:
generateContent`` (Gemini; google-genai 3.x calls ``v1`` by default, older SDKs ``v1beta``).

Faults are scripted per provider name (:meth:`LLMSandbox.script`, :meth:`LLMSandbox.set_default`)
with :class:`Fault`, or set over HTTP while the server runs as a separate process
(``python -m sandbox.llm_api``): ``POST|GET /sandbox/faults`` and ``GET /sandbox/stats``,
described on :class:`LLMSandbox`; the provider name ``sandbox`` is reserved for them.

Usage is estimated at ``ceil(chars / 4)`` tokens; prompt caching is simulated: a request
whose first message (the persona prefix; for Gemini the first ``systemInstruction`` part) is
byte-identical to one this provider name saw before reports that message's estimate as
cached tokens. Replies are persona-aware templates (name, role and
language from the first system message, reply target or topic from the last user message, as
``behavior_engine.prompt_builder`` words them), seeded by the request content. This module
imports nothing from the project.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import random
import re
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from sandbox.telegram_api import BackgroundServer

#: Characters per token of the usage estimate (the usual rule of thumb for English text).
CHARS_PER_TOKEN = 4
#: First messages remembered per provider name for the prompt-cache simulation.
CACHE_ENTRIES = 256
_TRANSPORT_KEY = "sandbox.transport"

FaultKind = Literal["ok", "status", "hang", "reset", "malformed", "empty_choices",
                    "content_filter"]
Dialect = Literal["openai", "gemini"]
#: Every :data:`FaultKind`, as ``POST /sandbox/faults`` accepts them in ``fault.kind``.
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
#: Longest ``seconds`` (and ``retry_after``) ``POST /sandbox/faults`` accepts: one hour.
MAX_FAULT_SECONDS = 3600.0
#: Largest ``latency_ms`` ``POST /sandbox/faults`` accepts: ten minutes.
MAX_LATENCY_MS = 600_000.0
#: First path segment of the control endpoints; no provider may be called so.
CONTROL_PREFIX = "sandbox"
PROVIDER_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def estimate_tokens(text: str) -> int:
    """Token estimate of ``text``: ``ceil(len(text) / CHARS_PER_TOKEN)``."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class Fault:
    """What the sandbox does with one request instead of (or before) a normal answer.

    Build with the constructors: ``Fault.latency(300)``, ``Fault.status(429, retry_after=2)``,
    ``Fault.hang()``, ``Fault.reset()``, ``Fault.malformed()``, ``Fault.empty_choices()``,
    ``Fault.content_filter()``; add a delay to any with ``.after(ms)``.

    Attributes:
        kind: ``ok`` (a normal answer) or the name of the constructor that made it.
        code: HTTP status for ``status``.
        retry_after: seconds sent as ``Retry-After`` (rounded up: the header takes whole
            seconds) and as Gemini's ``RetryInfo.retryDelay``, if any.
        latency_ms: delay before the fault (or answer) happens.
    """

    kind: FaultKind = "ok"
    code: int = 200
    retry_after: float | None = None
    latency_ms: float = 0.0

    @classmethod
    def latency(cls, ms: float) -> Fault:
        """Answer normally after ``ms`` milliseconds."""
        return cls(latency_ms=ms)

    @classmethod
    def status(cls, code: int, *, retry_after: float | None = None) -> Fault:
        """Answer HTTP ``code`` (429, 500, 503, 401, 404...) with the provider's error body."""
        if not 400 <= code <= 599:
            raise ValueError(f"status fault needs a 4xx or 5xx code, not {code}")
        return cls(kind="status", code=code, retry_after=retry_after)

    @classmethod
    def hang(cls) -> Fault:
        """Never answer; the connection is dropped when the sandbox stops."""
        return cls(kind="hang")

    @classmethod
    def reset(cls) -> Fault:
        """Drop the connection (TCP reset) without an answer."""
        return cls(kind="reset")

    @classmethod
    def malformed(cls) -> Fault:
        """Answer 200 with a body that is not valid JSON."""
        return cls(kind="malformed")

    @classmethod
    def empty_choices(cls) -> Fault:
        """Answer 200 with ``choices: []`` (Gemini: ``candidates: []``)."""
        return cls(kind="empty_choices")

    @classmethod
    def content_filter(cls) -> Fault:
        """Answer 200 with finish ``content_filter`` (Gemini: ``SAFETY``) and no text."""
        return cls(kind="content_filter")

    def after(self, ms: float) -> Fault:
        """This fault, happening after ``ms`` milliseconds."""
        return replace(self, latency_ms=ms)

    def to_json(self) -> dict[str, Any]:
        """The JSON form :func:`fault_from_json` reads: ``{"kind", "latency_ms"}`` plus
        ``"code"`` and ``"retry_after"`` (seconds or null) for kind ``status``."""
        data: dict[str, Any] = {"kind": self.kind, "latency_ms": self.latency_ms}
        if self.kind == "status":
            data.update(code=self.code, retry_after=self.retry_after)
        return data


def _number(data: dict[str, Any], key: str, label: str, high: float, *,
            positive: bool = False) -> float | None:
    """``data[key]`` as a finite number in ``[0, high]`` (``(0, high]`` if ``positive``), or
    None if absent/null. Raises ValueError naming ``label``."""
    value = data.get(key)
    if value is None:
        return None
    low = "> 0" if positive else ">= 0"
    if (not isinstance(value, int | float) or isinstance(value, bool)
            or not math.isfinite(value) or value < 0 or (positive and value == 0)
            or value > high):
        raise ValueError(f"field '{label}' must be a number {low} and <= {high:g}, "
                         f"not {value!r}")
    return float(value)


def fault_from_json(data: Any) -> Fault:
    """The :class:`Fault` described by ``data``, the ``fault`` field of ``POST
    /sandbox/faults``.

    Shape: ``{"kind": <one of FAULT_KINDS>, "latency_ms"?: number (ms, 0-600000, delay
    before the fault or answer), "code"?: int, "retry_after"?: number (s)}``; ``code`` (400-
    599) is required for and ``retry_after`` (0-3600 s) allowed with kind ``status`` only.
    Examples: ``{"kind": "status", "code": 503}``, ``{"kind": "hang"}``, ``{"kind": "ok",
    "latency_ms": 8000}``, ``{"kind": "reset"}``.

    Raises:
        ValueError: with a message naming the offending field (``fault.kind`` ...).
    """
    if not isinstance(data, dict):
        raise ValueError("field 'fault' must be an object or null")
    unknown = sorted(set(data) - {"kind", "code", "retry_after", "latency_ms"})
    if unknown:
        raise ValueError(f"field 'fault.{unknown[0]}' is unknown (fault takes kind, code, "
                         "retry_after, latency_ms)")
    kind = data.get("kind")
    if kind not in FAULT_KINDS:
        raise ValueError(f"field 'fault.kind' must be one of {', '.join(FAULT_KINDS)}, "
                         f"not {kind!r}")
    latency = _number(data, "latency_ms", "fault.latency_ms", MAX_LATENCY_MS) or 0.0
    if kind == "status":
        code = data.get("code")
        if not isinstance(code, int) or isinstance(code, bool) or not 400 <= code <= 599:
            raise ValueError(f"field 'fault.code' must be an integer 400-599 for kind "
                             f"'status', not {code!r}")
        retry = _number(data, "retry_after", "fault.retry_after", MAX_FAULT_SECONDS)
        return Fault.status(code, retry_after=retry).after(latency)
    for key in ("code", "retry_after"):
        if data.get(key) is not None:
            raise ValueError(f"field 'fault.{key}' applies to kind 'status' only")
    return Fault(kind=kind, latency_ms=latency)


def parse_fault_request(data: Any) -> tuple[str, Fault | None, float | None]:
    """Check a ``POST /sandbox/faults`` body ``{"provider": str, "fault": object | null,
    "seconds"?: number | null}``.

    Returns:
        ``(provider, fault or None to clear, seconds or None for no end)``; ``seconds`` is
        checked but returned as None when ``fault`` is null.

    Raises:
        ValueError: naming the field: ``provider`` missing, not a string of 1-64
            ``[A-Za-z0-9_.-]`` or ``sandbox``; ``fault`` missing or bad (see
            :func:`fault_from_json`); ``seconds`` not in ``(0, 3600]``; an unknown field.
    """
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    unknown = sorted(set(data) - {"provider", "fault", "seconds"})
    if unknown:
        raise ValueError(f"field '{unknown[0]}' is unknown (the body takes provider, fault, "
                         "seconds)")
    name = data.get("provider")
    if not isinstance(name, str) or not PROVIDER_NAME_RE.match(name):
        raise ValueError("field 'provider' is required and must be a provider name of 1-64 "
                         f"letters, digits, '_', '.' or '-', not {name!r}")
    if name == CONTROL_PREFIX:
        raise ValueError(f"field 'provider': the name {CONTROL_PREFIX!r} is reserved")
    if "fault" not in data:
        raise ValueError("field 'fault' is required: an object, or null to clear")
    fault = None if data["fault"] is None else fault_from_json(data["fault"])
    seconds = _number(data, "seconds", "seconds", MAX_FAULT_SECONDS, positive=True)
    return name, fault, seconds if fault is not None else None


@dataclass(frozen=True)
class Prompt:
    """A request reduced to what the reply writer and the usage counter need."""

    model: str
    first: str
    texts: list[str]
    last_user: str
    max_tokens: int | None


# --- persona-aware replies -----------------------------------------------------------------

_PERSONA_RE = re.compile(r"You are .+? \(@[^)]*\), an? (?P<role>.+?) in a Telegram")
_LANG_RE = re.compile(r"Write only in (?P<lang>[A-Za-z]+)")
_REPLY_RE = re.compile(r'Reply to #\d+ from (?P<speaker>.+?): "(?P<text>.*)"\. Address', re.S)
_TOPIC_RE = re.compile(r"Write one new message about (?P<topic>[\w/ -]+?)\. Write only")

#: topic id → (Turkish name, English name, keyword prefixes).
_TOPICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "usdtry": ("dolar/TL", "USD/TRY", ("dolar", "dollar", "usd", "kur", "döviz", "lira")),
    "bist100": ("BIST 100", "BIST 100", ("bist", "borsa", "hisse", "endeks", "stock", "index")),
    "btc": ("Bitcoin", "Bitcoin", ("btc", "bitcoin", "kripto", "crypto")),
    "gold": ("altın", "gold", ("altın", "gold", "ons")),
    "rates": ("faiz", "rates", ("faiz", "rate", "interest", "tcmb", "fed")),
    "inflation": ("enflasyon", "inflation", ("enflasyon", "inflation", "tüfe", "cpi")),
}
_GENERIC_TOPIC = {"tr": "piyasa", "en": "the market"}

_REPLIES = {
    "tr": (
        "{who}, {topic} konusunda pek emin değilim, acele etmemek lazım.",
        "{who} haklı olabilirsin ama {topic} tarafında işler o kadar net değil.",
        "Katılmıyorum {who}, {topic} bence daha oynak olacak.",
        "{who}, güzel soru. {topic} için ben biraz daha beklerdim.",
        "Valla {who}, {topic} konusunda ben farklı düşünüyorum.",
        "{who}, {topic} bugün sakin görünüyor ama haberlere dikkat.",
        "Hmm {who}, {topic} için ben o kadar iyimser değilim.",
        "{who}, bence {topic} tarafında sabırlı olan kazanır.",
        "{who} dediğin mantıklı ama {topic} için risk hâlâ yüksek.",
        "Aynen {who}, yine de {topic} için stop seviyesini unutma.",
    ),
    "en": (
        "{who}, I'm not so sure about {topic}; no need to rush.",
        "{who}, you may be right, but {topic} is not that clear to me.",
        "I disagree, {who}. {topic} looks more volatile than that.",
        "Good question, {who}. On {topic} I would wait a little longer.",
        "Honestly {who}, I see {topic} differently.",
        "{who}, {topic} is quiet today, but watch the news.",
        "Hmm {who}, I'm less optimistic on {topic} than you.",
        "{who}, patience usually pays on {topic}.",
        "{who}, fair point, but the risk on {topic} is still high.",
        "Sure {who}, just don't forget a stop on {topic}.",
    ),
}
_FRESH = {
    "tr": (
        "{topic} bugün yine hareketli, siz ne düşünüyorsunuz?",
        "Bence {topic} tarafında bu hafta sürpriz olabilir.",
        "{topic} için temkinliyim, veriler henüz net değil.",
        "{topic} grafiğine bakan var mı? İlginç bir seviyede.",
        "{topic} konusunda sabırlı olmak lazım, panik yok.",
        "Bugün {topic} sakin ama akşamki haberler önemli.",
        "{topic} hakkında yeni bir şey duyan oldu mu?",
        "{topic} yine gündemde, herkes bir şey söylüyor.",
        "{topic} için bu seviyeler bana mantıklı geliyor.",
        "{topic} tarafında hacim düşük, kırılım bekliyorum.",
    ),
    "en": (
        "{topic} is busy again today, what do you all think?",
        "I think {topic} could surprise us this week.",
        "Careful with {topic}, the data is not clear yet.",
        "Anyone watching the {topic} chart? Interesting level.",
        "Patience on {topic}, no reason to panic.",
        "{topic} is calm today, but tonight's news matters.",
        "Has anyone heard anything new about {topic}?",
        "{topic} is the talk of the day again.",
        "These {topic} levels make sense to me.",
        "Volume on {topic} is thin, I'm waiting for a breakout.",
    ),
}
#: role keyword → a short tail per language, so personas sound different.
_ROLE_TAILS: dict[str, dict[str, tuple[str, ...]]] = {
    "scalper": {"tr": ("Ben kısa vadeden bakıyorum ⚡", "Gün içi oynuyorum, gece taşımam."),
                "en": ("I trade it intraday ⚡", "Quick in, quick out for me.")},
    "investor": {"tr": ("Ben uzun vadeliyim, sakinim.", "Temettü ve sabır, başka yolu yok."),
                 "en": ("I'm in it for years anyway.", "Long term, I stay calm.")},
    "economist": {"tr": ("Reel faize bakmak gerekiyor.", "Beklentiler her şeyi belirliyor."),
                  "en": ("Real rates are what matter.", "Expectations drive all of it.")},
    "newcomer": {"tr": ("Ben hâlâ öğreniyorum açıkçası 🙈", "Yanlış mı düşünüyorum?"),
                 "en": ("I'm still learning, to be honest 🙈", "Am I wrong here?")},
}
_ROLE_KEYS = {"scalp": "scalper", "trader": "scalper", "invest": "investor", "yatırım": "investor",
              "econom": "economist", "hoca": "economist", "new": "newcomer", "yeni": "newcomer",
              "acemi": "newcomer", "beginner": "newcomer"}


def parse_persona(system: str) -> tuple[str, str]:
    """Role and language (``tr``/``en``) of the persona prompt ``system``."""
    m = _PERSONA_RE.search(system)
    lang = _LANG_RE.search(system)
    language = "tr" if lang and lang.group("lang").lower().startswith("turk") else "en"
    return (m.group("role") if m else "trader"), language


def topic_of(text: str) -> str | None:
    """The topic id whose keywords ``text`` mentions first, or None."""
    words = re.findall(r"\w+", text.lower())
    for word in words:
        for topic, (_, _, keys) in _TOPICS.items():
            if any(word.startswith(k) for k in keys):
                return topic
    return None


def write_reply(role: str, lang: str, instruction: str, seed: bytes) -> str:
    """A short message in the persona's language for the turn ``instruction`` describes.

    Args:
        role: the persona's role (picks a role-flavoured tail sentence).
        lang: ``tr`` or ``en``.
        instruction: the last user message (history plus the prompt builder's instruction).
        seed: bytes the phrase choice is derived from (same seed, same text).
    """
    rng = random.Random(hashlib.sha256(seed).digest())
    reply = _REPLY_RE.search(instruction)
    fresh = _TOPIC_RE.search(instruction)
    topic = (topic_of(reply.group("text")) if reply else
             fresh.group("topic").strip().lower() if fresh else None)
    names = _TOPICS.get(topic or "")
    topic_name = (names[0] if lang == "tr" else names[1]) if names else (
        topic or _GENERIC_TOPIC[lang])
    if reply:
        who = (reply.group("speaker").split() or ["?"])[0]
        text = rng.choice(_REPLIES[lang]).format(who=who, topic=topic_name)
    else:
        text = rng.choice(_FRESH[lang]).format(topic=topic_name)
        text = text[0].upper() + text[1:]
    kind = next((v for k, v in _ROLE_KEYS.items() if k in role.lower()), None)
    if kind and rng.random() < 0.5:
        text = f"{text} {rng.choice(_ROLE_TAILS[kind][lang])}"
    return text


# --- request parsing and wire formats ------------------------------------------------------


def _text(content: Any) -> str:
    """Text of an OpenAI message ``content`` (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _parts(content: Any) -> list[str]:
    if not isinstance(content, dict):
        return []
    return [str(p["text"]) for p in content.get("parts") or [] if isinstance(p, dict)
            and "text" in p]


def parse_prompt(dialect: Dialect, body: dict[str, Any], model: str) -> Prompt:
    """Reduce an OpenAI or Gemini request body to a :class:`Prompt`."""
    if dialect == "openai":
        msgs = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        texts = [_text(m.get("content")) for m in msgs]
        users = [_text(m.get("content")) for m in msgs if m.get("role") == "user"]
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        return Prompt(str(body.get("model") or model), texts[0] if texts else "", texts,
                      users[-1] if users else "", int(limit) if limit else None)
    system = _parts(body.get("systemInstruction") or body.get("system_instruction"))
    contents = [c for c in body.get("contents") or [] if isinstance(c, dict)]
    texts = system + ["".join(_parts(c)) for c in contents]
    users = ["".join(_parts(c)) for c in contents if c.get("role", "user") == "user"]
    config = body.get("generationConfig") or {}
    limit = config.get("maxOutputTokens")
    return Prompt(model, texts[0] if texts else "", texts, users[-1] if users else "",
                  int(limit) if limit else None)


_OPENAI_ERRORS = {
    400: ("invalid_request_error", None, "Invalid request: 'messages' is malformed."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_denied", None, "You are not allowed to use this model."),
    404: ("invalid_request_error", "model_not_found",
          "The model `{model}` does not exist or you do not have access to it."),
    429: ("requests", "rate_limit_exceeded",
          "Rate limit reached for {model}. Please try again in {retry}."),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
_GEMINI_ERRORS = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "API key not valid. Please pass a valid API key."),
    403: ("PERMISSION_DENIED", "The caller does not have permission."),
    404: ("NOT_FOUND", "models/{model} is not found for this API version."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    500: ("INTERNAL", "An internal error has occurred."),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
}


def error_body(dialect: Dialect, fault: Fault, model: str) -> dict[str, Any]:
    """The provider's JSON error body for a ``status`` fault."""
    retry = f"{fault.retry_after:g}s" if fault.retry_after is not None else "a moment"
    if dialect == "openai":
        kind, code, msg = _OPENAI_ERRORS.get(fault.code, ("api_error", None, "Error."))
        return {"error": {"message": msg.format(model=model, retry=retry), "type": kind,
                          "param": None, "code": code}}
    status, msg = _GEMINI_ERRORS.get(fault.code, ("UNKNOWN", "Error."))
    error: dict[str, Any] = {"code": fault.code, "message": msg.format(model=model),
                             "status": status}
    if fault.retry_after is not None:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                             "retryDelay": retry}]
    return {"error": error}


def answer_body(dialect: Dialect, kind: FaultKind, prompt: Prompt, text: str,
                cached: int) -> dict[str, Any]:
    """A 200 answer of ``kind`` (``ok``, ``empty_choices``, ``content_filter``) in the
    ``dialect``'s wire format, reporting ``cached`` prompt tokens as cached."""
    finish = "stop"
    if prompt.max_tokens and estimate_tokens(text) > prompt.max_tokens:
        text, finish = text[: prompt.max_tokens * CHARS_PER_TOKEN], "length"
    if kind != "ok":
        text = ""
    p_tokens = sum(estimate_tokens(t) for t in prompt.texts)
    c_tokens = estimate_tokens(text)
    rid = hashlib.sha256(f"{time.time_ns()}{prompt.last_user}".encode()).hexdigest()[:24]
    if dialect == "openai":
        message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
        reason = "content_filter" if kind == "content_filter" else finish
        choices = [] if kind == "empty_choices" else [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}]
        return {"id": f"chatcmpl-{rid}", "object": "chat.completion",
                "created": int(time.time()), "model": prompt.model, "choices": choices,
                "system_fingerprint": "fp_sandbox",
                "usage": {"prompt_tokens": p_tokens, "completion_tokens": c_tokens,
                          "total_tokens": p_tokens + c_tokens,
                          "prompt_tokens_details": {"cached_tokens": cached}}}
    if kind == "empty_choices":
        candidates: list[dict[str, Any]] = []
    elif kind == "content_filter":
        candidates = [{"finishReason": "SAFETY", "index": 0, "safetyRatings": [
            {"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH", "blocked": True}]}]
    else:
        candidates = [{"content": {"role": "model", "parts": [{"text": text}]},
                       "finishReason": "MAX_TOKENS" if finish == "length" else "STOP",
                       "index": 0}]
    usage = {"promptTokenCount": p_tokens, "candidatesTokenCount": c_tokens,
             "totalTokenCount": p_tokens + c_tokens}
    if cached:
        usage["cachedContentTokenCount"] = cached
    return {"candidates": candidates, "usageMetadata": usage, "modelVersion": prompt.model,
            "responseId": rid}


def _abort(transport: Any) -> None:
    """Close ``transport`` at once with a TCP reset (SO_LINGER 0)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Drop(Response):
    """A "response" that drops the connection, after waiting for ``until`` if given."""

    def __init__(self, until: asyncio.Event | None = None) -> None:
        super().__init__()
        self._until = until

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._until is not None:
            await _wait_disconnect_or(receive, self._until)
        transport = scope.get(_TRANSPORT_KEY)
        if transport is not None:  # else (not uvicorn) the server answers 500 instead
            _abort(transport)
        for _ in range(3):  # let connection_lost run, so uvicorn logs no "returned without"
            await asyncio.sleep(0)


async def _wait_disconnect_or(receive: Receive, event: asyncio.Event) -> None:
    """Return when the client disconnects or ``event`` is set."""

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    tasks = {asyncio.ensure_future(disconnected()), asyncio.ensure_future(event.wait())}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _KeepTransport:
    """ASGI wrapper that puts the server's transport into the scope (for ``reset``/``hang``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[_TRANSPORT_KEY] = getattr(getattr(send, "__self__", None), "transport", None)
        await self.app(scope, receive, send)


_GEMINI_PATH = re.compile(r"^(v1|v1beta|v1alpha)/models/(?P<model>[^/:]+):generateContent$")


class LLMSandbox:
    """A stand-in LLM server for several providers at once, with scriptable faults.

    Control endpoints (JSON; errors are HTTP 400 ``{"ok": false, "error_code": 400,
    "description": "<message naming the field>"}`` and change nothing):

    - ``POST /sandbox/faults`` ``{"provider": "primary", "fault": {"kind": "status", "code":
      503} | {"kind": "hang"} | {"kind": "ok", "latency_ms": 8000} | {"kind": "reset"} |
      null, "seconds"?: 60}``: :meth:`set_default` for that provider (every unscripted
      request gets the fault; ``null`` clears it now; ``seconds``, 0 < s <= 3600, makes it
      clear itself, so a runner that dies leaves no provider broken). Fault fields: see
      :func:`fault_from_json`. Answers 200 ``{"ok": true, "result": <faults>}``.
    - ``GET /sandbox/faults``: ``{"ok": true, "result": <faults>}``, where ``<faults>`` is
      :meth:`faults`: ``{"<provider>": {"fault": {"kind", "latency_ms", "code"?,
      "retry_after"?}, "seconds_left": float | null, "ends_at": unix seconds | null}}``.
    - ``GET /sandbox/stats``: ``{"ok": true, "result": {"requests": {"<provider>": n},
      "statuses": {"<provider>": {"<HTTP status>": n}}}}`` (:meth:`stats`).

    Args:
        clock: monotonic seconds for the ends of timed faults (inject a fake in tests).

    Attributes:
        app: the ASGI app (serve it yourself, or use :meth:`start`).
        log: one ``(provider name, HTTP status)`` per request, in arrival order; status 0 for
            a request that got no HTTP answer (``hang``, ``reset``).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.log: list[tuple[str, int]] = []
        self._clock = clock
        self._scripts: dict[str, deque[Fault]] = {}
        self._defaults: dict[str, Fault] = {}
        self._fault_ends: dict[str, float] = {}
        self._latency: dict[str, tuple[float, float, random.Random]] = {}
        self._counts: Counter[str] = Counter()
        self._prefixes: dict[str, dict[str, None]] = {}
        self._stopping = asyncio.Event()
        self._server: BackgroundServer | None = None
        # The control routes come first: "/{name}/{rest:path}" would match them too.
        routes = [
            Route(f"/{CONTROL_PREFIX}/faults", self._handle_faults, methods=["GET", "POST"]),
            Route(f"/{CONTROL_PREFIX}/stats", self._handle_stats, methods=["GET"]),
            Route("/{name}/{rest:path}", self._handle, methods=["POST"]),
        ]
        self.app: ASGIApp = _KeepTransport(Starlette(routes=routes))

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: a free port) and return :attr:`base_url`."""
        if self._server is not None:
            raise RuntimeError("LLMSandbox already started")
        self._stopping = asyncio.Event()
        self._server = await BackgroundServer.start(self.app, host, port)
        return self._server.url

    async def stop(self) -> None:
        """Release hanging requests (their connections drop) and shut the server down."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            await server.stop()

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server."""
        if self._server is None:
            raise RuntimeError("LLMSandbox is not started")
        return self._server.url

    def url_for(self, name: str) -> str:
        """Base URL of the provider called ``name`` (give it to the SDK as described above)."""
        return f"{self.base_url}/{name}"

    def script(self, name: str, *faults: Fault) -> None:
        """Queue ``faults`` for ``name``: each is used by one request, in order."""
        self._scripts.setdefault(name, deque()).extend(faults)

    def set_default(self, name: str, fault: Fault | None, *,
                    seconds: float | None = None) -> None:
        """Apply ``fault`` to every unscripted request of ``name`` (None: answer normally).

        Args:
            seconds: the fault clears itself this many seconds later (None: it stays until
                changed). Requests already hanging keep hanging until their client leaves
                or the sandbox stops.

        Raises:
            ValueError: ``seconds`` is not a finite number > 0.
        """
        if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"seconds must be a finite number > 0, not {seconds!r}")
        self._fault_ends.pop(name, None)
        if fault is None:
            self._defaults.pop(name, None)
            return
        self._defaults[name] = fault
        if seconds is not None:
            self._fault_ends[name] = self._clock() + seconds

    def faults(self) -> dict[str, dict[str, Any]]:
        """The default faults now in force (expired ones are cleared first).

        Returns:
            ``{provider: {"fault": Fault.to_json(), "seconds_left": float | None,
            "ends_at": float | None}}``; ``seconds_left`` and ``ends_at`` (Unix seconds) are
            None for a fault without an end.
        """
        self._expire_faults()
        now, wall = self._clock(), time.time()
        result: dict[str, dict[str, Any]] = {}
        for name, fault in sorted(self._defaults.items()):
            end = self._fault_ends.get(name)
            left = None if end is None else round(max(0.0, end - now), 3)
            result[name] = {"fault": fault.to_json(), "seconds_left": left,
                            "ends_at": None if left is None else round(wall + left, 3)}
        return result

    def stats(self) -> dict[str, Any]:
        """Requests per provider and per HTTP status, from :attr:`log`.

        Returns:
            ``{"requests": {provider: n}, "statuses": {provider: {"<status>": n}}}``; status
            ``"0"`` counts requests that got no HTTP answer (``hang``, ``reset``); requests
            to an unknown path count as ``"404"``.
        """
        statuses: dict[str, dict[str, int]] = {}
        for (name, status), n in sorted(Counter(self.log).items()):
            statuses.setdefault(name, {})[str(status)] = n
        return {"requests": dict(sorted(self._counts.items())), "statuses": statuses}

    def _expire_faults(self) -> None:
        now = self._clock()
        for name, end in list(self._fault_ends.items()):
            if now >= end:
                del self._fault_ends[name]
                self._defaults.pop(name, None)

    def set_latency(self, name: str, ms: float, jitter_ms: float = 0.0,
                    seed: int | None = None) -> None:
        """Delay every request of ``name`` by ``ms`` ± ``jitter_ms`` (uniform, seeded)."""
        self._latency[name] = (ms, jitter_ms, random.Random(seed))

    def reset(self) -> None:
        """Forget scripts, defaults, latencies, counters, the log and the prompt cache."""
        for state in (self.log, self._scripts, self._defaults, self._fault_ends, self._latency,
                      self._counts, self._prefixes):
            state.clear()

    def requests(self, name: str) -> int:
        """Requests received for ``name`` so far, failed ones included."""
        return self._counts[name]

    def _next_fault(self, name: str) -> Fault:
        queue = self._scripts.get(name)
        if queue:
            return queue.popleft()
        self._expire_faults()
        return self._defaults.get(name, Fault())

    def _cached(self, name: str, first: str) -> int:
        seen = self._prefixes.setdefault(name, {})
        hit = first in seen
        seen.pop(first, None)
        seen[first] = None
        while len(seen) > CACHE_ENTRIES:
            del seen[next(iter(seen))]
        return estimate_tokens(first) if hit and first else 0

    async def _handle_faults(self, request: Request) -> Response:
        """``GET|POST /sandbox/faults`` (class docstring)."""
        if request.method == "POST":
            try:
                data = json.loads(await request.body())
            except ValueError:
                return _control_error("body must be a JSON object")
            try:
                name, fault, seconds = parse_fault_request(data)
            except ValueError as exc:
                return _control_error(str(exc))
            self.set_default(name, fault, seconds=seconds)
        return JSONResponse({"ok": True, "result": self.faults()})

    async def _handle_stats(self, request: Request) -> Response:
        """``GET /sandbox/stats`` (class docstring)."""
        return JSONResponse({"ok": True, "result": self.stats()})

    async def _handle(self, request: Request) -> Response:
        name, rest = request.path_params["name"], request.path_params["rest"]
        if name == CONTROL_PREFIX:
            return JSONResponse({"error": {"message": f"/{CONTROL_PREFIX}/{rest} is not a "
                                           "control endpoint; the provider name "
                                           f"{CONTROL_PREFIX!r} is reserved", "code": 404}},
                                404)
        raw = await request.body()
        self._counts[name] += 1
        gemini = _GEMINI_PATH.match(rest)
        dialect: Dialect | None = ("openai" if rest in ("v1/chat/completions",
                                                        "openai/v1/chat/completions")
                                   else "gemini" if gemini else None)
        if dialect is None:
            self.log.append((name, 404))
            return JSONResponse({"error": {"message": f"Unknown path /{rest}", "code": 404}}, 404)
        fault = self._next_fault(name)
        status = {"status": fault.code, "hang": 0, "reset": 0}.get(fault.kind, 200)
        self.log.append((name, status))
        delay = fault.latency_ms
        if name in self._latency:
            ms, jitter, rng = self._latency[name]
            delay += max(0.0, ms + (rng.uniform(-jitter, jitter) if jitter else 0.0))
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay / 1000)
        if fault.kind == "hang":
            return _Drop(until=self._stopping)
        if fault.kind == "reset":
            return _Drop()
        if fault.kind == "malformed":
            return Response(b'{"id": "broken", "choices": [{"index": 0, "mess',
                            media_type="application/json")
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        model = gemini.group("model") if gemini else str(body.get("model") or "unknown")
        if fault.kind == "status":
            headers = ({"Retry-After": f"{math.ceil(fault.retry_after)}"}
                       if fault.retry_after is not None else None)
            return JSONResponse(error_body(dialect, fault, model), fault.code, headers=headers)
        prompt = parse_prompt(dialect, body, model)
        cached = self._cached(name, prompt.first)
        role, lang = parse_persona(prompt.first)
        text = write_reply(role, lang, prompt.last_user, raw)
        return JSONResponse(answer_body(dialect, fault.kind, prompt, text, cached))


def _control_error(message: str) -> JSONResponse:
    """A control endpoint's 400 answer ``{"ok": false, "error_code": 400, "description"}``."""
    return JSONResponse({"ok": False, "error_code": 400, "description": message}, 400)


async def _serve(host: str, port: int, latency: list[str] | None = None) -> None:
    sandbox = LLMSandbox()
    for spec in latency or []:
        name, _, value = spec.partition("=")
        ms, _, jitter = value.partition(":")
        sandbox.set_latency(name, float(ms), float(jitter or 0), seed=0)
    url = await sandbox.start(host, port)
    print(f"LLM sandbox on {url}: OpenAI {url}/<name>/v1, Groq {url}/<name>, "
          f"Gemini {url}/<name>; faults {url}/{CONTROL_PREFIX}/faults", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sandbox.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m sandbox.llm_api --port 8090``: serve until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--latency", action="append", default=[], metavar="NAME=MS[:JITTER]",
                        help="delay every request of provider NAME by MS ± JITTER ms "
                             "(repeatable)")
    args = parser.parse_args(argv)
    for spec in args.latency:
        name, eq, value = spec.partition("=")
        try:
            ms, _, jitter = value.partition(":")
            ok = bool(name and eq) and float(ms) >= 0 and float(jitter or 0) >= 0
        except ValueError:
            ok = False
        if not ok:
            parser.error(f"--latency {spec!r}: expected NAME=MS or NAME=MS:JITTER, MS >= 0")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port, args.latency))


if __name__ == "__main__":
    main()
