"""Fault injection into the sandbox servers over HTTP, as the chaos runner does it.

``sandbox.llm_api``: ``POST|GET /sandbox/faults`` and ``GET /sandbox/stats``;
``sandbox.telegram_api``: ``POST|GET|DELETE /sandbox/storm`` (a 429 storm). The servers run
in-process on 127.0.0.1 and are driven with httpx and the real openai and
python-telegram-bot clients.
"""

from __future__ import annotations

import asyncio
import datetime as dtm
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
import telegram
from telegram.error import RetryAfter

from sandbox.llm_api import LLMSandbox
from sandbox.telegram_api import TelegramSandbox

CHAT = "v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
TOKEN_A = "1001:AAA-token_a"
TOKEN_B = "1002:BBB-token_b"
GROUP = -100500

llm_loop = pytest.mark.asyncio(loop_scope="module")


# --- LLM sandbox -------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def llm_server() -> AsyncIterator[LLMSandbox]:
    sb = LLMSandbox()
    await sb.start()
    yield sb
    await sb.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def llm(llm_server: LLMSandbox) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the (reset) LLM sandbox, base URL = the server."""
    llm_server.reset()
    async with httpx.AsyncClient(base_url=llm_server.base_url, trust_env=False,
                                 timeout=5.0) as client:
        yield client
    llm_server.reset()


async def set_fault(client: httpx.AsyncClient, body: Any) -> httpx.Response:
    return await client.post("/sandbox/faults", json=body)


@llm_loop
async def test_fault_reaches_requests_spares_others_and_clears_itself(
        llm_server: LLMSandbox, llm: httpx.AsyncClient) -> None:
    t0 = time.monotonic()
    r = await set_fault(llm, {"provider": "primary", "fault": {"kind": "status", "code": 503},
                              "seconds": 0.5})
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert list(result) == ["primary"]
    assert result["primary"]["fault"] == {"kind": "status", "code": 503, "retry_after": None,
                                          "latency_ms": 0.0}
    assert 0.3 < result["primary"]["seconds_left"] <= 0.5
    assert abs(result["primary"]["ends_at"] - (time.time() + 0.5)) < 0.3
    listed = (await llm.get("/sandbox/faults")).json()["result"]
    assert list(listed) == ["primary"] and listed["primary"]["fault"]["code"] == 503
    assert listed["primary"]["ends_at"] == pytest.approx(result["primary"]["ends_at"], abs=0.01)

    sdk = openai.AsyncOpenAI(base_url=llm_server.url_for("primary") + "/v1", api_key="k",
                             max_retries=0)
    async with sdk:
        with pytest.raises(openai.APIStatusError) as info:
            await sdk.chat.completions.create(model="gpt-4o-mini",
                                              messages=[{"role": "user", "content": "hi"}])
        assert info.value.status_code == 503
        other = await llm.post(f"/backup/{CHAT}", json=BODY)
        assert other.status_code == 200 and other.json()["choices"][0]["message"]["content"]

        await asyncio.sleep(max(0.0, t0 + 0.55 - time.monotonic()))
        answer = await sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content
    assert (await llm.get("/sandbox/faults")).json() == {"ok": True, "result": {}}

    stats = (await llm.get("/sandbox/stats")).json()
    assert stats == {"ok": True, "result": {
        "requests": {"backup": 1, "primary": 2},
        "statuses": {"backup": {"200": 1}, "primary": {"200": 1, "503": 1}}}}


@llm_loop
async def test_untimed_faults_stay_until_null_clears_them(llm: httpx.AsyncClient) -> None:
    r = await set_fault(llm, {"provider": "slow", "fault": {"kind": "ok", "latency_ms": 300}})
    assert r.json()["result"] == {"slow": {"fault": {"kind": "ok", "latency_ms": 300.0},
                                           "seconds_left": None, "ends_at": None}}
    started = time.monotonic()
    assert (await llm.post(f"/slow/{CHAT}", json=BODY)).status_code == 200
    assert time.monotonic() - started >= 0.3

    await set_fault(llm, {"provider": "flaky", "fault": {"kind": "reset"}})
    with pytest.raises(httpx.TransportError):
        await llm.post(f"/flaky/{CHAT}", json=BODY)
    assert set((await llm.get("/sandbox/faults")).json()["result"]) == {"slow", "flaky"}

    r = await set_fault(llm, {"provider": "flaky", "fault": None, "seconds": 5})
    assert r.status_code == 200 and set(r.json()["result"]) == {"slow"}
    assert (await llm.post(f"/flaky/{CHAT}", json=BODY)).status_code == 200
    stats = (await llm.get("/sandbox/stats")).json()["result"]
    assert stats["statuses"]["flaky"] == {"0": 1, "200": 1}  # 0: no HTTP answer (reset)


BAD_FAULT_BODIES: list[tuple[Any, str]] = [
    ({"fault": {"kind": "hang"}}, "'provider'"),
    ({"provider": 7, "fault": None}, "'provider'"),
    ({"provider": "a/b", "fault": None}, "'provider'"),
    ({"provider": "sandbox", "fault": {"kind": "hang"}}, "'provider'"),
    ({"provider": "primary"}, "'fault'"),
    ({"provider": "primary", "fault": "hang"}, "'fault'"),
    ({"provider": "primary", "fault": {"kind": "explode"}}, "'fault.kind'"),
    ({"provider": "primary", "fault": {"code": 503}}, "'fault.kind'"),
    ({"provider": "primary", "fault": {"kind": "status"}}, "'fault.code'"),
    ({"provider": "primary", "fault": {"kind": "status", "code": 200}}, "'fault.code'"),
    ({"provider": "primary", "fault": {"kind": "status", "code": 600}}, "'fault.code'"),
    ({"provider": "primary", "fault": {"kind": "status", "code": "503"}}, "'fault.code'"),
    ({"provider": "primary", "fault": {"kind": "hang", "code": 503}}, "'fault.code'"),
    ({"provider": "primary", "fault": {"kind": "status", "code": 429, "retry_after": -1}},
     "'fault.retry_after'"),
    ({"provider": "primary", "fault": {"kind": "ok", "latency_ms": -5}}, "'fault.latency_ms'"),
    ({"provider": "primary", "fault": {"kind": "ok", "delay": 5}}, "'fault.delay'"),
    ({"provider": "primary", "fault": {"kind": "hang"}, "seconds": -1}, "'seconds'"),
    ({"provider": "primary", "fault": {"kind": "hang"}, "seconds": 0}, "'seconds'"),
    ({"provider": "primary", "fault": {"kind": "hang"}, "seconds": 1e9}, "'seconds'"),
    ({"provider": "primary", "fault": {"kind": "hang"}, "seconds": True}, "'seconds'"),
    ({"provider": "primary", "fault": {"kind": "hang"}, "seconds": "60"}, "'seconds'"),
    ({"provider": "primary", "fault": None, "seconds": -1}, "'seconds'"),
    ({"provider": "primary", "fault": {"kind": "hang"}, "secs": 60}, "'secs'"),
    ([{"provider": "primary", "fault": None}], "JSON object"),
]


@llm_loop
async def test_bad_fault_bodies_get_400_naming_the_field_and_change_nothing(
        llm: httpx.AsyncClient) -> None:
    before = (await set_fault(llm, {"provider": "primary",
                                    "fault": {"kind": "status", "code": 429}})).json()
    r = await llm.post("/sandbox/faults", content=b"not json",
                       headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON object" in r.json()["description"]
    for body, field in BAD_FAULT_BODIES:
        r = await set_fault(llm, body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["ok"] is False and r.json()["error_code"] == 400
        assert field in r.json()["description"], (body, r.json())
    assert (await llm.get("/sandbox/faults")).json() == before
    assert (await llm.post(f"/primary/{CHAT}", json=BODY)).status_code == 429


@llm_loop
async def test_control_prefix_is_no_provider(llm: httpx.AsyncClient) -> None:
    r = await llm.post(f"/sandbox/{CHAT}", json=BODY)
    assert r.status_code == 404 and "reserved" in r.json()["error"]["message"]
    r = await llm.post("/sandbox/stats", json={})  # wrong method: still no provider call
    assert r.status_code == 404 and "reserved" in r.json()["error"]["message"]
    assert (await llm.get("/sandbox/stats")).json() == {
        "ok": True, "result": {"requests": {}, "statuses": {}}}


# --- Telegram sandbox: 429 storms --------------------------------------------------------------


class FakeClock:
    """Monotonic clock the tests move by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def tg(clock: FakeClock) -> AsyncIterator[TelegramSandbox]:
    sb = TelegramSandbox(clock=clock)
    sb.add_bot(TOKEN_A, "alice_bot", "Alice")
    sb.add_bot(TOKEN_B, "bob_bot", "Bob")
    sb.add_chat(GROUP, "Lounge")
    for token in (TOKEN_A, TOKEN_B):
        sb.add_bot_to_chat(GROUP, token)
    await sb.start()
    yield sb
    await sb.stop()


