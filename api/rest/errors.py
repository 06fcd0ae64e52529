"""One error envelope everywhere: {"error": {"code", "message", "field"?, "correlation_id"}},
with no traceback; the same correlation id as the request's audit rows and log lines."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from airavata_prefect.domain.errors import NotFound
from airavata_prefect.domain.problems import SpecError
from airavata_prefect.usecases.correlation import correlation_id
from airavata_prefect.usecases.credentials import CredentialError
from airavata_prefect.usecases.errors import (
    BadInput,
    Forbidden,
    NoPlacement,
    RateLimited,
    Unauthenticated,
    Unavailable,
    describe,
)

log = logging.getLogger("airavata.api")


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


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        field = _field(first.get("loc", ()))
        message = "; ".join(f"{_field(e.get('loc', ()))}: {e.get('msg')}" for e in errors[:5])
        return envelope(422, "invalid_request", message, field or None)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        code = {401: "unauthenticated", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "error")
        return envelope(exc.status_code, code, str(exc.detail),
                        headers=dict(exc.headers or {}))

    async def _starlette_http(request: Request, exc: Exception) -> JSONResponse:
        return await _http(request, exc)  # type: ignore[arg-type]

    from starlette.exceptions import HTTPException as StarletteHTTPException
    app.add_exception_handler(StarletteHTTPException, _starlette_http)

    async def _known(_: Request, exc: Exception) -> JSONResponse:
        return answer(exc)

    # Each known failure by its class (answered where it is raised); anything else is a 500
    # with the same envelope, its traceback in the server's log only.
    for cls in (Unauthenticated, Forbidden, CredentialError, RateLimited, SpecError, NotFound,
                BadInput, NoPlacement, Unavailable):
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
    if isinstance(exc, BadInput):
        return envelope(400, "bad_request", str(exc))
    if isinstance(exc, NoPlacement):
        return envelope(409, "no_placement", f"no placement: {exc}")
    if isinstance(exc, Unavailable):
        return envelope(503, "unavailable", str(exc))
    log.error("unexpected %s", describe(exc if isinstance(exc, Exception) else Exception()),
              exc_info=exc)
    return envelope(500, "internal", f"internal error: {type(exc).__name__} "
                    "(the server log has it under this correlation id)")


__all__ = ["answer", "envelope", "install"]
