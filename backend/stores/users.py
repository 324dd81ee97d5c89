"""Admin panel users, their browser sessions and their API tokens.

Secrets never reach the database in a usable form: passwords are argon2id PHC strings
(hashed by the caller, see ``backend.api.security``); session and API tokens are stored as
:func:`token_digest`, HMAC-SHA256 under the process's ``secret_key`` (64 hex characters), so a
leaked table gives no usable session or token. The plain token is returned once, at creation.

Lifecycle: an API token has a scope (``read`` or ``admin``) and an expiry (default
:data:`DEFAULT_TOKEN_TTL`, at most :data:`MAX_TOKEN_TTL`); it is refused once revoked,
expired, or issued under an older ``credentials_version`` of its user. A password change
(:func:`change_password`) moves that version on, deletes the user's sessions (all, or all
but the caller's) and revokes their tokens, so a session or token created concurrently with
it (stamped with the old version) is refused too. A disabled user's sessions and tokens are
refused on every request (:func:`session_for`, :func:`principal_for_token` re-read the user).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.db.models import ApiSession, ApiToken, User
from backend.db.types import utcnow
from backend.errors import NotFound, ValidationFailed

ROLES = ("admin", "viewer")
#: Usernames: 1–64 characters (the ``users.username`` column) of letters, digits, ``_.-@``.
USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
#: ``last_used_at`` of an API token is written at most this often (seconds): one UPDATE per
#: minute per token, not per request.
TOKEN_TOUCH_S = 60.0
#: Scopes of an API token: ``read`` acts as a viewer whatever its user's role; ``admin`` acts
#: with its user's role (an admin-scope token of a viewer is still a viewer).
SCOPES = ("read", "admin")
#: Lifetime of an API token when none is asked for, and the shortest and longest accepted.
DEFAULT_TOKEN_TTL = timedelta(days=90)
MIN_TOKEN_TTL = timedelta(minutes=5)
MAX_TOKEN_TTL = timedelta(days=365)
#: A token's name: 1-64 characters, no control characters (it is shown in lists and logs).
TOKEN_NAME_PATTERN = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")
_TTL = re.compile(r"^(\d{1,6})([mhd])$")
_TTL_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def token_digest(secret_key: str, token: str) -> str:
    """HMAC-SHA256(``secret_key``, ``token``) as 64 lowercase hex characters."""
    return hmac.new(secret_key.encode(), token.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class NewSession:
    """A session just created: ``token`` goes in the cookie and is not kept anywhere."""

    token: str
    csrf_token: str
    expires_at: datetime


def check_username(username: str) -> None:
    """Raises ValidationFailed when ``username`` does not fit :data:`USERNAME_PATTERN`."""
    if not USERNAME_PATTERN.fullmatch(username):
        raise ValidationFailed(
            "username", [(username, "expected 1-64 letters, digits or _.@-")]
        )


async def create_user(
    session: AsyncSession, *, username: str, password_hash: str, role: str
) -> User:
    """Add a user.

    Args:
        password_hash: an argon2id PHC string (never the password).
        role: ``admin`` or ``viewer``.

    Raises:
        ValidationFailed: a bad username or role, or a username already taken (named).
    """
    check_username(username)
    if role not in ROLES:
        raise ValidationFailed("role", [(role, "expected admin or viewer")])
    if await get_by_username(session, username=username) is not None:
        raise ValidationFailed("username", [(username, "already taken")])
    user = User(username=username, password_hash=password_hash, role=role, disabled=False)
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:  # a concurrent insert of the same name
        raise ValidationFailed("username", [(username, "already taken")]) from None
    return user


async def get_by_username(session: AsyncSession, *, username: str) -> User | None:
    """The user named exactly ``username``, or None."""
    return (
        await session.execute(select(User).where(User.username == username))
    ).scalar_one_or_none()


async def list_users(session: AsyncSession) -> list[User]:
    """Every user, by id."""
    return list((await session.execute(select(User).order_by(User.id))).scalars())


async def set_password_hash(session: AsyncSession, *, user_id: int, password_hash: str) -> None:
    """Replace a user's password hash (a rehash with new parameters, or a new password).

    Raises:
        NotFound: when there is no such user.
    """
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound("user", user_id)
    user.password_hash = password_hash
    await session.flush()


async def get_user(session: AsyncSession, *, user_id: int) -> User:
    """The user with ``user_id``.

    Raises:
        NotFound: when there is none.
    """
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound("user", user_id)
    return user


async def create_session(
    session: AsyncSession, *, user_id: int, secret_key: str, ttl_s: float,
    now: datetime | None = None, credentials_version: int | None = None,
) -> NewSession:
    """Open a browser session for ``user_id`` lasting ``ttl_s`` seconds.

    The token is ``secrets.token_urlsafe(32)`` (256 random bits); only its
    :func:`token_digest` is stored. The CSRF token is another 256 random bits.

    Args:
        credentials_version: the user's ``credentials_version`` when their password was
            checked (pass ``user.credentials_version`` of the row the password was verified
            against): if the password changes in between, the session is born refused.
            None: the user's current version.

    Raises:
        NotFound: when there is no such user.
    """
    now = now or utcnow()
    if credentials_version is None:
        credentials_version = (await get_user(session, user_id=user_id)).credentials_version
    token = secrets.token_urlsafe(32)
    new = NewSession(token=token, csrf_token=secrets.token_urlsafe(32),
                     expires_at=now + timedelta(seconds=ttl_s))
    session.add(ApiSession(token_hash=token_digest(secret_key, token), user_id=user_id,
                           csrf_token=new.csrf_token, created_at=now,
                           expires_at=new.expires_at,
                           credentials_version=credentials_version))
    await session.flush()
    return new


async def session_for(
    session: AsyncSession, *, token_hash: str, now: datetime | None = None
) -> tuple[ApiSession, User] | None:
    """The live session with ``token_hash`` and its user; None when unknown, expired
    (``expires_at`` ≤ now), issued before the user's last password change, or the user is
    disabled."""
    row = (
        await session.execute(
            select(ApiSession, User).join(User, User.id == ApiSession.user_id)
            .where(ApiSession.token_hash == token_hash)
        )
    ).one_or_none()
    if row is None:
        return None
    api_session, user = row
    if (api_session.expires_at <= (now or utcnow()) or user.disabled
            or api_session.credentials_version != user.credentials_version):
        return None
    return api_session, user


async def delete_session(session: AsyncSession, *, token_hash: str) -> bool:
    """End a session; True when there was one."""
    result = await session.execute(delete(ApiSession).where(ApiSession.token_hash == token_hash))
    return bool(getattr(result, "rowcount", 0))


async def end_sessions(
    session: AsyncSession, *, user_id: int, keep_token_hash: str | None = None
) -> int:
    """Delete every session of ``user_id`` except the one with ``keep_token_hash`` (the
    caller's own, if given); returns how many ended."""
    stmt = delete(ApiSession).where(ApiSession.user_id == user_id)
    if keep_token_hash is not None:
        stmt = stmt.where(ApiSession.token_hash != keep_token_hash)
    result = await session.execute(stmt)
    return int(getattr(result, "rowcount", 0))


async def purge_expired_sessions(session: AsyncSession, *, now: datetime | None = None) -> int:
    """Delete expired sessions; returns how many."""
    result = await session.execute(
        delete(ApiSession).where(ApiSession.expires_at <= (now or utcnow()))
    )
    return int(getattr(result, "rowcount", 0))


def check_token_name(name: str) -> str:
    """``name`` stripped of surrounding spaces.

    Raises:
        ValidationFailed: empty, longer than 64 characters or holding a control character.
    """
    stripped = name.strip()
    if not TOKEN_NAME_PATTERN.fullmatch(stripped):
        raise ValidationFailed("name", [("name", "expected 1-64 characters, no control "
                                                 "characters")])
    return stripped


def token_expiry(text: str | None, *, now: datetime | None = None) -> datetime:
    """When a new token expires: ``None`` → now + :data:`DEFAULT_TOKEN_TTL`; ``30m``, ``12h``,
    ``30d`` → that long from now; otherwise an ISO 8601 time (UTC unless it says).

    Returns:
        An aware UTC datetime between now + :data:`MIN_TOKEN_TTL` and now +
        :data:`MAX_TOKEN_TTL`.

    Raises:
        ValidationFailed: on ``expires``: neither form, or out of those bounds.
    """
    now = now or utcnow()
    if text is None:
        return now + DEFAULT_TOKEN_TTL
    raw = text.strip()
    m = _TTL.fullmatch(raw)
    if m:
        at = now + timedelta(**{_TTL_UNITS[m.group(2)]: int(m.group(1))})
    else:
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            raise ValidationFailed("expires", [(
                "expires", "expected a duration (30m, 12h, 30d) or an ISO 8601 time")]) from None
        at = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return check_expiry(at, now=now)


def check_expiry(at: datetime, *, now: datetime | None = None) -> datetime:
    """``at`` (aware; naive is read as UTC) as UTC, if within the bounds of a token's life.

    Raises:
        ValidationFailed: on ``expires``: sooner than :data:`MIN_TOKEN_TTL` from now (or
            past) or later than :data:`MAX_TOKEN_TTL` from now.
    """
    now = now or utcnow()
    at = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)
    low, high = now + MIN_TOKEN_TTL, now + MAX_TOKEN_TTL
    if not low <= at <= high:
        raise ValidationFailed("expires", [(
            "expires", f"must be {int(MIN_TOKEN_TTL.total_seconds() // 60)} minutes to "
                       f"{MAX_TOKEN_TTL.days} days from now")])
    return at