@pytest.fixture
async def tg_http(tg: TelegramSandbox) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=tg.base_url, trust_env=False) as client:
        yield client


def seconds(value: int | dtm.timedelta) -> float:
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


async def send(client: httpx.AsyncClient, token: str, method: str = "sendMessage"
               ) -> httpx.Response:
    params = ({"chat_id": GROUP, "text": "x"} if method == "sendMessage"
              else {"chat_id": GROUP, "action": "typing"})
    return await client.post(f"/bot{token}/{method}", json=params)


async def test_storm_refuses_one_bots_sends_and_ends_by_itself(
        tg: TelegramSandbox, tg_http: httpx.AsyncClient, clock: FakeClock) -> None:
    r = await tg_http.post("/sandbox/storm", json={"bot_ids": [1001], "seconds": 60,
                                                   "retry_after": 3})
    assert r.json() == {"ok": True, "result": {"1001": {"seconds_left": 60.0,
                                                        "retry_after": 3}}}
    async with telegram.Bot(TOKEN_A, base_url=tg.bot_api_url) as alice:
        with pytest.raises(RetryAfter) as info:
            await alice.send_message(GROUP, "in the storm")
        assert seconds(info.value.retry_after) == 3
        for method in ("sendMessage", "sendChatAction"):
            refused = await send(tg_http, TOKEN_A, method)
            assert refused.status_code == 429
            assert refused.json() == {"ok": False, "error_code": 429,
                                      "description": "Too Many Requests: retry after 3",
                                      "parameters": {"retry_after": 3}}
        async with telegram.Bot(TOKEN_B, base_url=tg.bot_api_url) as bob:
            await bob.send_message(GROUP, "bob is not in the storm")
            assert await bob.send_chat_action(GROUP, "typing")
        assert [m["text"] for m in tg.messages(GROUP)] == ["bob is not in the storm"]
        stats = tg.stats
        assert stats["storm_refused"] == 3 and stats["too_many_requests"] == 3
        assert stats["ignored_retry_after"] == 2  # the two raw calls came within the 3 s
        assert stats["sent"] == {1002: 1} and stats["chat_actions"] == 1

        clock.now += 59.9
        assert (await send(tg_http, TOKEN_A)).status_code == 429
        clock.now += 0.1
        assert (await tg_http.get("/sandbox/storm")).json() == {"ok": True, "result": {}}
        await alice.send_message(GROUP, "the storm is over")
    assert tg.stats["storm_refused"] == 4 and tg.stats["sent"] == {1001: 1, 1002: 1}


