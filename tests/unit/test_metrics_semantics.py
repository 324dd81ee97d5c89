"""What the observability metrics of issue 17 count, read back from the default registry.

Counters are process-wide: each test reads a value before and after the action and checks
the difference, so the order of tests (and xdist) does not matter.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from telegram import error as tg_error

from backend import metrics
from backend.errors import ProviderUnavailable, TelegramRetryAfter, TelegramUnavailable
from behavior_engine import pipeline
from behavior_engine.llm.guards import Budget
from bots.telegram import translate_error
from tests.unit.test_chain import Clock, Scripted, chain, request


def value(name: str, **labels: str) -> float:
    """The sample's value now (0 when the series does not exist yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(("exc", "label"), [
    (tg_error.RetryAfter(3), "retry_after"),
    (tg_error.Forbidden("Forbidden: bot was kicked from the group chat"), "forbidden"),
    (tg_error.InvalidToken("Unauthorized"), "unauthorized"),
    (tg_error.BadRequest("Bad Request: chat not found"), "bad_request"),
    (tg_error.ChatMigrated(-100123), "bad_request"),
    (tg_error.TimedOut("Timed out"), "timeout"),
    (tg_error.NetworkError("Bad Gateway"), "server"),
])
def test_telegram_errors_are_counted_by_method_and_kind(exc: tg_error.TelegramError,
                                                        label: str) -> None:
    name = "botsim_telegram_errors_total"
    before = value(name, method="sendMessage", error=label)
    translate_error(exc, bot_id=1, method="sendMessage")
    assert value(name, method="sendMessage", error=label) == before + 1


def test_a_transport_failure_is_network_not_server() -> None:
    exc = tg_error.NetworkError("httpx.ConnectError: refused")
    exc.__cause__ = httpx.ConnectError("refused")
    before = value("botsim_telegram_errors_total", method="getMe", error="network")
    translated = translate_error(exc, bot_id=1, method="getMe")
    assert isinstance(translated, TelegramUnavailable) and not translated.delivered_unknown
    assert value("botsim_telegram_errors_total", method="getMe", error="network") == before + 1
    assert isinstance(translate_error(tg_error.RetryAfter(2), bot_id=1), TelegramRetryAfter)


def test_init_series_exports_known_values_at_zero_and_refuses_other_roles() -> None:
    metrics.init_series("worker")
    metrics.init_series("listener")
    for outcome in metrics.TURN_OUTCOMES:
        assert REGISTRY.get_sample_value("botsim_turns_total", {"outcome": outcome}) is not None
    assert REGISTRY.get_sample_value(
        "botsim_webhook_requests_total", {"status": "500"}) is not None
    with pytest.raises(ValueError, match="metrics role 'panel'"):
        metrics.init_series("panel")


async def test_a_fallback_answer_counts_a_failover_and_a_first_answer_does_not() -> None:
    failing = Scripted("m_a", default=ProviderUnavailable("m_a", "HTTP 500"))
    c, _, _ = chain(failing, Scripted("m_b"))
    before = value("botsim_llm_failovers_total", provider="m_b")
    assert value("botsim_llm_failovers_total", provider="m_a") == 0  # exported at start
    await c.generate(request())
    assert value("botsim_llm_failovers_total", provider="m_b") == before + 1
    c2, _, _ = chain(Scripted("m_c"))
    await c2.generate(request())
    assert value("botsim_llm_failovers_total", provider="m_c") == 0


async def test_budget_gauge_follows_spending_and_a_budget_skip() -> None:
    clock = Clock()
    c, _, _ = chain(Scripted("m_bud"), Scripted("m_next"),
                    budget=Budget(requests_per_min=4, headroom=0.0, clock=clock))
    gauge = {"provider": "m_bud", "limit": "requests_per_min"}
    assert REGISTRY.get_sample_value("botsim_llm_budget_left_ratio", gauge) == 1.0
    await c.generate(request())
    assert REGISTRY.get_sample_value("botsim_llm_budget_left_ratio", gauge) == 0.75
    for _ in range(3):
        await c.generate(request())
    result = await c.generate(request())  # the fifth call is over the budget: skipped
    assert result.generation.provider == "m_next"
    assert REGISTRY.get_sample_value("botsim_llm_budget_left_ratio", gauge) == 0.0
    clock.t += 61  # the minute has passed: the next skip check sees the budget back
    await c.generate(request())
    assert REGISTRY.get_sample_value("botsim_llm_budget_left_ratio", gauge) == 0.75
    # no tokens/day limit set: no series for it
    assert REGISTRY.get_sample_value(
        "botsim_llm_budget_left_ratio", {"provider": "m_bud", "limit": "tokens_per_day"}) is None


def _turn(chat_id: int, reply_to: Any) -> Any:
    return SimpleNamespace(chat_id=chat_id, reply_to=reply_to)


def test_a_sent_answer_to_a_person_observes_its_wait_and_the_chat_gap() -> None:
    sent_at = datetime(2026, 12, 5, 12, 0, 30, tzinfo=UTC)
    asked = SimpleNamespace(is_human=True, created_at=sent_at - timedelta(seconds=12))
    history = [SimpleNamespace(created_at=sent_at - timedelta(seconds=s)) for s in (40, 12)]
    lat_sum = value("botsim_human_reply_latency_seconds_sum")
    lat_n = value("botsim_human_reply_latency_seconds_count")
    gap_le5 = value("botsim_chat_gap_seconds_bucket", le="5.0")
    gap_le20 = value("botsim_chat_gap_seconds_bucket", le="20.0")
    chat = value("botsim_chat_messages_total", chat="99001")
    pipeline._observe_sent(_turn(99001, asked), sent_at, history)  # type: ignore[arg-type]
    assert value("botsim_human_reply_latency_seconds_count") == lat_n + 1
    assert value("botsim_human_reply_latency_seconds_sum") == pytest.approx(lat_sum + 12)
    assert value("botsim_chat_gap_seconds_bucket", le="5.0") == gap_le5  # 12 s: not ≤ 5
    assert value("botsim_chat_gap_seconds_bucket", le="20.0") == gap_le20 + 1
    assert value("botsim_chat_messages_total", chat="99001") == chat + 1


def test_chatter_observes_no_human_wait_and_a_naive_time_is_utc() -> None:
    sent_at = datetime(2026, 12, 5, 12, 0, 30, tzinfo=UTC)
    bot_line = SimpleNamespace(is_human=False, created_at=sent_at)
    naive = [SimpleNamespace(created_at=(sent_at - timedelta(seconds=30)).replace(tzinfo=None))]
    lat_n = value("botsim_human_reply_latency_seconds_count")
    gap_sum = value("botsim_chat_gap_seconds_sum")
    pipeline._observe_sent(_turn(99002, bot_line), sent_at, naive)  # type: ignore[arg-type]
    pipeline._observe_sent(_turn(99002, None), sent_at, [])
    assert value("botsim_human_reply_latency_seconds_count") == lat_n
    assert value("botsim_chat_gap_seconds_sum") == pytest.approx(gap_sum + 30)
    assert value("botsim_chat_messages_total", chat="99002") == 2
