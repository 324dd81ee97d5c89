"""``botsim admin ...``: the lifecycle of admin panel users and their API tokens (issue 18).

::

    botsim admin users [--json]                 every user: role, disabled, sessions, tokens
    botsim admin disable NAME | enable NAME     disabling ends the user's sessions
    botsim admin set-password NAME              from BOTSIM_NEW_USER_PASSWORD, else generated
                                                and printed once; ends all the user's
                                                sessions and revokes their API tokens
    botsim admin end-sessions NAME              end every session of the user
    botsim admin tokens [NAME] [--json]         API tokens (of NAME, or everyone's)
    botsim admin create-token NAME --name N [--scope read|admin] [--expires 30d|ISO]
                                                the token is printed once
    botsim admin revoke-token ID

Every change is audited as the API audits it (``user.disabled``, ``user.enabled``,
``user.password_changed``, ``user.sessions_ended``, ``api_token.created``,
``api_token.revoked``) with user ``cli``; never a password or a token. The CLI may disable
any user but the last enabled admin. Bad input, an unknown user or token id exit 2 with a
message naming it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets as pysecrets
import sys
from typing import Any

from backend.errors import NotFound, ValidationFailed
from backend.settings import Settings

#: Audit username of the CLI's changes (``user_id`` None).
CLI_USER = "cli"
#: The sub-commands this module runs.
COMMANDS = ("users", "disable", "enable", "set-password", "end-sessions", "tokens",
            "create-token", "revoke-token")


def add_parsers(admin_sub: Any) -> None:
    """Add the lifecycle sub-commands to ``botsim admin``'s sub-parsers ``admin_sub``."""
    users = admin_sub.add_parser("users", help="list users (role, disabled, sessions, tokens)")
    users.add_argument("--json", action="store_true", help="one JSON array")
    for name, text in (("disable", "disable a user (ends their sessions)"),
                       ("enable", "enable a disabled user"),
                       ("set-password", "set a user's password (BOTSIM_NEW_USER_PASSWORD, "
                                        "else generated); ends their sessions and tokens"),
                       ("end-sessions", "end every session of a user")):
        admin_sub.add_parser(name, help=text).add_argument("username")
    tokens = admin_sub.add_parser("tokens", help="list API tokens (never the token)")
    tokens.add_argument("username", nargs="?", default=None, help="only this user's")
    tokens.add_argument("--json", action="store_true", help="one JSON array")
    ct = admin_sub.add_parser("create-token", help="issue an API token (printed once)")
    ct.add_argument("username")
    ct.add_argument("--name", required=True, help="to recognise it by (1-64 characters)")
    ct.add_argument("--scope", choices=["read", "admin"], default="read",
                    help="read (acts as a viewer; default) or admin (the user's role)")
    ct.add_argument("--expires", default=None, metavar="30d|ISO",
                    help="30m, 12h, 30d or an ISO time (default 90 days; 5 min to 365 days)")
    rt = admin_sub.add_parser("revoke-token", help="revoke an API token by id")
    rt.add_argument("token_id")


def _token_id(text: str) -> int:
    raw = text.strip()
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 2**31 - 1):
        raise ValidationFailed("botsim admin revoke-token",
                               [("ID", f"{text[:40]!r} is not a token id (a whole number "
                                       "from 1)")])
    return int(raw)


def _iso(at: Any) -> str | None:
    return None if at is None else at.isoformat(timespec="seconds")