async def test_storm_without_retry_after_sends_the_time_left_and_delete_ends_it(
        tg: TelegramSandbox, tg_http: httpx.AsyncClient, clock: FakeClock) -> None:
    r = await tg_http.post("/sandbox/storm", json={"bot_ids": [1001, 1002], "seconds": 10})
    assert r.json()["result"] == {"1001": {"seconds_left": 10.0, "retry_after": None},
                                  "1002": {"seconds_left": 10.0, "retry_after": None}}
    assert (await send(tg_http, TOKEN_A)).json()["parameters"] == {"retry_after": 10}
    clock.now += 4.5
    assert (await send(tg_http, TOKEN_B)).json()["parameters"] == {"retry_after": 6}
    assert tg.stats["ignored_retry_after"] == 0  # each bot was refused once
    r = await tg_http.delete("/sandbox/storm")
    assert r.json() == {"ok": True, "result": {}}
    assert (await send(tg_http, TOKEN_A)).status_code == 200
    assert (await send(tg_http, TOKEN_B)).status_code == 200


BAD_STORM_BODIES: list[tuple[Any, str]] = [
    ({"seconds": 60}, "'bot_ids'"),
    ({"bot_ids": [], "seconds": 60}, "'bot_ids'"),
    ({"bot_ids": 1001, "seconds": 60}, "'bot_ids'"),
    ({"bot_ids": ["1001"], "seconds": 60}, "'bot_ids'"),
    ({"bot_ids": [True], "seconds": 60}, "'bot_ids'"),
    ({"bot_ids": [1001, 999, 998], "seconds": 60}, "unknown bot ids [998, 999]"),
    ({"bot_ids": [1001]}, "'seconds'"),
    ({"bot_ids": [1001], "seconds": 0}, "'seconds'"),
    ({"bot_ids": [1001], "seconds": -5}, "'seconds'"),
    ({"bot_ids": [1001], "seconds": 10**6}, "'seconds'"),
    ({"bot_ids": [1001], "seconds": "60"}, "'seconds'"),
    ({"bot_ids": [1001], "seconds": 60, "retry_after": 0}, "'retry_after'"),
    ({"bot_ids": [1001], "seconds": 60, "retry_after": 2.5}, "'retry_after'"),
    ({"bot_ids": [1001], "seconds": 60, "retry": 3}, "'retry'"),
    ([1001], "JSON object"),
]


async def test_bad_storm_bodies_get_400_naming_the_field_and_change_nothing(
        tg: TelegramSandbox, tg_http: httpx.AsyncClient) -> None:
    r = await tg_http.post("/sandbox/storm", content=b"{bot_ids: [1001]}")
    assert r.status_code == 400 and "JSON object" in r.json()["description"]
    for body, field in BAD_STORM_BODIES:
        r = await tg_http.post("/sandbox/storm", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["ok"] is False and r.json()["error_code"] == 400
        assert field in r.json()["description"], (body, r.json())
    assert tg.storms() == {}
    assert (await send(tg_http, TOKEN_A)).status_code == 200
    assert tg.stats["storm_refused"] == 0
