"""``/api/v1/auth/*`` and ``/api/v1/users``: login, logout, who am I, API tokens, users.

No answer ever carries a password hash or a stored digest; a plain API token appears once,
in the answer that creates it. Errors are RFC 9457 problem details (:mod:`backend.api.problems`):
401 for a wrong login (with ``WWW-Authenticate`` when a credential is refused), 403, 404,
409, 422, 429 with ``Retry-After``.

Token and user lifecycle (each change audited with who, the action and the user or token
changed; never a password or a token):

- ``POST /auth/tokens``: a cookie session only (a leaked token cannot mint more); a viewer
  only ``read`` scope. Audit ``api_token.created``.
- ``GET /auth/tokens``: the caller's own tokens. ``GET /users/{id}/tokens``: admin, or own.
- ``DELETE /auth/tokens/{id}``: revoke one's own (a ``read`` token: only itself) or, as an
  admin, anyone's. Audit ``api_token.revoked``.
- ``POST /auth/password``: a cookie session with the current password; ends the user's
  other sessions and revokes their tokens. ``POST /users/{id}/password``: an admin's
  session, for another user; ends all their sessions and tokens. Audit
  ``user.password_changed``.
- ``POST /users/{id}/disable`` (not yourself, not the last enabled admin; ends their
  sessions) and ``/enable``: admin. Audit ``user.disabled`` / ``user.enabled``.
- ``DELETE /users/{id}/sessions``: an admin, or the user (not with a ``read`` token); the
  caller's own session stays. Audit ``user.sessions_ended``.

Every request re-reads its session or token and user (``current_principal``), so each of
these takes effect from the very next request.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status

from backend.api.deps import (
    E404,
    E409,
    E422,
    Admin,
    Responses,
    State,
    Viewer,
    audit_change,
    http_errors,
)
from backend.api.problems import invalid
from backend.api.security import (
    SESSION_COOKIE,
    DbId,
    Principal,
    client_address,
    csrf_protect,
)
from backend.api_schemas import (
    EndedOut,
    LoginBody,
    LoginOut,
    MeOut,
    PasswordChange,
    PasswordSet,
    ProblemDetails,
    StatusOut,
    TokenBody,
    TokenInfo,
    TokenOut,
    UserOut,
)
from backend.db.models import ApiToken, User
from backend.db.types import utcnow
from backend.stores import users as store

router = APIRouter()

_BAD_LOGIN = "wrong username or password"


@router.post("/auth/login", response_model=LoginOut, tags=["auth"])
async def login(body: LoginBody, request: Request, response: Response,
                state: State) -> LoginOut:
    """Check the password and open a session (cookie ``botsim_session``).

    An unknown username gets the same 401 and takes the same time as a wrong password
    (the password is verified against a dummy hash). Failures are throttled
    (``LoginThrottle``): 429 with ``Retry-After`` for an address that has failed too often
    on this username or on any; a username failing from many addresses only slows its
    attempts down (at most a few seconds), so its owner can still log in from elsewhere.
    The address is ``client_address`` (``X-Forwarded-For`` only from
    ``BOTSIM_TRUSTED_PROXIES``).
    """
    address = client_address(request, state.settings.trusted_proxies)
    wait = state.throttle.retry_after(body.username, address)
    if wait:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                            detail="too many failed logins from this address; try again later",
                            headers={"Retry-After": str(wait)})
    slow = state.throttle.delay(body.username)
    started = state.throttle.begin(body.username, address)
    if slow > 0:
        await asyncio.sleep(slow)
    async with state.sessionmaker() as session:
        user = await store.get_by_username(session, username=body.username)
    ok = await state.verify(user.password_hash if user else state.dummy_hash, body.password)
    if user is None or not ok or user.disabled:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail=_BAD_LOGIN)
    state.throttle.succeeded(body.username, address, started)
    new_hash = None
    if state.hasher.check_needs_rehash(user.password_hash):
        new_hash = await state.hash(body.password)
    async with state.sessionmaker() as session, session.begin():
        if new_hash is not None:
            await store.set_password_hash(session, user_id=user.id, password_hash=new_hash)
        # the version the password was checked under: a password changed meanwhile leaves
        # this session born refused (backend.stores.users.create_session)
        new = await store.create_session(session, user_id=user.id, secret_key=state.secret_key,
                                         ttl_s=state.settings.session_ttl_s,
                                         credentials_version=user.credentials_version)
    response.set_cookie(SESSION_COOKIE, new.token, max_age=state.settings.session_ttl_s,
                        path="/", httponly=True, samesite="strict",
                        secure=state.secure_cookies)
    response.headers["Cache-Control"] = "no-store"
    return LoginOut(username=user.username, role=user.role,
                    csrf_token=new.csrf_token)


@router.post("/auth/logout", response_model=StatusOut, tags=["auth"])
async def logout(response: Response, principal: Annotated[Principal, Depends(csrf_protect)],
                 state: State) -> StatusOut:
    """End the cookie session (CSRF-checked). With a bearer token: nothing to end."""
    if principal.session_hash is not None:
        async with state.sessionmaker() as session, session.begin():
            await store.delete_session(session, token_hash=principal.session_hash)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=state.secure_cookies)
    return StatusOut(status="logged out")


@router.get("/auth/me", response_model=MeOut, tags=["auth"])
async def me(principal: Viewer) -> MeOut:
    """The caller and, for a cookie session, its CSRF token (e.g. after a page reload)."""
    return MeOut(user_id=principal.user_id, username=principal.username, role=principal.role,
                 via=principal.via, csrf_token=principal.csrf_token)


#: Documented refusals of the account routes.
E403: Responses = {403: {"model": ProblemDetails, "description": "not allowed"}}
_SESSION_ONLY = "needs a logged-in session (cookie), not an API token"
_READ_TOKEN = "a read-scope API token cannot change accounts"


def _may_change_own(principal: Principal) -> None:
    """Self-service changes need a session or an admin-scope token.

    Raises:
        HTTPException: 403 for a read-scope token.
    """
    if principal.via == "token" and principal.scope != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=_READ_TOKEN)


def _session_only(principal: Principal) -> None:
    """Raises HTTPException 403 unless the caller came with a cookie session."""
    if principal.via != "session":
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=_SESSION_ONLY)


def _token_info(token: ApiToken, user: User) -> TokenInfo:
    return TokenInfo(id=token.id, user_id=user.id, username=user.username, name=token.name,
                     scope="admin" if token.scope == "admin" else "read",
                     state=store.token_state(token, user),
                     created_at=token.created_at, last_used_at=token.last_used_at,
                     expires_at=token.expires_at, revoked_at=token.revoked_at)


def _user_out(user: User, counts: tuple[int, int] = (0, 0)) -> UserOut:
    return UserOut(id=user.id, username=user.username, role=user.role,
                   disabled=user.disabled, created_at=user.created_at,
                   sessions=counts[0], tokens=counts[1])


@router.post("/auth/tokens", response_model=TokenOut, status_code=201, tags=["auth"],
             responses={**E403, **E422})
async def create_token(body: TokenBody, response: Response, principal: Viewer,
                       state: State) -> TokenOut:
    """Issue an API token for the caller (CSRF-checked), audited as ``api_token.created``.

    Only from a cookie session: 403 with a bearer token (a leaked token cannot mint more).
    ``scope`` ``admin`` needs an admin (422 on ``scope`` for a viewer). The expiry:
    ``expires_at`` or ``expires_in`` (see :class:`~backend.api_schemas.TokenBody`; 422 out of
    5 minutes to 365 days). The plain token is in this answer only.
    """
    _session_only(principal)
    if body.scope == "admin" and principal.role != "admin":
        raise invalid("body", [("scope", "a viewer can only create read-scope tokens")])
    with http_errors():
        expires = (store.token_expiry(body.expires_in) if body.expires_at is None
                   else store.check_expiry(body.expires_at))
        async with state.sessionmaker() as session, session.begin():
            row, token = await store.create_api_token(
                session, user_id=principal.user_id, name=body.name, secret_key=state.secret_key,
                scope=body.scope, expires_at=expires,
                credentials_version=principal.credentials_version)
            await audit_change(session, principal, "api_token.created", "api_token", row.id,
                               None, {"name": row.name, "scope": row.scope,
                                      "expires_at": row.expires_at.isoformat(),
                                      "user": principal.username})
    response.headers["Cache-Control"] = "no-store"
    return TokenOut(id=row.id, name=row.name, token=token,
                    scope="admin" if row.scope == "admin" else "read",
                    expires_at=row.expires_at)


@router.get("/auth/tokens", response_model=list[TokenInfo], tags=["auth"])
async def my_tokens(principal: Viewer, state: State) -> list[TokenInfo]:
    """The caller's API tokens, newest first (never the token itself)."""
    async with state.sessionmaker() as session:
        rows = await store.list_api_tokens(session, user_id=principal.user_id)
    return [_token_info(t, u) for t, u in rows]


