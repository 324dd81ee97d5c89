"""The provider Protocol every text generator implements (offline, Groq, OpenAI, Gemini...)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from behavior_engine.turn import Generation, GenerationRequest


@runtime_checkable
class Provider(Protocol):
    """A text generator.

    Attributes:
        name: provider name recorded with every message (``offline``, ``groq``...).
    """

    name: str

    async def generate(self, request: GenerationRequest) -> Generation:
        """Write one message for ``request``.

        Returns:
            A :class:`Generation` with 1–``request.max_chars`` characters of text.
        """
        ...
