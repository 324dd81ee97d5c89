"""The chain with the real SDKs against the sandbox LLM server (issue: fallback done right).

Providers come from ``ProviderSettings`` through the same factory the worker uses, so these
tests cover configuration → SDK client → wire → error mapping → chain decision.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from pydantic import SecretStr

from backend.schemas import ProviderSettings
from behavior_engine.llm.chain import CallRecord, ProviderChain
from behavior_engine.llm.factory import build_entry, close_chain
from behavior_engine.llm.guards import Budget, CircuitBreaker
from behavior_engine.llm.offline import OfflineGenerator
from sandbox.llm_api import Fault, LLMSandbox
from tests.integration.test_llm_sandbox import request_for

KEY = SecretStr("sk-sandbox-key")


def cfg(sb: LLMSandbox, name: str, kind: str, **kw: object) -> ProviderSettings:
    base = sb.url_for(name) + ("/v1" if kind == "openai" else "")
    model = {"groq": "llama-3.3-70b-versatile", "openai": "gpt-4o-mini",
             "gemini": "gemini-2.0-flash"}[kind]
    values: dict[str, object] = {"name": name, "kind": kind, "model": model, "api_key": KEY,
                                 "base_url": base, "timeout_s": 1.0}
    values.update(kw)
    return ProviderSettings.model_validate(values)


class Records:
    def __init__(self) -> None:
        self.items: list[CallRecord] = []

    async def __call__(self, r: CallRecord) -> None:
        self.items.append(r)


async def make_chain(*configs: ProviderSettings, **guards: object) -> tuple[ProviderChain,
                                                                           Records]:
    entries = [build_entry(c) for c in configs]
    for key, value in guards.items():  # guards for the first provider
        setattr(entries[0], key, value)
    rec = Records()
    return ProviderChain(entries, last_resort=OfflineGenerator(), recorder=rec), rec


async def test_primary_500_answer_from_second(llm: LLMSandbox) -> None:
    llm.set_default("groq", Fault.status(500))
    # deadline_s: the retry must not depend on how fast this machine answers the first
    # attempt (the default deadline, the 1 s timeout, left no time for it under load).
    chain, rec = await make_chain(cfg(llm, "groq", "groq", max_attempts=2, deadline_s=10),
                                  cfg(llm, "openai", "openai"))
    try:
        result = await chain.generate(request_for("ayse"))
    finally:
        await close_chain(chain)
    assert result.generation.provider == "openai" and result.generation.text
    assert llm.requests("groq") == 2 and llm.requests("openai") == 1
    assert [(r.provider, r.outcome) for r in rec.items] == [
        ("groq", "unavailable"), ("groq", "unavailable"), ("openai", "ok")]


async def test_primary_hanging_second_answers_within_timeout_plus_1s(llm: LLMSandbox) -> None:
    llm.set_default("gemini", Fault.hang())
    chain, _ = await make_chain(cfg(llm, "gemini", "gemini", timeout_s=1.0),
                                cfg(llm, "groq", "groq"))
    t0 = time.perf_counter()
    try:
        result = await chain.generate(request_for("mehmet"))
    finally:
        await close_chain(chain)
    elapsed = time.perf_counter() - t0
    assert result.generation.provider == "groq"
    assert elapsed < 1.0 + 1.0, elapsed
    assert llm.requests("gemini") == 1


@pytest.mark.parametrize(("max_wait", "expect", "min_s", "max_s"),
                         [(5.0, "openai", 1.8, 3.5), (1.0, "groq", 0.0, 1.0)])
async def test_429_retry_after_2_waits_or_moves_on(
    llm: LLMSandbox, max_wait: float, expect: str, min_s: float, max_s: float
) -> None:
    llm.script("openai", Fault.status(429, retry_after=2))
    chain, _ = await make_chain(
        cfg(llm, "openai", "openai", max_retry_after_s=max_wait, deadline_s=10),
        cfg(llm, "groq", "groq"))
    t0 = time.perf_counter()
    try:
        result = await chain.generate(request_for("zeynep"))
    finally:
        await close_chain(chain)
    elapsed = time.perf_counter() - t0
    assert result.generation.provider == expect
    assert min_s <= elapsed <= max_s, elapsed


async def test_401_skipped_at_once_and_reported_once(
    llm: LLMSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    llm.set_default("groq", Fault.status(401))
    chain, rec = await make_chain(cfg(llm, "groq", "groq"), cfg(llm, "gemini", "gemini"))
    caplog.set_level(logging.ERROR, logger="botsim.llm")
    try:
        for _ in range(5):
            assert (await chain.generate(request_for("ali_hoca"))).generation.provider == (
                "gemini")
    finally:
        await close_chain(chain)
    assert llm.requests("groq") == 1  # no retry, and not called again while skipped
    told = [r for r in caplog.records if "refuses us" in r.getMessage()]
    assert len(told) == 1 and "sk-sandbox-key" not in told[0].getMessage()
    assert [r.outcome for r in rec.items if r.provider == "groq"] == ["rejected"]


async def test_breaker_keeps_requests_off_until_the_probe(llm: LLMSandbox) -> None:
    now = [0.0]
    llm.set_default("openai", Fault.status(503))
    chain, _ = await make_chain(
        cfg(llm, "openai", "openai", max_attempts=1), cfg(llm, "groq", "groq"),
        breaker=CircuitBreaker(failure_threshold=3, cooldown_s=30, clock=lambda: now[0]))
    try:
        for _ in range(8):
            assert (await chain.generate(request_for())).generation.provider == "groq"
        assert llm.requests("openai") == 3
        now[0] += 31
        llm.set_default("openai", None)
        assert (await chain.generate(request_for())).generation.provider == "openai"
        assert llm.requests("openai") == 4
    finally:
        await close_chain(chain)


async def test_tokens_per_day_switches_before_exhaustion(llm: LLMSandbox) -> None:
    chain, rec = await make_chain(cfg(llm, "groq", "groq"), cfg(llm, "openai", "openai"),
                                  budget=Budget(tokens_per_day=2500, headroom=0.0))
    try:
        providers = [(await chain.generate(request_for(turn=i))).generation.provider
                     for i in range(12)]
    finally:
        await close_chain(chain)
    first_switch = providers.index("openai")
    assert first_switch >= 2 and set(providers[first_switch:]) == {"openai"}
    used = sum(r.prompt_tokens + r.completion_tokens for r in rec.items if r.provider == "groq")
    assert used <= 2500  # switched before the day's budget ran out


async def test_all_down_offline_answers(llm: LLMSandbox) -> None:
    llm.set_default("groq", Fault.status(503))
    llm.set_default("openai", Fault.reset())
    llm.set_default("gemini", Fault.malformed())
    chain, _ = await make_chain(cfg(llm, "groq", "groq", max_attempts=1),
                                cfg(llm, "openai", "openai", max_attempts=1),
                                cfg(llm, "gemini", "gemini", max_attempts=1))
    try:
        result = await asyncio.wait_for(chain.generate(request_for("ayse")), 10)
    finally:
        await close_chain(chain)
    assert result.generation.provider == "offline" and result.generation.text
    assert [s.provider for s in result.skipped] == ["groq", "openai", "gemini"]


async def test_prefix_cache_hits_are_recorded(llm: LLMSandbox) -> None:
    chain, rec = await make_chain(cfg(llm, "openai", "openai"))
    try:
        for turn in range(3):
            await chain.generate(request_for("mehmet", turn=turn))
    finally:
        await close_chain(chain)
    cached = [r.cached_tokens for r in rec.items]
    assert cached[0] == 0 and all(c > 0 for c in cached[1:])