async def create_api_token(
    session: AsyncSession, *, user_id: int, name: str, secret_key: str, scope: str = "admin",
    expires_at: datetime | None = None, credentials_version: int | None = None,
    now: datetime | None = None,
) -> tuple[ApiToken, str]:
    """Issue an API token for scripts; returns the row and the plain token (shown once).

    The token is ``botsim_`` + ``secrets.token_urlsafe(32)``; the prefix lets secret scanners
    recognise a leaked one.

    Args:
        scope: ``read`` or ``admin`` (see :data:`SCOPES`).
        expires_at: when it stops working (default now + :data:`DEFAULT_TOKEN_TTL`); checked
            with :func:`check_expiry`.
        credentials_version: the version of the session that asked for it (so a password
            change racing this creation still ends the token); None: the user's current.

    Raises:
        ValidationFailed: a bad name, scope or expiry.
        NotFound: no such user.
    """
    now = now or utcnow()
    name = check_token_name(name)
    if scope not in SCOPES:
        raise ValidationFailed("scope", [("scope", "expected read or admin")])
    expires = now + DEFAULT_TOKEN_TTL if expires_at is None else check_expiry(expires_at,
                                                                              now=now)
    if credentials_version is None:
        credentials_version = (await get_user(session, user_id=user_id)).credentials_version
    token = "botsim_" + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user_id, name=name, token_hash=token_digest(secret_key, token),
                   revoked=False, scope=scope, created_at=now, expires_at=expires,
                   credentials_version=credentials_version)
    session.add(row)
    await session.flush()
    return row, token


