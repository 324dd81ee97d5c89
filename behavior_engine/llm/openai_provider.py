"""OpenAI chat completions, and any OpenAI-compatible server (Ollama, vLLM, LiteLLM) by base_url.

The SDK's own retries are off (``max_retries=0``): retrying and falling back is the provider
chain's job, and it needs every failure as one of the :mod:`backend.errors` provider errors
(:mod:`behavior_engine.llm.errors_map`). :class:`ChatCompletionsProvider` holds everything
shared with the Groq adapter, whose SDK is generated from the same template (same response
objects, same exception tree).
"""

from __future__ import annotations

import asyncio
import time
from types import ModuleType
from typing import Any

import openai

from backend.errors import ProviderError, ProviderRefused
from behavior_engine.llm.base import SDKProvider
from behavior_engine.llm.errors_map import error_for_status, make_generation, unavailable
from behavior_engine.turn import Generation, GenerationRequest


class ChatCompletionsProvider(SDKProvider):
    """A provider speaking ``POST .../chat/completions`` through a Stainless-generated SDK.

    Subclasses set :attr:`sdk` (the SDK module, for its exception classes) and build the
    client in :meth:`_make_client`. Arguments: see :class:`SDKProvider` (``base_url`` for
    Ollama, e.g. ``http://127.0.0.1:11434/v1``).
    """

    sdk: ModuleType = openai

    def _make_client(self, api_key: str, base_url: str | None, timeout: float) -> Any:
        return openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0
        )

    async def aclose(self) -> None:
        """Close the SDK client's connection pool."""
        await self._client.close()

    async def generate(self, request: GenerationRequest) -> Generation:
        """Ask the model for one message.

        Raises:
            ProviderRateLimited, ProviderUnavailable, ProviderRejected, ProviderRefused: see
                :mod:`behavior_engine.llm.errors_map`.
        """
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                resp = await self._client.chat.completions.create(
                    model=self.model,
                    messages=request.messages,
                    max_tokens=self.max_tokens,
                    temperature=self.temperature,
                )
        except (self.sdk.APIError, ValueError, TimeoutError, OSError) as exc:
            # APIStatusError (HTTP error answers), APIConnectionError (APITimeoutError
            # included), APIResponseValidationError, a body that is not JSON (the SDK lets
            # json.JSONDecodeError through unwrapped), our own deadline.
            raise self._map_error(exc) from None
        choices = getattr(resp, "choices", None)
        if not isinstance(choices, list):
            raise unavailable(self.name, ValueError(f"not a chat completion: {type(resp)}"))
        if not choices:
            raise ProviderRefused(self.name, "no choices in the answer")
        choice = choices[0]
        if choice.finish_reason == "content_filter":
            raise ProviderRefused(self.name, "content filter (finish_reason content_filter)")
        if getattr(choice.message, "refusal", None):
            raise ProviderRefused(self.name, "the model refused")
        usage = resp.usage
        details = getattr(usage, "prompt_tokens_details", None)
        cached = (details.get("cached_tokens") if isinstance(details, dict)
                  else getattr(details, "cached_tokens", None))
        return make_generation(
            provider=self.name,
            model=resp.model or self.model,
            text=choice.message.content,
            max_chars=request.max_chars,
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            cached_tokens=cached,
            started=started,
        )

    def _map_error(self, exc: Exception) -> ProviderError:
        sdk = self.sdk
        if isinstance(exc, sdk.APIStatusError):
            body = exc.body  # openai: the "error" object; groq: the whole body
            error = body.get("error", body) if isinstance(body, dict) else body
            detail = error.get("message") if isinstance(error, dict) else error
            return error_for_status(
                self.name,
                exc.status_code,
                str(detail or ""),
                headers=exc.response.headers,
                body=body,
                secret=self._secret,
            )
        return unavailable(self.name, exc, self._secret)


class OpenAIProvider(ChatCompletionsProvider):
    """OpenAI (or an OpenAI-compatible server) through ``openai.AsyncOpenAI``."""
