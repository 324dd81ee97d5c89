"""A generated world for tests and load tests: N personas spread over M Telegram groups.

Everything is deterministic from ``seed`` (``random.Random(seed)``, never the global
generator): the same arguments give an identical :class:`World`, another seed another one.
The four demo personas (``bots/personas/*.yaml``) are the archetypes; each generated persona
copies one archetype's role, bio and style and varies its name, username, talkativeness,
mood, emoji rate, topic weights, stances and holdings, staying valid for
:class:`backend.schemas.Persona`.

The same world loads into the sandbox Telegram server and into our database::

    world = generate_world(100, 10, seed=7)
    sandbox = TelegramSandbox()
    sandbox.load_world(sandbox_world(world))
    async with sessionmaker() as s, s.begin():
        ids = await seed_database(s, world, cipher=cipher)   # token -> bots.id

Identifiers never collide inside one world, even with 10,000 bots: usernames embed the
bot's index (``ayse_kaya_17_bot``), bot ids (the number before ``:`` in a token) and chat
ids are drawn without replacement. Generated usernames always contain digits, so they never
clash with the demo personas' usernames either.
"""

from __future__ import annotations

import base64
import random
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from backend.crypto import TokenCipher
from backend.schemas import Persona, Stance, Style
from backend.stores import bulk as bulk_store
from behavior_engine.topics import TOPIC_PATTERNS
from bots.personas import load_persona_dir

#: Topic ids a generated chat talks about (those of ``behavior_engine.topics``).
TOPIC_IDS: tuple[str, ...] = tuple(TOPIC_PATTERNS)

#: Bot ids (Telegram user ids of the bots) are drawn from this range: 10 digits like
#: today's bot ids, above the ids the demo and e2e tests use by hand (``81000000xx``).
BOT_ID_RANGE = range(6_000_000_000, 8_000_000_000)
#: Supergroup ids are ``-100`` followed by 10 digits: ``-(10**12 + x)`` for x in this range.
CHAT_ID_RANGE = range(1_000_000_000, 10_000_000_000)
#: Human user ids, 9 digits, disjoint from :data:`BOT_ID_RANGE`.
HUMAN_ID_RANGE = range(100_000_000, 1_000_000_000)

FIRST_NAMES: tuple[str, ...] = (
    "Ahmet", "Mehmet", "Mustafa", "Ali", "Hüseyin", "Hasan", "İbrahim", "İsmail", "Murat",
    "Ömer", "Emre", "Burak", "Can", "Cem", "Deniz", "Eren", "Kerem", "Oğuz", "Serkan", "Tolga",
    "Ayşe", "Fatma", "Emine", "Hatice", "Zeynep", "Elif", "Merve", "Büşra", "Selin", "Ece",
    "Gizem", "Derya", "Esra", "Özlem", "Şule", "Pınar", "Ceren", "İpek", "Nazlı", "Gül",
)
SURNAMES: tuple[str, ...] = (
    "Yılmaz", "Kaya", "Demir", "Şahin", "Çelik", "Yıldız", "Yıldırım", "Öztürk", "Aydın",
    "Özdemir", "Arslan", "Doğan", "Kılıç", "Aslan", "Çetin", "Kara", "Koç", "Kurt", "Özkan",
    "Şimşek", "Polat", "Korkmaz", "Karataş", "Erdem", "Güneş", "Aksoy", "Tekin", "Uçar",
    "Bulut", "Ateş",
)
_CHAT_ADJECTIVES: tuple[str, ...] = (
    "Sakin", "Hızlı", "Akıllı", "Temkinli", "Cesur", "Uzun Vadeli", "Gece", "Sabah",
)
_TOPIC_LABELS: dict[str, str] = {
    "usdtry": "Dolar/TL", "bist100": "Borsa", "btc": "Kripto", "gold": "Altın",
    "rates": "Faiz", "inflation": "Enflasyon",
}
_ASCII = str.maketrans("çğıİöşüâÇĞÖŞÜÂ", "cgiIosuaCGOSUA")


