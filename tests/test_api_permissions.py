"""Who may not do what, through the REST API of a real server (tests/api_harness.py): every
refusal is a 401 or a 403 in the one error envelope, whose correlation id is the response's
X-Correlation-ID and names a `denied` row of the audit trail, and changes nothing in the store.

One server, one deployment with its worker and one real experiment serve every case (built once
for this module); each case names who asks (a token of some kind) and what, and is checked the
same way. Then the limits: sign-in attempts, body size, and Idempotency-Key replays."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import sqlalchemy as sa

from airavata_prefect.adapters.store import Store
from airavata_prefect.adapters.store.schema import metadata, tokens
from airavata_prefect.usecases.context import os_login
from tests.api_harness import ApiServer, api_server
from tests.conftest import experiment_stack

pytestmark = pytest.mark.prefect

DEPLOYMENT = "perm"
TINY = "name: tiny\ntasks:\n  noop:\n    command: 'true'\n    task_inputs: {I: 1..2}\n"
SUBMIT = {"spec": TINY, "deployment": DEPLOYMENT, "project": "lab"}


@dataclass
class World:
    api: ApiServer
    bearer: dict[str, str] = field(default_factory=dict)  # who -> the token they present
    values: dict[str, str] = field(default_factory=dict)  # what paths and bodies name

    def store(self) -> Store:
        return Store(f"sqlite:///{self.api.home}/airavata.db")


def _jwt(home: Path, **claims: Any) -> str:
    now = datetime.now(UTC)
    body = {"iss": "airavata-prefect", "typ": "access", "iat": now,
            "exp": now + timedelta(minutes=5), "jti": os.urandom(8).hex(), **claims}
    return jwt.encode(body, (home / "api" / "jwt.key").read_text().strip(), algorithm="HS256")


def _ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, f"{r.request.method} {r.request.url}: {r.text}"
    return r.json() if r.content else None


def _login(api: ApiServer, user: str) -> dict[str, Any]:
    r = httpx.post(f"{api.url}/auth/login", timeout=60,
                   json={"username": user, "password": f"{user}-password-1"})
    return dict(_ok(r))


def _wait_run_ended(api: ApiServer, token: str, exp_id: str) -> None:
    """Until the experiment is COMPLETED and its flow run has ended too (it writes a moment
    after the experiment ends), so nothing writes the store while the cases run."""
    prefect = os.environ["PREFECT_API_URL"]
    deadline = time.monotonic() + 180
    with api.client(token) as owner:
        while True:
            exp = _ok(owner.get(f"/experiments/{exp_id}"))
            run = httpx.get(f"{prefect}/flow_runs/{exp['flow_run_id']}").json() \
                if exp.get("flow_run_id") else {}
            if exp["status"] == "COMPLETED" and run.get("state", {}).get("type") == "COMPLETED":
                return
            assert exp["status"] not in ("FAILED", "CANCELED"), exp
            assert time.monotonic() < deadline, (exp, run)
            time.sleep(0.5)


@pytest.fixture(scope="module")
def world(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("permissions") / "airavata"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("AIRAVATA_USER", raising=False)
        with api_server(home) as api:
            w = World(api)
            admin = api.as_admin()
            w.bearer["admin"] = api.tokens["admin"]
            for name in ("pi", "alice", "bob", "carol", "dave"):
                api.add_user(name).close()
                w.bearer[name] = api.tokens[name]
            people = {n: api.client(t) for n, t in w.bearer.items()}
            # Project lab: pi manages it, alice and bob are members; the operator (the OS
            # login that registers the deployment) manages it too. carol has her own.
            _ok(people["pi"].post("/projects", json={"name": "lab"}), 201)
            for member in ("alice", "bob"):
                _ok(people["pi"].post("/projects/lab/members", json={"username": member}))
            _ok(people["pi"].post("/projects/lab/members",
                                  json={"username": os_login(), "role": "admin"}))
            _ok(people["carol"].post("/projects", json={"name": "carolproj"}), 201)
            _ok(people["alice"].post("/groups", json={"name": "alices"}), 201)
            _ok(people["alice"].post("/groups/alices/members", json={"member": "pi"}), 204)
            # A service account of lab with a live, a revoked and an expired API token.
            _ok(people["pi"].post("/projects/lab/service-accounts", json={"name": "ci"}), 201)
            live, revoked, expired = (
                _ok(people["pi"].post("/service-accounts/svc-ci/tokens", json={"label": k}),
                    201) for k in ("live", "revoked", "expired"))
            w.bearer["svc"], w.values["svc_token_id"] = live["token"], live["id"]
            _ok(people["pi"].delete(f"/service-accounts/svc-ci/tokens/{revoked['id']}"), 204)
            w.bearer["svc-revoked"] = revoked["token"]
            store = w.store()
            with store.engine.begin() as conn:
                conn.execute(tokens.update().where(tokens.c.id == expired["id"]).values(
                    expires_at=datetime.now(UTC) - timedelta(minutes=1)))
            store.close()
            w.bearer["svc-expired"] = expired["token"]
            # Refresh tokens: one spent by a refresh (rotated), one signed out.
            first = _login(api, "alice")
            _ok(httpx.post(f"{api.url}/auth/refresh", timeout=60,
                           json={"refresh_token": first["refresh_token"]}))
            w.values["rotated_refresh"] = first["refresh_token"]
            second = _login(api, "alice")
            r = httpx.post(f"{api.url}/auth/logout", timeout=60,
                           json={"refresh_token": second["refresh_token"]})
            assert r.status_code == 204, r.text
            w.values["signed_out_refresh"] = second["refresh_token"]
            w.bearer["refresh-as-access"] = second["refresh_token"]
            # Forged and stale access tokens.
            good = w.bearer["alice"]
            head, claims, sig = good.split(".")
            flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
            w.bearer["tampered"] = f"{head}.{claims}.{flipped}"
            claimed = jwt.decode(good, options={"verify_signature": False})
            w.bearer["other-key"] = jwt.encode(claimed, "not-the-server-key-but-as-long-as-one",
                                               algorithm="HS256")
            w.bearer["alg-none"] = jwt.encode(claimed, None, algorithm="none")
            w.bearer["malformed"] = "not-a-token"
            past = datetime.now(UTC) - timedelta(hours=1)
            w.bearer["expired"] = _jwt(home, sub="alice", iat=past - timedelta(minutes=15),
                                       exp=past)
            w.bearer["ghost"] = _jwt(home, sub="ghost")
            _ok(admin.post("/users/dave/disable"), 204)  # dave's access token still in hand
            with experiment_stack(home, DEPLOYMENT, project="lab", user=None):
                started = _ok(people["alice"].post("/experiments", json=SUBMIT), 201)
                w.values["exp"] = started["experiment_id"]
                _wait_run_ended(api, w.bearer["alice"], w.values["exp"])
                tasks = _ok(people["alice"].get(f"/experiments/{w.values['exp']}/tasks"))
                w.values["instance"] = tasks[0]["instance_id"]
                for c in people.values():
                    c.close()
                admin.close()
                yield w


@dataclass(frozen=True)
class Case:
    id: str
    who: str | None  # a key of World.bearer; None: no Authorization header
    method: str
    path: str  # {exp}, {instance}, ... from World.values
    body: dict[str, Any] | None = None
    status: int = 403
    header: str | None = None  # a raw Authorization header instead

    def __str__(self) -> str:
        return self.id


CASES = [
    # -- 401: no verified identity -------------------------------------------------------------
    Case("no-token", None, "GET", "/users/me", status=401),
    Case("no-token-write", None, "POST", "/users",
         {"username": "mallory", "password": "mallory-password-1"}, status=401),
    Case("basic-scheme", None, "GET", "/users/me", status=401,
         header="Basic YWxpY2U6YWxpY2UtcGFzc3dvcmQtMQ=="),
    Case("malformed-token", "malformed", "GET", "/users/me", status=401),
    Case("jwt-signature-flipped", "tampered", "GET", "/experiments", status=401),
    Case("jwt-signed-with-another-key", "other-key", "GET", "/projects", status=401),
    Case("jwt-alg-none", "alg-none", "GET", "/users/me", status=401),
    Case("jwt-expired", "expired", "GET", "/users/me", status=401),
    Case("jwt-of-unknown-user", "ghost", "GET", "/users/me", status=401),
    Case("refresh-token-as-access", "refresh-as-access", "GET", "/users/me", status=401),
    Case("disabled-user-reads", "dave", "GET", "/users/me", status=401),
    Case("disabled-user-creates-project", "dave", "POST", "/projects", {"name": "daves"},
         status=401),
    Case("revoked-api-token", "svc-revoked", "GET", "/projects/lab", status=401),
    Case("expired-api-token-submits", "svc-expired", "POST", "/experiments", SUBMIT,
         status=401),
    Case("rotated-refresh-token-reused", None, "POST", "/auth/refresh",
         {"refresh_token": "{rotated_refresh}"}, status=401),
    Case("signed-out-refresh-token", None, "POST", "/auth/refresh",
         {"refresh_token": "{signed_out_refresh}"}, status=401),
    Case("signed-out-refresh-token-signs-out-again", None, "POST", "/auth/logout",
         {"refresh_token": "{signed_out_refresh}"}, status=401),
    Case("unknown-refresh-token", None, "POST", "/auth/refresh",
         {"refresh_token": "avr_0123456789abcdef.not-a-secret"}, status=401),
    # -- 403: people, groups, projects ----------------------------------------------------------
    Case("member-creates-user", "alice", "POST", "/users",
         {"username": "mallory", "password": "mallory-password-1"}),
    Case("member-creates-admin", "alice", "POST", "/users",
         {"username": "mallory", "password": "mallory-password-1", "admin": True}),
    Case("member-disables-user", "alice", "POST", "/users/bob/disable"),
    Case("member-enables-disabled-user", "alice", "POST", "/users/dave/enable"),
    Case("wrong-current-password", "alice", "POST", "/users/me/password",
         {"old_password": "not-alices-password", "new_password": "a-new-password-1"}),
    Case("member-adds-project-member", "alice", "POST", "/projects/lab/members",
         {"username": "carol"}),
    Case("member-makes-self-project-admin", "alice", "POST", "/projects/lab/members",
         {"username": "alice", "role": "admin"}),
    Case("member-removes-project-member", "alice", "DELETE", "/projects/lab/members/bob"),
    Case("member-deletes-project", "alice", "DELETE", "/projects/lab"),
    Case("member-updates-project", "alice", "PATCH", "/projects/lab",
         {"description": "alice's now"}),
    Case("outsider-updates-project", "carol", "PATCH", "/projects/lab", {"description": "x"}),
    Case("outsider-reads-project", "carol", "GET", "/projects/lab"),
    Case("outsider-adds-self-to-project", "carol", "POST", "/projects/lab/members",
         {"username": "carol"}),
    Case("non-group-admin-adds-member", "bob", "POST", "/groups/alices/members",
         {"member": "bob"}),
    Case("non-group-admin-adds-group", "bob", "POST", "/groups/alices/members",
         {"member": "group:alices"}),
    Case("non-group-admin-removes-member", "pi", "DELETE", "/groups/alices/members/alice"),
    Case("outsider-reads-group", "carol", "GET", "/groups/alices/members"),
    # -- 403: service accounts and their tokens -------------------------------------------------
    Case("member-creates-service-account", "alice", "POST", "/projects/lab/service-accounts",
         {"name": "rogue"}),
    Case("member-mints-api-token", "alice", "POST", "/service-accounts/svc-ci/tokens", {}),
    Case("outsider-mints-api-token", "carol", "POST", "/service-accounts/svc-ci/tokens", {}),
    Case("service-account-mints-own-token", "svc", "POST", "/service-accounts/svc-ci/tokens",
         {}),
    Case("member-revokes-api-token", "bob", "DELETE",
         "/service-accounts/svc-ci/tokens/{svc_token_id}"),
    Case("service-account-creates-project", "svc", "POST", "/projects", {"name": "botproj"}),
    Case("service-account-added-to-another-project", "carol", "POST",
         "/projects/carolproj/members", {"username": "svc-ci"}),
    Case("service-account-submits-to-another-project", "svc", "POST", "/experiments",
         {**SUBMIT, "project": "carolproj"}),
    Case("service-account-reads-another-project", "svc", "GET", "/projects/carolproj"),
    Case("service-account-reads-member-experiment", "svc", "GET", "/experiments/{exp}"),
    # -- 403: experiments -----------------------------------------------------------------------
    Case("outsider-submits-to-project", "carol", "POST", "/experiments",
         {**SUBMIT, "project": "lab"}),
    Case("member-submits-to-another-project", "alice", "POST", "/experiments",
         {**SUBMIT, "project": "carolproj"}),
    Case("member-submits-to-unknown-project", "alice", "POST", "/experiments",
         {**SUBMIT, "project": "nowhere"}),
    Case("member-reads-another-members-experiment", "bob", "GET", "/experiments/{exp}"),
    Case("member-reads-its-tasks", "bob", "GET", "/experiments/{exp}/tasks"),
    Case("member-reads-one-task", "bob", "GET", "/experiments/{exp}/tasks/{instance}"),
    Case("member-reads-its-events", "bob", "GET", "/experiments/{exp}/events"),
    Case("member-reads-its-agents", "bob", "GET", "/experiments/{exp}/agents"),
    Case("member-reads-its-bundles", "bob", "GET", "/experiments/{exp}/bundles"),
    Case("member-reads-its-logs", "bob", "GET", "/experiments/{exp}/tasks/{instance}/logs"),
    Case("member-watches-it", "bob", "GET", "/experiments/{exp}/watch"),
    Case("member-cancels-it", "bob", "POST", "/experiments/{exp}/cancel"),
    Case("member-pauses-it", "bob", "POST", "/experiments/{exp}/pause"),
    Case("member-resumes-it", "bob", "POST", "/experiments/{exp}/resume"),
    Case("member-retries-it", "bob", "POST", "/experiments/{exp}/retry",
         {"deployment": DEPLOYMENT}),
    Case("member-resubmits-it", "bob", "POST", "/experiments/{exp}/resubmit",
         {"deployment": DEPLOYMENT}),
    Case("member-starts-a-run-of-it", "bob", "POST", "/experiments/{exp}/run",
         {"deployment": DEPLOYMENT}),
    Case("outsider-cancels-it", "carol", "POST", "/experiments/{exp}/cancel"),
    Case("outsider-reads-it-by-prefix", "carol", "GET", "/experiments/{exp8}"),
]


def _fill(value: Any, values: dict[str, str]) -> Any:
    if isinstance(value, str):
        for name, v in values.items():
            value = value.replace("{" + name + "}", v)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, values) for k, v in value.items()}
    return value


def snapshot(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table but the audit trail (which a refusal adds to)."""
    out = {}
    with store.engine.connect() as conn:
        for table in metadata.sorted_tables:
            if table.name != "audit_events":
                out[table.name] = sorted(tuple(r) for r in conn.execute(sa.select(table)))
    return out


