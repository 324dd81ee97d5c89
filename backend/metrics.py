"""Every Prometheus metric of botsim, defined once (prometheus-client, default registry).

Each process serves its own ``/metrics`` (the listener app mounts it; see
``metrics_app``). Names follow Prometheus conventions: ``botsim_`` prefix, base units
(seconds, USD), ``_total`` for counters.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram, make_asgi_app, start_http_server
from prometheus_client.registry import REGISTRY

LLM_CALLS = Counter(
    "botsim_llm_calls_total",
    "LLM provider calls (network attempts), by provider and outcome.",
    ["provider", "outcome"],
)
LLM_TOKENS = Counter(
    "botsim_llm_tokens_total",
    "Tokens reported by LLM providers, by kind (prompt, completion, cached).",
    ["provider", "kind"],
)
LLM_COST = Counter(
    "botsim_llm_cost_usd_total",
    "USD spent on LLM calls, from the price table in settings.",
    ["provider"],
)
LLM_LATENCY = Histogram(
    "botsim_llm_latency_seconds",
    "Wall time of one LLM provider call, seconds.",
    ["provider"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
)
LLM_SKIPS = Counter(
    "botsim_llm_skips_total",
    "Providers left without answering in a chain call, by reason.",
    ["provider", "reason"],
)
LLM_ANSWERS = Counter(
    "botsim_llm_answers_total",
    "Messages written, by the provider that answered (offline = last resort).",
    ["provider"],
)
LLM_BREAKER_OPEN = Gauge(
    "botsim_llm_breaker_open",
    "1 while a provider's circuit breaker is open (skipped without a call), else 0.",
    ["provider"],
)

CACHE_REQUESTS = Counter(
    "botsim_cache_requests_total",
    "Two-layer cache lookups by layer (l1, l2, loader), kind and result (hit, miss; the"
    " loader counts hit for a value loaded, error for a loader that raised).",
    ["layer", "kind", "result"],
)
CACHE_REDIS_ERRORS = Counter(
    "botsim_cache_redis_errors_total",
    "Redis commands of the cache that failed (connection refused/reset, timeout, error"
    " reply); the cache then serves from L1 and the loader.",
)
CACHE_REDIS_UP = Gauge(
    "botsim_cache_redis_up",
    "1 while the cache's Redis (L2 and invalidation channel) is connected, 0 while degraded.",
)
CACHE_INVALIDATIONS = Counter(
    "botsim_cache_invalidations_total",
    "Cache entries dropped from L1, by kind and origin (local call, or remote event"
    " received on the invalidation channel).",
    ["kind", "origin"],
)

RATELIMIT_FALLBACK = Counter(
    "botsim_ratelimit_fallback_total",
    "Send-limit operations of the shared limiter served by the in-process limiter because"
    " Redis was unreachable (limits then hold per process only), by operation (acquire,"
    " block, blocked_for).",
    ["op"],
)


PROMPT_ASSEMBLY = Histogram(
    "botsim_prompt_assembly_seconds",
    "Time to read a turn's bot, history and market and build its layered prompt, seconds.",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)


LISTENER_UPDATES = Counter(
    "botsim_listener_updates",
    "Webhook updates the listener took (a redelivery not counted), by kind: the update's"
    " payload (message, edited_message, my_chat_member, chat_member, callback_query...) or"
    " service:<field> for a service message (new_chat_members, migrate_to_chat_id...).",
    ["kind"],
)
SEND_UNKNOWN = Counter(
    "botsim_send_unknown",
    "Sends whose outcome is unknown (the request may have reached Telegram and no answer"
    " came; or a worker died between the send and its commit): never resent by themselves.",
    ["reason"],
)
BOT_MEMBERSHIP_LOST = Counter(
    "botsim_bot_membership_lost_total",
    "Chats a bot was found removed from by a send answered 403 (Bot API: \"Forbidden: bot"
    " was kicked from the group chat\" → kicked; not a member any more → left): it takes no"
    " more turns there. One per change of membership, by reason.",
    ["reason"],
)
BOTS_DISABLED = Counter(
    "botsim_bots_disabled_total",
    "Bots disabled by the engine, by reason (token_refused: Telegram answered 401 to a send"
    " or to getMe, the token is wrong or revoked). One per bot that was enabled.",
    ["reason"],
)
SPLIT_SENDS = Counter(
    "botsim_split_sends_total",
    "Texts over Telegram's message limit sent as several messages, by outcome (complete:"
    " every part sent; partial: a later part was not sent, the parts before it stay).",
    ["outcome"],
)
GUARD_OUTCOMES = Counter(
    "botsim_guard_outcomes",
    "What the guards did with a generated text before its send (the near-duplicate guard"
    " and the content-safety guard, behavior_engine.pipeline._vet), by guard and outcome:"
    " passed (first draft kept; guard=repeat), regenerated (a later draft kept;"
    " guard=repeat), dropped (guard=repeat: chatter still repeating; guard=safety: every"
    " draft broke a rule; guard=stance: the last draft contradicted the bot's views or"
    " holdings), kept_for_human (an answer to a person sent in its least repeating or its"
    " last consistent draft); guard=stance also passed / regenerated (a draft contradicting"
    " a view or holding asked for again); guard=agreement: a draft that adds agreement while"
    " the chat's agreement/contrast ratio is above 0.15 (passed, regenerated, dropped,"
    " kept_for_human). Safety blocks per rule:"
    " botsim_safety_blocks_total.",
    ["guard", "outcome"],
)
STANCE_CHANGES = Counter(
    "botsim_stance_changes",
    "Changes of a bot's view on a topic seen by its turns (behavior_engine.stances: a market"
    " move past the view's threshold, or a world event), by cause: market, event. A flip"
    " without either is what the stance guard (guard=stance) keeps from being sent.",
    ["cause"],
)
SAFETY_BLOCKS = Counter(
    "botsim_safety_blocks",
    "Generated drafts a content-safety rule kept from being sent (behavior_engine.safety),"
    " by rule: guaranteed_returns, coordinated_call, personal_instruction, personal_data,"
    " links, or a deployment's own.",
    ["rule"],
)
TURNS = Counter(
    "botsim_turns",
    "Turns finished by the worker, by outcome (sent, retry, failed, unknown, skipped,"
    " rate_limited).",
    ["outcome"],
)
TURNS_DECIDED = Counter(
    "botsim_turns_decided",
    "Turns the scheduler decided and the worker launched (each ends as one botsim_turns"
    " outcome; the difference, once idle, is turns lost).",
)
SIMULATION_ACTIVE = Gauge(
    "botsim_simulation_active",
    "1 while this worker's last tick read the operator setting simulation_active as on, 0"
    " once a tick has read it off (a pause): from that tick on it decides no turn. Without"
    " Redis a pause reaches a worker within its L1 TTL (settings.LOCAL_CACHE_TTL_S).",
)
CHATTER_SHED = Counter(
    "botsim_chatter_shed",
    "Spontaneous chatter an overloaded worker shed (issue 20): due chats it did not decide,"
    " and spontaneous turns it dropped, while answers to people still went out.",
)
OVERLOADED_TICKS = Counter(
    "botsim_overloaded_ticks",
    "Ticks of an overloaded worker, which shed chatter: its event loop lagged more than"
    " SHED_LAG_S (it is saturated) or the turns in flight filled SHED_IN_FLIGHT of its"
    " room (issue 20).",
)
TICK_LAG = Gauge(
    "botsim_tick_lag_seconds",
    "The worker's event loop lag before its last tick: how late a 0.25-s probe woke at"
    " most, seconds.",
)
_TURN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TURN_LATENCY = Histogram(
    "botsim_turn_latency_seconds",
    "Sent turns: from the decision to Telegram's answer, seconds.",
    buckets=_TURN_BUCKETS,
)
TURN_OVERHEAD = Histogram(
    "botsim_turn_overhead_seconds",
    "Sent turns: latency less the text generation (the engine's own part), seconds.",
    buckets=_TURN_BUCKETS,
)
DB_QUERIES = Counter(
    "botsim_db_queries",
    "SQL statements this process sent to the database, by kind: the verb and its table "
    "(\"INSERT turns\", \"SELECT messages\"), a statement with common table expressions by "
    "its first one (\"WITH turn_intent\"); backend.db.session.statement_kind.",
    ["statement"],
)
WORKERS_LIVE = Gauge(
    "botsim_workers_live",
    "Workers in the live set (fresh heartbeat) as this worker last saw it.",
)
LEASES_HELD = Gauge(
    "botsim_leases_held",
    "Bot leases this worker holds (the bots it drives).",
)
EVENT_LOOP_TASKS = Gauge(
    "botsim_event_loop_tasks",
    "asyncio tasks alive in this worker's event loop, read at each tick (a leak grows it)",
)
BOTS_DRIVEN = Gauge(
    "botsim_bots_driven",
    "Bots this worker drives now: lease held and Telegram client connected.",
)
LEASE_CHANGES = Counter(
    "botsim_lease_changes",
    "Bot leases taken or given up by this worker, by change (acquired, released, lost).",
    ["change"],
)
FENCED_OUT = Counter(
    "botsim_fenced_out",
    "Turn writes refused because the worker's fencing token was stale (lease moved).",
)

HUMAN_REPLY_LATENCY = Histogram(
    "botsim_human_reply_latency_seconds",
    "Answers to a person: from the person's message stored by the listener to Telegram's"
    " answer to the bot's reply, seconds (reading and typing pauses included: what the"
    " person waits). One observation per answer.",
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
)
CHAT_MESSAGES = Counter(
    "botsim_chat_messages",
    "Bot messages sent, by botsim chat id (one label value per group: with 100,000 groups,"
    " drop the label with a relabel rule or aggregate it in a recording rule).",
    ["chat"],
)
CHAT_GAP = Histogram(
    "botsim_chat_gap_seconds",
    "Seconds between a bot message and the message before it in its chat (any sender):"
    " the rhythm REALISM.md's inter-message gaps describe.",
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600),
)
TELEGRAM_ERRORS = Counter(
    "botsim_telegram_errors",
    "Bot API calls of the engine that failed, by method (sendMessage, getMe, setWebhook…)"
    " and error: retry_after (429), forbidden (403), unauthorized (401), bad_request"
    " (400), server (5xx), network (no answer), timeout.",
    ["method", "error"],
)
WEBHOOK_REQUESTS = Counter(
    "botsim_webhook_requests",
    "Webhook POSTs the listener answered, by HTTP status code (200 taken or a redelivery;"
    " 401/403 secret or bot refused; 422 not an update; 500/503 not stored, Telegram"
    " redelivers).",
    ["status"],
)
LLM_BUDGET_LEFT = Gauge(
    "botsim_llm_budget_left_ratio",
    "Share of an LLM provider's budget left before its headroom (0–1), by limit"
    " (requests_per_min, tokens_per_min, tokens_per_day); only limits that are set."
    " Groq's free tier stops at a daily token cap (console.groq.com/docs/rate-limits).",
    ["provider", "limit"],
)
LLM_FAILOVERS = Counter(
    "botsim_llm_failovers",
    "Chain calls answered by a provider other than the first of the chain (fallback), by"
    " the provider that answered (offline = the last resort).",
    ["provider"],
)
REPLY_STREAM_PENDING = Gauge(
    "botsim_reply_stream_pending",
    "Human messages in the reply stream waiting for a worker to take them (the stream's"
    " length past the last entry a worker read), as this process last saw it.",
)


#: Label values known in advance, exported as 0 from a process's start
#: (:func:`init_series`): a counter that has not counted yet still has a series, so
#: ``rate()`` and the alerts see 0 rather than nothing (Prometheus, "Instrumentation",
#: avoid missing metrics).
TURN_OUTCOMES = ("sent", "retry", "failed", "unknown", "skipped", "rate_limited",
                 "duplicate")
TELEGRAM_ERROR_KINDS = ("retry_after", "forbidden", "unauthorized", "bad_request", "server",
                        "network", "timeout")
SEND_UNKNOWN_REASONS = ("no_answer", "interrupted", "reconciled")
WEBHOOK_STATUSES = ("200", "401", "403", "404", "500")
_ROLES = ("worker", "listener", "api")


def init_series(role: str) -> None:
    """Create the series of ``role``'s metrics whose label values are known, at 0.

    Args:
        role: ``worker`` (turns, sends, leases, guards, Telegram errors of sendMessage),
            ``listener`` (webhook answers, Telegram errors of setWebhook), ``api`` (none
            yet: its cache and database series come with its first requests).

    Raises:
        ValueError: for another role.
    """
    if role not in _ROLES:
        raise ValueError(f"metrics role {role!r}: expected one of {', '.join(_ROLES)}")
    if role == "worker":
        for outcome in TURN_OUTCOMES:
            TURNS.labels(outcome=outcome)
        for reason in SEND_UNKNOWN_REASONS:
            SEND_UNKNOWN.labels(reason=reason)
        for error in TELEGRAM_ERROR_KINDS:
            TELEGRAM_ERRORS.labels(method="sendMessage", error=error)
        for change in ("acquired", "released", "lost"):
            LEASE_CHANGES.labels(change=change)
        for reason in ("kicked", "left"):
            BOT_MEMBERSHIP_LOST.labels(reason=reason)
        BOTS_DISABLED.labels(reason="token_refused")
        for outcome in ("complete", "partial"):
            SPLIT_SENDS.labels(outcome=outcome)
        for cause in ("market", "event"):
            STANCE_CHANGES.labels(cause=cause)
        for op in ("acquire", "block", "blocked_for"):
            RATELIMIT_FALLBACK.labels(op)
        for guard in ("repeat", "safety", "stance", "agreement"):
            for outcome in ("passed", "regenerated", "dropped", "kept_for_human"):
                GUARD_OUTCOMES.labels(guard=guard, outcome=outcome)
    if role == "listener":
        for status in WEBHOOK_STATUSES:
            WEBHOOK_REQUESTS.labels(status=status)
        for error in TELEGRAM_ERROR_KINDS:
            TELEGRAM_ERRORS.labels(method="setWebhook", error=error)
        LISTENER_UPDATES.labels(kind="message")


def metrics_app() -> Any:
    """An ASGI app serving the default registry in the Prometheus text format."""
    return make_asgi_app(REGISTRY)


def serve_metrics(host: str, port: int) -> None:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread (processes without HTTP).

    Raises:
        OSError: when the port is taken.
    """
    start_http_server(port, addr=host, registry=REGISTRY)
