"""Gemini ``generateContent`` through google-genai (``Client.aio.models.generate_content``).

System messages become ``system_instruction`` (one part each, in order, so the stable persona
prefix stays the first part), the others ``contents`` (``assistant`` → ``model``).

Transport: the adapter gives the SDK its own ``httpx.AsyncClient``. That pins the transport
(google-genai otherwise picks aiohttp when it is installed, else httpx2) and with it the
exceptions to map, and it keeps the SDK's *implicit* retry off: on the aiohttp path the SDK
retries a connection error once after sleeping 1–10 s unless retry options are set. Retries
are off explicitly too (``HttpRetryOptions(attempts=1)``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from backend.errors import ProviderError, ProviderRefused
from behavior_engine.llm.base import SDKProvider
from behavior_engine.llm.errors_map import error_for_status, make_generation, unavailable
from behavior_engine.turn import Generation, GenerationRequest

#: Finish reasons that mean the answer was withheld.
BLOCKED = frozenset(
    {"SAFETY", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "RECITATION", "IMAGE_SAFETY",
     "IMAGE_PROHIBITED_CONTENT"}
)


class GeminiProvider(SDKProvider):
    """Gemini with the SDK's retries off and a per-request timeout.

    Args:
        name: provider name recorded with every message (``gemini``...).
        model: model to ask for (``gemini-2.5-flash``...).
        api_key: the API key (sent as ``x-goog-api-key``; never in messages or logs).
        base_url: the API root; None: ``https://generativelanguage.googleapis.com/``. The SDK
            appends ``/{api_version}/models/{model}:generateContent`` (``v1`` by default in
            google-genai 3.x).
        timeout: seconds for the whole call.
        max_tokens: ``max_output_tokens`` (thinking models spend part of it on thoughts).
        temperature: sampling temperature.
    """

    def _make_client(self, api_key: str, base_url: str | None, timeout: float) -> Any:
        self._http = httpx.AsyncClient(timeout=timeout)
        options = types.HttpOptions(
            base_url=base_url,
            timeout=max(1, round(timeout * 1000)),  # milliseconds
            retry_options=types.HttpRetryOptions(attempts=1),
            httpx_async_client=self._http,
        )
        return genai.Client(api_key=api_key, vertexai=False, http_options=options)

    async def aclose(self) -> None:
        """Close the SDK client and its connection pool."""
        await self._client.aio.aclose()
        self._client.close()
        await self._http.aclose()

    async def generate(self, request: GenerationRequest) -> Generation:
        """Ask the model for one message.

        Raises:
            ProviderRateLimited, ProviderUnavailable, ProviderRejected, ProviderRefused: see
                :mod:`behavior_engine.llm.errors_map`.
        """
        system = [
            types.Part(text=m["content"])
            for m in request.messages
            if m["role"] in ("system", "developer")
        ]
        contents = [
            types.Content(
                role="model" if m["role"] == "assistant" else "user",
                parts=[types.Part(text=m["content"])],
            )
            for m in request.messages
            if m["role"] not in ("system", "developer")
        ]
        config = types.GenerateContentConfig(
            system_instruction=types.Content(parts=system) if system else None,
            max_output_tokens=self.max_tokens,
            temperature=self.temperature,
        )
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                resp = await self._client.aio.models.generate_content(
                    model=self.model, contents=contents, config=config
                )
        except (genai_errors.APIError, httpx.HTTPError, ValueError, TimeoutError, OSError) as exc:
            # APIError: HTTP error answers; httpx: timeouts, refused or reset connections;
            # ValueError: a body that is not JSON or not the format; TimeoutError: our deadline.
            raise self._map_error(exc) from None
        if not resp.candidates:
            feedback = resp.prompt_feedback
            reason = feedback.block_reason if feedback is not None else None
            why = f" (block reason {reason})" if reason else ""
            raise ProviderRefused(self.name, f"no candidates{why}")
        candidate = resp.candidates[0]
        finish = candidate.finish_reason
        finish_name = str(getattr(finish, "value", finish or ""))
        parts = candidate.content.parts if candidate.content is not None else None
        text = "".join(p.text for p in parts or [] if p.text and not p.thought)
        if finish_name in BLOCKED:
            raise ProviderRefused(self.name, f"blocked (finishReason {finish_name})")
        if not text.strip():  # e.g. MAX_TOKENS spent on thinking
            raise ProviderRefused(self.name, f"empty answer text (finishReason {finish_name})")
        usage = resp.usage_metadata
        return make_generation(
            provider=self.name,
            model=resp.model_version or self.model,
            text=text,
            max_chars=request.max_chars,
            prompt_tokens=usage.prompt_token_count if usage else None,
            completion_tokens=usage.candidates_token_count if usage else None,
            cached_tokens=usage.cached_content_token_count if usage else None,
            started=started,
        )

    def _map_error(self, exc: Exception) -> ProviderError:
        if isinstance(exc, genai_errors.APIError):
            response = getattr(exc, "response", None)
            return error_for_status(
                self.name,
                exc.code,
                exc.message or exc.status or "",
                headers=getattr(response, "headers", None),
                body=exc.details,
                secret=self._secret,
            )
        return unavailable(self.name, exc, self._secret)