@router.delete("/auth/tokens/{token_id}", response_model=TokenInfo, tags=["auth"],
               responses={**E403, **E404})
async def revoke_token(token_id: DbId, principal: Viewer, state: State) -> TokenInfo:
    """Revoke an API token (CSRF-checked), audited as ``api_token.revoked``; it is refused
    from the next request on. The caller's own token, or (an admin) anyone's; a read-scope
    token may revoke only itself. 404 for another user's token when not an admin. Revoking a
    revoked token answers the same and is not audited again."""
    async with state.sessionmaker() as session, session.begin():
        with http_errors():
            token, user = await store.get_api_token(session, token_id=token_id)
        if token.user_id != principal.user_id and principal.role != "admin":
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"API token {token_id} "
                                                                  "not found")
        if principal.scope == "read" and token.id != principal.token_id:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=_READ_TOKEN)
        if not token.revoked:
            await store.revoke_api_token(session, token_id=token.id)
            await audit_change(session, principal, "api_token.revoked", "api_token", token.id,
                               {"revoked": False},
                               {"revoked": True, "name": token.name, "user": user.username})
        return _token_info(token, user)


@router.post("/auth/password", response_model=EndedOut, tags=["auth"],
             responses={**E403, **E422})
async def change_own_password(body: PasswordChange, request: Request, principal: Viewer,
                              state: State) -> EndedOut:
    """Change the caller's password (cookie session and CSRF; 403 with a token).

    403 for a wrong ``current_password`` (throttled like logins: 429 with ``Retry-After``);
    422 when the new one equals it. Ends the caller's other sessions and revokes their API
    tokens; this session stays. Audited as ``user.password_changed``.
    """
    _session_only(principal)
    address = client_address(request, state.settings.trusted_proxies)
    wait = state.throttle.retry_after(principal.username, address)
    if wait:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                            detail="too many wrong passwords; try again later",
                            headers={"Retry-After": str(wait)})
    started = state.throttle.begin(principal.username, address)
    async with state.sessionmaker() as session:
        user = await store.get_user(session, user_id=principal.user_id)
    if not await state.verify(user.password_hash, body.current_password):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="current password is wrong")
    state.throttle.succeeded(principal.username, address, started)
    if body.new_password == body.current_password:
        raise invalid("body", [("new_password", "must differ from the current password")])
    new_hash = await state.hash(body.new_password)
    async with state.sessionmaker() as session, session.begin():
        ended = await store.change_password(session, user_id=principal.user_id,
                                            password_hash=new_hash,
                                            keep_token_hash=principal.session_hash)
        await audit_change(session, principal, "user.password_changed", "user",
                           principal.user_id, None,
                           {"changed_by": "self", "ended_sessions": ended.sessions,
                            "revoked_credentials": ended.tokens})
    return EndedOut(status="password changed", sessions_ended=ended.sessions,
                    tokens_revoked=ended.tokens)


