"""Time windows given by people: ``--since 24h`` on the command line, ``?since=7d`` in the API.

Ground floor: used by the CLI and the admin API alike, so neither imports the other for it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from backend.errors import ValidationFailed

#: The longest age accepted, days (about 100 years; a longer one overflows ``datetime``).
MAX_AGE_DAYS = 36_500

_AGE = re.compile(r"(\d{1,9})([mhd])")
_UNIT_DAYS = {"m": 1 / 1440, "h": 1 / 24, "d": 1.0}


def parse_since(text: str | None, *, now: datetime | None = None) -> datetime | None:
    """``30m``/``24h``/``7d`` ago, or an ISO date or time (UTC unless it says otherwise).

    Args:
        text: the value as given; None means no lower bound.
        now: the time ages count back from (default: now, UTC).

    Returns:
        An aware datetime in UTC, or None for ``text`` None.

    Raises:
        ValidationFailed: naming the value and the accepted forms, also for an age over
            :data:`MAX_AGE_DAYS` days (``datetime``'s range ends at year 1) or a time with
            an offset that takes it outside years 1 to 9999 in UTC.
    """
    if text is None:
        return None
    now = now or datetime.now(UTC)
    m = _AGE.fullmatch(text.strip())
    if m:
        n, unit = int(m.group(1)), m.group(2)
        if n * _UNIT_DAYS[unit] > MAX_AGE_DAYS:
            raise ValidationFailed(
                "--since", [(text, f"an age of at most {MAX_AGE_DAYS} days")])
        return now - timedelta(**{{"m": "minutes", "h": "hours", "d": "days"}[unit]: n})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValidationFailed(
            "--since", [(text[:40], "expected an age (30m, 24h, 7d) or an ISO date/time")]
        ) from None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    try:  # 0001-01-01T00:00+23:00 is before year 1 in UTC: no datetime holds it
        return when.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValidationFailed(
            "--since", [(text[:40], "a time within years 1 to 9999 once taken to UTC")]
        ) from None