@dataclass(frozen=True, slots=True)
class WorldBot:
    """One generated bot.

    Attributes:
        token: Bot API token ``"<bot id>:<35 chars of A-Za-z0-9_->"``, e.g.
            ``"6123456789:AAb3..."``; accepted by the sandbox's ``TOKEN_RE`` and by
            ``backend.stores.bots.bot_id_from_token``.
        persona: the bot's persona (valid :class:`~backend.schemas.Persona`).
    """

    token: str
    persona: Persona

    @property
    def user_id(self) -> int:
        """The bot's Telegram user id: the number before ``:`` in :attr:`token`."""
        return int(self.token.partition(":")[0])


@dataclass(frozen=True, slots=True)
class WorldChat:
    """One generated Telegram supergroup.

    Attributes:
        telegram_chat_id: negative supergroup id, ``-100`` + 10 digits (``-1001234567890``).
        title: display title, e.g. ``"Sakin Borsa Grubu #3"``.
        topics: topic id → weight > 0 (2–4 of :data:`TOPIC_IDS`), e.g. ``{"btc": 2.3}``.
        bot_tokens: tokens of the member bots (each bot is in exactly one chat).
        humans: human members ``{"id": int, "first_name": str, "username": str}``.
    """

    telegram_chat_id: int
    title: str
    topics: dict[str, float]
    bot_tokens: tuple[str, ...]
    humans: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class World:
    """A generated world.

    Attributes:
        bots: every bot, in generation order (``bots[i].persona`` is the i-th persona of
            ``generate_personas(n_bots, seed=seed)``).
        chats: every chat; bot i is a member of ``chats[i % len(chats)]``.
    """

    bots: tuple[WorldBot, ...]
    chats: tuple[WorldChat, ...]


@dataclass(frozen=True, slots=True)
class _Archetype:
    """A demo persona prepared for variation: its bio split around its first name."""

    persona: Persona
    bio_parts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Pools:
    archetypes: tuple[_Archetype, ...]
    #: topic id → every (view, reason) some archetype holds on it.
    stances: dict[str, tuple[tuple[str, str], ...]]
    #: symbol → every (quantity, avg_cost) some archetype holds.
    holdings: dict[str, tuple[tuple[float, float], ...]]


@cache
def _pools() -> _Pools:
    """Load the demo personas once and index their stances and holdings."""
    demo = load_persona_dir()
    archetypes = []
    stances: dict[str, list[tuple[str, str]]] = {}
    holdings: dict[str, list[tuple[float, float]]] = {}
    for p in demo:
        first = p.name.split()[0]
        parts = tuple(re.split(rf"\b{re.escape(first)}\b", p.bio))
        archetypes.append(_Archetype(p, parts))
        for s in p.stances:
            stances.setdefault(s.topic, []).append((s.view, s.reason))
        for h in p.holdings:
            holdings.setdefault(h.symbol, []).append((h.quantity, h.avg_cost))
    return _Pools(
        tuple(archetypes),
        {k: tuple(v) for k, v in stances.items()},
        {k: tuple(v) for k, v in holdings.items()},
    )


def _clamp(x: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, x))


def _slug(name: str) -> str:
    """``"Şule Öztürk"`` → ``"sule_ozturk"`` (ASCII, lowercase, ``_`` for spaces)."""
    return name.translate(_ASCII).lower().replace(" ", "_")


def _username(first: str, last: str, index: int) -> str:
    """``<first>_<last>_<index>_bot``, the name part cut so the whole is ≤ 32 characters.

    Unique per index: the name part has no digits, so the digits before ``_bot`` are
    exactly ``index``.
    """
    tail = f"_{index}_bot"
    return _slug(f"{first} {last}")[: 32 - len(tail)] + tail


def _quantity(q: float) -> float:
    return float(round(q)) if q >= 10 else max(round(q, 4), 0.0001)


