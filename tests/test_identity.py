"""Identity verification (usecases/identity.py) on a real SQLite store: passwords, access and
refresh tokens, API tokens, and OIDC tokens checked against a JWKS served over HTTP."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from airavata_prefect.adapters.store import Store
from airavata_prefect.usecases import identity
from airavata_prefect.usecases.errors import BadInput, Unauthenticated
from airavata_prefect.usecases.settings import Settings


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'a.db'}")
    s.accounts.create("alice", kind="person", created_by="test",
                      password_hash=identity.hash_password("alice-password"))
    yield s
    s.close()


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(home=tmp_path, **kw)  # type: ignore[arg-type]


def test_password_login_refresh_rotation_and_logout(store: Store, tmp_path: Path) -> None:
    st = _settings(tmp_path)
    with pytest.raises(Unauthenticated, match="wrong name or password"):
        identity.login(store, st, "alice", "nope")
    with pytest.raises(Unauthenticated, match="wrong name or password"):
        identity.login(store, st, "nobody", "alice-password")  # the same answer
    tokens = identity.login(store, st, "alice", "alice-password")
    assert identity.verify(store, st, tokens.access_token).name == "alice"
    assert (tmp_path / "api" / "jwt.key").stat().st_mode & 0o777 == 0o600
    again = identity.refresh(store, st, tokens.refresh_token)
    with pytest.raises(Unauthenticated, match="revoked"):  # spent: a stolen copy is refused
        identity.refresh(store, st, tokens.refresh_token)
    with pytest.raises(Unauthenticated, match="not an access token"):
        identity.verify(store, st, again.refresh_token)
    assert identity.logout(store, again.refresh_token) == "alice"
    with pytest.raises(Unauthenticated):
        identity.refresh(store, st, again.refresh_token)
    rows = [(r.action, r.outcome) for r in store.audit.trail(actor="alice")]
    assert rows[:2] == [("auth.login", "denied"), ("auth.login", "ok")]
    assert ("auth.logout", "ok") in rows and ("auth.refresh", "denied") in rows, rows
    digests = {t.digest for t in store.accounts.tokens_of("alice")}
    assert all(t.refresh_token.split(".", 1)[1] not in digests for t in (tokens, again))


def test_access_tokens_forged_expired_or_of_gone_accounts_are_refused(
        store: Store, tmp_path: Path) -> None:
    st = _settings(tmp_path)
    key = identity.signing_key(st)
    now = datetime.now(UTC)
    claims = {"iss": identity.ISSUER, "sub": "alice", "typ": "access", "iat": now,
              "exp": now + timedelta(minutes=5)}
    assert identity.verify(store, st, jwt.encode(claims, key, algorithm="HS256")).name == "alice"
    cases = {
        "expired": jwt.encode({**claims, "exp": now - timedelta(seconds=1)}, key,
                              algorithm="HS256"),
        "bad signature": jwt.encode(claims, "another-key-entirely-32-bytes-long!",
                                    algorithm="HS256"),
        "alg none": jwt.encode(claims, None, algorithm="none"),
        "unknown user": jwt.encode({**claims, "sub": "mallory"}, key, algorithm="HS256"),
        "wrong issuer": jwt.encode({**claims, "iss": "elsewhere"}, key, algorithm="HS256"),
        "garbage": "not.a.token",
    }
    for what, token in cases.items():
        with pytest.raises(Unauthenticated):
            identity.verify(store, st, token)
            pytest.fail(what)
    store.accounts.update("alice", disabled=True)
    with pytest.raises(Unauthenticated, match="disabled"):
        identity.verify(store, st, jwt.encode(claims, key, algorithm="HS256"))


def test_api_tokens_verify_until_revoked_or_expired(store: Store, tmp_path: Path) -> None:
    st = _settings(tmp_path)
    store.accounts.create("svc-ci", kind="service", project="lab", created_by="alice")
    token_id, token = identity.new_api_token(store, "svc-ci", label="ci", days=1)
    who = identity.verify(store, st, token)
    assert (who.name, who.kind, who.project, who.via) == ("svc-ci", "service", "lab",
                                                           "api-token")
    with pytest.raises(Unauthenticated, match="unknown"):
        identity.verify(store, st, token[:-2] + "xx")
    store.accounts.revoke(token_id)
    with pytest.raises(Unauthenticated, match="revoked"):
        identity.verify(store, st, token)
    _, short = identity.new_api_token(store, "svc-ci", label=None, days=1)
    import sqlalchemy as sa

    from airavata_prefect.adapters.store.schema import tokens
    with store.engine.begin() as conn:
        conn.execute(sa.update(tokens).values(expires_at=datetime.now(UTC) - timedelta(1)))
    with pytest.raises(Unauthenticated, match="expired"):
        identity.verify(store, st, short)
    with pytest.raises(BadInput):
        identity.hash_password("short")


class _Jwks(http.server.BaseHTTPRequestHandler):
    body = b"{}"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_: object) -> None:
        pass


def test_oidc_tokens_are_checked_against_the_issuers_jwks(store: Store, tmp_path: Path
                                                          ) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    _Jwks.body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}
                            ).encode()
    server = http.server.HTTPServer(("127.0.0.1", 0), _Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    issuer = "https://sso.example.org/realms/lab"
    st = _settings(tmp_path, oidc_issuer=issuer, oidc_audience="airavata",
                   oidc_jwks_url=f"http://127.0.0.1:{server.server_port}/jwks")
    now = int(time.time())
    claims = {"iss": issuer, "sub": "u-123", "aud": "airavata", "preferred_username": "carol",
              "iat": now, "exp": now + 300}
    good = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
    who = identity.verify(store, st, good)
    assert (who.name, who.via) == ("carol", "oidc")
    assert store.accounts.get("carol") is not None  # known from the first request on
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bad = {
        "foreign key": jwt.encode(claims, other, algorithm="RS256", headers={"kid": "k1"}),
        "wrong audience": jwt.encode({**claims, "aud": "x"}, key, algorithm="RS256",
                                     headers={"kid": "k1"}),
        "expired": jwt.encode({**claims, "exp": now - 10}, key, algorithm="RS256",
                              headers={"kid": "k1"}),
    }
    for what, token in bad.items():
        with pytest.raises(Unauthenticated, match="OIDC token refused"):
            identity.verify(store, st, token)
            pytest.fail(what)
    with pytest.raises(BadInput, match="signs people in through"):
        identity.login(store, st, "alice", "alice-password")
    server.shutdown()
