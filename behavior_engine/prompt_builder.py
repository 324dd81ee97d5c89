"""The prompt as ordered layers, stable first, so providers' prefix caches hit.

Layers, each a small function of the :class:`TurnContext`:

1. :func:`persona_core` — identity, background, language and style rules. Stable: no
   timestamps, ids, prices or moods, so it is byte-identical between turns of the same bot
   and providers serve it from their prefix cache (OpenAI and Groq cache identical prompt
   prefixes; Gemini reports ``cachedContentTokenCount``);
2. :func:`stances_and_holdings` — views and positions with the P&L now;
3. :func:`mood_layer` — the mood now;
4. :func:`memory_layer` — what the bot remembers: what it said, what it was told or asked,
   events, reflections (:mod:`behavior_engine.recall`; keeps its voice and views consistent);
5. :func:`history_layer` — the chat's recent messages, oldest first, trimmed to a token
   budget (the oldest go first);
6. :func:`instruction` — the reply target and what to write this turn.

Output: OpenAI-style chat messages ``[{"role": "system"|"user", "content": str}]``: layer 1
alone in the first message, 2–4 in the second, 5–6 in the last.

Tokens are counted with :func:`count_tokens`, a documented estimate rather than a
tokenizer: tiktoken downloads its BPE tables on first use, which a machine without network
cannot, and each provider tokenizes differently anyway. The estimate — one token per 4 UTF-8
bytes, at least one per word — is within about 15 % of the GPT-4o and Llama 3 tokenizers on
Turkish and English chat text (Turkish letters take 2 bytes, and Turkish words split into
more tokens, so counting bytes rather than characters follows them).
"""

from __future__ import annotations

from behavior_engine.turn import ChatLine, GenerationRequest, TurnContext

#: Tokens of chat history a prompt carries at most (the oldest messages are dropped first).
HISTORY_TOKEN_BUDGET = 1000
#: Own earlier messages recalled in the memory layer.
MEMORY_ITEMS = 3

_LANG = {"tr": "Turkish", "en": "English"}
_LENGTH = {"short": "at most 8 words", "medium": "8 to 20 words", "long": "20 to 45 words"}


def count_tokens(text: str) -> int:
    """Estimated tokens of ``text``: max(UTF-8 bytes / 4, words), rounded up (see module)."""
    if not text:
        return 0
    return max(-(-len(text.encode("utf-8")) // 4), len(text.split()))


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
    changed = "".join(f"\n{line}" for line in ctx.view_changes)
    return (
        f"Your views: {views or 'none'}.\n"
        f"Your holdings: {held or 'none'}; P&L {ctx.pnl_pct:+.1f} %.{changed}\n"
        "Never contradict your views or holdings above."
    )


def mood_layer(ctx: TurnContext) -> str:
    """Layer 3: the mood now, -1 (gloomy) to 1 (euphoric)."""
    return f"Your mood now: {ctx.mood:+.2f} on a scale from -1 (gloomy) to +1 (euphoric)."


def memory_layer(ctx: TurnContext, items: int = MEMORY_ITEMS) -> str:
    """Layer 4: the newest ``items`` of the bot's memories (empty when it has none)."""
    said = ctx.memories[-items:]
    if not said:
        return ""
    return "You remember (stay consistent, do not repeat yourself):\n" + "\n".join(
        f"- {text}" for text in said
    )


def _line(m: ChatLine) -> str:
    who = m.speaker + ("" if m.is_human else " [bot]")
    return f"#{m.telegram_message_id} {who}: {m.text}"


def trim_history(
    history: tuple[ChatLine, ...], budget_tokens: int = HISTORY_TOKEN_BUDGET
) -> list[str]:
    """The newest lines of ``history`` that fit ``budget_tokens``, oldest first."""
    lines: list[str] = []
    used = 0
    for m in reversed(history):
        line = _line(m)
        cost = count_tokens(line) + 1  # +1: the newline between lines
        if used + cost > budget_tokens:
            break
        lines.append(line)
        used += cost
    lines.reverse()
    return lines


def history_layer(ctx: TurnContext, budget_tokens: int = HISTORY_TOKEN_BUDGET) -> str:
    """Layer 5: the market now and recent messages, oldest first, within ``budget_tokens``."""
    market = ", ".join(
        f"{sym} {price:g} ({ctx.market.change_pct.get(sym, 0.0):+.2f} %)"
        for sym, price in sorted(ctx.market.prices.items())
    )
    lines = trim_history(ctx.history, budget_tokens)
    news = "".join(f"\nNews: {line}" for line in ctx.news)
    return (f"Market now: {market}{news}\nRecent messages:\n"
            + ("\n".join(lines) or "(none)"))


def instruction(ctx: TurnContext) -> str:
    """Layer 6: what to write this turn (the reply target, if any, and the topic)."""
    contrast = f" {ctx.contrast}" if ctx.contrast else ""
    if ctx.reply_to is not None:
        return (
            f"Reply to #{ctx.reply_to.telegram_message_id} from {ctx.reply_to.speaker}: "
            f"\"{ctx.reply_to.text}\". Address it directly, in your own voice.{contrast} "
            "Write only the message text."
        )
    react = (" React to the news above in your own way."
             if ctx.news and ctx.topic in ctx.news_topics else "")
    return (f"Write one new message about {ctx.topic}. Write only the message text."
            f"{react}{contrast}")


def build_request(
    ctx: TurnContext, *, max_chars: int = 4096, history_tokens: int = HISTORY_TOKEN_BUDGET
) -> GenerationRequest:
    """Assemble the layered prompt for ``ctx``.

    Args:
        ctx: the turn's context.
        max_chars: the longest text the provider may return (Telegram: 4096).
        history_tokens: the token budget of the history layer.

    Returns:
        A request whose first message (the persona prefix) depends only on the persona.
    """
    middle = "\n".join(
        part for part in (stances_and_holdings(ctx), mood_layer(ctx), memory_layer(ctx)) if part
    )
    messages = [
        {"role": "system", "content": persona_core(ctx)},
        {"role": "system", "content": middle},
        {"role": "user", "content": history_layer(ctx, history_tokens) + "\n\n"
         + instruction(ctx)},
    ]
    return GenerationRequest(messages=messages, context=ctx, max_chars=max_chars)
