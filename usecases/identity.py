"""Who is asking, verified: passwords (argon2), short-lived access tokens (JWT, HS256), refresh
tokens and API tokens (random, kept only as sha256 digests), or an OIDC issuer's tokens checked
against its JWKS. Every success and refusal is audited; no password or token is ever stored,
logged or echoed.

Token shapes: access tokens are JWTs; refresh tokens `avr_<id>.<secret>`; API tokens (service
accounts) `avt_<id>.<secret>`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from airavata_prefect.adapters.store import Account, Store
from airavata_prefect.usecases.correlation import correlation_id
from airavata_prefect.usecases.errors import BadInput, Unauthenticated
from airavata_prefect.usecases.settings import Settings

ISSUER = "airavata-prefect"
_hasher = PasswordHasher()
# A hash to verify against when the name is unknown, so a wrong name costs as long as a wrong
# password (no user enumeration by timing).
_DUMMY = _hasher.hash("not-a-password")
MIN_PASSWORD = 8


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified identity: the name SpiceDB is asked about."""

    name: str
    kind: str  # person | service
    project: str | None = None  # a service account's only project
    via: str = "password"  # password | api-token | oidc | os-login


@dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise BadInput(f"password: at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def _password_ok(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _audit(store: Store, actor: str, action: str, outcome: str, detail: str | None = None
           ) -> None:
    store.audit.record(actor=actor, action=action, obj=f"account:{actor}",
                       correlation_id=correlation_id(), outcome=outcome, detail=detail)


_key_lock = threading.Lock()


def signing_key(settings: Settings) -> str:
    """AIRAVATA_JWT_SECRET, else a random key kept in `home`/api/jwt.key (0600, made once)."""
    if settings.jwt_secret is not None:
        return settings.jwt_secret.get_secret_value()
    path = Path(settings.home) / "api" / "jwt.key"
    with _key_lock:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process made it first
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_urlsafe(48))
        return path.read_text().strip()


def _mint(store: Store, settings: Settings, account: Account) -> Tokens:
    now = datetime.now(UTC)
    access = jwt.encode({"iss": ISSUER, "sub": account.name, "typ": "access",
                         "iat": now, "exp": now + timedelta(seconds=settings.access_token_seconds),
                         "jti": uuid.uuid4().hex}, signing_key(settings), algorithm="HS256")
    token_id, secret = uuid.uuid4().hex, secrets.token_urlsafe(32)
    store.accounts.add_token(token_id, kind="refresh", account=account.name,
                             digest=_digest(secret),
                             expires_at=now + timedelta(seconds=settings.refresh_token_seconds))
    return Tokens(access, f"avr_{token_id}.{secret}", settings.access_token_seconds)


def login(store: Store, settings: Settings, name: str, password: str) -> Tokens:
    """Tokens for a person's name and password; one answer for every kind of failure."""
    if settings.oidc_issuer:
        raise BadInput(f"this server signs people in through {settings.oidc_issuer}; "
                       "use a token from that issuer")
    account = store.accounts.get(name)
    ok = _password_ok(account.password_hash if account else None, password)
    if not ok or account is None or account.disabled or account.kind != "person":
        _audit(store, name, "auth.login", "denied")
        raise Unauthenticated("wrong name or password")
    _audit(store, name, "auth.login", "ok")
    return _mint(store, settings, account)


def _split(token: str, prefix: str) -> tuple[str, str] | None:
    if not token.startswith(prefix) or "." not in token:
        return None
    token_id, _, secret = token[len(prefix):].partition(".")
    return (token_id, secret) if token_id and secret else None


def _live_token(store: Store, token: str, prefix: str, kind: str) -> tuple[str, Account]:
    """(token id, its account) for a refresh or API token that is known, unrevoked, unexpired,
    and whose account is enabled."""
    parts = _split(token, prefix)
    row = store.accounts.token(parts[0]) if parts else None
    if parts is None or row is None or row.kind != kind \
            or not hmac.compare_digest(row.digest, _digest(parts[1])):
        raise Unauthenticated(f"unknown {kind} token")
    if row.revoked_at is not None:
        raise Unauthenticated(f"this {kind} token was revoked")
    if row.expires_at is not None and row.expires_at <= datetime.now(UTC):
        raise Unauthenticated(f"this {kind} token expired; sign in again")
    account = store.accounts.get(row.account)
    if account is None or account.disabled:
        raise Unauthenticated(f"the account of this {kind} token is disabled or gone")
    return row.id, account


def _refused(store: Store, token: str, action: str, why: Unauthenticated) -> Unauthenticated:
    """Audit a refused refresh token under the account it names, when it names one (a rotated
    token used again is someone replaying it)."""
    parts = _split(token, "avr_")
    row = store.accounts.token(parts[0]) if parts else None
    _audit(store, row.account if row is not None and row.kind == "refresh" else "anonymous",
           action, "denied", str(why))
    return why


