"""The figures of a ``botsim chaos`` run, from the system of record and the sandbox's log.

Pure functions over what the runner collected: the sandbox Telegram's chat logs (every
message it accepted), the database's rows, the human messages the run posted, the faults
as they happened, and the samples the runner took (bots driven, memory, descriptors).
:func:`chaos_figures` documents each figure; :func:`verdict` says which promise held.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Width of the throughput buckets, seconds.
BUCKET_S = 5.0
#: A fault is recovered from once a bucket after its end reaches this share of the rate
#: before it.
RECOVERED_SHARE = 0.5
#: The simulation never stops while a provider is up: no gap between two messages of the
#: whole run (any bot, any chat) longer than this, seconds.
MAX_GLOBAL_GAP_S = 60.0
#: Seconds a worker needs to reach Redis again after it restarts (the Redis clients'
#: reconnect backoff doubles up to 1 s, ``backend.cache.twolayer``).
REDIS_RECONNECT_S = 1.0


@dataclass(frozen=True)
class Send:
    """One message our bots got accepted, from the sandbox's chat log.

    Attributes:
        chat: the Telegram chat id; message_id: Telegram's id in that chat.
        bot: the bot's Telegram user id; at: the message's ``date`` (Unix seconds).
        text: its text; reply_to: the Telegram id it replies to, or None.
    """

    chat: int
    message_id: int
    bot: int
    at: float
    text: str
    reply_to: int | None


@dataclass(frozen=True)
class Stored:
    """What the database holds at the end.

    Attributes:
        bot_messages: (Telegram chat id, Telegram message id, turn id or None) of every
            stored message of our bots.
        humans: (Telegram chat id, Telegram message id) of every stored human message.
        reply_statuses: (Telegram chat id, Telegram message id of the human message) →
            the statuses of the turns that answer it (``sent``, ``unknown``, ``failed``…).
        turn_statuses: turns per status.
        duplicates_telegram / duplicates_turn: groups of stored rows that should be one
            (:func:`backend.stores.figures.duplicate_groups`).
        still_waiting: the human messages still marked ``reply_wanted``.
    """

    bot_messages: Sequence[tuple[int, int, str | None]]
    humans: Sequence[tuple[int, int]]
    reply_statuses: dict[tuple[int, int], list[str]]
    turn_statuses: dict[str, int]
    duplicates_telegram: int
    duplicates_turn: int
    still_waiting: set[tuple[int, int]] = field(default_factory=set)


@dataclass(frozen=True)
class Happened:
    """A fault as it happened: its schedule entry (``as_dict``) and its Unix start and end
    times (``end`` = ``start`` for an instant fault; ``error`` when it could not be done)."""

    event: dict[str, Any]
    start: float
    end: float
    error: str | None = None


def _gaps(times: Iterable[float], start: float, end: float) -> float:
    """The longest stretch of [start, end] without a time of ``times``, seconds."""
    inside = sorted(t for t in times if start <= t <= end)
    edges = [start, *inside, end]
    return max((b - a for a, b in itertools.pairwise(edges)), default=end - start)


def _rate(times: Sequence[float], start: float, end: float) -> float | None:
    """Messages per minute in [start, end); None for an empty span."""
    if end - start <= 0:
        return None
    return round(sum(1 for t in times if start <= t < end) / (end - start) * 60, 1)


def _recovery_s(times: Sequence[float], fault: Happened, run_start: float,
                run_end: float) -> float | None:
    """Seconds from the end of ``fault`` until a :data:`BUCKET_S` bucket holds
    :data:`RECOVERED_SHARE` of the rate of the 30 s before it started (0.0 when the rate
    never dropped below that; None when it never came back before ``run_end``)."""
    before = _rate(times, max(run_start, fault.start - 30.0), fault.start)
    if not before:
        return 0.0
    need = before / 60 * BUCKET_S * RECOVERED_SHARE
    t = fault.end
    while t + BUCKET_S <= run_end:
        if sum(1 for x in times if t <= x < t + BUCKET_S) >= need:
            return round(t - fault.end, 1)
        t += BUCKET_S
    return None


def takeover_s(samples: Sequence[tuple[float, float]], killed_at: float, bots: int,
               until: float) -> float | None:
    """Seconds from a worker's death until the live workers drive all ``bots`` again
    (``samples``: (Unix time, sum of ``botsim_bots_driven`` over the live workers));
    None when that did not happen before ``until``."""
    for at, driven in samples:
        if killed_at < at <= until and driven >= bots:
            return round(at - killed_at, 1)
    return None


def growth_per_hour(points: Sequence[tuple[float, float]], warmup_s: float) -> float | None:
    """The least-squares slope of ``points`` ((Unix time, value)) after the first
    ``warmup_s`` seconds, per hour; None with fewer than 3 points left."""
    if not points:
        return None
    t0 = points[0][0] + warmup_s
    kept = [(t, v) for t, v in points if t >= t0]
    if len(kept) < 3:
        return None
    t = np.array([p[0] for p in kept])
    v = np.array([p[1] for p in kept])
    if float(np.ptp(t)) == 0.0:
        return None
    slope = float(np.polyfit(t - t[0], v, 1)[0])
    return round(slope * 3600, 2)


def chaos_figures(*, sends: Sequence[Send], stored: Stored,
                  posted: Sequence[tuple[int, int, float]], faults: Sequence[Happened],
                  driven: Sequence[tuple[float, float]],
                  resources: dict[str, list[tuple[float, float, float, float]]], bots: int,
                  bot_ids: Sequence[int], run_start: float, run_end: float,
                  heartbeat_ttl_s: float, config: dict[str, Any]) -> dict[str, Any]:
    """The figures of a chaos run (issue 19, item 2).

    * ``humans``: ``posted`` (accepted by the sandbox), ``stored`` (in the database),
      ``answered`` (a bot message in the sandbox's log replies to it), ``answer_unknown``
      (not answered, but an answering turn is ``unknown``: its send was cut off, never
      resent), ``lost`` (posted, not stored), ``unanswered`` (stored, neither answered nor
      ``unknown``), each with up to 10 examples.
    * ``sends``: ``accepted`` (bot messages in the sandbox's log), ``stored``,
      ``unrecorded`` (accepted, not stored: a send whose turn was cut off after Telegram
      took it), ``duplicates`` (accepted sends whose bot, chat, text and reply target
      repeat an earlier accepted send: the same turn sent twice), the database's own
      ``duplicate_rows_telegram`` / ``duplicate_rows_turn``; ``turns`` per status.
    * ``silence_s``: the longest stretch without a message of any one bot, of any one chat,
      and of the whole run (``any``).
    * ``faults``: each fault with its start (seconds into the run), duration, recovery
      (:func:`_recovery_s`) and, for a killed worker, ``takeover_s``
      (:func:`takeover_s`).
    * ``throughput``: messages per minute before the first fault, during the faults, after
      the last one ends.
    * ``resources``: per process (``name#pid``: a restarted process is another), peak RSS
      (MiB) and open descriptors, and their growth per hour after the first fifth of its
      life (:func:`growth_per_hour`), with its asyncio tasks' (workers: the
      ``botsim_event_loop_tasks`` gauge; ``resources`` points are (Unix time, RSS MiB,
      descriptors, tasks or -1)).
    * ``timeline``: messages per :data:`BUCKET_S` bucket (for the report's plot).
    """
    times = sorted(s.at for s in sends)
    stored_tg = {(c, m) for c, m, _t in stored.bot_messages}
    humans_stored = set(stored.humans)
    answered = {(s.chat, s.reply_to) for s in sends if s.reply_to is not None}
    lost, unanswered, unknown = [], [], []
    for chat, mid, _at in posted:
        key = (chat, mid)
        if key not in humans_stored:
            lost.append(key)
        elif key not in answered:
            if "unknown" in stored.reply_statuses.get(key, []):
                unknown.append(key)
            else:
                unanswered.append(key)
    def _detail(key: tuple[int, int]) -> dict[str, Any]:
        at = next((a for c, m, a in posted if (c, m) == key), run_start)
        return {"chat": key[0], "message_id": key[1], "posted_s": round(at - run_start, 1),
                "turns": stored.reply_statuses.get(key, []),
                "reply_wanted": key in stored.still_waiting}
    seen: set[tuple[int, int, str, int | None]] = set()
    duplicates, unrecorded = [], []
    for s in sorted(sends, key=lambda x: (x.at, x.message_id)):
        sig = (s.bot, s.chat, s.text, s.reply_to)
        if (s.chat, s.message_id) not in stored_tg:
            unrecorded.append((s.chat, s.message_id))
            if sig in seen:
                duplicates.append((s.chat, s.message_id))
        seen.add(sig)
    by_bot: dict[int, list[float]] = defaultdict(list)
    by_chat: dict[int, list[float]] = defaultdict(list)
    for s in sends:
        by_bot[s.bot].append(s.at)
        by_chat[s.chat].append(s.at)
    bot_silence = {b: _gaps(by_bot.get(b, []), run_start, run_end) for b in bot_ids}
    chats = sorted({c for c, _m, _a in posted} | set(by_chat))
    chat_silence = {c: _gaps(by_chat.get(c, []), run_start, run_end) for c in chats}
    fault_rows = []
    for f in faults:
        row: dict[str, Any] = {**f.event, "started_s": round(f.start - run_start, 1),
                               "held_s": round(f.end - f.start, 1),
                               "recovery_s": _recovery_s(times, f, run_start, run_end)}
        if f.event.get("kind") == "worker_kill":
            back = f.start + float(f.event.get("detail", {}).get("restart_after_s", 0.0))
            row["takeover_s"] = takeover_s(driven, f.start, bots, back)
        if f.error:
            row["error"] = f.error
        fault_rows.append(row)
    first = min((f.start for f in faults), default=run_end)
    last = max((f.end for f in faults), default=run_end)
    n_buckets = max(1, math.ceil((run_end - run_start) / BUCKET_S))
    counts = Counter(int((t - run_start) // BUCKET_S) for t in times if t >= run_start)
    res = {}
    for name, points in resources.items():
        life = points[-1][0] - points[0][0] if points else 0.0
        res[name] = {
            "peak_rss_mb": round(max((p[1] for p in points), default=0.0), 1),
            "peak_fds": int(max((p[2] for p in points), default=0.0)),
            "rss_growth_mb_per_h": growth_per_hour([(p[0], p[1]) for p in points], life / 5),
            "fds_growth_per_h": growth_per_hour([(p[0], p[2]) for p in points], life / 5),
            "tasks_growth_per_h": growth_per_hour(
                [(p[0], p[3]) for p in points if p[3] >= 0], life / 5),
            "seconds": round(life, 1),
        }
    return {
        "config": config,
        "humans": {"posted": len(posted), "stored": len(humans_stored & {
            (c, m) for c, m, _a in posted}), "answered": len(posted) - len(lost)
            - len(unanswered) - len(unknown), "answer_unknown": len(unknown),
            "lost": len(lost), "unanswered": len(unanswered),
            "examples": {"lost": [_detail(k) for k in lost[:10]],
                         "unanswered": [_detail(k) for k in unanswered[:10]]}},
        "sends": {"accepted": len(sends), "stored": len(stored.bot_messages),
                  "unrecorded": len(unrecorded), "duplicates": len(duplicates),
                  "duplicate_rows_telegram": stored.duplicates_telegram,
                  "duplicate_rows_turn": stored.duplicates_turn,
                  "examples": {"unrecorded": unrecorded[:10], "duplicates": duplicates[:10]}},
        "turns": dict(sorted(stored.turn_statuses.items())),
        "silence_s": {
            "bot_max": round(max(bot_silence.values(), default=0.0), 1),
            "bot_median": round(float(np.median(list(bot_silence.values()))), 1)
            if bot_silence else None,
            "chat_max": round(max(chat_silence.values(), default=0.0), 1),
            "any": round(_gaps(times, run_start, run_end), 1)},
        "faults": fault_rows,
        "throughput": {"before": _rate(times, run_start, first),
                       "during": _rate(times, first, last),
                       "after": _rate(times, last, run_end)},
        "resources": res,
        "timeline": [{"t_s": i * BUCKET_S, "messages": counts.get(i, 0)}
                     for i in range(n_buckets)],
        "heartbeat_ttl_s": heartbeat_ttl_s,
    }


def verdict(figures: dict[str, Any]) -> dict[str, Any]:
    """Which of the engine's promises held in ``figures`` (issue 19, "Done when").

    Returns:
        ``{"passed": bool, "checks": {name: {"ok": bool, "value": …, "limit": …}}}``:
        ``humans_lost`` and ``humans_unanswered`` 0; ``duplicate_sends`` 0 (in the
        sandbox's log and in the database); ``unrecorded_within_unknown``: every accepted
        send not stored is one of the ``unknown`` turns; ``takeover``: each killed
        worker's bots driven again within 2 × the heartbeat TTL, plus, for a Redis restart
        that began within that time, its length and :data:`REDIS_RECONNECT_S` (the leases
        live in Redis: no worker can take one while it is down); ``producing``: no gap of
        the whole run longer than :data:`MAX_GLOBAL_GAP_S`; ``faults_done``: every fault
        was injected.
    """
    h, s = figures["humans"], figures["sends"]
    ttl = float(figures["heartbeat_ttl_s"])
    kills = [f for f in figures["faults"] if f.get("kind") == "worker_kill"]
    takeovers = [f.get("takeover_s") for f in kills]
    worst = None if any(t is None for t in takeovers) else max(takeovers, default=0.0)
    limit = 2 * ttl + max((sum(
        float(r.get("held_s") or 0.0) + REDIS_RECONNECT_S for r in figures["faults"]
        if r.get("kind") == "redis_restart"
        and k["started_s"] <= r["started_s"] <= k["started_s"] + 2 * ttl)
        for k in kills), default=0.0)
    dups = s["duplicates"] + s["duplicate_rows_telegram"] + s["duplicate_rows_turn"]
    errors = [f for f in figures["faults"] if f.get("error")]
    checks = {
        "humans_lost": {"ok": h["lost"] == 0, "value": h["lost"], "limit": 0},
        "humans_unanswered": {"ok": h["unanswered"] == 0, "value": h["unanswered"],
                              "limit": 0},
        "duplicate_sends": {"ok": dups == 0, "value": dups, "limit": 0},
        "unrecorded_within_unknown": {
            "ok": s["unrecorded"] <= figures["turns"].get("unknown", 0),
            "value": s["unrecorded"], "limit": figures["turns"].get("unknown", 0)},
        "takeover": {"ok": worst is not None and worst <= limit, "value": worst,
                     "limit": limit},
        "producing": {"ok": figures["silence_s"]["any"] <= MAX_GLOBAL_GAP_S,
                      "value": figures["silence_s"]["any"], "limit": MAX_GLOBAL_GAP_S},
        "faults_done": {"ok": not errors, "value": len(errors), "limit": 0},
    }
    if not takeovers:
        checks["takeover"] = {"ok": True, "value": None, "limit": 2 * ttl}
    return {"passed": all(c["ok"] for c in checks.values()), "checks": checks}
