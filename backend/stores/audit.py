"""The audit log: who changed what, with the values before and after.

Operators' changes through the admin API carry their user id and name; the engine's own
decisions carry ``user_id`` None and the name :data:`ENGINE`:

=========================  ========  ============================================  ==========
action                     entity    ``after``                                     written by
=========================  ========  ============================================  ==========
``bot.membership_lost``    ``bot``   ``chat_id``, ``telegram_chat_id``,            a send
                                     ``status`` (kicked, left), ``description``    answered 403
``bot.disabled``           ``bot``   ``reason`` (token_refused), ``description``   a 401 (send
                                                                                   or getMe)
=========================  ========  ============================================  ==========

(``description`` is Telegram's, e.g. "Forbidden: bot was kicked from the group chat"; the
entity id is our bot id.)

Keyword-only async functions over an ``AsyncSession`` (the caller owns the transaction, so
an audit entry commits or rolls back together with the change it describes).

Secrets never reach the table: any key of ``before`` / ``after`` named like a secret
(containing ``token``, ``password``, ``passwd``, ``api_key``, ``apikey`` or ``secret``, case-
insensitive, ``-`` read as ``_``), at any depth (inside nested objects and lists), has its
value replaced by ``"***"`` before storing, and any bot token inside a string value
(:data:`BOT_TOKEN_RE`, e.g. python-telegram-bot's "The token `…` was rejected") is replaced
by ``"***"`` too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import JsonValue, TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.db.models import AuditEntry
from backend.errors import ValidationFailed

# Secrets are recognised in one place (backend.redaction); the names stay importable here.
from backend.redaction import BOT_TOKEN_RE as BOT_TOKEN_RE
from backend.redaction import MASK as MASK
from backend.redaction import SECRET_MARKERS as SECRET_MARKERS
from backend.redaction import is_secret_key as is_secret_key
from backend.redaction import mask_secrets as mask_secrets
from backend.redaction import redact_tokens as redact_tokens

#: The largest page :func:`list_entries` returns.
MAX_LIMIT = 1000
#: ``username`` of the engine's own entries (``user_id`` None).
ENGINE = "engine"
#: The engine's actions (module table).
MEMBERSHIP_LOST = "bot.membership_lost"
BOT_DISABLED = "bot.disabled"
SAFETY_BLOCKED = "safety.blocked"

_JSON: TypeAdapter[JsonValue] = TypeAdapter(JsonValue)


async def record(
    session: AsyncSession,
    *,
    user_id: int | None,
    username: str,
    action: str,
    entity: str,
    entity_id: str | int | None,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
) -> AuditEntry:
    """Add one audit entry (flushed, so it has its id and time).

    Args:
        user_id: the operator's ``users.id`` (None for a system action or a deleted user).
        username: the operator's name at the time (kept even if the user is deleted).
        action: what was done (``bot.create``, ``bot.update``, ``settings.update``...).
        entity: the kind of thing changed (``bot``, ``chat``, ``settings``...).
        entity_id: its id (stored as a string), or None.
        before / after: JSON-able objects of the changed fields (see :func:`diff`), or None
            (before of a creation, after of a deletion). Secrets are masked (module doc).

    Returns:
        The new :class:`AuditEntry`.

    Raises:
        ValidationFailed: when ``before`` or ``after`` is not JSON-able (the column's model
            refuses it), naming which side.
    """
    sides: dict[str, Any] = {}
    for side, value in (("before", before), ("after", after)):
        try:
            sides[side] = None if value is None else _JSON.validate_python(mask_secrets(value))
        except ValidationError as exc:
            problems = [
                (".".join([side, *(str(p) for p in e["loc"])]), e["msg"]) for e in exc.errors()
            ]
            raise ValidationFailed("audit entry", problems) from None
    entry = AuditEntry(
        user_id=user_id,
        username=username,
        action=action,
        entity=entity,
        entity_id=None if entity_id is None else str(entity_id),
        before=sides["before"],
        after=sides["after"],
    )
    session.add(entry)
    await session.flush()
    return entry


async def list_entries(
    session: AsyncSession,
    *,
    entity: str | None = None,
    entity_id: str | int | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> list[AuditEntry]:
    """Return audit entries, newest first (by id), for keyset pagination.

    Args:
        entity: only entries about this kind of thing.
        entity_id: only entries about this id (compared as a string).
        limit: at most this many, 1–:data:`MAX_LIMIT`.
        before_id: only entries with an id below this one (pass the last id of the previous
            page to get the next page).

    Raises:
        ValidationFailed: when ``limit`` is out of range.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationFailed("audit query", [("limit", f"must be 1-{MAX_LIMIT}, got {limit}")])
    stmt = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if entity is not None:
        stmt = stmt.where(AuditEntry.entity == entity)
    if entity_id is not None:
        stmt = stmt.where(AuditEntry.entity_id == str(entity_id))
    if before_id is not None:
        stmt = stmt.where(AuditEntry.id < before_id)
    return list((await session.execute(stmt)).scalars().all())


def diff(
    before: Mapping[str, Any], after: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return only the changed keys of each side: ``(changed_before, changed_after)``.

    A key whose value differs appears on both sides; a key present on one side only appears
    on that side only. Values are compared whole (a nested object that changed in one field
    appears whole). ``diff({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4})`` is
    ``({"b": 2}, {"b": 3, "c": 4})``.
    """
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    for key in before.keys() | after.keys():
        in_old, in_new = key in before, key in after
        if in_old and in_new and before[key] == after[key]:
            continue
        if in_old:
            old[key] = before[key]
        if in_new:
            new[key] = after[key]
    return dict(sorted(old.items())), dict(sorted(new.items()))
