"""``/api/v1/auth/*`` and ``/api/v1/users``: login, logout, who am I, API tokens, users.

No answer ever carries a password hash or a stored digest; a plain API token appears once,
in the answer that creates it. Errors are RFC 9457 problem details (:mod:`backend.api.problems`):
401 for a wrong login (with ``WWW-Authenticate`` when a credential is refused), 403, 422,
429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status

from backend.api.deps import Admin, State, Viewer
from backend.api.security import SESSION_COOKIE, Principal, client_address, csrf_protect
from backend.api_schemas import LoginBody, LoginOut, MeOut, StatusOut, TokenBody, TokenOut, UserOut
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
        new = await store.create_session(session, user_id=user.id, secret_key=state.secret_key,
                                         ttl_s=state.settings.session_ttl_s)
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


@router.post("/auth/tokens", response_model=TokenOut, status_code=201, tags=["auth"])
async def create_token(body: TokenBody, response: Response,
                       principal: Admin,
                       state: State) -> TokenOut:
    """Issue an API token for the calling admin (admin only, CSRF-checked)."""
    async with state.sessionmaker() as session, session.begin():
        row, token = await store.create_api_token(session, user_id=principal.user_id,
                                                  name=body.name, secret_key=state.secret_key)
    response.headers["Cache-Control"] = "no-store"
    return TokenOut(id=row.id, name=row.name, token=token)


@router.get("/users", response_model=list[UserOut], tags=["users"])
async def users(_admin: Admin,
                state: State) -> list[UserOut]:
    """Every user (admin only)."""
    async with state.sessionmaker() as session:
        rows = await store.list_users(session)
    return [UserOut(id=u.id, username=u.username, role=u.role,
                    disabled=u.disabled, created_at=u.created_at) for u in rows]