async def accounts_cmd(settings: Settings, args: argparse.Namespace) -> int:
    """Run one lifecycle sub-command of ``botsim admin``; returns the exit code.

    Raises:
        ValidationFailed: bad input (a name, scope, expiry or id), an unknown user, or a
            refused disable (the caller prints it and exits 2).
    """
    from backend.api.security import hash_password, make_hasher
    from backend.api_schemas import MIN_NEW_PASSWORD_CHARS
    from backend.crypto import resolve_secret_key
    from backend.stores import audit
    from backend.stores import users as store
    from botsim.bootstrap import runtime

    command = args.admin_command
    if command == "revoke-token":
        token_id = _token_id(args.token_id)
    if getattr(args, "username", None) is not None:
        store.check_username(args.username)
    expires = None
    if command == "create-token":
        name = store.check_token_name(args.name)
        expires = store.token_expiry(args.expires)
    new_password, generated = None, False
    if command == "set-password":
        new_password = os.environ.get("BOTSIM_NEW_USER_PASSWORD")
        if new_password is None:
            new_password, generated = pysecrets.token_urlsafe(18), True
        elif len(new_password) < MIN_NEW_PASSWORD_CHARS:
            raise ValidationFailed("BOTSIM_NEW_USER_PASSWORD", [
                ("password", f"at least {MIN_NEW_PASSWORD_CHARS} characters")])
    secret_key = resolve_secret_key(settings) if command == "create-token" else ""
    password_hash = (hash_password(make_hasher(), new_password)
                     if new_password is not None else None)

    async def record(session: Any, action: str, entity: str, entity_id: int,
                     before: dict[str, Any] | None, after: dict[str, Any]) -> None:
        await audit.record(session, user_id=None, username=CLI_USER, action=action,
                           entity=entity, entity_id=entity_id, before=before, after=after)

    async def user_named(session: Any, username: str) -> Any:
        user = await store.get_by_username(session, username=username)
        if user is None:
            raise ValidationFailed("botsim admin", [("username", f"no user {username!r}")])
        return user

    async with runtime(settings, connect_cache=False, redis=False) as rt, \
            rt.sessionmaker() as session, session.begin():
        if command == "users":
            counts = await store.activity(session)
            rows = [{"id": u.id, "username": u.username, "role": u.role,
                     "disabled": u.disabled, "created_at": _iso(u.created_at),
                     "sessions": counts.get(u.id, (0, 0))[0],
                     "tokens": counts.get(u.id, (0, 0))[1]}
                    for u in await store.list_users(session)]
            if args.json:
                print(json.dumps(rows, ensure_ascii=False))
            for r in [] if args.json else rows:
                print(f"#{r['id']:<4} {r['username']:<24} {r['role']:<7} "
                      f"{'disabled' if r['disabled'] else 'enabled':<9} "
                      f"sessions {r['sessions']:<3} tokens {r['tokens']}")
            return 0
        if command in ("disable", "enable"):
            user = await user_named(session, args.username)
            disabled = command == "disable"
            if disabled:
                refusal = await store.disable_refusal(session, user=user, actor_id=None)
                if refusal:
                    raise ValidationFailed("botsim admin disable", [("username", refusal)])
            if user.disabled == disabled:
                print(f"{user.username!r} is already {command}d")
                return 0
            ended = await store.set_disabled(session, user_id=user.id, disabled=disabled)
            after: dict[str, Any] = {"disabled": disabled, "user": user.username}
            if disabled:
                after["ended_sessions"] = ended.sessions
            await record(session, f"user.{command}d", "user", user.id,
                         {"disabled": not disabled}, after)
            print(f"{command}d {user.username!r}"
                  + (f" ({ended.sessions} session(s) ended)" if disabled else ""))
            return 0
        if command == "set-password":
            user = await user_named(session, args.username)
            assert password_hash is not None
            ended = await store.change_password(session, user_id=user.id,
                                                password_hash=password_hash)
            await record(session, "user.password_changed", "user", user.id, None,
                         {"changed_by": CLI_USER, "ended_sessions": ended.sessions,
                          "revoked_credentials": ended.tokens})
            print(f"password of {user.username!r} changed: {ended.sessions} session(s) ended, "
                  f"{ended.tokens} API token(s) revoked")
            if generated:
                print(f"generated password (shown once, store it now): {new_password}")
            return 0
        if command == "end-sessions":
            user = await user_named(session, args.username)
            n = await store.end_sessions(session, user_id=user.id)
            await record(session, "user.sessions_ended", "user", user.id, None,
                         {"ended_sessions": n, "user": user.username})
            print(f"{n} session(s) of {user.username!r} ended")
            return 0
        if command == "tokens":
            uid = None
            if args.username is not None:
                uid = (await user_named(session, args.username)).id
            listed = [{"id": t.id, "username": u.username, "name": t.name, "scope": t.scope,
                       "state": store.token_state(t, u), "created_at": _iso(t.created_at),
                       "last_used_at": _iso(t.last_used_at),
                       "expires_at": _iso(t.expires_at), "revoked_at": _iso(t.revoked_at)}
                      for t, u in await store.list_api_tokens(session, user_id=uid)]
            if args.json:
                print(json.dumps(listed, ensure_ascii=False))
            for t in [] if args.json else listed:
                print(f"#{t['id']:<5} {t['username']:<20} {t['name']!r:<24} {t['scope']:<5} "
                      f"{t['state']:<8} expires {t['expires_at']}  "
                      f"last used {t['last_used_at'] or 'never'}")
            return 0
        if command == "create-token":
            user = await user_named(session, args.username)
            if user.disabled:
                raise ValidationFailed("botsim admin create-token",
                                       [("username", f"{user.username!r} is disabled")])
            row, token = await store.create_api_token(
                session, user_id=user.id, name=name, secret_key=secret_key, scope=args.scope,
                expires_at=expires)
            await record(session, "api_token.created", "api_token", row.id, None,
                         {"name": row.name, "scope": row.scope,
                          "expires_at": row.expires_at.isoformat(), "user": user.username})
            print(f"created API token #{row.id} {row.name!r} for {user.username!r} "
                  f"(scope {row.scope}, expires {_iso(row.expires_at)})")
            print(f"token (shown once, store it now): {token}")
            return 0
        if command == "revoke-token":
            try:
                tok, owner = await store.get_api_token(session, token_id=token_id)
            except NotFound:
                raise ValidationFailed("botsim admin revoke-token",
                                       [("ID", f"no API token {token_id}")]) from None
            if not tok.revoked:
                await store.revoke_api_token(session, token_id=tok.id)
                await record(session, "api_token.revoked", "api_token", tok.id,
                             {"revoked": False},
                             {"revoked": True, "name": tok.name, "user": owner.username})
            print(f"API token #{tok.id} {tok.name!r} of {owner.username!r} revoked")
            return 0
    print(f"botsim admin: unknown command {command!r}", file=sys.stderr)
    return 2
