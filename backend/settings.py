"""Process settings (pydantic-settings): built once in each entry point and passed down.

Nothing in botsim reads ``os.environ`` after this object is built, and nothing builds one at
import time. Every field can be set by an environment variable named ``BOTSIM_<FIELD>``
(upper case); the database and Redis URLs also answer to ``DATABASE_URL`` and ``REDIS_URL``.
The README's configuration table lists them all.

Operator settings that change while the simulation runs (``simulation_active``, hourly
budgets, ...) live in the database instead: see ``backend.schemas.SimulationSettings``.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from backend.errors import ConfigError

if TYPE_CHECKING:
    from backend.cache import TwoLayerCache
from backend.schemas import DEFAULT_PRICES, ModelPrice, ProviderSettings

_SECRET_MIN_CHARS = 32
#: Entries of ``trusted_proxies`` at most (a proxy tier, not an address list to scan).
MAX_TRUSTED_PROXIES = 64
#: L1 TTL without Redis (seconds): the bound on seeing another process's writes.
LOCAL_CACHE_TTL_S = 2.0


class Settings(BaseSettings):
    """Settings of one botsim process.

    Attributes:
        env: ``development`` allows generated secrets (the demo); ``production`` refuses to
            start without ``fernet_key`` and ``webhook_secret`` (see :meth:`check_secrets`).
        data_dir: folder for the SQLite file and generated development keys.
        database_url: SQLAlchemy async URL; default ``sqlite+aiosqlite:///<data_dir>/botsim.db``.
            PostgreSQL: ``postgresql+asyncpg://user@host:5432/db`` (``postgresql://`` is
            accepted and given the asyncpg driver).
        redis_url: Redis URL of the cache's second layer and its invalidation channel; None
            (the embedded default): each process caches in its own memory only.
        cache_l1_ttl_s: seconds an entry lives in a process's memory. Edits reach every
            process at once over pub/sub, so this only bounds staleness while Redis is down.
        cache_l1_size: entries kept in a process's memory (least recently used go first).
        fernet_key: Fernet key (urlsafe base64, 32 bytes) that encrypts bot tokens at rest.
        webhook_secret: master secret from which each bot's webhook ``secret_token`` is
            derived (HMAC-SHA256), at least 32 characters.
        telegram_api_url: Bot API base URL handed to python-telegram-bot (``base_url``), e.g.
            ``https://api.telegram.org/bot`` or the sandbox's ``http://127.0.0.1:8081/bot``.
        public_webhook_url: the URL Telegram reaches the listener at, without the trailing
            ``/webhook/<bot_id>``.
        privacy_text: what every bot answers to ``/privacy`` after saying it is a simulated
            persona (``bots.disclosure``); None: a default in the persona's language.
        retention_days: people's messages older than this many days are anonymised by the
            workers' hourly job (``backend.stores.messages.anonymise_people``); None: kept.
        safety_rules: a YAML file replacing or adding content-safety rules
            (``behavior_engine.safety``); None: the Turkish and English defaults.
        listener_host / listener_port: where the listener binds.
        tick_seconds: how often the worker's scheduler decides turns, seconds (0.1–60).
        db_pool_size: PostgreSQL connections per process (as many again may overflow).
        metrics_port: where the worker serves ``/metrics`` (on ``listener_host``); None: not
            served (the listener always serves it on its own port).
        llm_providers: the provider chain in order (JSON list of ``ProviderSettings``); empty:
            the offline generator writes every message.
        llm_prices: model name → USD per million tokens (JSON), merged over the defaults.
        seed: seed of the market feed and the offline generator.
        log_level: Python logging level name.
        log_format: ``plain`` (``time LEVEL logger: message [bot=… chat=… turn=…]``) or
            ``json`` (one JSON object per line: ``time``, ``level``, ``logger``, ``message``
            and the bound ids, ``backend.logcontext``), on standard error.
        redis_namespace: first segment of every Redis key and channel; deployments (or test
            runs) sharing one Redis server use different namespaces.
        heartbeat_ttl_s: seconds a worker's heartbeat and its bot leases live without
            renewal (renewed every third of it). A dead worker's bots are taken over within
            about this long plus one renewal period. Needs ``redis_url``.
        worker_name: a name for this worker in logs and in the live set (default: the host
            name); the worker id adds the process id and a random suffix, so no two
            processes ever share one.
        max_turns_in_flight: turns one worker runs at once (generation and send); bounds its
            memory and open connections. Further due turns wait for the next tick.
        worker_id_file: where the worker writes its id for ``botsim worker --check``
            (default ``<data_dir>/worker.id``).
        api_host / api_port: where the admin API (``botsim api``) binds.
        secret_key: key of the admin API's HMACs (session and API token digests), at least
            32 characters. Required in production (see ``backend.crypto.resolve_secret_key``);
            development generates ``<data_dir>/secret.key``. Changing it logs everyone out
            and invalidates every API token.
        session_ttl_s: seconds a browser session of the admin API lives after login.
        trusted_proxies: the reverse proxies whose ``X-Forwarded-For`` (and
            ``X-Forwarded-Proto``) headers are believed: IP addresses or CIDR networks,
            comma-separated (``10.0.0.5,172.18.0.0/16``) or a JSON list; at most
            :data:`MAX_TRUSTED_PROXIES`. Empty (the default): no forwarded header is
            trusted, and the TCP peer is the client (uvicorn's ``proxy_headers`` off). Used
            by the admin API's failed-login limits (``backend.api.security.client_address``)
            and the uvicorn servers of ``botsim api`` and the listener.
        tracing: ``off`` (default: no spans, nearly no cost) or ``otlp``: each process
            exports one trace per turn over OTLP/HTTP (``backend.tracing``), to where the
            standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
            say (default ``http://localhost:4318``); ``OTEL_SERVICE_NAME`` and
            ``OTEL_RESOURCE_ATTRIBUTES`` are read by the OpenTelemetry SDK.
    """

    model_config = SettingsConfigDict(env_prefix="BOTSIM_", extra="ignore")

    env: Literal["development", "production"] = "development"
    data_dir: Path = Path(".botsim")
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("BOTSIM_DATABASE_URL", "DATABASE_URL")
    )
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("BOTSIM_REDIS_URL", "REDIS_URL")
    )
    cache_l1_ttl_s: float = Field(default=300.0, gt=0, le=86_400)
    cache_l1_size: int = Field(default=10_000, ge=100, le=10_000_000)
    fernet_key: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    telegram_api_url: str = "http://127.0.0.1:8081/bot"
    public_webhook_url: str = "http://127.0.0.1:8082"
    privacy_text: str | None = Field(default=None, max_length=2000)
    retention_days: int | None = Field(default=None, ge=1, le=3650)
    safety_rules: Path | None = None
    listener_host: str = "127.0.0.1"
    listener_port: int = Field(default=8082, ge=0, le=65535)
    tick_seconds: float = Field(default=1.0, ge=0.1, le=60.0)
    db_pool_size: int = Field(default=5, ge=1, le=100)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    llm_providers: list[ProviderSettings] = Field(default_factory=list)
    llm_prices: dict[str, ModelPrice] = Field(default_factory=lambda: dict(DEFAULT_PRICES))
    seed: int = 42
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["plain", "json"] = "plain"
    redis_namespace: str = Field(default="botsim", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    heartbeat_ttl_s: float = Field(default=10.0, ge=1.0, le=300.0)
    worker_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,48}$")
    max_turns_in_flight: int = Field(default=200, ge=1, le=100_000)
    worker_id_file: Path | None = None
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    secret_key: SecretStr | None = None
    session_ttl_s: int = Field(default=43_200, gt=0, le=31_536_000)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    tracing: Literal["off", "otlp"] = "off"

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip()
        if re.match(r"^postgres(ql)?://", v):
            v = re.sub(r"^postgres(ql)?://", "postgresql+asyncpg://", v)
        if v.startswith("sqlite://"):
            v = "sqlite+aiosqlite://" + v[len("sqlite://") :]
        if not (v.startswith("postgresql+asyncpg://") or v.startswith("sqlite+aiosqlite://")):
            raise ValueError(
                "must be a PostgreSQL (postgresql://...) or SQLite (sqlite:///path) URL"
            )
        return v

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxy_networks(cls, v: Any) -> list[str]:
        """Each entry as a normalised network (``10.0.0.5`` → ``10.0.0.5/32``)."""
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                try:
                    v = json.loads(text)
                except ValueError:
                    raise ValueError("not a valid JSON list of addresses") from None
            else:
                v = [part for part in re.split(r"[,\s]+", text) if part]
        if not isinstance(v, list | tuple) or not all(isinstance(p, str) for p in v):
            raise ValueError("expected IP addresses or CIDR networks, comma-separated")
        if len(v) > MAX_TRUSTED_PROXIES:
            raise ValueError(f"at most {MAX_TRUSTED_PROXIES} entries, got {len(v)}")
        networks = []
        for i, part in enumerate(v):
            try:
                networks.append(str(ipaddress.ip_network(part.strip(), strict=False)))
            except ValueError:
                raise ValueError(
                    f"entry {i + 1} {part[:60]!r} is not an IP address or CIDR network"
                ) from None
        return networks

    @field_validator("llm_prices")
    @classmethod
    def _merge_prices(cls, v: dict[str, ModelPrice]) -> dict[str, ModelPrice]:
        return {**DEFAULT_PRICES, **v}

    @field_validator("llm_providers")
    @classmethod
    def _unique_names(cls, v: list[ProviderSettings]) -> list[ProviderSettings]:
        names = [p.name for p in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes or "offline" in names:
            raise ValueError(f"provider names must be unique and not 'offline': {dupes or names}")
        return v

    def make_cache(self, *, namespace: str | None = None) -> TwoLayerCache:
        """The process's two-layer cache from these settings (not started).

        Args:
            namespace: prefix of its Redis keys and channel (processes sharing data share
                it); default ``redis_namespace``.

        Without Redis no process hears another's writes (a listener's new message, an
        admin's edit), so the L1 TTL is capped at :data:`LOCAL_CACHE_TTL_S`: what another
        process wrote is seen within that long.
        """
        from backend.cache import TwoLayerCache

        ttl = self.cache_l1_ttl_s if self.redis_url else min(self.cache_l1_ttl_s,
                                                              LOCAL_CACHE_TTL_S)
        return TwoLayerCache(redis_url=self.redis_url, l1_ttl_s=ttl, l1_size=self.cache_l1_size,
                             namespace=namespace or self.redis_namespace)

    def proxy_options(self) -> dict[str, Any]:
        """uvicorn's proxy options (``uvicorn.Config`` keywords) from ``trusted_proxies``.

        Empty (the default): ``proxy_headers=False``, so no ``X-Forwarded-*`` header
        changes the client address or scheme (uvicorn's own default believes them from
        127.0.0.1, which lets any process on the host pick its address). Otherwise uvicorn
        believes them from exactly those addresses and networks (``forwarded_allow_ips``)
        and takes the rightmost untrusted ``X-Forwarded-For`` entry as the client, as
        ``backend.api.security.client_address`` does.
        """
        if not self.trusted_proxies:
            return {"proxy_headers": False}
        return {"proxy_headers": True, "forwarded_allow_ips": list(self.trusted_proxies)}

    @property
    def effective_database_url(self) -> str:
        """The database URL in use: ``database_url`` or the SQLite file in ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'botsim.db').resolve()}"

    @property
    def effective_worker_id_file(self) -> Path:
        """Where the worker writes its id: ``worker_id_file`` or ``<data_dir>/worker.id``."""
        return self.worker_id_file or self.data_dir / "worker.id"

    def check_secrets(self) -> None:
        """Refuse unsafe secrets outside development.

        Raises:
            ConfigError: in production, when ``fernet_key`` or ``webhook_secret`` is missing
                or ``webhook_secret`` is shorter than 32 characters.
        """
        if self.env != "production":
            return
        missing = [
            name.upper()
            for name in ("fernet_key", "webhook_secret")
            if getattr(self, name) is None
        ]
        if missing:
            raise ConfigError(
                "production mode refuses to start without "
                + ", ".join(f"BOTSIM_{m}" for m in missing)
                + " (no default secrets outside development)"
            )
        assert self.webhook_secret is not None
        if len(self.webhook_secret.get_secret_value()) < _SECRET_MIN_CHARS:
            raise ConfigError(
                f"BOTSIM_WEBHOOK_SECRET must be at least {_SECRET_MIN_CHARS} characters"
            )


