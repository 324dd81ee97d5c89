"""Column types that keep the prototype's traps out: aware UTC datetimes, validated JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter
from sqlalchemy import JSON, DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

M = TypeVar("M")


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back as an aware UTC ``datetime``.

    PostgreSQL keeps ``timestamptz``; SQLite keeps the UTC wall time. Writing a naive
    datetime raises ``ValueError`` (naive and aware datetimes mixed was a prototype bug).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: botsim stores aware UTC datetimes only")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class PydanticJSON(TypeDecorator[M], Generic[M]):
    """A JSON column validated by a pydantic type on the way in and on the way out.

    Args:
        type_: a pydantic model class or any type ``TypeAdapter`` accepts.

    Raises:
        pydantic.ValidationError: when a value written or read does not fit ``type_``.
    """

    impl = JSON
    cache_ok = True

    def __init__(self, type_: Any) -> None:
        super().__init__()
        self._type = type_
        self._adapter: TypeAdapter[Any] = TypeAdapter(type_)

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            raise TypeError(
                f"JSON column of {self._type!r} got a str; pass the typed value, not JSON text"
            )
        validated = self._adapter.validate_python(
            value.model_dump() if isinstance(value, BaseModel) else value
        )
        return self._adapter.dump_python(validated, mode="json")

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        return self._adapter.validate_python(value)
