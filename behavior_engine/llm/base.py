"""The provider Protocol every text generator implements (offline, Groq, OpenAI, Gemini...)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

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


class SDKProvider:
    """What every SDK-backed provider keeps: its settings and its SDK client.

    Subclasses build the client in :meth:`_make_client` (retries off) and implement
    ``generate`` and ``aclose``.

    Args:
        name: provider name recorded with every message (``openai``, ``groq``, ``gemini``...).
        model: model to ask for.
        api_key: the API key (kept only inside the SDK client; never in messages or logs).
        base_url: the API root; None: the SDK's default host.
        timeout: seconds for the whole call (the SDK's timeout and a hard deadline).
        max_tokens: completion tokens asked for.
        temperature: sampling temperature.
    """

    def __init__(
        self,
        *,
        name: str,
        model: str,
        api_key: str,
        base_url: str | None = None,
        timeout: float = 30.0,
        max_tokens: int = 300,
        temperature: float = 0.9,
    ) -> None:
        self.name = name
        self.model = model
        self.timeout = timeout
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._secret = api_key
        self._client = self._make_client(api_key, base_url, timeout)

    def _make_client(self, api_key: str, base_url: str | None, timeout: float) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model={self.model!r})"