_SECRET_PARTS = {"fernet_key", "webhook_secret", "api_key", "secret_key"}


def _shown_input(err: Any) -> str:
    """`` (got 'x')`` for a plain bad value; nothing for secrets or whole structures."""
    value = err.get("input")
    secret = any(str(part).lower() in _SECRET_PARTS for part in err["loc"])
    if secret or isinstance(value, dict | list) or value is None:
        return ""
    return f" (got {value!r})"


def load_settings(**overrides: object) -> Settings:
    """Build the process settings from the environment plus ``overrides``.

    Raises:
        ConfigError: naming each bad variable and why (instead of pydantic's traceback).
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except SettingsError as exc:  # a complex value (JSON list or object) that is not JSON
        found = re.search(r'field "(\w+)"', str(exc))
        name = f"BOTSIM_{found.group(1).upper()}" if found else "a setting"
        raise ConfigError(f"bad settings: {name}: not valid JSON") from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            head, *rest = [str(p) for p in err["loc"]] or ["settings"]
            env_name = head.upper()
            if not env_name.startswith(("BOTSIM_", "DATABASE_URL")):
                env_name = f"BOTSIM_{env_name}"
            env_name += "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in rest)
            problems.append(f"{env_name}: {err['msg']}{_shown_input(err)}")
        raise ConfigError("bad settings: " + "; ".join(problems)) from None