class _Parts:
    """Validated, frozen (so shareable) stances and styles, made once per distinct value."""

    def __init__(self) -> None:
        self._stances: dict[tuple[str, str, str, float], Stance] = {}
        self._styles: dict[tuple[str, str, float], Style] = {}

    def stance(self, topic: str, view: str, reason: str, conviction: float) -> Stance:
        key = (topic, view, reason, conviction)
        found = self._stances.get(key)
        if found is None:
            found = self._stances[key] = Stance.model_validate(
                {"topic": topic, "view": view, "reason": reason, "conviction": conviction})
        return found

    def style(self, formality: str, length: str, emoji_rate: float) -> Style:
        key = (formality, length, emoji_rate)
        found = self._styles.get(key)
        if found is None:
            found = self._styles[key] = Style.model_validate(
                {"formality": formality, "length": length, "emoji_rate": emoji_rate})
        return found


def _persona(rng: random.Random, pools: _Pools, parts: _Parts, index: int) -> Persona:
    """Generate (and validate) persona number ``index``."""
    uniform, random_ = rng.uniform, rng.random
    arch = rng.choice(pools.archetypes)
    base = arch.persona
    first, last = rng.choice(FIRST_NAMES), rng.choice(SURNAMES)

    topics = {t: round(w * uniform(0.6, 1.5), 2) for t, w in base.topics.items()}
    if len(topics) > 1 and random_() < 0.3:  # drop the least liked topic
        del topics[min(topics, key=topics.__getitem__)]
    if random_() < 0.3:  # pick up a new interest
        extra = [t for t in TOPIC_IDS if t not in topics]
        if extra:
            topics[rng.choice(extra)] = round(uniform(0.3, 1.2), 2)

    stances: list[Stance] = []
    for s in base.stances:
        view: str = s.view
        reason = s.reason
        if random_() < 0.3:  # another archetype's view on the same topic
            view, reason = rng.choice(pools.stances[s.topic])
        conviction = round(_clamp(s.conviction + uniform(-0.2, 0.2), 0.0, 1.0), 2)
        stances.append(parts.stance(s.topic, view, reason, conviction))
    held_topics = {s.topic for s in stances}
    for topic in topics:
        if topic not in held_topics and topic in pools.stances and random_() < 0.3:
            view, reason = rng.choice(pools.stances[topic])
            stances.append(parts.stance(topic, view, reason, round(uniform(0.2, 0.8), 2)))

    holdings = [
        {"symbol": h.symbol, "quantity": _quantity(h.quantity * uniform(0.3, 3.0)),
         "avg_cost": round(h.avg_cost * uniform(0.97, 1.03), 2)}
        for h in base.holdings
    ]
    if random_() < 0.25:
        held = {h["symbol"] for h in holdings}
        others = [s for s in pools.holdings if s not in held]
        if others:
            symbol = rng.choice(others)
            q, cost = rng.choice(pools.holdings[symbol])
            holdings.append({"symbol": symbol, "quantity": _quantity(q * uniform(0.3, 2.0)),
                             "avg_cost": round(cost * uniform(0.97, 1.03), 2)})

    length: str = base.style.length
    if random_() < 0.2:
        length = rng.choice(("short", "medium", "long"))
    emoji = base.style.emoji_rate * uniform(0.5, 1.6) + uniform(0.0, 0.2)
    return Persona.model_validate({
        "name": f"{first} {last}",
        "username": _username(first, last, index),
        "role": base.role,
        "language": base.language,
        "bio": first.join(arch.bio_parts),
        "style": parts.style(base.style.formality, length, round(_clamp(emoji, 0.0, 3.0), 2)),
        "topics": topics,
        "talkativeness": round(_clamp(base.talkativeness * uniform(0.4, 2.5), 0.05, 10.0), 2),
        "mood_baseline": round(_clamp(base.mood_baseline + uniform(-0.3, 0.3), -1.0, 1.0), 2),
        "stances": stances,
        "holdings": holdings,
    })


