"""GET /metrics: Prometheus's text format (prometheus-client), at the root as Prometheus
expects, not under /api/v1 and not in the OpenAPI document (it is not JSON); and the middleware
that times every request by its route template.

Access: open while AIRAVATA_METRICS_TOKEN is unset (serve the API on an address only the
scraper reaches); set, a scrape must send `Authorization: Bearer <token>` (Prometheus's
`authorization` scrape setting). The figures are counts by state, status, resource name and
route, never an id, a user or a secret (usecases/metrics.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest
from prometheus_client.registry import CollectorRegistry
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from airavata_prefect.api.rest.deps import RuntimeDep
from airavata_prefect.usecases import metrics
from airavata_prefect.usecases.errors import Unauthenticated
from airavata_prefect.usecases.runtime import Runtime

router = APIRouter()
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # no route took the request (a 404, a redirect, a 413 cut short)


class RouteTemplates:
    """The full template of the route that took a request (`/api/v1/experiments/{ref}`), never
    the path itself: one series per route, whatever ids the requests name.

    The router leaves the route in scope["route"]; FastAPI 0.150 includes routers lazily, so
    that route's own `path` lacks its routers' prefixes (`/experiments/{ref}`): its full
    template comes from FastAPI's route contexts, looked up by the route object."""

    def __init__(self, routes: Callable[[], Sequence[BaseRoute]]) -> None:
        self._routes = routes
        self._table: dict[int, str] = {}

    def _build(self) -> dict[int, str]:
        try:
            from fastapi.routing import iter_route_contexts
        except ImportError:  # a FastAPI that flattens included routers: `path` is whole
            return {}
        return {id(c.original_route): c.path for c in iter_route_contexts(self._routes())
                if c.path}

    def __call__(self, route: object) -> str:
        if route is None:
            return UNMATCHED
        found = self._table.get(id(route))
        if found is None:  # the first request, or routes added since
            self._table = self._build()
            path = getattr(route, "path", None)
            found = self._table.setdefault(id(route), path if isinstance(path, str) and path
                                           else UNMATCHED)
        return found


def method_label(scope: Scope) -> str:
    method = str(scope.get("method") or "")
    return method if method in METHODS else "OTHER"


class RequestTimer:
    """Pure ASGI, outermost: every HTTP request into the histogram by method, route template
    and status, timed until its response began (a stream's length, e.g. /watch, is not
    latency). A request that raised before answering counts as the 500 it becomes."""

    def __init__(self, app: ASGIApp, histogram: Histogram, templates: RouteTemplates) -> None:
        self.app, self.histogram, self.templates = app, histogram, templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        began: list[tuple[int, float]] = []

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and not began:
                began.append((int(message["status"]), time.perf_counter()))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            status, at = began[0] if began else (500, time.perf_counter())
            self.histogram.labels(method_label(scope), self.templates(scope.get("route")),
                                  str(status)).observe(at - start)


@router.get("/metrics", include_in_schema=False)
def scrape(request: Request, rt: RuntimeDep) -> Response:
    """The figures now (a sync route: the store is read on a worker thread)."""
    if not metrics.token_accepts(rt.settings, request.headers.get("authorization")):
        raise Unauthenticated("/metrics needs Authorization: Bearer <AIRAVATA_METRICS_TOKEN>")
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def install(app: FastAPI, rt: Runtime) -> None:
    """The route, a registry of this app's own, and the timer (added last: outermost, so it
    sees every answer, the body cap's 413 included)."""
    registry = metrics.registry(rt)
    histogram = Histogram("airavata_api_request_seconds", "REST API requests by method, route "
                          "template and status: seconds until the response began",
                          ["method", "route", "status"], registry=registry)
    app.state.metrics_registry = registry
    app.include_router(router)
    app.add_middleware(RequestTimer, histogram=histogram,
                       templates=RouteTemplates(lambda: app.routes))


__all__ = ["RequestTimer", "RouteTemplates", "install", "method_label", "router"]
