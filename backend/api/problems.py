"""Every error answer of the JSON API, in one shape: RFC 9457 problem details.

An error is sent as ``application/problem+json``::

    {"type": "about:blank", "title": "Unprocessable Content", "status": 422,
     "detail": "body.name: String should have at least 1 character",
     "instance": "/api/v1/chats",
     "errors": [{"loc": ["body", "name"], "msg": "String should have at least 1 character",
                 "type": "string_too_short"}]}

``errors`` (422 only, :class:`~backend.api_schemas.ValidationProblem`) names each refused
field: ``loc`` starts with where it was (``body``, ``query``, ``path``, ``header``) and
follows the field's path; the value sent is never echoed (a refused body may hold a bot
token), nor quoted inside a message when its field is a secret (a password, a token, an
API key: :func:`safe_msg`); a message is at most :data:`MSG_MAX` characters. Every other
4xx/5xx raised as an ``HTTPException`` is a
:class:`~backend.api_schemas.ProblemDetails` whose ``detail`` is the exception's, with its
headers (``WWW-Authenticate``, ``Retry-After``, ``Allow``) kept.

:func:`install` puts the handlers on the app and makes its OpenAPI schema say so: every
documented 4xx/5xx answer of an operation is ``application/problem+json``, FastAPI's own
422 (``HTTPValidationError``) becomes :class:`~backend.api_schemas.ValidationProblem`.

Routes refuse a value the parameters' own checks let through with :func:`invalid` (a
:class:`~backend.errors.ValidationFailed` they caught) or :func:`invalid_body` (a pydantic
error of a body they validate themselves): both raise FastAPI's ``RequestValidationError``,
so there is one handler and one 422 shape. The HTML pages answer their own errors with
pages, and never raise these.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.api_schemas import FieldProblem, ProblemDetails, ValidationProblem

#: The media type of every error answer (RFC 9457 §3).
PROBLEM_JSON = "application/problem+json"
#: Where a refused value was (the first element of a ``loc``).
Where = Literal["body", "query", "path", "header"]
#: Status phrases as RFC 9110 names them (Python 3.11's ``HTTPStatus`` still has the old
#: names of these two).
_TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}
#: Characters of ``detail`` at most (a 422 of many fields stays readable).
DETAIL_MAX = 1000
#: Characters of one ``errors[].msg`` at most: a validator quoting the refused value (an
#: unknown time zone, a topic name) quotes at most this much of it.
MSG_MAX = 200
#: Parts of a field name that make its value secret: its value is cut out of any message
#: about it, whatever its length (``password``, ``token``, ``api_key``, ``fernet_key``...).
SECRET_NAME_PARTS = ("password", "passwd", "passphrase", "token", "secret", "api_key",
                     "apikey", "credential", "authorization", "cookie", "csrf")
#: What stands for a secret value cut out of a message.
REDACTED = "[redacted]"


def title_of(status: int) -> str:
    """The HTTP status phrase of ``status`` (``"Error"`` for a code without one)."""
    if status in _TITLES:
        return _TITLES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem(status: int, detail: str, instance: str) -> ProblemDetails:
    """The problem details of an error answer (``type`` ``about:blank``, ``title`` the
    status phrase); ``instance``: the request's path."""
    return ProblemDetails(title=title_of(status), status=status, detail=detail[:DETAIL_MAX],
                          instance=instance)


def problem_bytes(status: int, detail: str, instance: str) -> bytes:
    """:func:`problem` as the UTF-8 JSON body of an answer (for ASGI middleware)."""
    return problem(status, detail, instance).model_dump_json().encode()


def _respond(body: BaseModel, status: int, headers: dict[str, str] | None) -> JSONResponse:
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers,
                        media_type=PROBLEM_JSON)


def _loc(parts: Iterable[Any]) -> list[str | int]:
    return [p if isinstance(p, int) and not isinstance(p, bool) else str(p) for p in parts]


def is_secret_field(loc: Iterable[Any]) -> bool:
    """True when a part of ``loc`` names a secret (:data:`SECRET_NAME_PARTS`, or a name
    ending in ``key``)."""
    for part in loc:
        if not isinstance(part, str):
            continue
        name = part.lower()
        if name.endswith("key") or any(s in name for s in SECRET_NAME_PARTS):
            return True
    return False


def _shortened(text: str, most: int) -> str:
    return text if len(text) <= most else text[:most - 1] + "…"


