"""The panel's account page: ``/account`` (issue 18, token and user lifecycle).

For any logged-in user: a form to change their password (``POST /api/v1/auth/password``,
with the current one; it ends their other sessions and API tokens), their API tokens (name,
scope, state, created, last used, expires) with a "Revoke" button each
(``DELETE /api/v1/auth/tokens/{id}``), and a form to create one (``POST /api/v1/auth/tokens``;
the token is shown once, in the page, by ``accounts.js`` with ``textContent``); a button to
end their other sessions (``DELETE /api/v1/users/{id}/sessions``).

For an admin, also every user (role, disabled, live sessions, active tokens) with
"Disable"/"Enable", "End sessions" and "Set password" buttons, and every user's tokens with
"Revoke". ``accounts.js`` sends the changes with the session's CSRF token. Without a login:
a redirect to ``/login``, as every page.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from backend.api.deps import State
from backend.api.pages import _principal, _render, _time, _to_login
from backend.stores import users as store

router = APIRouter(include_in_schema=False)


def _token_view(token: Any, user: Any) -> dict[str, Any]:
    return {"id": token.id, "user": user.username, "name": token.name, "scope": token.scope,
            "state": store.token_state(token, user), "created": _time(token.created_at),
            "last_used": _time(token.last_used_at) if token.last_used_at else "never",
            "expires": _time(token.expires_at)}


@router.get("/account", response_class=HTMLResponse, response_model=None)
async def account_page(request: Request, state: State) -> Response:
    """The caller's password form and tokens; for an admin, also every user and token."""
    who = await _principal(request, state)
    if who is None:
        return _to_login()
    admin = who.role == "admin"
    async with state.sessionmaker() as session:
        mine = await store.list_api_tokens(session, user_id=who.user_id)
        users: list[dict[str, Any]] = []
        everyone: list[dict[str, Any]] = []
        if admin:
            counts = await store.activity(session)
            users = [{"id": u.id, "username": u.username, "role": u.role,
                      "disabled": u.disabled, "created": _time(u.created_at),
                      "sessions": counts.get(u.id, (0, 0))[0],
                      "tokens": counts.get(u.id, (0, 0))[1], "me": u.id == who.user_id}
                     for u in await store.list_users(session)]
            everyone = [_token_view(t, u) for t, u in await store.list_api_tokens(session)]
    return _render(request, "account.html", {
        "user": who, "page": "account", "admin": admin,
        "session": who.via == "session",
        "tokens": [_token_view(t, u) for t, u in mine],
        "users": users, "all_tokens": everyone,
        "max_days": store.MAX_TOKEN_TTL.days, "default_days": store.DEFAULT_TOKEN_TTL.days,
    })