def test_permission_matrix_has_enough_cases() -> None:
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_refused_audited_and_nothing_changes(world: World, case: Case) -> None:
    values = {**world.values, "exp8": world.values["exp"][:8]}
    headers = {"Authorization": case.header} if case.header else (
        {"Authorization": f"Bearer {world.bearer[case.who]}"} if case.who else {})
    store = world.store()
    try:
        before = snapshot(store)
        r = httpx.request(case.method, world.api.url + _fill(case.path, values), timeout=60,
                          headers=headers, json=_fill(case.body, values))
        assert r.status_code == case.status, r.text
        if case.status == 401:
            assert r.headers.get("WWW-Authenticate") == "Bearer"
        error = r.json()["error"]
        assert error["code"] == {401: "unauthenticated", 403: "forbidden"}[case.status]
        assert error["message"] and "Traceback" not in error["message"]
        assert error["correlation_id"] == r.headers["X-Correlation-ID"]
        trail = store.audit.trail(correlation_id=error["correlation_id"])
        assert [e for e in trail if e.outcome == "denied"], trail
        if case.status == 403 and case.who:  # the refusal names who was refused
            names = {"svc": "svc-ci"}.get(case.who, case.who)
            assert {e.actor for e in trail if e.outcome == "denied"} == {names}, trail
        assert snapshot(store) == before
    finally:
        store.close()