def refresh(store: Store, settings: Settings, refresh_token: str) -> Tokens:
    """New tokens for a live refresh token, which is spent (rotation: a stolen copy used after
    its owner refreshed is refused)."""
    try:
        token_id, account = _live_token(store, refresh_token, "avr_", "refresh")
        if not store.accounts.revoke(token_id):
            raise Unauthenticated("this refresh token was revoked")
    except Unauthenticated as exc:
        raise _refused(store, refresh_token, "auth.refresh", exc) from None
    _audit(store, account.name, "auth.refresh", "ok")
    return _mint(store, settings, account)


def logout(store: Store, refresh_token: str) -> str:
    """Revoke a refresh token; returns whose it was."""
    try:
        token_id, account = _live_token(store, refresh_token, "avr_", "refresh")
    except Unauthenticated as exc:
        raise _refused(store, refresh_token, "auth.logout", exc) from None
    store.accounts.revoke(token_id)
    _audit(store, account.name, "auth.logout", "ok")
    return account.name


def new_api_token(store: Store, account: str, *, label: str | None, days: int
                  ) -> tuple[str, str]:
    """(token id, the token) for a service account; the token is shown this once only."""
    token_id, secret = uuid.uuid4().hex, secrets.token_urlsafe(32)
    store.accounts.add_token(token_id, kind="api", account=account, digest=_digest(secret),
                             expires_at=datetime.now(UTC) + timedelta(days=days), label=label)
    return token_id, f"avt_{token_id}.{secret}"


# -- verification ------------------------------------------------------------------------------

_jwks: dict[str, Any] = {}


def _jwks_client(settings: Settings) -> Any:
    url = settings.oidc_jwks_url
    if not url:
        import httpx
        issuer = str(settings.oidc_issuer).rstrip("/")
        url = httpx.get(f"{issuer}/.well-known/openid-configuration",
                        timeout=10).json()["jwks_uri"]
    if url not in _jwks:
        _jwks[url] = jwt.PyJWKClient(url, cache_keys=True, lifespan=300)
    return _jwks[url]


def _verify_oidc(store: Store, settings: Settings, token: str) -> Principal:
    try:
        key = _jwks_client(settings).get_signing_key_from_jwt(token).key
        claims = jwt.decode(token, key, algorithms=["RS256", "ES256", "PS256"],
                            issuer=settings.oidc_issuer, audience=settings.oidc_audience,
                            options={"require": ["exp", "iss", "sub"],
                                     "verify_aud": settings.oidc_audience is not None})
    except jwt.PyJWTError as exc:
        raise Unauthenticated(f"OIDC token refused: {exc}") from None
    except Exception as exc:  # the issuer's keys cannot be fetched
        raise Unauthenticated(f"OIDC issuer keys unavailable: {type(exc).__name__}") from None
    name = claims.get(settings.oidc_username_claim) or claims["sub"]
    if not isinstance(name, str) or not name:
        raise Unauthenticated(f"OIDC token has no {settings.oidc_username_claim} claim")
    account = store.accounts.get(name)
    if account is None:  # the issuer vouches for them: known from their first request on
        store.accounts.create(name, kind="person", created_by=f"oidc:{settings.oidc_issuer}")
    elif account.disabled or account.kind != "person":
        raise Unauthenticated(f"account {name} is disabled")
    return Principal(name, "person", via="oidc")


def verify(store: Store, settings: Settings, token: str) -> Principal:
    """The identity a bearer token proves, or Unauthenticated saying why not."""
    if token.startswith("avt_"):
        _, account = _live_token(store, token, "avt_", "api")
        return Principal(account.name, account.kind, account.project, via="api-token")
    if token.startswith("avr_"):
        raise Unauthenticated("a refresh token is not an access token: exchange it at "
                              "/api/v1/auth/refresh")
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise Unauthenticated("malformed bearer token") from None
    if settings.oidc_issuer and unverified.get("iss") == settings.oidc_issuer:
        return _verify_oidc(store, settings, token)
    try:
        claims = jwt.decode(token, signing_key(settings), algorithms=["HS256"], issuer=ISSUER,
                            options={"require": ["exp", "iss", "sub"]})
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("access token expired; refresh it or sign in again") from None
    except jwt.PyJWTError:
        raise Unauthenticated("access token refused: bad signature or claims") from None
    if claims.get("typ") != "access":
        raise Unauthenticated("not an access token")
    holder = store.accounts.get(str(claims["sub"]))
    if holder is None or holder.disabled:
        raise Unauthenticated("the account of this access token is disabled or gone")
    return Principal(holder.name, holder.kind, holder.project, via="password")


__all__ = ["ISSUER", "MIN_PASSWORD", "Principal", "Tokens", "hash_password", "login", "logout",
           "new_api_token", "refresh", "signing_key", "verify"]
