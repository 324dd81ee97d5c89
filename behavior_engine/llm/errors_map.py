"""One mapping from provider HTTP failures to :mod:`backend.errors`, shared by all adapters.

=================================================  ==========================================
what happened                                      error
=================================================  ==========================================
HTTP 429                                           ``ProviderRateLimited(retry_after=...)``
HTTP 5xx, 408, timeout, connection error or reset  ``ProviderUnavailable``
a body that is not valid JSON / not the format     ``ProviderUnavailable``
HTTP 400, 401, 403, 404 (and any other 4xx)        ``ProviderRejected(status=...)``
no choices, empty text, content-filter finish      ``ProviderRefused``
=================================================  ==========================================

``retry_after`` comes from the ``Retry-After`` header (delta-seconds or an HTTP date), else
``retry-after-ms``, else a Google ``RetryInfo.retryDelay`` (``"2s"``) in the error body, else
None. Messages never contain the API key: adapters pass it as ``secret`` and it is masked.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from typing import Any

from backend.errors import (
    ProviderError,
    ProviderRateLimited,
    ProviderRefused,
    ProviderRejected,
    ProviderUnavailable,
)
from behavior_engine.turn import Generation

#: Longest provider-supplied text kept in an error message.
MAX_DETAIL = 200
_DELAY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def redact(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` masked, shortened to :data:`MAX_DETAIL` characters."""
    if secret:
        text = text.replace(secret, "***")
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


def _seconds(value: str) -> float | None:
    """Delta-seconds or an HTTP date in a header, as seconds from now (≥ 0), or None."""
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _retry_info(body: Any) -> float | None:
    """``retryDelay`` of a Google ``RetryInfo`` detail in an error body, in seconds."""
    error = body.get("error", body) if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else body
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and "retryDelay" in detail:
            m = _DELAY_RE.match(str(detail["retryDelay"]))
            if m:
                return float(m.group(1))
    return None


def parse_retry_after(headers: Mapping[str, str] | None, body: Any = None) -> float | None:
    """Seconds to wait before retrying, from the headers or a Google error body, or None.

    Args:
        headers: response headers (case-insensitive mapping, e.g. ``httpx.Headers``).
        body: the decoded error body (or its ``details`` list), if any.
    """
    low = {k.lower(): v for k, v in headers.items()} if headers is not None else {}
    if "retry-after" in low:
        return _seconds(low["retry-after"])
    if "retry-after-ms" in low:
        ms = _seconds(low["retry-after-ms"])
        return None if ms is None else ms / 1000
    return _retry_info(body)


def error_for_status(
    provider: str,
    status: int,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: Any = None,
    secret: str | None = None,
) -> ProviderError:
    """The error for an HTTP ``status`` answer (see the module table).

    Args:
        provider: the provider's configured name.
        status: the HTTP status code.
        detail: the provider's error message (masked and shortened here).
        headers: the response headers (for ``Retry-After``).
        body: the decoded error body (for Google ``RetryInfo``).
        secret: the API key, masked wherever it appears.
    """
    if status in (401, 403):
        detail = "authentication or permission failed"  # bodies may echo part of the key
    msg = f"HTTP {status}: {redact(detail, secret)}" if detail else f"HTTP {status}"
    if status == 429:
        return ProviderRateLimited(provider, msg, retry_after=parse_retry_after(headers, body))
    if status == 408 or status >= 500 or status < 400:
        return ProviderUnavailable(provider, msg)
    return ProviderRejected(provider, msg, status=status)


def unavailable(
    provider: str, exc: BaseException, secret: str | None = None
) -> ProviderUnavailable:
    """``ProviderUnavailable`` for a timeout, a connection failure or a malformed body."""
    what = "timed out" if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__ else (
        "answer is not valid JSON" if isinstance(exc, ValueError) else "connection failed")
    text = redact(str(exc), secret)
    return ProviderUnavailable(provider, f"{what} ({type(exc).__name__}{': ' if text else ''}"
                                         f"{text})")


def make_generation(
    *,
    provider: str,
    model: str,
    text: str | None,
    max_chars: int,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    cached_tokens: int | None,
    started: float,
) -> Generation:
    """The :class:`Generation` of a successful call; ``ProviderRefused`` when no text is left.

    Args:
        provider / model: name and model to record.
        text: the answer text (stripped, then cut to ``max_chars``).
        max_chars: the request's limit.
        prompt_tokens / completion_tokens / cached_tokens: usage as reported (None: 0).
        started: ``time.perf_counter()`` when the call began.
    """
    clean = (text or "").strip()[:max_chars].strip()
    if not clean:
        raise ProviderRefused(provider, "empty answer text")
    return Generation(
        text=clean,
        provider=provider,
        model=model,
        prompt_tokens=prompt_tokens or 0,
        completion_tokens=completion_tokens or 0,
        cached_tokens=cached_tokens or 0,
        latency_ms=(time.perf_counter() - started) * 1000,
    )
