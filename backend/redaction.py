"""Secrets out of text: the one place that knows what a secret looks like.

Two ways a secret is found in a text (a log line, a traceback, an audit value):

- **by its shape** (:func:`redact`): a Telegram bot token (``<bot id>:<30-odd
  characters>``, also inside a URL as ``/bot<token>/getMe``: the bot id is kept), a botsim
  API token (``botsim_`` + 43 characters), an OpenAI / Anthropic ``sk-…``, Groq ``gsk_…`` or
  Google ``AIza…`` key, the value after a secret-named key (``secret_token``,
  ``X-Telegram-Bot-Api-Secret-Token``, ``password``, ``api_key``, ``Authorization``,
  ``csrf_token``… in ``key=value``, ``key: value``, ``"key": "value"`` or ``('key',
  'value')`` form; a plural ``tokens`` is a count, not a secret), a ``Bearer`` credential,
  and the password of a URL (``scheme://user:password@host``);
- **by its value** (:func:`register_secret`): what a process holds is registered when it
  gets it (the Fernet key, the webhook secret and each bot's webhook secret derived from it,
  the admin API's secret key, each LLM provider's API key, each bot token as it is
  decrypted), and every occurrence of it is masked, whatever its shape.

Each is replaced by :data:`MASK` (``***``). :func:`redact` is what the processes' log
handlers apply to every line (``botsim.bootstrap.log_handler``): any logger's records
(python-telegram-bot, httpx, httpcore, uvicorn, SQLAlchemy, the LLM SDKs), their arguments,
exceptions and stacks.

The registry is bounded (:data:`MAX_SECRETS`, the oldest forgotten first) and thread-safe;
finding its values costs about one dictionary look-up per :data:`_STEP` characters of text
whatever their number: each value is indexed by its :data:`_GRAM`-character pieces at
offsets ``0 … _STEP-1``, and the text is sampled every ``_STEP`` characters (an occurrence
starting anywhere has one sample at one of those offsets). A hit is confirmed by an exact
substring test before anything is replaced.

The audit log's masking of secret-named keys (:func:`mask_secrets`, :func:`is_secret_key`,
:func:`redact_tokens`) lives here too.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

#: What replaces a secret.
MASK = "***"
#: Substrings of a normalised key (lowercase, ``-`` → ``_``) that mark it as a secret.
SECRET_MARKERS = ("token", "password", "passwd", "api_key", "apikey", "secret")
#: A bot token's shape: the bot's numeric id, a colon, 20 or more characters of
#: ``A-Za-z0-9_-`` (core.telegram.org/bots/api#authorizing-your-bot:
#: "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"; real ones have 35).
BOT_TOKEN_RE = re.compile(r"\d{3,}:[A-Za-z0-9_-]{20,}")
#: The registry keeps at most this many values (a listener of 10 000 bots holds 20 000:
#: each token's secret half and each webhook secret); the oldest is forgotten first.
MAX_SECRETS = 50_000
#: Shorter values are not registered (they would mask ordinary words).
MIN_SECRET_CHARS = 8

_GRAM = 8
_STEP = 8
#: A value at least this long is indexed; shorter ones are searched for one by one.
_INDEXED_CHARS = _GRAM + _STEP - 1

#: The words that make a key secret-named, as written in lower, Title and UPPER case (an
#: IGNORECASE pattern is several times slower); a plural ``tokens`` is a count.
_KEY_WORDS = ("secret", "passwd", "password", "api_key", "api-key", "apikey",
              "authorization", "credential", "private_key", "private-key", "botsim_session",
              "token")
_MARKER = "(?:{})".format("|".join(sorted(
    {re.escape(v) + ("(?![sS])" if w == "token" else "")
     for w in _KEY_WORDS for v in (w, w.capitalize(), w.upper())}, key=len, reverse=True)))
_KEY = rf"{_MARKER}[A-Za-z0-9_-]*"
#: ``"key": "value"``, ``'key': 'value'``, ``key='value'``, ``('key', 'value')``, and the
#: same with JSON's escaped quotes (``\"key\": \"value\"``): the whole quoted value.
_QUOTED_KV = re.compile(
    rf"({_KEY}(?:\\?[\"'])?\s*[:=,]\s*b?(\\?[\"']))((?:\\.|[^\\\n])*?)(\2)")
#: ``key=value``, ``key: value``, ``Authorization: Bearer value``: up to a space or a
#: delimiter.
_BARE_KV = re.compile(
    rf"({_KEY}\s*[:=]\s*(?i:(?:bearer|basic|token)\s+)?)([^\s\"'&,;)\]}}>]+)")
_TOKEN_GATE = re.compile(r":[A-Za-z0-9_-]{20,}")
_BEARER = re.compile(r"(?i:\b(bearer|basic)\s+)[A-Za-z0-9._~+/-]{16,}=*")
_BOT_TOKEN = re.compile(r"(\d{3,}):[A-Za-z0-9_-]{20,}")
_API_TOKEN = re.compile(r"\bbotsim_[A-Za-z0-9_-]{40,}")
_PROVIDER_KEY = re.compile(r"(?<![A-Za-z0-9])(sk-|gsk_)[A-Za-z0-9_-]{20,}")
_GOOGLE_KEY = re.compile(r"\bAIza[0-9A-Za-z_-]{30,}")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@/\s]+@")
#: A JSON log line's key whose value is masked (any case; not a plural ``tokens``).
_SECRET_FIELD = re.compile(
    r"secret|passw(?:or)?d|api[_-]?key|authorization|credential|private[_-]?key"
    r"|botsim_session|token(?!s)", re.IGNORECASE)


class _Registry:
    """The known values (module doc): insertion-ordered, indexed by sampled pieces.

    Writers hold the lock; readers (:meth:`found_in`) only look up the index, whose entries
    are replaced whole (a value string, or a tuple of them when several share a piece).
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._values: dict[str, None] = {}
        self._index: dict[str, str | tuple[str, ...]] = {}
        self._short: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self._values)

    def add(self, value: str) -> None:
        """Remember ``value`` (the oldest forgotten beyond the limit)."""
        if value in self._values:
            return
        with self._lock:
            if value in self._values:
                return
            self._values[value] = None
            if len(value) < _INDEXED_CHARS:
                self._short = (*self._short, value)
            else:
                for gram in self._grams(value):
                    held = self._index.get(gram)
                    self._index[gram] = (value if held is None
                                         else (*_as_tuple(held), value))
            while len(self._values) > self._limit:
                self._forget(next(iter(self._values)))

    def clear(self) -> None:
        """Forget every value."""
        with self._lock:
            self._values.clear()
            self._index = {}
            self._short = ()

    @staticmethod
    def _grams(value: str) -> set[str]:
        """The pieces at the last :data:`_STEP` offsets a piece fits (the random end of a
        value, not a bot id or a prefix that a fleet's values share)."""
        last = len(value) - _GRAM
        return {value[i:i + _GRAM] for i in range(last - _STEP + 1, last + 1)}

    def _forget(self, value: str) -> None:
        del self._values[value]
        if len(value) < _INDEXED_CHARS:
            self._short = tuple(v for v in self._short if v != value)
            return
        for gram in self._grams(value):
            rest = tuple(v for v in _as_tuple(self._index.get(gram)) if v != value)
            if len(rest) > 1:
                self._index[gram] = rest
            elif rest:
                self._index[gram] = rest[0]
            else:
                self._index.pop(gram, None)

    def found_in(self, text: str) -> list[str]:
        """The registered values in ``text``, longest first."""
        found: set[str] = set()
        index = self._index
        if index:
            get = index.get
            for i in range(0, len(text) - _GRAM + 1, _STEP):
                hit = get(text[i:i + _GRAM])
                if hit is not None:
                    found.update(v for v in _as_tuple(hit) if v in text)
        for value in self._short:
            if value in text:
                found.add(value)
        return sorted(found, key=len, reverse=True) if found else []


