"""Benchmark: what the provider chain adds to one LLM call, in CPU and wall time.

Starts the sandbox LLM server in a *separate process* (so its CPU is not counted) at zero
latency, then makes N calls each way, interleaved in rounds so drift hits all alike:

* ``direct``   — ``openai.AsyncOpenAI().chat.completions.create`` (the floor);
* ``provider`` — our ``OpenAIProvider`` (the SDK plus request/usage mapping);
* ``chain``    — ``ProviderChain`` with that provider: budget and breaker checks, tenacity,
  the timeout, and the ledger's metrics (its rows are buffered, as in the worker).

CPU per call is ``time.process_time()`` around each awaited call (one asyncio thread, so it
is this call's CPU). Prints p50/p95 CPU and wall time per variant and the chain's p50 CPU
minus the direct call's. Usage::

    python loadtest/bench_chain.py [--calls 2000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import openai

from backend.schemas import DEFAULT_PRICES, PersonaProfile, Style
from behavior_engine.llm.chain import ChainEntry, ProviderChain
from behavior_engine.llm.ledger import Ledger
from behavior_engine.llm.offline import OfflineGenerator
from behavior_engine.llm.openai_provider import OpenAIProvider
from behavior_engine.prompt_builder import build_request
from behavior_engine.turn import Generation, GenerationRequest, MarketSnapshot, TurnContext


def _request() -> GenerationRequest:
    profile = PersonaProfile(
        role="scalper", language="tr", bio="Kısa vadeli işlem yapar, hızlı konuşur.",
        style=Style(formality="casual", emoji_rate=1.0, length="short"), topics={"btc": 1.0},
    )
    snap = MarketSnapshot(at=datetime.now(UTC), prices={"BTC": 95000.0},
                          change_pct={"BTC": 0.4})
    ctx = TurnContext(turn_id="bench", bot_name="Ayşe", bot_username="ayse_bot",
                      profile=profile, stances=(), holdings=(), mood=0.2, pnl_pct=1.0,
                      topic="btc", market=snap, history=(), reply_to=None, seed=1)
    return build_request(ctx)


class _Stub:
    """A provider that answers at once without a network: isolates the chain's own cost."""

    name = "stub"
    model = "gpt-4o-mini"

    async def generate(self, request: GenerationRequest) -> Generation:
        return Generation(text="ok", provider="stub", model=self.model, prompt_tokens=300,
                          completion_tokens=20, cached_tokens=200)


