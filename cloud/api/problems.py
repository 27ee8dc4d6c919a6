"""RFC 9457 problem details: the one shape of every error the API returns.

::

    HTTPException (Starlette)
    └── ProblemError          raised by routes and dependencies; carries type, title, detail
        └── ContentTooLargeError   a request body over the cap (raised by the body-limit middleware)

:func:`install` registers handlers that turn HTTP errors, request validation
errors, store outages (:class:`roadside.shared.errors.TransportError`) and anything
unexpected into ``application/problem+json``. A body never carries a stack
trace, the request body or a credential: details come from our own messages
and from validation messages, which name parameters, not their values.

Problem ``type`` values are stable identifiers under ``/problems/``; a client
tells problems apart by them. Plain HTTP errors (an unknown path, a wrong
method) use ``about:blank`` with the status phrase as the title.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any, Final, Literal, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.routing import Match

from roadside.shared.errors import TransportError

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
TYPE_BASE: Final = "/problems/"
REALM: Final = 'realm="roadside"'

# A validator that checks several parameters together puts the one to blame here, in the
# error's context: the name the client sent, which pydantic's location (a field name) may not be.
PARAMETER_CONTEXT: Final = "parameter"

ParamLocation = Literal["query", "path", "header", "cookie", "body"]
_LOCATIONS: Final = frozenset({"query", "path", "header", "cookie", "body"})
_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class InvalidParam(BaseModel):
    """One request parameter that did not validate."""

    name: str = Field(description="Parameter name; nested body fields are dotted (`records.0.count`).")
    location: ParamLocation = Field(serialization_alias="in", description="Where the parameter was sent.")
    reason: str = Field(description="Why it was rejected.")


class Problem(BaseModel):
    """An RFC 9457 problem details object, sent as `application/problem+json`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "/problems/insufficient-scope",
                    "title": "Insufficient scope",
                    "status": 403,
                    "detail": "This API key lacks the 'read:telemetry' scope.",
                    "instance": "/v1/counts",
                    "required_scope": "read:telemetry",
                }
            ]
        }
    )

    type: str = Field(default="about:blank", description="Identifies the problem type.")
    title: str = Field(description="Short summary of the problem type.")
    status: int = Field(ge=400, le=599, description="The HTTP status code.")
    detail: str | None = Field(default=None, description="What went wrong with this request.")
    instance: str | None = Field(default=None, description="The request path.")
    invalid_params: list[InvalidParam] | None = Field(
        default=None, description="For 422: each parameter that did not validate."
    )
    required_scope: str | None = Field(default=None, description="For 403: the scope the route needs.")


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE


