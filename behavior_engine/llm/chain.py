"""The provider chain: provider 1 → 2 → … → offline, with retries, breakers and budgets.

For each call, providers are tried in order (the global order, or a bot's own). A provider
is *skipped without a network call* when its circuit breaker is open or its budget would
run out; otherwise it gets attempts until it answers, its retries run out, or its deadline
passes:

* each attempt has a timeout (``timeout_s``), and all attempts on one provider together a
  deadline (``deadline_s``; by default the timeout itself, so a hanging provider costs one
  timeout, not one per retry);
* 429, 5xx, timeouts and connection errors are retried with exponential backoff and jitter
  (tenacity), a 429 after its ``Retry-After`` when that is at most ``max_retry_after_s``
  (longer: next provider at once);
* 400/401/403/404 are never retried; 401/403/404 (a bad key, a retired model) open that
  provider's breaker for ``rejected_cooldown_s`` and are logged once, not on every message;
* a refusal (content filter, empty answer) moves on at once.

The offline generator is the last resort and always answers, so the simulation keeps
running when every provider is down. Every network attempt is reported to ``recorder`` (the
cost ledger); the result lists why each provider before the answering one was left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry.trace import Span
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)

from backend import metrics, tracing
from backend.errors import (
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
)
from behavior_engine.llm.base import Provider
from behavior_engine.llm.guards import Budget, CircuitBreaker
from behavior_engine.turn import Generation, GenerationRequest

log = logging.getLogger("botsim.llm")

Outcome = Literal["ok", "rate_limited", "unavailable", "rejected", "refused"]


@dataclass(frozen=True)
class RetryPolicy:
    """How one provider is retried.

    Attributes:
        max_attempts: attempts per call, first included (1 = no retry).
        timeout_s: timeout of one attempt, seconds.
        deadline_s: all attempts on this provider together, seconds (None: ``timeout_s``).
        backoff_initial_s / backoff_max_s / jitter_s: exponential backoff with jitter.
        max_retry_after_s: longest ``Retry-After`` waited for; longer → next provider.
        rejected_cooldown_s: how long a 401/403/404 keeps the provider skipped.
    """

    max_attempts: int = 3
    timeout_s: float = 30.0
    deadline_s: float | None = None
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0
    jitter_s: float = 0.5
    max_retry_after_s: float = 5.0
    rejected_cooldown_s: float = 600.0


@dataclass
class ChainEntry:
    """One provider of the chain with its guards."""

    provider: Provider
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    budget: Budget = field(default_factory=Budget)
    max_tokens: int = 300
    _told: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        """The provider's configured name."""
        return self.provider.name


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One network attempt, for the cost ledger and the metrics.

    Attributes:
        provider / model: who was called.
        bot_id / chat_id / turn_id: for whom (from the request's context).
        outcome: ``ok`` or the kind of failure.
        error: the failure's message (never a key), or None.
        attempt: 1 for the first attempt on this provider in this call.
        prompt_tokens / completion_tokens / cached_tokens: usage (0 for failures).
        latency_ms: wall time of the attempt.
    """

    provider: str
    model: str | None
    bot_id: int | None
    chat_id: int | None
    turn_id: str | None
    outcome: Outcome
    error: str | None
    attempt: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    latency_ms: float


@dataclass(frozen=True, slots=True)
class Skip:
    """Why a provider did not answer: ``breaker_open``, ``budget``, or an outcome."""

    provider: str
    reason: str


@dataclass(frozen=True, slots=True)
class ChainResult:
    """The answer and the path to it: ``skipped`` lists the providers left, in order."""

    generation: Generation
    skipped: tuple[Skip, ...]


Recorder = Callable[[CallRecord], Awaitable[None]]


def estimate_tokens(request: GenerationRequest, max_tokens: int) -> int:
    """Tokens a call may use: prompt characters / 4 (a common estimate) + ``max_tokens``."""
    return sum(len(m["content"]) for m in request.messages) // 4 + max_tokens


def _outcome(exc: ProviderError) -> Outcome:
    if isinstance(exc, ProviderRateLimited):
        return "rate_limited"
    if isinstance(exc, ProviderUnavailable):
        return "unavailable"
    if isinstance(exc, ProviderRejected):
        return "rejected"
    return "refused"


#: The ``reason`` label values of ``botsim_llm_skips_total``: a breaker open, a budget
#: spent, or the failed call's outcome (:func:`_outcome`).
SKIP_REASONS = ("breaker_open", "budget", "rate_limited", "unavailable", "rejected",
                "refused")


def _export_budget(entry: ChainEntry) -> None:
    """Set ``botsim_llm_budget_left_ratio{provider, limit}`` from the entry's budget (only
    the limits that are set)."""
    for limit, ratio in entry.budget.left_ratio().items():
        metrics.LLM_BUDGET_LEFT.labels(entry.name, limit).set(ratio)


class ProviderChain:
    """Ordered providers with fallback; the offline generator answers last.

    Args:
        entries: the providers in their global order.
        last_resort: the generator that always answers (offline).
        recorder: awaited with a :class:`CallRecord` after every network attempt.
        sleep: the sleep used between retries (injectable for tests).
    """

    def __init__(
        self,
        entries: Sequence[ChainEntry],
        *,
        last_resort: Provider,
        recorder: Recorder | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.entries = {e.name: e for e in entries}
        self.order = [e.name for e in entries]
        self.last_resort = last_resort
        self.recorder = recorder
        self._sleep = sleep
        for entry in entries:  # the series exist before the first call
            _export_budget(entry)
            metrics.LLM_FAILOVERS.labels(entry.name)
            metrics.LLM_ANSWERS.labels(entry.name)
            for reason in SKIP_REASONS:
                metrics.LLM_SKIPS.labels(entry.name, reason)
        metrics.LLM_FAILOVERS.labels(last_resort.name)

    def status(self) -> list[dict[str, Any]]:
        """Each provider's guards now, in chain order, as JSON-ready dicts: ``name``,
        ``breaker`` (closed/open/half_open), ``retry_in_s`` (seconds until an open breaker
        lets a probe through), ``budget_left`` (see :meth:`Budget.left`) and
        ``tokens_today`` (tokens counted in the last 24 h)."""
        out = []
        for name in self.order:
            entry = self.entries[name]
            out.append({
                "name": name,
                "breaker": entry.breaker.state,
                "retry_in_s": round(entry.breaker.retry_in(), 1),
                "budget_left": {k: None if v is None else round(v)
                                for k, v in entry.budget.left().items()},
                "tokens_today": round(entry.budget.used_today()),
            })
        return out

    async def generate(
        self, request: GenerationRequest, *, order: Sequence[str] | None = None
    ) -> ChainResult:
        """Answer ``request`` from the first provider that can.

        Args:
            request: the prompt.
            order: a bot's own provider order (names); unknown names are skipped with the
                reason ``unknown provider``. None: the global order.

        Returns:
            The generation and the skipped providers with their reasons. Never raises for
            provider failures: the last resort answers.

        Traced as an ``llm`` span (the answering provider, model, tokens, the providers
        left) with one ``llm.attempt`` child per attempt (:mod:`backend.tracing`).
        """
        with tracing.span("llm") as span:
            result = await self._generate(request, order)
            if span.is_recording():
                gen = result.generation
                span.set_attributes({
                    "gen_ai.provider.name": gen.provider,
                    **({"gen_ai.response.model": gen.model} if gen.model else {}),
                    "gen_ai.usage.input_tokens": gen.prompt_tokens,
                    "gen_ai.usage.output_tokens": gen.completion_tokens,
                    "botsim.llm.skipped": [f"{k.provider}: {k.reason.split(':', 1)[0]}"
                                           for k in result.skipped],
                    tracing.OUTCOME: "fallback" if result.skipped else "ok"})
            return result

    async def _generate(self, request: GenerationRequest,
                        order: Sequence[str] | None) -> ChainResult:
        """:meth:`generate`'s body."""
        skipped: list[Skip] = []
        for name in order if order is not None else self.order:
            entry = self.entries.get(name)
            if entry is None:
                skipped.append(Skip(name, "unknown provider"))
                continue
            why = entry.budget.blocked(estimate_tokens(request, entry.max_tokens))
            if why is not None:
                skipped.append(Skip(name, f"budget: {why}"))
                _export_budget(entry)  # the gauge follows a budget that keeps it skipped
                continue
            if not entry.breaker.allow():  # last: allow() may hand out the half-open probe
                skipped.append(Skip(name, "breaker_open"))
                continue
            try:
                generation = await self._call(entry, request)
            except ProviderError as exc:
                skipped.append(Skip(name, f"{_outcome(exc)}: {exc}"))
                continue
            return self._answered(generation, skipped)
        with tracing.span("llm.attempt", attributes={
                "gen_ai.provider.name": self.last_resort.name, "botsim.llm.attempt": 1}) as span:
            generation = await self.last_resort.generate(request)
            _traced_answer(span, generation)
        return self._answered(generation, skipped)

    def _answered(self, generation: Generation, skipped: list[Skip]) -> ChainResult:
        for skip in skipped:
            metrics.LLM_SKIPS.labels(skip.provider, skip.reason.split(":", 1)[0]).inc()
        metrics.LLM_ANSWERS.labels(generation.provider).inc()
        if skipped:  # a provider before the one that answered did not
            metrics.LLM_FAILOVERS.labels(generation.provider).inc()
        return ChainResult(generation, tuple(skipped))

    async def _call(self, entry: ChainEntry, request: GenerationRequest) -> Generation:
        policy = entry.retry
        deadline = policy.deadline_s if policy.deadline_s is not None else policy.timeout_s
        started = time.monotonic()
        backoff = wait_exponential_jitter(
            initial=policy.backoff_initial_s, max=policy.backoff_max_s, jitter=policy.jitter_s
        )

        def wait_after(exc: BaseException | None, state: RetryCallState | None = None) -> float:
            if isinstance(exc, ProviderRateLimited) and exc.retry_after is not None:
                return exc.retry_after
            if state is None:  # after the first attempt: the first backoff step
                return min(policy.backoff_initial_s, policy.backoff_max_s)
            return float(backoff(state))

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            return wait_after(exc, state)

        def retryable(exc: BaseException) -> bool:
            if not isinstance(exc, ProviderError) or not exc.retryable:
                return False
            if isinstance(exc, ProviderRateLimited) and exc.retry_after is not None:
                return exc.retry_after <= policy.max_retry_after_s
            return True

        # Fast path: most calls succeed at once, and tenacity's machinery costs about as
        # much CPU as the rest of the chain; it takes over only once an attempt has failed.
        try:
            return await self._attempt(entry, request, 1, min(policy.timeout_s, deadline))
        except ProviderError as exc:
            if policy.max_attempts < 2 or not retryable(exc):
                raise
            first_error = exc

        pause = wait_after(first_error)
        left = deadline - (time.monotonic() - started) - pause
        if left <= 0:
            raise first_error  # no time for another attempt on this provider: move on
        await self._sleep(pause)
        attempt = 1
        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.max_attempts - 1) | stop_before_delay(left),
            wait=wait,
            retry=retry_if_exception(retryable),
            sleep=self._sleep,
            reraise=True,
        )
        async for try_ in retrying:
            with try_:
                attempt += 1
                remaining = deadline - (time.monotonic() - started)
                generation = await self._attempt(
                    entry, request, attempt, min(policy.timeout_s, max(remaining, 0.001))
                )
        return generation

    async def _attempt(
        self, entry: ChainEntry, request: GenerationRequest, attempt: int, limit_s: float
    ) -> Generation:
        model = getattr(entry.provider, "model", None)
        t0 = time.perf_counter()
        with tracing.span("llm.attempt", attributes={
                "gen_ai.provider.name": entry.name, "botsim.llm.attempt": attempt,
                **({"gen_ai.request.model": model} if model else {})}) as span:
            try:
                async with asyncio.timeout(limit_s):
                    generation = await entry.provider.generate(request)
            except TimeoutError:
                exc: ProviderError = ProviderUnavailable(entry.name,
                                                         f"no answer in {limit_s:.1f} s")
                _traced_failure(span, exc)
                await self._failed(entry, request, model, exc, attempt, t0)
                raise exc from None
            except ProviderError as err:
                _traced_failure(span, err)
                await self._failed(entry, request, model, err, attempt, t0)
                raise
            _traced_answer(span, generation)
        entry.breaker.success()
        metrics.LLM_BREAKER_OPEN.labels(entry.name).set(0)
        entry.budget.spend(generation.prompt_tokens + generation.completion_tokens)
        _export_budget(entry)
        entry._told.clear()
        ctx = request.context
        await self._record(CallRecord(
            provider=entry.name, model=generation.model or model, bot_id=ctx.bot_id,
            chat_id=ctx.chat_id, turn_id=ctx.turn_id, outcome="ok", error=None,
            attempt=attempt, prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            cached_tokens=generation.cached_tokens,
            latency_ms=(time.perf_counter() - t0) * 1000.0,
        ))
        return generation

    async def _failed(
        self, entry: ChainEntry, request: GenerationRequest, model: str | None,
        exc: ProviderError, attempt: int, t0: float,
    ) -> None:
        outcome = _outcome(exc)
        if isinstance(exc, ProviderRejected) and exc.status in (401, 403, 404):
            entry.breaker.trip(entry.retry.rejected_cooldown_s)
            key = f"rejected:{exc.status}"
            if key not in entry._told:  # the operator is told once, not on every message
                entry._told.add(key)
                log.error("provider %s refuses us (HTTP %s): %s; skipped for %.0f s",
                          entry.name, exc.status, exc, entry.retry.rejected_cooldown_s)
        elif outcome in ("rate_limited", "unavailable"):
            entry.breaker.failure()
        metrics.LLM_BREAKER_OPEN.labels(entry.name).set(entry.breaker.state == "open")
        if outcome in ("rate_limited", "unavailable"):
            entry.budget.spend(0)  # the request counts against requests/min all the same
            _export_budget(entry)
        ctx = request.context
        await self._record(CallRecord(
            provider=entry.name, model=model, bot_id=ctx.bot_id, chat_id=ctx.chat_id,
            turn_id=ctx.turn_id, outcome=outcome, error=str(exc)[:500],
            attempt=attempt, prompt_tokens=0, completion_tokens=0, cached_tokens=0,
            latency_ms=(time.perf_counter() - t0) * 1000.0,
        ))

    async def _record(self, record: CallRecord) -> None:
        if self.recorder is not None:
            await self.recorder(record)


def _traced_answer(span: Span, generation: Generation) -> None:
    """Put an attempt's answer on its span: model, tokens, outcome ``ok``."""
    if span.is_recording():
        span.set_attributes({
            **({"gen_ai.response.model": generation.model} if generation.model else {}),
            "gen_ai.usage.input_tokens": generation.prompt_tokens,
            "gen_ai.usage.output_tokens": generation.completion_tokens,
            "botsim.llm.cached_tokens": generation.cached_tokens, tracing.OUTCOME: "ok"})


def _traced_failure(span: Span, exc: ProviderError) -> None:
    """Put an attempt's failure on its span: outcome (``rate_limited``, ``unavailable``,
    ``rejected``, ``refused``), ``error.type``, status ERROR (never the error's message)."""
    if span.is_recording():
        span.set_attributes({tracing.OUTCOME: _outcome(exc), "error.type": type(exc).__name__})
        tracing.failed(span, _outcome(exc))