async def chain_only(calls: int = 20_000) -> dict[str, float]:
    """CPU µs per call of the chain around a no-network provider, and of the bare provider."""
    stub = _Stub()
    ledger = Ledger(None, DEFAULT_PRICES, batch_size=10**9)  # type: ignore[arg-type]
    chain = ProviderChain([ChainEntry(provider=stub)], last_resort=OfflineGenerator(),
                          recorder=ledger)
    request = _request()
    for _ in range(1000):
        await chain.generate(request)
    t0 = time.process_time()
    for _ in range(calls):
        await chain.generate(request)
    with_chain = (time.process_time() - t0) / calls * 1e6
    t0 = time.process_time()
    for _ in range(calls):
        await stub.generate(request)
    bare = (time.process_time() - t0) / calls * 1e6
    return {"chain_only_us": round(with_chain - bare, 1), "calls": calls}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _measure(call: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await call()
    return (time.process_time() - cpu0) * 1000.0, (time.perf_counter() - wall0) * 1000.0


def start_sandbox() -> tuple[subprocess.Popen[bytes], str]:
    """The sandbox LLM server in its own process; returns it and its base URL."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "sandbox.llm_api", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(base + "/", timeout=0.2)
            return server, base
        except httpx.TransportError:
            time.sleep(0.05)
    server.terminate()
    raise RuntimeError("the sandbox LLM server did not start")


async def run(calls: int, base: str) -> dict[str, Any]:
    """Run the benchmark against the server at ``base``; returns the figures (ms)."""
    request = _request()
    sdk = openai.AsyncOpenAI(base_url=f"{base}/bench/v1", api_key="bench", max_retries=0)
    provider = OpenAIProvider(name="bench", model="gpt-4o-mini", api_key="bench",
                              base_url=f"{base}/bench/v1")

    class NoDb:
        def __call__(self) -> Any:
            raise RuntimeError("not used: rows are only buffered in this benchmark")

    ledger = Ledger(NoDb(), DEFAULT_PRICES, batch_size=10**9)  # type: ignore[arg-type]
    chain = ProviderChain([ChainEntry(provider=provider)], last_resort=OfflineGenerator(),
                          recorder=ledger)

    async def direct() -> Any:
        return await sdk.chat.completions.create(
            model="gpt-4o-mini", messages=request.messages,  # type: ignore[arg-type]
            max_tokens=300, temperature=0.9)

    variants: dict[str, Callable[[], Awaitable[Any]]] = {
        "direct": direct,
        "provider": lambda: provider.generate(request),
        "chain": lambda: chain.generate(request),
    }
    for call in variants.values():  # warm-up: connections, imports, caches
        for _ in range(50):
            await call()
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    wall: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(calls):
        for name, call in variants.items():
            c, w = await _measure(call)
            cpu[name].append(c)
            wall[name].append(w)
    await sdk.close()
    await provider.aclose()
    figures: dict[str, Any] = {"calls": calls}
    for name in variants:
        figures[name] = {
            "cpu_p50_ms": round(statistics.median(cpu[name]), 3),
            "cpu_p95_ms": round(_pct(cpu[name], 0.95), 3),
            "cpu_mean_ms": round(statistics.fmean(cpu[name]), 3),
            "wall_p50_ms": round(statistics.median(wall[name]), 3),
            "wall_p95_ms": round(_pct(wall[name], 0.95), 3),
        }
    figures["chain_added_cpu_p50_ms"] = round(
        figures["chain"]["cpu_p50_ms"] - figures["direct"]["cpu_p50_ms"], 3)
    figures["chain_over_provider_cpu_p50_ms"] = round(
        figures["chain"]["cpu_p50_ms"] - figures["provider"]["cpu_p50_ms"], 3)
    figures["chain_added_wall_p50_ms"] = round(
        figures["chain"]["wall_p50_ms"] - figures["direct"]["wall_p50_ms"], 3)
    return figures


def main() -> None:
    """Command line entry: ``python loadtest/bench_chain.py``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("PTB_TIMEDELTA", "true")
    server, base = start_sandbox()
    try:
        figures = asyncio.run(run(args.calls, base))
        figures["no_network"] = asyncio.run(chain_only())
    finally:
        server.terminate()
        server.wait(timeout=10)
    if args.json:
        print(json.dumps(figures))
        return
    print(f"{args.calls} calls per variant, sandbox at zero latency (separate process)")
    print(f"{'variant':<10}{'cpu p50':>10}{'cpu p95':>10}{'cpu mean':>10}"
          f"{'wall p50':>10}{'wall p95':>10}   (ms)")
    for name in ("direct", "provider", "chain"):
        f = figures[name]
        print(f"{name:<10}{f['cpu_p50_ms']:>10.3f}{f['cpu_p95_ms']:>10.3f}"
              f"{f['cpu_mean_ms']:>10.3f}{f['wall_p50_ms']:>10.3f}{f['wall_p95_ms']:>10.3f}")
    print(f"chain adds {figures['chain_added_cpu_p50_ms']:.3f} ms CPU at p50 over the direct"
          f" SDK call ({figures['chain_over_provider_cpu_p50_ms']:.3f} ms over the bare"
          f" provider), {figures['chain_added_wall_p50_ms']:.3f} ms wall")
    print(f"the chain alone (no network, {figures['no_network']['calls']} calls): "
          f"{figures['no_network']['chain_only_us']:.1f} µs CPU per call")


if __name__ == "__main__":
    main()
