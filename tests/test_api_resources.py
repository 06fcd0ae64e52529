"""/resources and /credentials against a real API server process, a real Prefect server, real
OpenBao and the embedded SpiceDB: round trips, refusals (403, audited under the request's
correlation id), and no secret value in any response, audit row or server log line."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from airavata_prefect.adapters.store import Store
from airavata_prefect.domain.records import AuditEntry
from tests.api_harness import ADMIN, ADMIN_PASSWORD, ApiServer, api_server
from tests.haystack import all_bytes
from tests.services import free_port

pytestmark = pytest.mark.prefect


BODIES: list[str] = []  # every response body any client of this module received


def seen(response: httpx.Response) -> None:
    response.read()
    BODIES.append(response.text)


@pytest.fixture(scope="module")
def server(prefect_api: str, openbao_dev: tuple[str, str],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One API server for the module, reaching the session's OpenBao."""
    url, root = openbao_dev
    home = tmp_path_factory.mktemp("api-resources") / "airavata"
    with api_server(home, extra_env={"AIRAVATA_OPENBAO_URL": url,
                                     "AIRAVATA_OPENBAO_TOKEN": root}) as s:
        yield s


def _suffix() -> str:
    return uuid.uuid4().hex[:6]


def admin(server: ApiServer) -> httpx.Client:
    token = server.tokens.get(ADMIN) or server.login(ADMIN, ADMIN_PASSWORD)
    return server.client(token, event_hooks={"response": [seen]})


def person(server: ApiServer, prefix: str) -> tuple[str, httpx.Client]:
    name = f"{prefix}{_suffix()}"
    server.add_user(name).close()
    return name, server.client(server.tokens[name], event_hooks={"response": [seen]})


def project_with(server: ApiServer, boss: httpx.Client, members: dict[str, str]) -> str:
    project = f"lab{_suffix()}"
    assert boss.post("/projects", json={"name": project}).status_code == 201
    for who, role in members.items():
        r = boss.post(f"/projects/{project}/members", json={"username": who, "role": role})
        assert r.status_code == 200, r.text
    return project


def audited(server: ApiServer, response: httpx.Response) -> list[AuditEntry]:
    assert len(response.headers.get_list("x-correlation-id")) == 1
    cid = response.headers["x-correlation-id"]
    assert response.json()["error"]["correlation_id"] == cid
    store = Store(f"sqlite:///{server.home}/airavata.db")
    try:
        return store.audit.trail(correlation_id=cid)
    finally:
        store.close()


def refused(server: ApiServer, response: httpx.Response, user: str, key: str) -> None:
    """A 403 envelope whose refusal is in the audit trail under the request's id."""
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "forbidden"
    rows = audited(server, response)
    assert any(r.actor == user and r.action == key and r.outcome == "denied" for r in rows), rows