def _as_tuple(held: str | tuple[str, ...] | None) -> tuple[str, ...]:
    if held is None:
        return ()
    return (held,) if isinstance(held, str) else held


_registry = _Registry(MAX_SECRETS)


def register_secret(value: str | None) -> None:
    """Remember ``value`` as a secret: from now on :func:`redact` masks it wherever it is.

    A bot token (``<digits>:<rest>``) is remembered by its secret half, which masks the
    token, its URL-encoded form (``%3A``) and the half alone while keeping the bot id; any
    other value also by its URL-encoded form when that differs. ``None``, the empty string
    and values shorter than :data:`MIN_SECRET_CHARS` are ignored. Cheap to call again with
    a known value (one dictionary look-up).
    """
    if not value or len(value) < MIN_SECRET_CHARS:
        return
    head, sep, rest = value.partition(":")
    if sep and head.isdigit() and len(rest) >= MIN_SECRET_CHARS:
        _registry.add(rest)
        return
    _registry.add(value)
    quoted = quote(value, safe="")
    if quoted != value:
        _registry.add(quoted)


def register_secrets(values: Iterable[str | None]) -> None:
    """:func:`register_secret` each of ``values``."""
    for value in values:
        register_secret(value)


def registered_count() -> int:
    """How many values the registry holds now (with the derived forms)."""
    return len(_registry)


