"""The REST API application: `/api/v1`, OpenAPI at /api/v1/openapi.json, docs at /api/v1/docs.

Each request gets a correlation id (X-Correlation-ID, taken from the request when it carries a
sane one), which its audit rows, its log line and any error envelope carry; bodies are capped;
one log line per request says who did what, how it ended and how long it took. `/metrics`
(Prometheus, routes_metrics.py) counts what the store holds and times every request."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from airavata_prefect.api.rest import errors
from airavata_prefect.api.rest.deps import RuntimeDep
from airavata_prefect.api.rest.limits import Limiter
from airavata_prefect.usecases import health
from airavata_prefect.usecases.correlation import correlated
from airavata_prefect.usecases.runtime import Runtime
from airavata_prefect.usecases.settings import Settings

PREFIX = "/api/v1"
log = logging.getLogger("airavata.api")
_SANE_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


class _Guard:
    """Pure ASGI: a correlation id around the whole request, the body size cap (declared or
    streamed), and the access log line."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        asked = headers.get(b"x-correlation-id", b"").decode(errors="replace")
        with correlated(asked if _SANE_ID.match(asked) else None) as cid:
            start, status = time.monotonic(), [0]
            declared = headers.get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self.max_body:
                await errors.too_large(self.max_body)(scope, receive, send)
                self._log(scope, 413, start)
                return
            seen = [0]

            async def capped() -> Message:
                message = await receive()
                if message["type"] == "http.request":
                    seen[0] += len(message.get("body", b""))
                    if seen[0] > self.max_body:
                        raise errors.BodyTooLarge(self.max_body)
                return message

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                    # Once (an error envelope sets it too).
                    message["headers"] = [*(h for h in message.get("headers") or []
                                            if h[0].lower() != b"x-correlation-id"),
                                          (b"x-correlation-id", cid.encode())]
                await send(message)

            try:
                await self.app(scope, capped, sending)
            except errors.BodyTooLarge:
                if not status[0]:
                    await errors.too_large(self.max_body)(scope, receive, send)
                    status[0] = 413
            self._log(scope, status[0], start)

    @staticmethod
    def _log(scope: Scope, status: int, start: float) -> None:
        state = scope.get("state") or {}
        who = state.get("principal", "-") if isinstance(state, dict) else "-"
        log.info("%s %s %s %s %.1fms", scope.get("method"), scope.get("path"), status, who,
                 (time.monotonic() - start) * 1000)


class CheckOut(BaseModel):
    ok: bool
    detail: str
    seconds: float


class HealthOut(BaseModel):
    status: str
    checks: dict[str, CheckOut]


def create_app(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    from airavata_prefect.api.rest import (
        routes_auth,
        routes_data,
        routes_experiments,
        routes_lineage,
        routes_metrics,
        routes_outputs,
        routes_people,
        routes_plans,
        routes_resources,
        routes_watch,
    )

    app = FastAPI(title="Airavata on Prefect", version="1",
                  description="Experiments, resources, credentials and people. Every request "
                              "but /auth/login, /auth/refresh and /health carries a bearer "
                              "token.",
                  openapi_url=f"{PREFIX}/openapi.json", docs_url=f"{PREFIX}/docs",
                  redoc_url=None)
    app.state.runtime = runtime or Runtime(settings)
    app.state.limiter = Limiter()
    errors.install(app)
    v1 = APIRouter(prefix=PREFIX)

    @v1.get("/health", response_model=HealthOut, tags=["health"],
            responses={503: {"model": HealthOut}})
    def healthz(rt: RuntimeDep) -> Any:
        """The store, OpenBao, SpiceDB and Prefect, one by one (no token needed)."""
        results = health.checks(rt)
        body = HealthOut(status="ok" if all(c.ok for c in results) else "degraded",
                         checks={c.name: CheckOut(ok=c.ok, detail=c.detail,
                                                  seconds=round(c.seconds, 4))
                                 for c in results})
        return JSONResponse(body.model_dump(), status_code=200 if body.status == "ok" else 503)

    for module in (routes_auth, routes_people, routes_experiments, routes_plans, routes_watch,
                   routes_resources, routes_outputs, routes_data, routes_lineage):
        v1.include_router(module.router, responses=errors.RESPONSES)
    app.include_router(v1)
    app.add_middleware(_Guard, max_body=settings.api_max_body_bytes)
    routes_metrics.install(app, app.state.runtime)  # GET /metrics; times every request
    return app


def serve(settings: Settings, host: str = "127.0.0.1", port: int | None = None) -> None:
    """Run the API in this process (what `airavata server start` spawns)."""
    import uvicorn

    from airavata_prefect.usecases.correlation import log_to_stderr
    log_to_stderr()
    logging.getLogger("airavata").propagate = False  # once, not again through the root
    uvicorn.run(create_app(settings), host=host, port=port or settings.api_port,
                log_level="warning", access_log=False)


__all__ = ["PREFIX", "create_app", "serve"]
