"""Groq chat completions through ``groq.AsyncGroq`` (OpenAI wire format under ``/openai/v1``).

The groq SDK is generated from the same template as openai's, so everything but the client is
:class:`~behavior_engine.llm.openai_provider.ChatCompletionsProvider`. ``base_url`` is the host
root (``https://api.groq.com``, the default): the SDK appends ``/openai/v1/chat/completions``.
"""

from __future__ import annotations

from typing import Any

import groq

from behavior_engine.llm.openai_provider import ChatCompletionsProvider


class GroqProvider(ChatCompletionsProvider):
    """Groq through ``groq.AsyncGroq`` with its retries off (``max_retries=0``).

    Arguments as :class:`~behavior_engine.llm.openai_provider.ChatCompletionsProvider`.
    """

    sdk = groq

    def _make_client(self, api_key: str, base_url: str | None, timeout: float) -> Any:
        return groq.AsyncGroq(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)
