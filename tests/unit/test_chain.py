"""The provider chain with scripted providers: fallback, retries, breaker, budgets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime

import pytest

from backend.errors import (
    ProviderError,
    ProviderRateLimited,
    ProviderRefused,
    ProviderRejected,
    ProviderUnavailable,
)
from backend.schemas import PersonaProfile, Style
from behavior_engine.llm.chain import CallRecord, ChainEntry, ProviderChain, RetryPolicy
from behavior_engine.llm.guards import Budget, CircuitBreaker, WindowCounter
from behavior_engine.turn import Generation, GenerationRequest, MarketSnapshot, TurnContext


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Scripted:
    """A provider that plays a script: an exception to raise, 'hang', or text to answer."""

    def __init__(self, name: str, script: Iterable[object] = (), default: object = "ok") -> None:
        self.name = name
        self.model = f"{name}-model"
        self.script = list(script)
        self.default = default
        self.calls = 0

    async def generate(self, request: GenerationRequest) -> Generation:
        self.calls += 1
        step = self.script.pop(0) if self.script else self.default
        if isinstance(step, ProviderError):
            raise step
        if step == "hang":
            await asyncio.sleep(3600)
        return Generation(text=f"{self.name}: {step}", provider=self.name, model=self.model,
                          prompt_tokens=100, completion_tokens=20, cached_tokens=60)


def request() -> GenerationRequest:
    profile = PersonaProfile(role="scalper", language="tr", bio="x",
                             style=Style(formality="casual", emoji_rate=0, length="short"),
                             topics={"btc": 1.0})
    snap = MarketSnapshot(at=datetime(2026, 1, 1, tzinfo=UTC), prices={}, change_pct={})
    ctx = TurnContext(turn_id="t", bot_name="A", bot_username="a_bot", profile=profile,
                      stances=(), holdings=(), mood=0.0, pnl_pct=0.0, topic="btc", market=snap,
                      history=(), reply_to=None, seed=1, bot_id=7, chat_id=3)
    return GenerationRequest(messages=[{"role": "system", "content": "x" * 400}], context=ctx)


FAST = RetryPolicy(max_attempts=3, timeout_s=0.3, backoff_initial_s=0.01, backoff_max_s=0.02,
                   jitter_s=0.0, max_retry_after_s=5.0)


class Recorder:
    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    async def __call__(self, record: CallRecord) -> None:
        self.records.append(record)


def chain(*providers: Scripted, policy: RetryPolicy = FAST, **kw: object) -> tuple[
        ProviderChain, Recorder, list[float]]:
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    rec = Recorder()
    # guards given in ``kw`` belong to the first provider only
    entries = [ChainEntry(provider=p, retry=policy, **(kw if i == 0 else {}))  # type: ignore[arg-type]
               for i, p in enumerate(providers)]
    return ProviderChain(entries, last_resort=Scripted("offline"), recorder=rec,
                         sleep=sleep), rec, slept


async def test_500_falls_back_to_second_after_retries() -> None:
    a = Scripted("a", default=ProviderUnavailable("a", "HTTP 500"))
    b = Scripted("b")
    c, rec, slept = chain(a, b)
    result = await c.generate(request())
    assert result.generation.provider == "b"
    assert a.calls == 3 and b.calls == 1
    assert [s.provider for s in result.skipped] == ["a"]
    assert result.skipped[0].reason.startswith("unavailable")
    assert [r.outcome for r in rec.records] == ["unavailable"] * 3 + ["ok"]
    assert [r.attempt for r in rec.records] == [1, 2, 3, 1]
    assert len(slept) == 2 and all(0 < s <= 0.02 for s in slept)


async def test_retry_then_success_stays_on_provider() -> None:
    a = Scripted("a", [ProviderUnavailable("a", "HTTP 503")])
    c, rec, _ = chain(a, Scripted("b"))
    result = await c.generate(request())
    assert result.generation.provider == "a" and result.skipped == ()
    assert a.calls == 2 and [r.outcome for r in rec.records] == ["unavailable", "ok"]


async def test_retry_after_is_honoured_or_moved_on() -> None:
    a = Scripted("a", [ProviderRateLimited("a", "429", retry_after=2.0)])
    patient = RetryPolicy(max_attempts=3, timeout_s=1, deadline_s=10, max_retry_after_s=5.0)
    c, _, slept = chain(a, Scripted("b"), policy=patient)
    assert (await c.generate(request())).generation.provider == "a"
    assert slept == [2.0]
    a2 = Scripted("a", [ProviderRateLimited("a", "429", retry_after=2.0)])
    no_wait = RetryPolicy(max_attempts=3, timeout_s=1, max_retry_after_s=1.0)
    c2, _, slept2 = chain(a2, Scripted("b"), policy=no_wait)
    result = await c2.generate(request())
    assert result.generation.provider == "b" and slept2 == [] and a2.calls == 1


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_bad_key_or_model_skipped_at_once_and_told_once(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    a = Scripted("a", default=ProviderRejected("a", f"HTTP {status}", status=status))
    c, rec, slept = chain(a, Scripted("b"))
    for _ in range(5):
        assert (await c.generate(request())).generation.provider == "b"
    assert a.calls == 1 and slept == []  # no retry, then skipped without a call
    assert [r.outcome for r in rec.records if r.provider == "a"] == ["rejected"]
    told = [r for r in caplog.records if "refuses us" in r.getMessage()]
    assert len(told) == 1


async def test_400_is_not_retried_and_not_tripping() -> None:
    a = Scripted("a", [ProviderRejected("a", "HTTP 400", status=400)])
    c, _, _ = chain(a, Scripted("b"))
    assert (await c.generate(request())).generation.provider == "b"
    assert (await c.generate(request())).generation.provider == "a"
    assert a.calls == 2


async def test_refusal_moves_on_without_retry() -> None:
    a = Scripted("a", [ProviderRefused("a", "content_filter")])
    c, rec, _ = chain(a, Scripted("b"))
    result = await c.generate(request())
    assert result.generation.provider == "b" and a.calls == 1
    assert rec.records[0].outcome == "refused"


async def test_hang_costs_one_timeout_then_fallback() -> None:
    a = Scripted("a", default="hang")
    c, _, _ = chain(a, Scripted("b"))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    result = await c.generate(request())
    elapsed = loop.time() - t0
    assert result.generation.provider == "b"
    assert elapsed < FAST.timeout_s + 0.5
    assert a.calls == 1  # the deadline leaves no time for a retry


async def test_breaker_opens_then_probes() -> None:
    clock = Clock()
    a = Scripted("a", default=ProviderUnavailable("a", "HTTP 500"))
    one_try = RetryPolicy(max_attempts=1, timeout_s=1)
    c, _, _ = chain(a, Scripted("b"), policy=one_try,
                    breaker=CircuitBreaker(failure_threshold=3, cooldown_s=30, clock=clock))
    for _ in range(10):
        assert (await c.generate(request())).generation.provider == "b"
    assert a.calls == 3  # opened after 3 failures: no request reached it after that
    clock.t += 31
    a.default = "ok"
    assert (await c.generate(request())).generation.provider == "a"  # the half-open probe
    assert c.entries["a"].breaker.state == "closed"


def test_breaker_failure_rate_and_single_probe() -> None:
    clock = Clock()
    br = CircuitBreaker(failure_threshold=100, failure_rate=0.5, rate_window=10,
                        rate_min_calls=10, cooldown_s=5, clock=clock)
    for i in range(10):
        assert br.allow()
        br.failure() if i % 2 else br.success()
    assert br.state == "open" and not br.allow()
    clock.t += 5
    assert br.allow() and not br.allow()  # one probe only
    br.failure()
    assert br.state == "open" and br.retry_in() == 5


async def test_tokens_per_day_budget_switches_before_exhaustion() -> None:
    clock = Clock()
    a = Scripted("a")
    # each call is estimated at 400/4 + 300 = 400 tokens and spends 120: after 6 calls
    # (720 spent) the 7th would reach 1,120 > 1,000, so it goes to b instead
    c, _, _ = chain(a, Scripted("b"), budget=Budget(tokens_per_day=1000, headroom=0.0,
                                                     clock=clock))
    providers = [(await c.generate(request())).generation.provider for _ in range(8)]
    assert providers == ["a"] * 6 + ["b"] * 2
    spent = c.entries["a"].budget.used_today()
    assert spent <= 1000  # never ran out
    clock.t += 86_400 + 60  # the day rolls over
    assert (await c.generate(request())).generation.provider == "a"


async def test_status_reports_breakers_and_budget_left() -> None:
    clock = Clock()
    a = Scripted("a")
    one_try = RetryPolicy(max_attempts=1, timeout_s=1)
    c, _, _ = chain(a, Scripted("b"), policy=one_try,
                    breaker=CircuitBreaker(failure_threshold=2, cooldown_s=30, clock=clock),
                    budget=Budget(requests_per_min=100, tokens_per_day=10_000, headroom=0.1,
                                  clock=clock))
    assert [s["name"] for s in c.status()] == ["a", "b"]
    fresh = c.status()[0]
    assert fresh["budget_left"] == {"requests/min": 90, "tokens/min": None,
                                    "tokens/day": 9000}
    assert c.status()[1]["budget_left"] == dict.fromkeys(fresh["budget_left"])  # no limits
    for _ in range(3):  # a answers 3 calls of 120 tokens each (the scripted usage)
        await c.generate(request())
    a.default = ProviderUnavailable("a", "HTTP 500")
    for _ in range(3):  # two failures open a's breaker; the third call skips it
        await c.generate(request())
    clock.t += 10
    a_now, b_now = c.status()
    assert a_now["breaker"] == "open" and a_now["retry_in_s"] == 20.0
    assert b_now["breaker"] == "closed" and b_now["retry_in_s"] == 0.0
    assert a_now["tokens_today"] == 360
    assert a_now["budget_left"]["tokens/day"] == 9000 - 360
    assert a_now["budget_left"]["requests/min"] == 90 - a.calls


async def test_all_down_offline_answers() -> None:
    a = Scripted("a", default=ProviderUnavailable("a", "HTTP 503"))
    b = Scripted("b", default=ProviderRejected("b", "HTTP 401", status=401))
    c, _, _ = chain(a, b)
    result = await c.generate(request())
    assert result.generation.provider == "offline"
    assert [s.provider for s in result.skipped] == ["a", "b"]


async def test_bot_order_overrides_global() -> None:
    c, _, _ = chain(Scripted("a"), Scripted("b"))
    assert (await c.generate(request(), order=["b", "a"])).generation.provider == "b"
    result = await c.generate(request(), order=["nope", "a"])
    assert result.generation.provider == "a" and result.skipped[0].reason == "unknown provider"


def test_window_counter_buckets() -> None:
    w = WindowCounter(window_s=60, bucket_s=1)
    for t in range(100):
        w.add(float(t), 1)
    assert w.total(99.5) == 60
    assert len(w._buckets) <= 61