def generate_personas(n: int, *, seed: int) -> list[Persona]:
    """Generate ``n`` valid personas, deterministic from ``seed``.

    Each copies a randomly chosen demo persona's role, bio (with the new first name) and
    formality, and varies the rest. Usernames are ``<first>_<last>_<i>_bot`` (ASCII,
    ≤ 32 characters, unique for every i), e.g. ``"sule_ozturk_41_bot"``.

    Args:
        n: how many personas (0 gives ``[]``).
        seed: the seed of ``random.Random``.

    Returns:
        ``n`` personas; the same ``(n, seed)`` gives equal lists, and the first k personas
        of ``generate_personas(n, seed=s)`` equal ``generate_personas(k, seed=s)``.

    Raises:
        ValueError: when ``n`` is negative.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng, pools, parts = random.Random(seed), _pools(), _Parts()
    return [_persona(rng, pools, parts, i) for i in range(n)]


def _token(rng: random.Random, bot_id: int) -> str:
    """``"<bot_id>:AA<33 chars>"``: the shape of a real Bot API token (35-char secret)."""
    # urlsafe base64 uses exactly the alphabet of TOKEN_RE: A-Z a-z 0-9 - _
    secret = base64.urlsafe_b64encode(rng.getrandbits(200).to_bytes(25, "big"))[:33]
    return f"{bot_id}:AA{secret.decode()}"


def generate_world(
    n_bots: int, n_chats: int, *, seed: int, humans_per_chat: int = 1
) -> World:
    """Generate ``n_bots`` bots spread round-robin over ``n_chats`` supergroups.

    Bot i (persona i of ``generate_personas(n_bots, seed=seed)``) joins chat
    ``i % n_chats``, so chat sizes differ by at most one and every chat has a bot. Each chat
    talks about 2–4 of :data:`TOPIC_IDS` and has ``humans_per_chat`` humans of its own
    (user ids unique across the world). Measured: 0.6–0.9 s for 10,000 bots and 1,000
    chats (2 cores), most of it building and validating the personas.

    Raises:
        ValueError: for ``n_bots < 1``, ``n_chats < 1``, ``n_chats > n_bots`` (a chat
            would have no bot) or ``humans_per_chat < 0``.
    """
    if n_bots < 1:
        raise ValueError(f"n_bots must be >= 1, got {n_bots}")
    if n_chats < 1:
        raise ValueError(f"n_chats must be >= 1, got {n_chats}")
    if n_chats > n_bots:
        raise ValueError(
            f"n_chats ({n_chats}) must not exceed n_bots ({n_bots}): every chat needs a bot")
    if humans_per_chat < 0:
        raise ValueError(f"humans_per_chat must be >= 0, got {humans_per_chat}")
    n_humans = n_chats * humans_per_chat
    if n_bots > len(BOT_ID_RANGE) or n_chats > len(CHAT_ID_RANGE) or (
            n_humans > len(HUMAN_ID_RANGE)):
        raise ValueError("world too large for the id ranges")

    personas = generate_personas(n_bots, seed=seed)
    # A second generator, so the personas do not depend on the world's other draws.
    rng = random.Random(f"botsim.world:{seed}")
    bot_ids = rng.sample(BOT_ID_RANGE, n_bots)
    bots = tuple(WorldBot(_token(rng, bid), p) for bid, p in zip(bot_ids, personas, strict=True))
    chat_ids = rng.sample(CHAT_ID_RANGE, n_chats)
    human_ids = iter(rng.sample(HUMAN_ID_RANGE, n_humans))

    members: list[list[str]] = [[] for _ in range(n_chats)]
    for i, bot in enumerate(bots):
        members[i % n_chats].append(bot.token)

    chats = []
    for j in range(n_chats):
        picked = rng.sample(TOPIC_IDS, rng.randint(2, min(4, len(TOPIC_IDS))))
        topics = {t: round(rng.uniform(0.5, 3.0), 2) for t in picked}
        main = max(picked, key=lambda t: topics[t])
        title = f"{rng.choice(_CHAT_ADJECTIVES)} {_TOPIC_LABELS.get(main, main)} Grubu #{j + 1}"
        humans = []
        for k in range(humans_per_chat):
            first, last = rng.choice(FIRST_NAMES), rng.choice(SURNAMES)
            tail = f"_{j}_{k}"
            humans.append({"id": next(human_ids), "first_name": first,
                           "username": _slug(f"{first} {last}")[: 32 - len(tail)] + tail})
        chats.append(WorldChat(-(10**12 + chat_ids[j]), title, topics, tuple(members[j]),
                               tuple(humans)))
    return World(bots, tuple(chats))


def sandbox_world(world: World) -> dict[str, Any]:
    """The world as :meth:`sandbox.telegram_api.TelegramSandbox.load_world` takes it.

    Returns:
        ``{"bots": [{"token", "username", "first_name"}], "chats": [{"id", "title",
        "type": "supergroup", "members": [{"id", "first_name", "username"}],
        "bots": [bot user id, ...]}]}``. Chat members are given by bot id rather than by
        token: the sandbox finds a bot by id in O(1) but by token with a scan, which would
        make loading 10,000 bots quadratic.
    """
    return {
        "bots": [{"token": b.token, "username": b.persona.username,
                  "first_name": b.persona.name} for b in world.bots],
        "chats": [
            {"id": c.telegram_chat_id, "title": c.title, "type": "supergroup",
             "members": [dict(h) for h in c.humans],
             "bots": [int(t.partition(":")[0]) for t in c.bot_tokens]}
            for c in world.chats
        ],
    }


async def seed_database(
    session: AsyncSession, world: World, *, cipher: TokenCipher
) -> dict[str, int]:
    """Store the world's bots, chats and memberships in ``session``; the caller commits.

    The rows are those ``backend.stores.bots.upsert_persona_bot``,
    ``backend.stores.chats.upsert_chat`` and ``add_bot`` write, with their upsert
    semantics: a bot is matched by username, a chat by Telegram chat id; a match is updated
    (bot: name, ``telegram_user_id``, token, persona, stances, holdings; chat: title,
    topics), others are created (bot: mood at the persona's baseline, enabled; chat:
    enabled), missing memberships are added. Tokens are stored as
    ``cipher.encrypt(token)``, like the store does; ``telegram_user_id`` is the number
    before ``:`` in the token (``bot_id_from_token``).

    Batched, through :mod:`backend.stores.bulk` rather than the row-at-a-time stores: they
    spend a SELECT, an INSERT and a flush per bot, per chat and per membership, which took
    45 s on SQLite (28 s on PostgreSQL) for 10,000 bots and 1,000 chats. Here existing rows
    are looked up ``IN (...)`` 500 at a time and new ones inserted with one executemany per
    table (their ids then read back by username / chat id). Measured for 10,000 bots and
    1,000 chats into empty databases (2 cores, local disk, local PostgreSQL 15): 2.5–3.5 s
    on SQLite, 2.4–3.4 s on PostgreSQL; seeding the same world again (every bot updated)
    3.5–5.5 s. Roughly 1 s of it is Fernet encryption and another 1 s JSON validation of
    the personas.

    Returns:
        token → our ``bots.id``, for every bot of the world.
    """
    bot_ids = await bulk_store.upsert_persona_bots(
        session, bots=[(b.persona, b.token) for b in world.bots], cipher=cipher)
    chat_ids = await bulk_store.upsert_chats(
        session, chats=[(c.telegram_chat_id, c.title, c.topics) for c in world.chats])
    members = await bulk_store.memberships(session, chat_ids=list(chat_ids.values()))
    by_token = {b.token: bot_ids[b.persona.username] for b in world.bots}
    links = []
    for wc in world.chats:
        chat_id = chat_ids[wc.telegram_chat_id]
        for token in wc.bot_tokens:
            if (chat_id, by_token[token]) not in members:
                links.append({"chat_id": chat_id, "bot_id": by_token[token]})
    await bulk_store.insert_memberships(session, rows=links)
    return by_token
