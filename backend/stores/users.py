"""Admin panel users, their browser sessions and their API tokens.

Secrets never reach the database in a usable form: passwords are argon2id PHC strings
(hashed by the caller, see ``backend.api.security``); session and API tokens are stored as
:func:`token_digest`, HMAC-SHA256 under the process's ``secret_key`` (64 hex characters), so a
leaked table gives no usable session or token. The plain token is returned once, at creation.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
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


async def create_session(
    session: AsyncSession, *, user_id: int, secret_key: str, ttl_s: float,
    now: datetime | None = None,
) -> NewSession:
    """Open a browser session for ``user_id`` lasting ``ttl_s`` seconds.

    The token is ``secrets.token_urlsafe(32)`` (256 random bits); only its
    :func:`token_digest` is stored. The CSRF token is another 256 random bits.
    """
    now = now or utcnow()
    token = secrets.token_urlsafe(32)
    new = NewSession(token=token, csrf_token=secrets.token_urlsafe(32),
                     expires_at=now + timedelta(seconds=ttl_s))
    session.add(ApiSession(token_hash=token_digest(secret_key, token), user_id=user_id,
                           csrf_token=new.csrf_token, created_at=now,
                           expires_at=new.expires_at))
    await session.flush()
    return new


async def session_for(
    session: AsyncSession, *, token_hash: str, now: datetime | None = None
) -> tuple[ApiSession, User] | None:
    """The live session with ``token_hash`` and its user; None when unknown, expired
    (``expires_at`` ≤ now) or the user is disabled."""
    row = (
        await session.execute(
            select(ApiSession, User).join(User, User.id == ApiSession.user_id)
            .where(ApiSession.token_hash == token_hash)
        )
    ).one_or_none()
    if row is None:
        return None
    api_session, user = row
    if api_session.expires_at <= (now or utcnow()) or user.disabled:
        return None
    return api_session, user


async def delete_session(session: AsyncSession, *, token_hash: str) -> bool:
    """End a session; True when there was one."""
    result = await session.execute(delete(ApiSession).where(ApiSession.token_hash == token_hash))
    return bool(getattr(result, "rowcount", 0))


async def purge_expired_sessions(session: AsyncSession, *, now: datetime | None = None) -> int:
    """Delete expired sessions; returns how many."""
    result = await session.execute(
        delete(ApiSession).where(ApiSession.expires_at <= (now or utcnow()))
    )
    return int(getattr(result, "rowcount", 0))


async def create_api_token(
    session: AsyncSession, *, user_id: int, name: str, secret_key: str
) -> tuple[ApiToken, str]:
    """Issue an API token for scripts; returns the row and the plain token (shown once).

    The token is ``botsim_`` + ``secrets.token_urlsafe(32)``; the prefix lets secret scanners
    recognise a leaked one.
    """
    token = "botsim_" + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user_id, name=name, token_hash=token_digest(secret_key, token),
                   revoked=False)
    session.add(row)
    await session.flush()
    return row, token


async def principal_for_token(
    session: AsyncSession, *, token_hash: str, now: datetime | None = None
) -> tuple[ApiToken, User] | None:
    """The unrevoked API token with ``token_hash`` and its (enabled) user, or None.

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
    if token.revoked or user.disabled:
        return None
    now = now or utcnow()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > TOKEN_TOUCH_S:
        token.last_used_at = now
        await session.flush()
    return token, user


async def revoke_api_token(session: AsyncSession, *, token_id: int) -> bool:
    """Revoke a token (kept for the record); True when it existed."""
    token = await session.get(ApiToken, token_id)
    if token is None:
        return False
    token.revoked = True
    await session.flush()
    return True