def test_compute_round_trip_and_refusals(server: ApiServer, prefect_api: str) -> None:
    boss = admin(server)
    member, alice = person(server, "alice")
    stranger, bob = person(server, "bob")
    project = project_with(server, boss, {member: "member"})
    name = f"hpc-{_suffix()}"

    body = {"name": name, "kind": "slurm", "project": project,
            "fields": {"submit_via": "local", "nodes": 2, "partition": "batch",
                       "environment": {"SLURM_CONF": "/etc/slurm/slurm.conf"}}}
    r = bob.post("/resources/compute", json=body)
    refused(server, r, stranger, "project.manage")
    r = boss.post("/resources/compute", json=body)
    assert r.status_code == 201, r.text
    made = r.json()
    assert (made["kind"], made["project"], made["work_pool"], made["worker_type"]) == (
        "slurm", project, name, "slurm")
    assert made["fields"]["nodes"] == 2 and made["fields"]["partition"] == "batch"
    assert made["can_manage"] and made["credential"] is None
    assert httpx.get(f"{prefect_api}/work_pools/{name}").json()["type"] == "slurm"
    r = boss.post("/resources/compute", json=body)
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict", r.text

    # Who sees it: the project's people; a stranger neither lists nor reads it.
    assert name in [x["name"] for x in alice.get("/resources/compute").json()]
    listed = bob.get("/resources/compute").json()
    assert listed[0]["name"] == "local" and name not in [x["name"] for x in listed]
    seen = alice.get(f"/resources/compute/{name}").json()
    assert seen["fields"]["nodes"] == 2 and seen["can_manage"] is False
    refused(server, bob.get(f"/resources/compute/{name}"), stranger, "scheduler.node.read")
    refused(server, bob.get(f"/resources/compute/{name}/status"), stranger,
            "scheduler.node.read")
    assert name not in [x["name"] for x in bob.get("/resources/status").json()]
    status = alice.get(f"/resources/compute/{name}/status").json()
    assert (status["work_pool"], status["queued"], status["running"], status["ready"]) == \
        (name, 0, 0, False)

    # Replace its fields: only a manager may; the member may not.
    update = {"fields": {"submit_via": "local", "nodes": 4}}
    refused(server, alice.put(f"/resources/compute/{name}", json=update), member,
            "scheduler.node.operate")
    r = boss.put(f"/resources/compute/{name}", json=update)
    assert r.status_code == 200, r.text
    assert r.json()["fields"]["nodes"] == 4 and r.json()["fields"]["partition"] is None
    assert r.json()["work_pool"] == name
    assert boss.get(f"/resources/compute/{name}").json()["fields"]["nodes"] == 4
    r = boss.put(f"/resources/compute/{name}", json={"kind": "baremetal", "fields": {}})
    assert r.status_code == 400 and "keeps its kind" in r.json()["error"]["message"]

    # A connectivity test of a local-sbatch cluster runs `sinfo --version` here, briefly.
    refused(server, bob.post(f"/resources/compute/{name}/test"), stranger, "resource.use")
    r = alice.post(f"/resources/compute/{name}/test")
    assert r.status_code == 200, r.text
    probe = r.json()
    assert probe["status"] in ("ok", "failed") and probe["seconds"] < 15
    assert "sinfo" in probe["detail"] + " ".join(probe["checked"])
    r = boss.post("/resources/compute/local/test")
    assert r.json()["status"] == "ok" and "nothing to connect to" in r.json()["detail"]

    # Bad input and unknown names.
    r = boss.post("/resources/compute", json={**body, "name": f"x-{_suffix()}",
                                               "kind": "cloud"})
    assert r.status_code == 400 and "unknown compute kind 'cloud'" in r.json()["error"]["message"]
    r = boss.post("/resources/compute", json={**body, "name": f"x-{_suffix()}",
                                               "fields": {"nodez": 4}})
    assert r.status_code == 400 and "no field 'nodez'" in r.json()["error"]["message"]
    r = boss.post("/resources/compute", json={**body, "name": "Bad_Name"})
    assert r.status_code == 400
    for method, path in [("GET", "/resources/compute/nope"),
                         ("PUT", "/resources/compute/nope"),
                         ("DELETE", "/resources/compute/nope"),
                         ("POST", "/resources/compute/nope/test")]:
        r = boss.request(method, path, json={"fields": {}} if method == "PUT" else None)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, r.text)

    # Remove it: refused to a stranger and a member, then gone with its deployment and pool.
    refused(server, bob.delete(f"/resources/compute/{name}"), stranger,
            "scheduler.node.operate")
    refused(server, alice.delete(f"/resources/compute/{name}"), member,
            "scheduler.node.operate")
    r = boss.delete(f"/resources/compute/{name}")
    assert r.status_code == 204, r.text
    assert boss.get(f"/resources/compute/{name}").status_code == 404
    assert httpx.get(f"{prefect_api}/deployments/name/execute_bundle/{name}").status_code == 404
    assert httpx.get(f"{prefect_api}/work_pools/{name}").status_code == 404