def token_state(
    token: ApiToken, user: User, *, now: datetime | None = None
) -> Literal["active", "revoked", "expired"]:
    """``active``, ``revoked`` (by hand, or by a password change), or ``expired``."""
    if token.revoked or token.credentials_version != user.credentials_version:
        return "revoked"
    if token.expires_at <= (now or utcnow()):
        return "expired"
    return "active"


async def principal_for_token(
    session: AsyncSession, *, token_hash: str, now: datetime | None = None
) -> tuple[ApiToken, User] | None:
    """The active API token with ``token_hash`` and its (enabled) user, or None (unknown,
    revoked, expired, issued before a password change, or the user is disabled).

    Records ``last_used_at`` (at most every :data:`TOKEN_TOUCH_S` seconds).
    """
    row = (
        await session.execute(
            select(ApiToken, User).join(User, User.id == ApiToken.user_id)
            .where(ApiToken.token_hash == token_hash)
        )
    ).one_or_none()
    if row is None:
        return None
    token, user = row
    now = now or utcnow()
    if user.disabled or token_state(token, user, now=now) != "active":
        return None
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > TOKEN_TOUCH_S:
        token.last_used_at = now
        await session.flush()
    return token, user


async def list_api_tokens(
    session: AsyncSession, *, user_id: int | None = None
) -> list[tuple[ApiToken, User]]:
    """API tokens (of ``user_id``, or everyone's) with their users, newest first."""
    stmt = (select(ApiToken, User).join(User, User.id == ApiToken.user_id)
            .order_by(ApiToken.id.desc()))
    if user_id is not None:
        stmt = stmt.where(ApiToken.user_id == user_id)
    return [(t, u) for t, u in (await session.execute(stmt)).all()]


async def get_api_token(session: AsyncSession, *, token_id: int) -> tuple[ApiToken, User]:
    """The token ``token_id`` and its user.

    Raises:
        NotFound: when there is none.
    """
    row = (
        await session.execute(
            select(ApiToken, User).join(User, User.id == ApiToken.user_id)
            .where(ApiToken.id == token_id)
        )
    ).one_or_none()
    if row is None:
        raise NotFound("API token", token_id)
    return row[0], row[1]


