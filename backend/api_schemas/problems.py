"""The error answers of the JSON API: RFC 9457 problem details (see
:mod:`backend.api.problems`, which builds them)."""

from __future__ import annotations

from pydantic import BaseModel


class ProblemDetails(BaseModel):
    """Every error answer of the JSON API (RFC 9457), sent as ``application/problem+json``.

    Attributes:
        type: ``about:blank`` (the status says it all; RFC 9457 §4.2.1).
        title: the HTTP status phrase (``Not Found``).
        status: the HTTP status code.
        detail: what went wrong with this request, for a person.
        instance: the path of the request.
    """

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str


class FieldProblem(BaseModel):
    """One refused part of a request (never the value sent).

    Attributes:
        loc: where: ``"body"``, ``"query"``, ``"path"`` or ``"header"``, then the field's
            path (``["body", "style", "emoji_rate"]``, ``["query", "limit"]``).
        msg: why, for a person.
        type: the error kind, for a program (pydantic's, e.g. ``missing``, ``value_error``).
    """

    loc: list[str | int]
    msg: str
    type: str


class ValidationProblem(ProblemDetails):
    """A 422: the problem details plus ``errors``, one entry per refused field."""

    errors: list[FieldProblem]