def test_storage_round_trip(server: ApiServer, tmp_path: Path) -> None:
    boss = admin(server)
    stranger, bob = person(server, "bob")
    project = project_with(server, boss, {})
    name = f"scratch-{_suffix()}"
    data = tmp_path / "data"
    data.mkdir()

    r = boss.post("/resources/storage", json={"name": name, "kind": "local",
                                               "project": project,
                                               "fields": {"path": str(data)}})
    assert r.status_code == 201, r.text
    assert r.json()["fields"] == {"path": str(data)} and r.json()["project"] == project
    assert name in [x["name"] for x in boss.get("/resources/storage").json()]
    assert name not in [x["name"] for x in bob.get("/resources/storage").json()]
    refused(server, bob.get(f"/resources/storage/{name}"), stranger, "storage.read")

    r = boss.post(f"/resources/storage/{name}/test")
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text
    assert "nothing to connect to" in r.json()["detail"]

    r = boss.put(f"/resources/storage/{name}", json={"fields": {"path": "/nowhere/at/all"}})
    assert r.status_code == 200 and r.json()["fields"]["path"] == "/nowhere/at/all", r.text
    r = boss.post(f"/resources/storage/{name}/test")
    assert r.json()["status"] == "not_checked" and "not visible" in r.json()["detail"]
    r = bob.put(f"/resources/storage/{name}", json={"fields": {"path": "/x"}})
    assert r.status_code == 403
    r = boss.post("/resources/storage", json={"name": f"b-{_suffix()}", "kind": "s3",
                                               "project": project, "fields": {}})
    assert r.status_code == 400 and "bucket: Field required" in r.json()["error"]["message"]

    assert bob.delete(f"/resources/storage/{name}").status_code == 403
    assert boss.delete(f"/resources/storage/{name}").status_code == 204
    assert boss.get(f"/resources/storage/{name}").status_code == 404


def _ssh_key() -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, public