def safe_msg(error: Mapping[str, Any]) -> str:
    """The ``msg`` of a FastAPI/pydantic error dict, safe to send back.

    A secret field's value (:func:`is_secret_field` of its ``loc``) is cut out of the
    message wherever it appears (as is or quoted with ``repr``); any other value quoted
    longer than 40 characters is shortened; the message is at most :data:`MSG_MAX`
    characters.
    """
    msg = str(error.get("msg", "invalid"))
    value = error.get("input")
    if isinstance(value, str | bytes) and value:
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        secret = is_secret_field(error.get("loc", ()))
        if secret or len(text) > 40:
            stand_in = REDACTED if secret else repr(_shortened(text, 40))
            for shown in sorted({repr(text), text}, key=len, reverse=True):
                msg = msg.replace(shown, stand_in)
    return _shortened(msg, MSG_MAX)


def field_problems(errors: Sequence[Any]) -> list[FieldProblem]:
    """The ``errors`` entries of a 422 from FastAPI/pydantic error dicts (``loc``, ``msg``,
    ``type``; anything else, the ``input`` above all, is dropped; the message as
    :func:`safe_msg` makes it)."""
    return [FieldProblem(loc=_loc(e.get("loc", ())), msg=safe_msg(e),
                         type=str(e.get("type", "value_error"))[:MSG_MAX]) for e in errors]


def validation_problem(errors: Sequence[Any], instance: str) -> ValidationProblem:
    """The body of a 422 refusing ``errors`` (FastAPI/pydantic error dicts); ``detail``
    lists each as ``dotted.loc: msg``."""
    fields = field_problems(errors)
    detail = "; ".join(f"{'.'.join(map(str, f.loc))}: {f.msg}" for f in fields)
    return ValidationProblem(title=title_of(422), status=422,
                             detail=(detail or "the request was refused")[:DETAIL_MAX],
                             instance=instance, errors=fields)


def invalid(where: Where, problems: Sequence[tuple[str, str]]) -> RequestValidationError:
    """A 422 to raise for ``problems`` found in the request's ``where``.

    Args:
        problems: ``(field, reason)`` pairs as :class:`~backend.errors.ValidationFailed`
            carries them: the field a dotted path (digits become list indexes), or
            ``where`` itself for a problem of the whole ``where``.
    """
    errors = []
    for field, reason in problems:
        parts = [] if field in ("", where) else field.split(".")
        loc = [where, *(int(p) if p.isdigit() else p for p in parts)]
        errors.append({"type": "value_error", "loc": tuple(loc), "msg": reason})
    return RequestValidationError(errors)


def invalid_body(exc: ValidationError) -> RequestValidationError:
    """A 422 to raise for a body a route validated itself: each error of ``exc`` with its
    ``loc`` under ``body`` (its input kept only for :func:`safe_msg`, never sent)."""
    return RequestValidationError([
        {"type": e["type"], "loc": ("body", *e["loc"]), "msg": e["msg"], "input": e.get("input")}
        for e in exc.errors()
    ])


async def on_validation_error(request: Request, exc: Exception) -> Response:
    """Answer a ``RequestValidationError`` with a 422 :class:`ValidationProblem`."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return _respond(validation_problem(errors, request.url.path), 422, None)


async def on_http_error(request: Request, exc: Exception) -> Response:
    """Answer an ``HTTPException`` with its status as :class:`ProblemDetails` (its headers
    kept; 204 and 304, which carry no body, as an empty answer)."""
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=headers)
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    return _respond(problem(exc.status_code, detail, request.url.path), exc.status_code,
                    headers)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def document_problems(schema: dict[str, Any]) -> None:
    """Make every 4xx/5xx answer documented in the OpenAPI ``schema`` (in place) an
    ``application/problem+json`` body: :class:`ValidationProblem` for 422 (replacing
    FastAPI's ``HTTPValidationError``), :class:`ProblemDetails` otherwise."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (ProblemDetails, ValidationProblem):
        found = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(found.pop("$defs", {}))
        components[model.__name__] = found
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for code, answer in operation.get("responses", {}).items():
                if not (code.isdigit() and int(code) >= 400):
                    continue
                model = ValidationProblem if code == "422" else ProblemDetails
                answer["content"] = {PROBLEM_JSON: {"schema": _ref(model)}}
    for unused in ("HTTPValidationError", "ValidationError"):  # the second is the first's
        if f'"#/components/schemas/{unused}"' not in json.dumps(schema):
            components.pop(unused, None)


def install(app: FastAPI) -> None:
    """Answer ``app``'s validation and HTTP errors as problem details and document them so
    in its OpenAPI schema (:func:`document_problems`)."""
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document_problems(build())
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]
