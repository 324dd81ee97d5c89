"""The records of the realism metrics: a message as they read it, a band, a metric's verdict,
and the report (:mod:`behavior_engine.realism`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class MessageRecord:
    """One message of a chat, as the metrics read it.

    Attributes:
        message_id: the chat's Telegram message id (the order of the chat).
        sender: a key unique per speaker (e.g. ``bot:3``, ``human:500001``).
        is_bot: True for our bots' messages (text metrics, Gini, separability read only them).
        text: the message text.
        at: when it was sent (aware datetime: a bot's ``sent_at``, a human's Telegram date).
        reply_to: the Telegram message id it replies to, or None.
        name: the speaker's display name (for mentions by name and the plots).
        username: the speaker's Telegram username, if any (for ``@username`` mentions).
    """

    message_id: int
    sender: str
    is_bot: bool
    text: str
    at: datetime
    reply_to: int | None = None
    name: str = ""
    username: str | None = None


@dataclass(frozen=True)
class Band:
    """The believable range of a metric: ``lo <= value <= hi`` (either side open when None).

    Attributes:
        lo / hi: the bounds, inclusive.
        percent: the value is a share in [0, 1], shown as a percentage.
    """

    lo: float | None = None
    hi: float | None = None
    percent: bool = False

    def contains(self, value: float) -> bool:
        """Whether ``value`` is inside the band (bounds inclusive)."""
        return (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi)

    def fmt(self, value: float) -> str:
        """``value`` as the band shows numbers (``12.5 %`` or ``0.61``)."""
        return f"{value * 100:.1f} %" if self.percent else f"{value:.3g}"

    def __str__(self) -> str:
        if self.lo is not None and self.hi is not None:
            if self.lo == self.hi:
                return f"= {self.fmt(self.lo)}"
            return f"{self.fmt(self.lo)} – {self.fmt(self.hi)}"
        if self.lo is not None:
            return f"≥ {self.fmt(self.lo)}"
        if self.hi is not None:
            return f"≤ {self.fmt(self.hi)}"
        return "—"


@dataclass(frozen=True)
class Metric:
    """One figure of a run and its verdict.

    Attributes:
        name: the metric's id (e.g. ``burstiness_an``).
        value: the figure, or None when it cannot be computed.
        band: the believable range (``REALISM.md``), or None for an informational figure.
        passed: True inside the band, False outside, None for "n/a" (see ``note``).
        note: the reason for an "n/a", or counts that explain the value.
    """

    name: str
    value: float | None
    band: Band | None
    passed: bool | None
    note: str = ""

    @property
    def verdict(self) -> str:
        """``pass``, ``FAIL``, ``n/a``, or ``info`` for a figure without a band."""
        if self.band is None and self.value is not None:
            return "info"
        return {True: "pass", False: "FAIL", None: "n/a"}[self.passed]

    def shown_value(self) -> str:
        """The value formatted for a table (``n/a`` when None)."""
        if self.value is None:
            return "n/a"
        return (self.band or Band()).fmt(self.value)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: name, value, band (``lo``, ``hi``, ``text``), passed, note."""
        band = None if self.band is None else {
            "lo": self.band.lo, "hi": self.band.hi, "text": str(self.band)}
        return {"name": self.name, "value": self.value, "band": band, "passed": self.passed,
                "verdict": self.verdict, "note": self.note}


@dataclass
class RealismReport:
    """The metrics over all chats, each chat's own, and what was counted.

    Attributes:
        metrics: every metric over all chats, in :data:`METRIC_NAMES` order.
        chats: chat label → its metrics (same order).
        counts: ``messages``, ``bot_messages``, ``human_messages``, ``chats``, ``speakers``.
    """

    metrics: list[Metric]
    chats: dict[str, list[Metric]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        """Names of the overall metrics outside their band."""
        return [m.name for m in self.metrics if m.passed is False]

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready: ``metrics``, ``chats``, ``counts``, ``failed``."""
        return {"metrics": [m.to_dict() for m in self.metrics],
                "chats": {k: [m.to_dict() for m in v] for k, v in self.chats.items()},
                "counts": dict(self.counts), "failed": self.failed}

    def to_json(self) -> str:
        """:meth:`to_dict` as one line of JSON (no NaN or infinity: those are None)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False)


Chats = Sequence[Sequence[MessageRecord]]
