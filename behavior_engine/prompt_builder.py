"""The prompt as ordered layers, stable first, so providers' prefix caches hit.

Layers, each a small function of the :class:`TurnContext`:

1. :func:`persona_core` — identity, background, language and style rules (stable: no
   timestamps or ids, byte-identical between turns of the same bot);
2. :func:`stances_and_holdings` — views and positions with current P&L;
3. :func:`mood_layer` — the mood now;
4. :func:`history_layer` — the chat's recent messages, oldest first, trimmed to a budget;
5. :func:`instruction` — the reply target and what to write this turn.

Output: OpenAI-style chat messages ``[{"role": "system"|"user", "content": str}]``.
"""

from __future__ import annotations

from behavior_engine.turn import ChatLine, GenerationRequest, TurnContext

#: Characters of history kept (about 4 characters per token: ~1,000 tokens).
HISTORY_CHAR_BUDGET = 4000

_LANG = {"tr": "Turkish", "en": "English"}
_LENGTH = {"short": "at most 8 words", "medium": "8 to 20 words", "long": "20 to 45 words"}


def persona_core(ctx: TurnContext) -> str:
    """Layer 1: who the bot is and how it writes (stable between turns)."""
    p = ctx.profile
    lang = _LANG.get(p.language, p.language)
    return (
        f"You are {ctx.bot_name} (@{ctx.bot_username}), a {p.role} in a Telegram group of "
        f"market traders. {p.bio}\n"
        f"Write only in {lang}. Style: {p.style.formality}, {_LENGTH[p.style.length]}, "
        f"about {p.style.emoji_rate:g} emoji per message. You are a bot account and never "
        "claim otherwise. Never promise returns, never tell anyone to buy or sell, give no "
        "personal investment advice. Disagree when your views differ; do not just agree."
    )


def stances_and_holdings(ctx: TurnContext) -> str:
    """Layer 2: views on topics and positions, with the holdings' P&L now."""
    views = "; ".join(
        f"{s.topic}: {s.view} (conviction {s.conviction:.1f}) — {s.reason}" for s in ctx.stances
    )
    held = ", ".join(
        f"{h.symbol} {h.quantity:g} @ {h.avg_cost:g}"
        + (f" (now {ctx.market.prices[h.symbol]:g})" if h.symbol in ctx.market.prices else "")
        for h in ctx.holdings
    )
    return (
        f"Your views: {views or 'none'}.\n"
        f"Your holdings: {held or 'none'}; P&L {ctx.pnl_pct:+.1f} %."
    )


def mood_layer(ctx: TurnContext) -> str:
    """Layer 3: the mood now, -1 (gloomy) to 1 (euphoric)."""
    return f"Your mood now: {ctx.mood:+.2f} on a scale from -1 (gloomy) to +1 (euphoric)."


def _line(m: ChatLine) -> str:
    who = m.speaker + ("" if m.is_human else " [bot]")
    return f"#{m.telegram_message_id} {who}: {m.text}"


def history_layer(ctx: TurnContext, budget_chars: int = HISTORY_CHAR_BUDGET) -> str:
    """Layer 4: recent messages, oldest first; the oldest are dropped to fit the budget."""
    lines: list[str] = []
    used = 0
    for m in reversed(ctx.history):
        line = _line(m)
        if used + len(line) + 1 > budget_chars:
            break
        lines.append(line)
        used += len(line) + 1
    lines.reverse()
    market = ", ".join(
        f"{sym} {price:g} ({ctx.market.change_pct.get(sym, 0.0):+.2f} %)"
        for sym, price in sorted(ctx.market.prices.items())
    )
    return f"Market now: {market}\nRecent messages:\n" + ("\n".join(lines) or "(none)")


def instruction(ctx: TurnContext) -> str:
    """Layer 5: what to write this turn (the reply target, if any, and the topic)."""
    if ctx.reply_to is not None:
        return (
            f"Reply to #{ctx.reply_to.telegram_message_id} from {ctx.reply_to.speaker}: "
            f"\"{ctx.reply_to.text}\". Address it directly, in your own voice. "
            "Write only the message text."
        )
    return f"Write one new message about {ctx.topic}. Write only the message text."


def build_request(ctx: TurnContext, *, max_chars: int = 4096) -> GenerationRequest:
    """Assemble the layered prompt for ``ctx``.

    Returns:
        A request whose first message (the persona prefix) depends only on the persona.
    """
    messages = [
        {"role": "system", "content": persona_core(ctx)},
        {"role": "system", "content": stances_and_holdings(ctx) + "\n" + mood_layer(ctx)},
        {"role": "user", "content": history_layer(ctx) + "\n\n" + instruction(ctx)},
    ]
    return GenerationRequest(messages=messages, context=ctx, max_chars=max_chars)
