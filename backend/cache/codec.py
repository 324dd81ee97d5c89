"""How the two-layer cache turns a value into bytes for Redis and back."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from pydantic import TypeAdapter

T = TypeVar("T")


class Codec(Protocol[T]):
    """Turns a cached value into bytes for Redis and back."""

    def dumps(self, value: T) -> bytes:
        """Serialize ``value``."""
        ...

    def loads(self, data: bytes) -> T:
        """Deserialize bytes written by :meth:`dumps`.

        Raises:
            ValueError: when ``data`` does not decode (an old shape, corruption); the cache
                then treats the entry as a miss.
        """
        ...


class PydanticCodec(Generic[T]):
    """A :class:`Codec` through a pydantic ``TypeAdapter`` (JSON bytes).

    Works for pydantic models, dataclasses, and lists or dicts of them, e.g.
    ``PydanticCodec(Persona)`` or ``PydanticCodec(list[StoredMessage])``.
    """

    def __init__(self, type_: type[T]) -> None:
        self._adapter: TypeAdapter[T] = TypeAdapter(type_)

    def dumps(self, value: T) -> bytes:
        """JSON bytes of ``value``."""
        return self._adapter.dump_json(value)

    def loads(self, data: bytes) -> T:
        """The value of JSON ``data``; raises ``pydantic.ValidationError`` (a ValueError)."""
        return self._adapter.validate_json(data)