@router.get("/users", response_model=list[UserOut], tags=["users"])
async def users(_admin: Admin, state: State) -> list[UserOut]:
    """Every user (admin only), with their live sessions and active tokens counted."""
    async with state.sessionmaker() as session:
        rows = await store.list_users(session)
        counts = await store.activity(session)
    return [_user_out(u, counts.get(u.id, (0, 0))) for u in rows]


@router.get("/users/{user_id}/tokens", response_model=list[TokenInfo], tags=["users"],
            responses={**E403, **E404})
async def user_tokens(user_id: DbId, principal: Viewer, state: State) -> list[TokenInfo]:
    """A user's API tokens, newest first: an admin's view of anyone's, or one's own."""
    if user_id != principal.user_id and principal.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="admin role required")
    async with state.sessionmaker() as session:
        with http_errors():
            await store.get_user(session, user_id=user_id)
        rows = await store.list_api_tokens(session, user_id=user_id)
    return [_token_info(t, u) for t, u in rows]


async def _set_disabled(user_id: int, disabled: bool, admin: Principal,
                        state: State) -> UserOut:
    async with state.sessionmaker() as session, session.begin():
        with http_errors():
            user = await store.get_user(session, user_id=user_id)
        if disabled:
            refusal = await store.disable_refusal(session, user=user, actor_id=admin.user_id)
            if refusal:
                raise HTTPException(status.HTTP_409_CONFLICT, detail=refusal)
        if user.disabled != disabled:
            ended = await store.set_disabled(session, user_id=user_id, disabled=disabled)
            after: dict[str, object] = {"disabled": disabled, "user": user.username}
            if disabled:
                after["ended_sessions"] = ended.sessions
            await audit_change(session, admin, "user.disabled" if disabled else "user.enabled",
                               "user", user_id, {"disabled": not disabled}, after)
        counts = (await store.activity(session)).get(user_id, (0, 0))
        return _user_out(user, counts)


