"""One error envelope everywhere: {"error": {"code", "message", "field"?, "correlation_id"}},
with no traceback; the same correlation id as the request's audit rows and log lines."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from airavata_prefect.domain.errors import Conflict as LostRace
from airavata_prefect.domain.errors import NotFound, ServiceDown
from airavata_prefect.domain.problems import SpecError
from airavata_prefect.usecases.correlation import correlation_id
from airavata_prefect.usecases.credentials import CredentialError
from airavata_prefect.usecases.errors import (
    BadInput,
    Conflict,
    Forbidden,
    NoPlacement,
    RateLimited,
    Unauthenticated,
    Unavailable,
    describe,
)

log = logging.getLogger("airavata.api")


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str = Field(description="what went wrong, for programs: unauthenticated, forbidden, "
                                  "not_found, conflict, invalid_request, invalid_spec, ...")
    message: str = Field(description="what went wrong, for people")
    field: str | None = Field(None, description="the input it is about, when one is")
    correlation_id: str = Field(description="also in the X-Correlation-ID header, the audit "
                                            "rows and the server's log lines of the request")
    problems: list[str] | None = Field(None, description="invalid_spec: every problem found")
    line: int | None = Field(None, description="invalid_spec: the line of the first problem")


class ErrorOut(BaseModel):
    """The one error envelope."""

    error: ErrorDetail


class BodyTooLarge(Exception):
    """A request body streamed past the cap (raised from the body's receive)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        super().__init__(f"request body over {cap} bytes")


def too_large(cap: int) -> JSONResponse:
    return envelope(413, "too_large", f"request body over {cap} bytes")


def _documented(description: str) -> dict[str, Any]:
    return {"model": ErrorOut, "description": description}


# What any /api/v1 route may answer besides its own results (each route adds the ones only it
# gives, e.g. 409 or 503).
RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _documented("Bad input that the schema cannot say (a name's rules, an unreadable "
                     "body)"),
    401: _documented("No verified identity: a missing, malformed, expired, revoked or forged "
                     "token"),
    403: _documented("The identity lacks the permission (audited)"),
    404: _documented("No such object, or no such route"),
    405: _documented("The route does not take this method"),
    413: _documented("The request body is over the server's cap"),
    422: _documented("The request does not match its schema"),
    429: _documented("Too many attempts or writes a minute; see Retry-After"),
}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: _documented("The object's state or an existing one forbids it")}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: _documented("An outside system it needs (Prefect, OpenBao, SpiceDB) does not answer, "
                     "or no worker runs the deployment")}


def envelope(status: int, code: str, message: str, field: str | None = None,
             headers: dict[str, str] | None = None, **extra: object) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message, "correlation_id": correlation_id()}
    if field:
        body["field"] = field
    body.update(extra)
    return JSONResponse({"error": body}, status_code=status,
                        headers={"X-Correlation-ID": correlation_id(), **(headers or {})})


def _field(loc: Any) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or ".".join(str(p) for p in loc)


def _allowed_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document gives the request's path (Starlette's 405 names only
    those of the first route that matched the path, one of several)."""
    from starlette.routing import compile_path

    app = request.app
    table: list[tuple[re.Pattern[str], set[str]]] | None = getattr(app.state,
                                                                   "allowed_methods", None)
    if table is None:
        table = [(compile_path(path)[0], {m.upper() for m in ops})
                 for path, ops in app.openapi().get("paths", {}).items()]
        app.state.allowed_methods = table
    return sorted({m for regex, methods in table if regex.match(request.url.path)
                   for m in methods})


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        field = _field(first.get("loc", ()))
        message = "; ".join(f"{_field(e.get('loc', ()))}: {e.get('msg')}" for e in errors[:5])
        return envelope(422, "invalid_request", message, field or None)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = {400: "bad_request", 401: "unauthenticated", 403: "forbidden",
                404: "not_found", 405: "method_not_allowed", 409: "conflict",
                413: "too_large"}.get(exc.status_code, "error")
        if isinstance(exc.__cause__, BodyTooLarge):  # FastAPI's "error parsing the body"
            return too_large(exc.__cause__.cap)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of the path (Starlette names one route's)
            headers["Allow"] = ", ".join(_allowed_methods(request)) or headers.get("Allow", "")
        return envelope(exc.status_code, code, str(exc.detail), headers=headers)

    async def _starlette_http(request: Request, exc: Exception) -> JSONResponse:
        return await _http(request, exc)  # type: ignore[arg-type]

    from starlette.exceptions import HTTPException as StarletteHTTPException
    app.add_exception_handler(StarletteHTTPException, _starlette_http)

    async def _known(_: Request, exc: Exception) -> JSONResponse:
        return answer(exc)

    # Each known failure by its class (answered where it is raised); anything else is a 500
    # with the same envelope, its traceback in the server's log only.
    for cls in (Unauthenticated, Forbidden, CredentialError, RateLimited, SpecError, NotFound,
                Conflict, LostRace, BadInput, NoPlacement, Unavailable, ServiceDown):
        app.add_exception_handler(cls, _known)
    app.add_exception_handler(Exception, _known)


def answer(exc: BaseException) -> JSONResponse:
    """The envelope for a use case's exception."""
    if isinstance(exc, Unauthenticated):
        return envelope(401, "unauthenticated", str(exc),
                        headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, Forbidden):
        return envelope(403, "forbidden", str(exc))
    if isinstance(exc, CredentialError):
        return envelope(403 if exc.denied else 502, "forbidden" if exc.denied
                        else "credential_error", str(exc))
    if isinstance(exc, RateLimited):
        return envelope(429, "rate_limited", str(exc),
                        headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, SpecError):
        first = exc.problems[0] if exc.problems else None
        line = first.line if first else None
        return envelope(422, "invalid_spec", "; ".join(p.render() for p in exc.problems[:20]),
                        "spec", problems=[p.render() for p in exc.problems[:100]], line=line)
    if isinstance(exc, NotFound):
        return envelope(404, "not_found", str(exc))
    if isinstance(exc, Conflict | LostRace):
        return envelope(409, "conflict", str(exc))
    if isinstance(exc, BadInput):
        return envelope(400, "bad_request", str(exc))
    if isinstance(exc, NoPlacement):
        return envelope(409, "no_placement", f"no placement: {exc}")
    if isinstance(exc, Unavailable | ServiceDown):
        return envelope(503, "unavailable", str(exc))
    log.error("unexpected %s", describe(exc if isinstance(exc, Exception) else Exception()),
              exc_info=exc)
    return envelope(500, "internal", f"internal error: {type(exc).__name__} "
                    "(the server log has it under this correlation id)")


__all__ = ["CONFLICT", "RESPONSES", "UNAVAILABLE", "BodyTooLarge", "ErrorOut", "answer", "envelope",
           "install", "too_large"]
