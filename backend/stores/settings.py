"""Operator settings (``SimulationSettings``), one row per field, validated in and out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from backend.cache import TwoLayerCache
from backend.db.models import SettingRow
from backend.errors import ValidationFailed
from backend.invalidation import KIND_SETTINGS, invalidate_after_commit
from backend.schemas import SimulationSettings


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    return [(".".join(str(p) for p in e["loc"]) or "settings", e["msg"]) for e in exc.errors()]


async def get_settings(session: AsyncSession) -> SimulationSettings:
    """Return the stored settings; fields never set take their defaults.

    Raises:
        ValidationFailed: when a stored row no longer fits the model (names the key).
    """
    rows = (await session.execute(select(SettingRow))).scalars().all()
    stored = {r.key: r.value for r in rows if r.key in SimulationSettings.model_fields}
    try:
        return SimulationSettings.model_validate(stored)
    except ValidationError as exc:
        raise ValidationFailed("stored settings", _problems(exc)) from None


async def update_settings(
    session: AsyncSession, *, changes: Mapping[str, Any], cache: TwoLayerCache | None = None
) -> SimulationSettings:
    """Validate ``changes`` against the current settings and store them.

    Nothing is written unless the whole result is valid. With a ``cache``, every process's
    cached settings are invalidated after the commit.

    Args:
        changes: field name → new value (``{"max_msgs_per_min": 8}``); nested models as
            dicts (``{"bot_hourly_msg_limit": {"min": 4, "max": 10}}``).

    Raises:
        ValidationFailed: naming each unknown key or bad value.
    """
    unknown = [k for k in changes if k not in SimulationSettings.model_fields]
    if unknown:
        known = ", ".join(SimulationSettings.model_fields)
        raise ValidationFailed(
            "settings", [(k, f"unknown setting (known: {known})") for k in unknown]
        )
    current = (await get_settings(session)).model_dump(mode="json")
    try:
        new = SimulationSettings.model_validate({**current, **changes})
    except ValidationError as exc:
        raise ValidationFailed("settings", _problems(exc)) from None
    dumped = new.model_dump(mode="json")
    for key in changes:
        row = await session.get(SettingRow, key)
        if row is None:
            session.add(SettingRow(key=key, value=dumped[key]))
        else:
            row.value = dumped[key]
    await session.flush()
    invalidate_after_commit(session, cache, KIND_SETTINGS, "simulation")
    return new
