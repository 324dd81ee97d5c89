"""backend.redis_client: every client carries the one policy (timeouts, retry per role).

Against a server that accepts connections and never answers (a hung Redis), a command
fails with redis-py's TimeoutError, the error its socket timeout raises: a subscriber after
one connection, a commands client after more (its retry; redis-py 8.1 makes 4: the
connection handshake and the command are each tried twice).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.backoff import NoBackoff
from redis.exceptions import TimeoutError as RedisTimeoutError

from backend import keys
from backend.redis_client import make_redis, make_sync_redis, redacted_url


class Silent:
    """A TCP server that accepts and reads, never answers; counts the connections."""

    def __init__(self) -> None:
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        await reader.read()  # until the client hangs up
        writer.close()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()


@pytest.fixture
async def silent() -> AsyncIterator[Silent]:
    server = Silent()
    await server.start()
    yield server
    await server.stop()


@pytest.mark.parametrize(("role", "retries"), [("commands", 1), ("subscriber", 0)])
def test_clients_carry_the_policy(role: str, retries: int) -> None:
    for client in (
        make_redis("redis://:secret@127.0.0.1:6379/3", role=role),  # type: ignore[arg-type]
        make_sync_redis("redis://127.0.0.1:6379/3", role=role),  # type: ignore[arg-type]
    ):
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == keys.SOCKET_TIMEOUT_S
        assert kwargs["socket_connect_timeout"] == keys.SOCKET_TIMEOUT_S
        assert kwargs["health_check_interval"] == keys.HEALTH_CHECK_INTERVAL_S
        retry = kwargs["retry"]
        assert retry.get_retries() == retries
        assert isinstance(retry._backoff, NoBackoff)  # immediate: no wait between attempts
        assert kwargs["db"] == 3


async def test_a_client_works_against_the_real_redis(redis_url: str) -> None:
    client = make_redis(redis_url, role="commands")
    try:
        assert await client.ping()
    finally:
        await client.aclose()
    sync = make_sync_redis(redis_url)
    try:
        assert sync.ping()
    finally:
        sync.close()


@pytest.mark.parametrize(("role", "retried"), [("commands", True), ("subscriber", False)])
async def test_a_hung_redis_fails_on_the_socket_timeout(
    silent: Silent, role: str, retried: bool
) -> None:
    client = make_redis(f"redis://127.0.0.1:{silent.port}/0", role=role)  # type: ignore[arg-type]
    try:
        with pytest.raises(RedisTimeoutError):
            await client.ping()
    finally:
        await client.aclose()
    assert (silent.accepted > 1) is retried
    assert silent.accepted <= 4  # bounded: 4 socket timeouts at most


async def test_the_sync_twin_fails_on_the_socket_timeout_too(silent: Silent) -> None:
    client = make_sync_redis(f"redis://127.0.0.1:{silent.port}/0")
    try:
        with pytest.raises(RedisTimeoutError):
            await asyncio.to_thread(client.ping)
    finally:
        client.close()
    assert 1 < silent.accepted <= 4


@pytest.mark.parametrize(
    "url",
    ["postgresql://admin:hunter2@db:5432/botsim", "http://u:hunter2@h/", "127.0.0.1:6379", ""],
)
def test_a_url_that_is_not_redis_is_named_without_its_password(url: str) -> None:
    for make in (make_redis, make_sync_redis):
        with pytest.raises(ValueError, match="not a Redis URL") as info:
            make(url, role="commands")
        assert "hunter2" not in str(info.value) and "admin" not in str(info.value)


def test_an_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="role"):
        make_redis("redis://127.0.0.1:6379/0", role="pubsub")  # type: ignore[arg-type]


def test_redacted_url_drops_credentials() -> None:
    assert redacted_url("redis://user:pw@cache:6380/2?x=1") == "redis://cache:6380/2"
    assert redacted_url("redis://h:notaport/0") == "<unparseable URL>"