def forget_secrets() -> None:
    """Empty the registry (tests)."""
    _registry.clear()


def redact(text: str) -> str:
    """``text`` with every secret in it replaced by :data:`MASK` (module doc): the
    registered values first, then the shapes. ``redact("GET /bot123456:AAH…/getMe")`` is
    ``"GET /bot123456:***/getMe"``.

    Each shape's regular expression runs only when a substring test (a few tenths of a
    microsecond) says it can match: most log lines need none of them.
    """
    if not text:
        return text
    for value in _registry.found_in(text):
        text = text.replace(value, MASK)
    low = text.lower().replace("tokens", "")
    if ("token" in low or "secret" in low or "passw" in low or "key" in low
            or "auth" in low or "credential" in low or "session" in low):
        text = _QUOTED_KV.sub(rf"\1{MASK}\4", text)
        text = _BARE_KV.sub(rf"\1{MASK}", text)
    if "bearer" in low or "basic" in low:
        text = _BEARER.sub(rf"\1 {MASK}", text)
    if ":" in text and _TOKEN_GATE.search(text):
        text = _BOT_TOKEN.sub(rf"\1:{MASK}", text)
    if "botsim_" in text:
        text = _API_TOKEN.sub(f"botsim_{MASK}", text)
    if "sk-" in text or "gsk_" in text:
        text = _PROVIDER_KEY.sub(rf"\1{MASK}", text)
    if "AIza" in text:
        text = _GOOGLE_KEY.sub(f"AIza{MASK}", text)
    if "@" in text:
        text = _URL_PASSWORD.sub(rf"\1{MASK}@", text)
    return text


def redact_fields(value: Any) -> Any:
    """A copy of a log line's fields (a JSON line's object) with every string redacted
    (:func:`redact`) and the value of every secret-named key masked, at any depth.

    Numbers, booleans, None and dates are kept; other objects become their redacted ``str``.
    """
    if isinstance(value, str):
        return redact(value) if len(value) >= MIN_SECRET_CHARS else value
    if isinstance(value, Mapping):
        return {k: MASK if isinstance(k, str) and _SECRET_FIELD.search(k) and v is not None
                else redact_fields(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_fields(v) for v in value]
    if value is None or isinstance(value, int | float | dt.date | dt.time):
        return value
    return redact(str(value))


def is_secret_key(key: str) -> bool:
    """True when ``key`` is named like a secret (``token``, ``API_KEY``, ``db-password``...)."""
    norm = key.lower().replace("-", "_")
    return any(marker in norm for marker in SECRET_MARKERS)


def redact_tokens(text: str) -> str:
    """``text`` with every bot token in it (:data:`BOT_TOKEN_RE`) replaced by ``"***"``:
    ``redact_tokens("The token `123456:ABC-DEF1234ghIkl-zyx57W2v1u` was rejected")`` is
    ``"The token `***` was rejected"``."""
    return BOT_TOKEN_RE.sub(MASK, text)


def mask_secrets(value: Any) -> Any:
    """Return a copy of ``value`` with every secret-named key's value replaced by ``"***"``
    and every bot token inside a string redacted (:func:`redact_tokens`).

    Walks nested dicts and lists (tuples become lists); other values are returned as is.
    The input is not modified.
    """
    if isinstance(value, Mapping):
        return {
            str(k): MASK if is_secret_key(str(k)) else mask_secrets(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_secrets(v) for v in value]
    if isinstance(value, str):
        return redact_tokens(value)
    return value