def test_lists_show_only_what_one_may_read(world: World) -> None:
    with world.api.client(world.bearer["bob"]) as bob, \
            world.api.client(world.bearer["pi"]) as pi, \
            world.api.client(world.bearer["carol"]) as carol:
        assert world.values["exp"] not in [e["id"] for e in _ok(bob.get("/experiments"))]
        assert world.values["exp"] in [e["id"] for e in _ok(pi.get("/experiments"))]
        assert _ok(carol.get("/projects")) == ["carolproj"]
        assert "alices" not in _ok(carol.get("/users/me/groups"))


# -- the limits ----------------------------------------------------------------------------------


def _envelope(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["code"] == code and error["message"]
    assert error["correlation_id"] == r.headers["X-Correlation-ID"]
    return error


def test_the_eleventh_bad_sign_in_in_a_minute_is_refused(world: World) -> None:
    with world.api.as_admin() as admin:  # a user nobody signed in as yet (no attempts counted)
        _ok(admin.post("/users", json={"username": "erin", "password": "erin-password-1"}), 201)
    url = f"{world.api.url}/auth/login"
    wrong = {"username": "erin", "password": "not-erins-password"}
    for _ in range(10):
        _envelope(httpx.post(url, json=wrong, timeout=60), 401, "unauthenticated")
    r = httpx.post(url, json=wrong, timeout=60)
    _envelope(r, 429, "rate_limited")
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    # Even the right password now waits: the count is of attempts, not of failures.
    r = httpx.post(url, json={**wrong, "password": "erin-password-1"}, timeout=60)
    _envelope(r, 429, "rate_limited")


def test_a_body_over_the_cap_is_refused_declared_or_streamed(world: World) -> None:
    big = b'{"spec": "' + b"x" * (1 << 20) + b'"}'
    store = world.store()
    before = snapshot(store)
    with world.api.client(world.bearer["alice"]) as alice:
        declared = alice.post("/experiments", content=big,
                              headers={"Content-Type": "application/json"})
        _envelope(declared, 413, "too_large")
        streamed = alice.post("/experiments", content=iter([big[i:i + 65536] for i in range(
            0, len(big), 65536)]), headers={"Content-Type": "application/json"})
        assert "content-length" not in streamed.request.headers  # sent chunked
        _envelope(streamed, 413, "too_large")
    assert snapshot(store) == before
    store.close()


def test_an_idempotency_key_makes_one_experiment(world: World) -> None:
    store = world.store()
    before = len(store.experiments.list(1000))
    key = {"Idempotency-Key": f"nightly-{os.urandom(4).hex()}"}
    with world.api.client(world.bearer["alice"]) as alice:
        first = _ok(alice.post("/experiments", json=SUBMIT, headers=key), 201)
        again = _ok(alice.post("/experiments", json=SUBMIT, headers=key), 201)
        assert first["replayed"] is False and again["replayed"] is True
        assert again["experiment_id"] == first["experiment_id"]
        assert again["flow_run_id"] == first["flow_run_id"]
        # The key is alice's own: the same key from pi is another request.
        with world.api.client(world.bearer["pi"]) as pi:
            other = _ok(pi.post("/experiments", json=SUBMIT, headers=key), 201)
        assert other["replayed"] is False and other["experiment_id"] != first["experiment_id"]
    assert len(store.experiments.list(1000)) == before + 2
    _wait_run_ended(world.api, world.bearer["alice"], first["experiment_id"])
    _wait_run_ended(world.api, world.bearer["pi"], other["experiment_id"])
    store.close()
