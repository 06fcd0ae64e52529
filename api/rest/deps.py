"""What a route depends on: the runtime, the verified identity (401 otherwise, audited), a
context acting as it, and the write rate limit."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from airavata_prefect.api.rest.limits import Limiter
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.correlation import correlation_id
from airavata_prefect.usecases.errors import Unauthenticated
from airavata_prefect.usecases.identity import Principal
from airavata_prefect.usecases.runtime import Runtime

_bearer = HTTPBearer(auto_error=False, description="An access token (POST /api/v1/auth/login) "
                     "or a service account's API token")


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def limiter(request: Request) -> Limiter:
    lim: Limiter = request.app.state.limiter
    return lim


def principal(request: Request, rt: Annotated[Runtime, Depends(runtime)],
              creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
              ) -> Principal:
    try:
        if creds is None:
            raise Unauthenticated("missing Authorization: Bearer token")
        who = rt.verify(creds.credentials)
    except Unauthenticated as exc:
        rt.store.audit.record(actor="anonymous", action="auth.verify",
                              obj=f"route:{request.method} {request.url.path}",
                              correlation_id=correlation_id(), outcome="denied", detail=str(exc))
        raise
    request.state.principal = who.name
    return who


def context(rt: Annotated[Runtime, Depends(runtime)],
            who: Annotated[Principal, Depends(principal)]) -> Context:
    return rt.context(who.name)


def writer(request: Request, who: Annotated[Principal, Depends(principal)],
           lim: Annotated[Limiter, Depends(limiter)],
           rt: Annotated[Runtime, Depends(runtime)]) -> Principal:
    """A write: counted against the identity's rate limit."""
    lim.hit(f"write:{who.name}", rt.settings.api_write_rate, "writes")
    return who


Ctx = Annotated[Context, Depends(context)]
Who = Annotated[Principal, Depends(principal)]
Writer = Annotated[Principal, Depends(writer)]
RuntimeDep = Annotated[Runtime, Depends(runtime)]

__all__ = ["Ctx", "RuntimeDep", "Who", "Writer", "context", "limiter", "principal", "runtime"]
