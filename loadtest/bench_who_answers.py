"""Benchmark: who answers, measured on the scheduler alone (fake clock, no network).

Two measurements on the four demo personas (``bots/personas/*.yaml``):

* **draws**: ``--draws`` seeded draws of
  :func:`~behavior_engine.scheduler.choose_repliers` for each kind of human message in
  :data:`KINDS` (one message id per draw): the share answered by exactly one bot, by two,
  by the persona with expertise in the message's topic, by the addressed bot.
* **run**: a chat of ``--minutes`` driven by :class:`~behavior_engine.scheduler.Scheduler`
  (1 s ticks on a fake clock, every turn sent at once, the last 20 messages as its history),
  the demo's budgets (240–480 messages per bot-hour, 15 per chat-minute), a human message
  every ``--human-every`` seconds (the kinds of :data:`KINDS` in turn): how many different
  bots answer each human message, and over every message the answered shares of
  REALISM.md ("nobody answers" 30–60 %, "answered by ≥ 2 others" ≤ 15 %; the run's last 10
  messages left out; "answered" = another speaker's message replies to it), and the share
  of messages that reply to one (REALISM.md: 10–50 % reply to or mention someone; the
  run's bot texts mention no one).

Usage: ``python -m loadtest.bench_who_answers [--draws 2000] [--minutes 60] [--seed 1]
[--json]``
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from backend.schemas import Persona, SimulationSettings
from behavior_engine.scheduler import (
    HUMAN_WAIT_MAX,
    BotView,
    ChatView,
    Scheduler,
    WaitingMessage,
    choose_repliers,
)
from behavior_engine.topics import detect_topic
from behavior_engine.turn import ChatLine
from bots.personas import load_persona_dir

#: A fake clock's start: 07:00 in Istanbul, not a prime hour.
START = datetime(2026, 12, 3, 4, 0, tzinfo=UTC)
#: The demo's budgets (botsim/demo.py): a minute shows a conversation; second answers to
#: group questions on (``second_answer_p`` 0.2; the default 0 gives one answer each).
DEMO_SETTINGS = SimulationSettings.model_validate(
    {"bot_hourly_msg_limit": {"min": 240, "max": 480}, "max_msgs_per_min": 15,
     "second_answer_p": 0.2}
)
#: kind → (text, who should answer: a username, or None for "the expert in the topic").
KINDS: dict[str, tuple[str, str | None]] = {
    "plain": ("Borsa bugün neden düştü?", None),
    "group": ("Arkadaşlar bugün altın alınır mı?", None),
    "expert": ("Carry trade bitti mi, çıkış başladı mı?", None),
    "mention": ("Zeynep, faiz kararı ne olur?", "zeynep_yeni_bot"),
    "reply": ("Neden öyle düşünüyorsun?", "ayse_scalper_bot"),  # a reply to Ayşe's message
}
#: topic → the demo persona with the most expertise in it (bots/personas/*.yaml).
EXPERT = {"bist100": "mehmet_yatirimci_bot", "gold": "mehmet_yatirimci_bot",
          "rates": "ali_hoca_ekonomist_bot", "inflation": "ali_hoca_ekonomist_bot",
          "btc": "ayse_scalper_bot"}
HUMAN = "Deniz"


def demo_bots(personas: Sequence[Persona] | None = None) -> list[BotView]:
    """The demo personas as the scheduler sees them (ids 1–4 in file order), nothing sent."""
    return [BotView(bot_id=i + 1, name=p.name, username=p.username,
                    talkativeness=p.talkativeness, topics=dict(p.topics), sent_last_hour=0,
                    expertise=dict(p.expertise))
            for i, p in enumerate(personas if personas is not None else load_persona_dir())]


def draws(bots: Sequence[BotView], n: int, seed: int,
          settings: SimulationSettings = DEMO_SETTINGS) -> dict[str, dict[str, float]]:
    """Shares over ``n`` draws per kind: ``one``, ``two`` (answerers); ``right``: the first
    answerer is the addressed bot, or else a persona with expertise ≥ 0.5 in the message's
    topic; ``top``: it is the addressed bot or the topic's most expert persona
    (:data:`EXPERT`)."""
    by_name = {b.username: b for b in bots}
    out: dict[str, dict[str, float]] = {}
    for kind, (text, addressed) in KINDS.items():
        topic = detect_topic(text) or ""
        top_name = addressed or EXPERT[topic]
        reply_to_bot = by_name[addressed].bot_id if kind == "reply" and addressed else None
        one = two = right = top = 0
        for i in range(n):
            w = WaitingMessage(message_id=i + 1, reply_to_bot_id=reply_to_bot,
                               line=ChatLine(i + 1, HUMAN, "deniz", True, text))
            chosen = choose_repliers(w, bots, settings, START, seed=seed)
            one += len(chosen) == 1
            two += len(chosen) == 2
            top += chosen[0].username == top_name
            right += (chosen[0].username == addressed if addressed
                      else chosen[0].expertise.get(topic, 0.0) >= 0.5)
        out[kind] = {"one": one / n, "two": two / n, "right": right / n, "top": top / n}
    return out


@dataclass
class Run:
    """A simulated chat: ``lines`` in Telegram id order, ``humans`` the human messages'
    kinds by Telegram id."""

    lines: list[ChatLine] = field(default_factory=list)
    humans: dict[int, str] = field(default_factory=dict)

    def answerers(self, tg_id: int) -> set[str]:
        """Speakers (other than its own) whose messages reply to ``tg_id``."""
        own = next(m.speaker for m in self.lines if m.telegram_message_id == tg_id)
        return {m.speaker for m in self.lines if m.reply_to == tg_id and m.speaker != own}


def simulate(bots: Sequence[BotView], *, minutes: float, seed: int, human_every_s: float,
             settings: SimulationSettings = DEMO_SETTINGS) -> Run:
    """Drive one chat for ``minutes`` on a fake clock (see the module docstring, "run")."""
    sched = Scheduler(seed=seed)
    run = Run()
    sent: dict[int, list[datetime]] = {b.bot_id: [] for b in bots}
    kinds = list(KINDS)
    next_human, k = START + timedelta(seconds=human_every_s / 2), 0
    t = START
    end = START + timedelta(minutes=minutes)
    while t < end:
        if t >= next_human:
            kind = kinds[k % len(kinds)]
            k += 1
            text = KINDS[kind][0]
            last_ayse = next((m for m in reversed(run.lines) if m.bot_id == 2), None)
            reply_to = last_ayse.telegram_message_id if kind == "reply" and last_ayse else None
            if kind == "reply" and last_ayse is None:
                kind = "plain"
            line = ChatLine(len(run.lines) + 1, HUMAN, "deniz", True, text, created_at=t,
                            reply_to=reply_to)
            run.lines.append(line)
            run.humans[line.telegram_message_id] = kind
            next_human += timedelta(seconds=human_every_s)
        answered = {m.reply_to for m in run.lines if m.bot_id is not None}
        bot_of = {m.telegram_message_id: m.bot_id for m in run.lines if m.bot_id is not None}
        waiting = [WaitingMessage(message_id=m.telegram_message_id, line=m,
                                  reply_to_bot_id=bot_of.get(m.reply_to or 0))
                   for m in run.lines if m.is_human and m.telegram_message_id not in answered
                   and m.created_at is not None and m.created_at >= t - HUMAN_WAIT_MAX]
        views = [BotView(bot_id=b.bot_id, name=b.name, username=b.username,
                         talkativeness=b.talkativeness, topics=b.topics,
                         expertise=b.expertise,
                         sent_last_hour=sum(1 for x in sent[b.bot_id]
                                            if x > t - timedelta(hours=1)))
                 for b in bots]
        chat = ChatView(chat_id=1, telegram_chat_id=-100, topics={"usdtry": 1.0},
                        sent_last_minute=sum(1 for m in run.lines if m.bot_id is not None
                                             and m.created_at is not None
                                             and m.created_at > t - timedelta(seconds=60)),
                        recent=run.lines[-20:], waiting=waiting)
        for turn in sched.decide(chat, views, settings, t):
            bot = next(b for b in bots if b.bot_id == turn.bot_id)
            run.lines.append(ChatLine(
                len(run.lines) + 1, bot.name, bot.username, False,
                f"mesaj {len(run.lines) + 1}", bot_id=bot.bot_id, created_at=t,
                reply_to=turn.reply_to.telegram_message_id if turn.reply_to else None))
            sent[bot.bot_id].append(t)
        t += timedelta(seconds=1)
    return run


def run_figures(run: Run) -> dict[str, Any]:
    """The run's figures (module docstring, "run")."""
    counted = run.lines[:-10]
    n_by = [len(run.answerers(m.telegram_message_id)) for m in counted]
    humans = [tg for tg in run.humans if tg <= len(counted)]
    per_human = [len({m.bot_id for m in run.lines if m.reply_to == tg and m.bot_id})
                 for tg in humans]
    return {
        "messages": len(run.lines),
        "human_messages": len(humans),
        "human_answered_once": sum(x == 1 for x in per_human) / max(len(humans), 1),
        "human_answered_twice": sum(x == 2 for x in per_human) / max(len(humans), 1),
        "human_unanswered": sum(x == 0 for x in per_human) / max(len(humans), 1),
        "nobody_answers": sum(x == 0 for x in n_by) / max(len(counted), 1),
        "answered_by_2_or_more": sum(x >= 2 for x in n_by) / max(len(counted), 1),
        "replies": sum(m.reply_to is not None for m in run.lines) / max(len(run.lines), 1),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run both measurements and print them (a table, or JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--human-every", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    bots = demo_bots()
    result = {
        "draws": draws(bots, args.draws, args.seed),
        "run": run_figures(simulate(bots, minutes=args.minutes, seed=args.seed,
                                    human_every_s=args.human_every)),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"draws (n={args.draws}, seed {args.seed}): one / two answerers, "
              "addressed-or-expert / addressed-or-top-expert first")
        for kind, d in result["draws"].items():
            print(f"  {kind:8s} {d['one']:6.1%} {d['two']:6.1%} {d['right']:6.1%} "
                  f"{d['top']:6.1%}")
        print(f"run ({args.minutes:g} min, a human every {args.human_every:g} s):")
        for key, value in result["run"].items():
            print(f"  {key:24s} {value:.3f}" if isinstance(value, float)
                  else f"  {key:24s} {value}")
    return result


if __name__ == "__main__":
    main()