@router.post("/users/{user_id}/disable", response_model=UserOut, tags=["users"],
             responses={**E404, **E409})
async def disable_user(user_id: DbId, admin: Admin, state: State) -> UserOut:
    """Disable a user (admin): their sessions end, their sessions and tokens are refused
    from the next request on (tokens work again if they are enabled; revoke them to end
    them for good). 409 for yourself or the last enabled admin. Audited as
    ``user.disabled``; disabling a disabled user changes nothing."""
    return await _set_disabled(user_id, True, admin, state)


@router.post("/users/{user_id}/enable", response_model=UserOut, tags=["users"],
             responses={**E404})
async def enable_user(user_id: DbId, admin: Admin, state: State) -> UserOut:
    """Enable a user again (admin); audited as ``user.enabled``."""
    return await _set_disabled(user_id, False, admin, state)


@router.post("/users/{user_id}/password", response_model=EndedOut, tags=["users"],
             responses={**E403, **E404, **E422})
async def set_user_password(user_id: DbId, body: PasswordSet, admin: Admin,
                            state: State) -> EndedOut:
    """Set another user's password (an admin's cookie session; 403 with a token, and for
    yourself: use ``POST /auth/password``). Ends all their sessions and revokes all their
    API tokens. Audited as ``user.password_changed``."""
    _session_only(admin)
    if user_id == admin.user_id:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            detail="change your own password with POST /api/v1/auth/password")
    async with state.sessionmaker() as session:
        with http_errors():
            await store.get_user(session, user_id=user_id)
    new_hash = await state.hash(body.new_password)
    async with state.sessionmaker() as session, session.begin():
        with http_errors():
            ended = await store.change_password(session, user_id=user_id,
                                                password_hash=new_hash, now=utcnow())
        await audit_change(session, admin, "user.password_changed", "user", user_id, None,
                           {"changed_by": "admin", "ended_sessions": ended.sessions,
                            "revoked_credentials": ended.tokens})
    return EndedOut(status="password changed", sessions_ended=ended.sessions,
                    tokens_revoked=ended.tokens)


@router.delete("/users/{user_id}/sessions", response_model=EndedOut, tags=["users"],
               responses={**E403, **E404})
async def end_user_sessions(user_id: DbId, principal: Viewer, state: State) -> EndedOut:
    """End every session of a user (an admin for anyone, a user for themselves; not with a
    read-scope token). The caller's own session stays; API tokens are untouched (revoke
    them with ``DELETE /auth/tokens/{id}``). Audited as ``user.sessions_ended``."""
    _may_change_own(principal)
    if user_id != principal.user_id and principal.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="admin role required")
    async with state.sessionmaker() as session, session.begin():
        with http_errors():
            user = await store.get_user(session, user_id=user_id)
        n = await store.end_sessions(session, user_id=user_id,
                                     keep_token_hash=principal.session_hash)
        await audit_change(session, principal, "user.sessions_ended", "user", user_id, None,
                           {"ended_sessions": n, "user": user.username})
    return EndedOut(status="sessions ended", sessions_ended=n, tokens_revoked=0)
