"""/auth: sign in with a password (or use an OIDC issuer's tokens), refresh, sign out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from airavata_prefect.api.rest.deps import RuntimeDep, Who, limiter
from airavata_prefect.api.rest.limits import Limiter
from airavata_prefect.usecases import identity

router = APIRouter(prefix="/auth", tags=["auth"])


class LoginBody(BaseModel):
    username: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=1024)


class RefreshBody(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=512)


class TokensOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"
    expires_in: int


class WhoAmI(BaseModel):
    name: str
    kind: str
    project: str | None
    via: str


def _out(t: identity.Tokens) -> TokensOut:
    return TokensOut(access_token=t.access_token, refresh_token=t.refresh_token,
                     expires_in=t.expires_in)


@router.post("/login", response_model=TokensOut)
def login(body: LoginBody, request: Request, rt: RuntimeDep,
          lim: Annotated[Limiter, Depends(limiter)]) -> TokensOut:
    """A short-lived access token and a refresh token for a name and password."""
    client = request.client.host if request.client else "-"
    lim.hit(f"login:{body.username}", rt.settings.api_login_rate, "sign-in attempts")
    lim.hit(f"login-from:{client}", rt.settings.api_login_rate * 5, "sign-in attempts")
    return _out(identity.login(rt.store, rt.settings, body.username, body.password))


@router.post("/refresh", response_model=TokensOut)
def refresh(body: RefreshBody, rt: RuntimeDep) -> TokensOut:
    """New tokens for a refresh token, which is spent."""
    return _out(identity.refresh(rt.store, rt.settings, body.refresh_token))


@router.post("/logout", status_code=204)
def logout(body: RefreshBody, rt: RuntimeDep) -> None:
    """Revoke a refresh token (access tokens expire on their own within minutes)."""
    identity.logout(rt.store, body.refresh_token)


@router.get("/whoami", response_model=WhoAmI)
def whoami(who: Who) -> WhoAmI:
    return WhoAmI(name=who.name, kind=who.kind, project=who.project, via=who.via)
