"""What the API's route modules share: their parameters (the app's state, the caller, a
page of a list), the mapping of the stores' errors to HTTP answers, the documented error
answers, and the audit of a change. Defined once here; route modules import them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query, status
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from backend.api.problems import invalid
from backend.api.security import (
    MAX_DB_ID,
    ApiState,
    Principal,
    api_state,
    require_admin,
    require_viewer,
)
from backend.api_schemas import ProblemDetails, ValidationProblem
from backend.errors import NotFound, ValidationFailed
from backend.stores import audit

#: The app's state, and the caller as a viewer (any logged-in user) or as an admin (403 for
#: a viewer); both CSRF-checked for cookie sessions.
State = Annotated[ApiState, Depends(api_state)]
Viewer = Annotated[Principal, Depends(require_viewer)]
Admin = Annotated[Principal, Depends(require_admin)]

#: Largest page of a list (``limit``), and the page size when none is asked for.
MAX_PAGE = 200
DEFAULT_PAGE = 50
#: The ``limit`` query parameter of a list: its page size, 1 to :data:`MAX_PAGE`.
PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"page size, 1-{MAX_PAGE}")]
#: The ``cursor`` query parameter of a list: the previous page's ``next_cursor``.
Cursor = Annotated[int | None, Query(
    ge=1, le=MAX_DB_ID, description="the previous page's next_cursor: items with a smaller id")]

#: Documented error answers of a route (``responses={**E404, **E409}``); their bodies are
#: problem details (:mod:`backend.api.problems`).
Responses = dict[int | str, dict[str, Any]]
E404: Responses = {404: {"model": ProblemDetails, "description": "unknown id"}}
E409: Responses = {409: {"model": ProblemDetails, "description": "duplicate"}}
E422: Responses = {422: {"model": ValidationProblem, "description": "refused fields"}}
E503: Responses = {503: {"model": ProblemDetails, "description": "no Fernet key configured"}}


@contextmanager
def http_errors() -> Iterator[None]:
    """Turn the stores' errors raised inside into HTTP answers.

    Raises:
        HTTPException: 404 for ``NotFound`` (its message names the id); 409 for an
            ``IntegrityError`` (a duplicate row).
        RequestValidationError: 422 for ``ValidationFailed``, its fields under ``body``.
    """
    try:
        yield
    except NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None
    except ValidationFailed as exc:
        raise invalid("body", exc.problems) from None
    except IntegrityError:
        raise HTTPException(
            status.HTTP_409_CONFLICT, detail="conflicts with an existing row (duplicate)"
        ) from None


async def audit_change(
    session: AsyncSession,
    who: Principal,
    action: str,
    entity: str,
    entity_id: int | None,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
) -> None:
    """Audit ``who``'s ``action`` (``bot.update``...) on ``entity`` ``entity_id`` with the
    changed fields ``before`` and ``after``, in ``session``'s transaction (see
    :func:`backend.stores.audit.record`, which masks secrets)."""
    await audit.record(session, user_id=who.user_id, username=who.username, action=action,
                       entity=entity, entity_id=entity_id, before=before, after=after)
