"""Build the provider chain from settings (``BOTSIM_LLM_PROVIDERS``)."""

from __future__ import annotations

from backend.redaction import register_secret
from backend.schemas import ProviderSettings
from behavior_engine.llm.base import Provider
from behavior_engine.llm.chain import ChainEntry, ProviderChain, Recorder, RetryPolicy
from behavior_engine.llm.guards import Budget, CircuitBreaker
from behavior_engine.llm.offline import OfflineGenerator


def build_provider(cfg: ProviderSettings) -> Provider:
    """The SDK-backed provider for one configuration item (SDK retries off); its API key is
    registered as a secret no log line shows (:mod:`backend.redaction`)."""
    key = cfg.api_key.get_secret_value() if cfg.api_key is not None else "not-needed"
    register_secret(cfg.api_key.get_secret_value() if cfg.api_key is not None else None)
    common = {"name": cfg.name, "model": cfg.model, "api_key": key, "base_url": cfg.base_url,
              "timeout": cfg.timeout_s, "max_tokens": cfg.max_tokens}
    if cfg.kind == "groq":
        from behavior_engine.llm.groq_provider import GroqProvider

        return GroqProvider(**common)  # type: ignore[arg-type]
    if cfg.kind == "gemini":
        from behavior_engine.llm.gemini_provider import GeminiProvider

        return GeminiProvider(**common)  # type: ignore[arg-type]
    from behavior_engine.llm.openai_provider import OpenAIProvider

    return OpenAIProvider(**common)  # type: ignore[arg-type]


def build_entry(cfg: ProviderSettings) -> ChainEntry:
    """A chain entry (provider, retry policy, breaker, budget) for one configuration item."""
    return ChainEntry(
        provider=build_provider(cfg),
        retry=RetryPolicy(
            max_attempts=cfg.max_attempts,
            timeout_s=cfg.timeout_s,
            deadline_s=cfg.deadline_s,
            max_retry_after_s=cfg.max_retry_after_s,
        ),
        breaker=CircuitBreaker(
            failure_threshold=cfg.breaker_failures, cooldown_s=cfg.breaker_cooldown_s
        ),
        budget=Budget(
            requests_per_min=cfg.requests_per_min,
            tokens_per_min=cfg.tokens_per_min,
            tokens_per_day=cfg.tokens_per_day,
        ),
        max_tokens=cfg.max_tokens,
    )


def build_chain(
    providers: list[ProviderSettings], *, recorder: Recorder | None = None
) -> ProviderChain:
    """The chain of ``providers`` in order, with the offline generator as last resort."""
    return ProviderChain(
        [build_entry(cfg) for cfg in providers],
        last_resort=OfflineGenerator(),
        recorder=recorder,
    )


async def close_chain(chain: ProviderChain) -> None:
    """Close every provider's HTTP client."""
    for entry in chain.entries.values():
        aclose = getattr(entry.provider, "aclose", None)
        if aclose is not None:
            await aclose()