def test_credentials_lifecycle_and_no_secret_leaks(server: ApiServer) -> None:
    boss = admin(server)
    owner, alice = person(server, "alice")
    friend, bob = person(server, "bob")
    outsider, carol = person(server, "carol")
    project = project_with(server, boss, {owner: "admin", friend: "member"})
    first, second = f"first-{uuid.uuid4().hex}", f"second-{uuid.uuid4().hex}"
    private, public = _ssh_key()
    seed = private.splitlines()[-3][-40:]  # the private half of the key, base64
    assert seed not in public
    third = f"third-{uuid.uuid4().hex}"
    cid, ssh_cid = f"tok-{_suffix()}", f"ssh-{_suffix()}"

    r = alice.post("/credentials", json={"id": cid, "secret": {"token": first}})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["owner"] == owner and made["version"] == 1
    assert made["path"] == f"users/{owner}/{cid}" and made["may_share"] and made["may_delete"]
    assert made["bindings"] == [] and made["shared_with"] == []
    r = alice.post("/credentials", json={"id": cid, "secret": {"token": "x"}})
    assert r.status_code == 409 and "exists" in r.json()["error"]["message"]
    assert alice.post("/credentials", json={"id": "c", "secret": {}}).status_code == 422

    # Unshared: nobody else may read, test, share, bind or delete it.
    assert cid not in [c["id"] for c in bob.get("/credentials").json()]
    refused(server, bob.get(f"/credentials/{cid}"), friend, "credential.read")
    refused(server, carol.post(f"/credentials/{cid}/test"), outsider, "credential.read")
    refused(server, bob.post(f"/credentials/{cid}/share", json={"with": friend}), friend,
            "credential.share")

    # Share with bob as a reader: he reads and tests it, but may not bind or rotate it.
    r = alice.post(f"/credentials/{cid}/share", json={"with": friend})
    assert r.status_code == 200, r.text
    assert r.json()["shared_with"] == [{"who": friend, "role": "reader"}]
    r = alice.post(f"/credentials/{cid}/share", json={"with": "nobody-here"})
    assert r.status_code == 400 and "no user" in r.json()["error"]["message"]
    got = bob.get(f"/credentials/{cid}").json()
    assert (got["may_write"], got["may_share"], got["shared_with"]) == (False, False, None)
    r = bob.post(f"/credentials/{cid}/test")
    assert r.status_code == 200 and r.json()["ok"] and r.json()["keys"] == ["token"], r.text

    # Bind it to a registered compute resource (only owner and writers may).
    name = f"hpc-{_suffix()}"
    r = alice.post("/resources/compute", json={"name": name, "kind": "slurm",
                                                "project": project,
                                                "fields": {"submit_via": "local"}})
    assert r.status_code == 201, r.text
    refused(server, bob.post(f"/credentials/{cid}/bind", json={"resource": name}), friend,
            "credential.bind")
    r = alice.post(f"/credentials/{cid}/bind", json={"resource": "not-registered"})
    assert r.status_code == 404
    r = alice.post(f"/credentials/{cid}/bind", json={"resource": name})
    assert r.status_code == 200 and r.json()["bindings"] == [f"compute_resource:{name}"]
    r = alice.post(f"/credentials/{cid}/unbind", json={"resource": name})
    assert r.status_code == 200 and r.json()["bindings"] == []
    assert alice.post(f"/credentials/{cid}/bind", json={"resource": name}).status_code == 200

    # Rotate: a reader may not; the owner writes version 2, and the test still passes.
    refused(server, bob.post(f"/credentials/{cid}/rotate", json={"secret": {"token": "z"}}),
            friend, "credential.write")
    r = alice.post(f"/credentials/{cid}/rotate", json={"secret": {"token": second}})
    assert r.status_code == 200 and r.json() == {"id": cid, "version": 2}, r.text
    assert bob.post(f"/credentials/{cid}/test").json()["ok"]

    # An SSH key bound at registration: the host test reads it, fails to connect, says why.
    r = alice.post("/credentials", json={"id": ssh_cid, "secret": {"private_key": private,
                                                             "note": third}})
    assert r.status_code == 201, r.text
    host = f"bm-{_suffix()}"
    r = alice.post("/resources/compute", json={
        "name": host, "kind": "baremetal", "project": project, "credential": ssh_cid,
        "fields": {"host": "127.0.0.1", "port": free_port(), "username": "nobody",
                   "host_key": public}})
    assert r.status_code == 201 and r.json()["credential"] == ssh_cid, r.text
    refused(server, bob.post(f"/resources/compute/{host}/test"), friend, "credential.read")
    r = alice.post(f"/resources/compute/{host}/test")
    assert r.status_code == 200, r.text
    probe = r.json()
    assert probe["status"] == "failed" and "cannot reach nobody@127.0.0.1" in probe["detail"]
    assert probe["checked"][0] == f"read its credential {ssh_cid} from OpenBao as {owner}"
    assert probe["checked"][-1].startswith("SSH to nobody@127.0.0.1")
    assert probe["seconds"] < 15
    assert alice.delete(f"/resources/compute/{host}").status_code == 204
    assert alice.delete(f"/credentials/{ssh_cid}").status_code == 204

    # Delete: owner only; then it is gone for everyone, bindings included.
    refused(server, bob.delete(f"/credentials/{cid}"), friend, "credential.delete")
    r = alice.delete(f"/credentials/{cid}")
    assert r.status_code == 204, r.text
    assert alice.get(f"/credentials/{cid}").status_code == 404
    assert bob.post(f"/credentials/{cid}/test").status_code == 404
    assert cid not in [c["id"] for c in alice.get("/credentials").json()]
    assert alice.post("/credentials", json={"id": cid, "secret": {"t": "v"}}).status_code == 201
    assert alice.get(f"/credentials/{cid}").json()["bindings"] == []
    assert alice.delete(f"/resources/compute/{name}").status_code == 204

    # No secret value anywhere: responses, the audit trail, the database, the server's log.
    secrets = [first, second, third, seed, private]
    assert len(BODIES) > 30
    for body in BODIES:
        assert not any(s in body for s in secrets), body[:300]
    store = Store(f"sqlite:///{server.home}/airavata.db")
    try:
        trail = store.audit.trail(limit=100_000)
    finally:
        store.close()
    actions = {r.action for r in trail}
    assert {"credential.create", "credential.share", "credential.bind", "credential.unbind",
            "credential.rotate", "credential.read", "credential.delete",
            "resource.test"} <= actions
    for row in trail:
        text = f"{row.actor} {row.action} {row.object} {row.detail}"
        assert not any(s in text for s in secrets), text
    db = all_bytes(server.home.glob("airavata.db*"))
    log = server.log.read_bytes()
    assert f"/credentials/{cid}/rotate".encode() in log  # the log has the requests
    for s in secrets:
        assert s.encode() not in db and s.encode() not in log