async def revoke_api_token(
    session: AsyncSession, *, token_id: int, now: datetime | None = None
) -> bool:
    """Revoke a token (kept for the record, with ``revoked_at``); True when it existed.
    Revoking a revoked token changes nothing."""
    token = await session.get(ApiToken, token_id)
    if token is None:
        return False
    if not token.revoked:
        token.revoked = True
        token.revoked_at = now or utcnow()
        await session.flush()
    return True


async def revoke_user_tokens(
    session: AsyncSession, *, user_id: int, now: datetime | None = None
) -> int:
    """Revoke every unrevoked token of ``user_id``; returns how many."""
    result = await session.execute(
        update(ApiToken).where(ApiToken.user_id == user_id, ApiToken.revoked.is_(False))
        .values(revoked=True, revoked_at=now or utcnow())
    )
    return int(getattr(result, "rowcount", 0))


@dataclass(frozen=True)
class Ended:
    """What a password change or a disable ended: sessions deleted, tokens revoked."""

    sessions: int
    tokens: int


async def change_password(
    session: AsyncSession, *, user_id: int, password_hash: str,
    keep_token_hash: str | None = None, now: datetime | None = None,
) -> Ended:
    """Set a new password (an argon2id PHC string) and end what the old one opened.

    Moves the user's ``credentials_version`` on, deletes their sessions but the one with
    ``keep_token_hash`` (the caller's own; it is moved to the new version), and revokes their
    API tokens. A session or token created concurrently under the old version is refused
    by :func:`session_for` / :func:`principal_for_token` even if this delete missed it.

    Raises:
        NotFound: when there is no such user.
    """
    user = await get_user(session, user_id=user_id)
    user.password_hash = password_hash
    user.credentials_version += 1
    await session.flush()
    if keep_token_hash is not None:
        await session.execute(
            update(ApiSession).where(ApiSession.token_hash == keep_token_hash,
                                     ApiSession.user_id == user_id)
            .values(credentials_version=user.credentials_version))
    sessions = await end_sessions(session, user_id=user_id, keep_token_hash=keep_token_hash)
    tokens = await revoke_user_tokens(session, user_id=user_id, now=now)
    return Ended(sessions=sessions, tokens=tokens)


async def disable_refusal(session: AsyncSession, *, user: User,
                          actor_id: int | None) -> str | None:
    """Why ``user`` may not be disabled by ``actor_id`` (None: the CLI), or None if they may.

    Refused: disabling yourself, and disabling the last enabled admin (the enabled admins
    are locked ``FOR UPDATE`` on PostgreSQL, so two admins cannot disable each other at once).
    """
    if actor_id is not None and user.id == actor_id:
        return "you cannot disable yourself"
    if user.role == "admin" and not user.disabled:
        admins = (await session.execute(
            select(User.id).where(User.role == "admin", User.disabled.is_(False))
            .with_for_update())).scalars().all()
        if set(admins) <= {user.id}:
            return "the last enabled admin cannot be disabled"
    return None


async def set_disabled(session: AsyncSession, *, user_id: int, disabled: bool) -> Ended:
    """Disable or enable a user. Disabling also ends their sessions; their tokens are kept
    but refused while they are disabled (revoke them to end them for good). Check
    :func:`disable_refusal` first.

    Raises:
        NotFound: when there is no such user.
    """
    user = await get_user(session, user_id=user_id)
    user.disabled = disabled
    await session.flush()
    sessions = await end_sessions(session, user_id=user_id) if disabled else 0
    return Ended(sessions=sessions, tokens=0)


async def activity(session: AsyncSession, *,
                   now: datetime | None = None) -> dict[int, tuple[int, int]]:
    """Per user id: (sessions not expired, tokens neither revoked nor expired). Counts rows;
    a row issued before a password change is already deleted or revoked by it."""
    now = now or utcnow()
    out: dict[int, tuple[int, int]] = {}
    sessions = await session.execute(
        select(ApiSession.user_id, func.count()).where(ApiSession.expires_at > now)
        .group_by(ApiSession.user_id))
    for uid, n in sessions.all():
        out[uid] = (int(n), 0)
    tokens = await session.execute(
        select(ApiToken.user_id, func.count())
        .where(ApiToken.revoked.is_(False), ApiToken.expires_at > now)
        .group_by(ApiToken.user_id))
    for uid, n in tokens.all():
        out[uid] = (out.get(uid, (0, 0))[0], int(n))
    return out