class ProblemError(HTTPException):
    """An error with a problem type; raise it from a route or a dependency."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        required_scope: str | None = None,
    ) -> None:
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.type = TYPE_BASE + slug
        self.title = title
        self.required_scope = required_scope


class ContentTooLargeError(ProblemError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            "content-too-large",
            "Content too large",
            f"The request body is larger than the {limit} bytes this API accepts.",
        )


def unauthorized(detail: str, *, invalid_token: bool) -> ProblemError:
    """401 with the RFC 6750 challenge; ``invalid_token`` when a token was sent but is not valid."""
    challenge = f'Bearer {REALM}, error="invalid_token"' if invalid_token else f"Bearer {REALM}"
    return ProblemError(
        HTTPStatus.UNAUTHORIZED,
        "unauthorized",
        "Unauthorized",
        detail,
        headers={"WWW-Authenticate": challenge},
    )


def insufficient_scope(scope: str) -> ProblemError:
    return ProblemError(
        HTTPStatus.FORBIDDEN,
        "insufficient-scope",
        "Insufficient scope",
        f"This API key lacks the {scope!r} scope.",
        headers={"WWW-Authenticate": f'Bearer {REALM}, error="insufficient_scope", scope="{scope}"'},
        required_scope=scope,
    )


def not_found(what: str, key: str) -> ProblemError:
    return ProblemError(HTTPStatus.NOT_FOUND, "not-found", "Not found", f"No {what} {key!r}.")


def conflict(detail: str) -> ProblemError:
    return ProblemError(HTTPStatus.CONFLICT, "conflict", "Conflict", detail)


def rate_limited(retry_after: str) -> ProblemError:
    """429 with ``Retry-After`` (whole seconds)."""
    return ProblemError(
        HTTPStatus.TOO_MANY_REQUESTS,
        "rate-limited",
        "Too many requests",
        f"This API key is over its request rate; retry after {retry_after} s.",
        headers={"Retry-After": retry_after},
    )


def not_configured(detail: str) -> ProblemError:
    """501: the hub process serving this API did not wire the feature in."""
    return ProblemError(HTTPStatus.NOT_IMPLEMENTED, "not-configured", "Not configured", detail)


def too_many_results(detail: str) -> ProblemError:
    """422 for a query that is valid but would need more work than the API does per request."""
    return ProblemError(HTTPStatus.UNPROCESSABLE_ENTITY, "too-many-results", "Too many results", detail)


def unavailable(slug: str, title: str, detail: str, retry_after_s: int) -> ProblemError:
    return ProblemError(
        HTTPStatus.SERVICE_UNAVAILABLE, slug, title, detail, headers={"Retry-After": str(retry_after_s)}
    )


def problem_response(
    request: Request, problem: Problem, headers: dict[str, str] | None = None
) -> ProblemResponse:
    if problem.instance is None:
        problem = problem.model_copy(update={"instance": request.url.path})
    body = problem.model_dump(mode="json", by_alias=True, exclude_none=True)
    return ProblemResponse(body, status_code=problem.status, headers=headers)


def invalid_params(errors: Any) -> list[InvalidParam]:
    """Translate FastAPI/pydantic error dicts (``loc``, ``msg``) into :class:`InvalidParam`.

    A parameter is named as the client sent it: a body field dotted (``records.0.count``),
    a query parameter by its name alone (a repeated one's position goes in the reason).
    """
    params: list[InvalidParam] = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        where = cast(ParamLocation, loc[0] if loc and loc[0] in _LOCATIONS else "query")
        reason = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if where != "body" and len(loc) > 2 and loc[2].isdigit():
            reason = f"value {int(loc[2]) + 1} of {loc[1]}: {reason}"
        name = (".".join(loc[1:]) if where == "body" else loc[1]) if len(loc) > 1 else where
        if error.get("type") == "json_invalid":  # its loc is a character position, not a field
            name = "body"
        context = error.get("ctx")
        if isinstance(context, dict) and isinstance(context.get(PARAMETER_CONTEXT), str):
            name = context[PARAMETER_CONTEXT]
        params.append(InvalidParam(name=name, location=where, reason=reason))
    return params


def from_http_exception(request: Request, exc: HTTPException) -> ProblemResponse:
    """The problem response for an HTTP error, ours (:class:`ProblemError`) or the framework's."""
    headers = dict(exc.headers) if exc.headers else None
    if isinstance(exc, ProblemError):
        problem = Problem(
            type=exc.type,
            title=exc.title,
            status=exc.status_code,
            detail=exc.detail,
            required_scope=exc.required_scope,
        )
        return problem_response(request, problem, headers)
    phrase = _phrase(exc.status_code)
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else None
    return problem_response(request, Problem(title=phrase, status=exc.status_code, detail=detail), headers)


async def _http_problem(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
        # Starlette names only the first route whose path matched; a path served by several
        # routes (GET and POST as separate functions) allows the methods of all of them.
        exc = HTTPException(
            exc.status_code, exc.detail, {**(exc.headers or {}), "Allow": allowed_methods(request)}
        )
    return from_http_exception(request, exc)


def allowed_methods(request: Request) -> str:
    """Every method some route serves at the request's path, for an ``Allow`` header.

    Each method is tried against the app's routes through their public ``matches``
    (FastAPI nests included routers, so the routes are not a flat list to read).
    """
    # A fresh scope: the request's carries what matching its own method left in it.
    where = {"type": "http", "path": request.scope["path"], "root_path": request.scope.get("root_path", "")}
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**where, "method": method})[0] is Match.FULL for route in request.app.router.routes
        )
    ]
    return ", ".join(allowed)


async def _validation_problem(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    params = invalid_params(exc.errors())
    names = ", ".join(sorted({p.name for p in params}))
    problem = Problem(
        type=TYPE_BASE + "invalid-parameters",
        title="Invalid parameters",
        status=HTTPStatus.UNPROCESSABLE_ENTITY,
        detail=f"The request has invalid parameters: {names}.",
        invalid_params=params,
    )
    return problem_response(request, problem)


async def _store_unavailable(request: Request, exc: Exception) -> ProblemResponse:
    logger.warning("store unavailable during %s %s: %s", request.method, request.url.path, exc)
    problem = Problem(
        type=TYPE_BASE + "store-unavailable",
        title="Store unavailable",
        status=HTTPStatus.SERVICE_UNAVAILABLE,
        detail="The telemetry store cannot be reached right now; retry shortly.",
    )
    return problem_response(request, problem, {"Retry-After": "5"})


async def _internal_problem(request: Request, exc: Exception) -> ProblemResponse:
    # Starlette re-raises after this handler, so the server logs the traceback once.
    logger.error("unhandled %s during %s %s", type(exc).__name__, request.method, request.url.path)
    problem = Problem(
        type=TYPE_BASE + "internal",
        title="Internal server error",
        status=HTTPStatus.INTERNAL_SERVER_ERROR,
        detail="The hub failed to handle this request; the error has been logged.",
    )
    return problem_response(request, problem)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def install(app: FastAPI) -> None:
    """Register the problem handlers on ``app``."""
    app.add_exception_handler(HTTPException, _http_problem)
    app.add_exception_handler(RequestValidationError, _validation_problem)
    app.add_exception_handler(TransportError, _store_unavailable)
    app.add_exception_handler(Exception, _internal_problem)


def _documented(description: str) -> dict[str, Any]:
    return {"model": Problem, "description": description}


AUTH_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    401: {
        **_documented("Missing, malformed, unknown or revoked API key."),
        "headers": {"WWW-Authenticate": {"description": "`Bearer` challenge", "schema": {"type": "string"}}},
    },
    403: _documented("The API key lacks the scope this route needs (`required_scope`)."),
    429: {
        **_documented("The API key is over its request rate; retry after `Retry-After` seconds."),
        "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
    },
}
BODY_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    400: _documented("The body is not JSON."),
    413: _documented("The body is larger than the API accepts."),
}
VALIDATION_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    422: _documented("A parameter did not validate; `invalid_params` lists each one."),
}
STORE_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    503: _documented("The telemetry store is unreachable; retry after `Retry-After` seconds."),
}
