"""`airavata resource ...` and `airavata credential ...` in both modes, against a real Prefect
server, OpenBao and the embedded SpiceDB: local mode (the store, as the OS login) and server
mode (a real API server; the CLI process never opens the store nor reaches any other port)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from tests.api_harness import api_server
from tests.test_cli import cli
from tests.test_cli_server_mode import _cli

pytestmark = pytest.mark.prefect

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UO"
SECRET = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-key-but-secret-4417\n"
Run = Callable[..., CompletedProcess[str]]


def _json(r: CompletedProcess[str]) -> object:
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def _one_line(r: CompletedProcess[str], code: int) -> str:
    assert r.returncode == code, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr.strip()


def _walk(run: Run, project: str) -> list[str]:
    """The same walk through every resource command in either mode; all output, to search
    for the secret afterwards."""
    seen: list[str] = []

    def go(*args: str) -> CompletedProcess[str]:
        r = run(*args)
        seen.append(r.stdout + r.stderr)
        return r

    cid, name, store = (f"key-{uuid.uuid4().hex[:6]}", f"bm-{uuid.uuid4().hex[:6]}",
                        f"st-{uuid.uuid4().hex[:6]}")
    # Projects carry a description, changed by their managers.
    shown = _json(go("project", "update", project, "-d", "Protein folding", "--json"))
    assert isinstance(shown, dict) and shown["description"] == "Protein folding"
    shown = _json(go("project", "get", project, "--json"))
    assert isinstance(shown, dict) and shown["description"] == "Protein folding"
    assert project in _json(go("project", "list", "--json"))  # type: ignore[operator]
    made = _json(go("resource", "credential", "create", cid, "--from-env", "private_key=SSH_KEY",
                    "--json"))
    assert isinstance(made, dict) and made["version"] == 1 and made["owner"]
    listed = _json(go("credential", "list", "--json"))
    assert isinstance(listed, list) and cid in [c["id"] for c in listed]

    # A bare-metal host nothing listens on: registered with the credential, then tested.
    r = go("resource", "compute", "create", name, "--type", "baremetal", "--set",
           "host=127.0.0.1", "--set", "port=1", "--set", "username=nobody", "--set",
           f"host_key={HOST_KEY}", "--credential", cid, "--project", project)
    assert r.returncode == 0 and f"prefect worker start --pool {name} --type" in r.stdout, \
        r.stdout + r.stderr
    got = _json(go("resource", "compute", "get", name, "--json"))
    assert isinstance(got, dict)
    assert (got["kind"], got["project"], got["credential"], got["fields"]["port"]) == \
        ("baremetal", project, cid, 1)
    again = go("resource", "compute", "create", name, "--type", "baremetal", "--set",
               "host=127.0.0.1", "--set", "username=x", "--set", f"host_key={HOST_KEY}",
               "--project", project)
    assert "exists: use --replace" in _one_line(again, 2)

    # update changes only what it names; the rest, the credential included, stays.
    got = _json(go("resource", "compute", "update", name, "--set", "port=2", "--json"))
    assert isinstance(got, dict)
    assert (got["fields"]["port"], got["fields"]["host"], got["credential"]) == \
        (2, "127.0.0.1", cid)
    assert "have no field 'portt'" in _one_line(
        go("resource", "compute", "update", name, "--set", "portt=3"), 2)

    got = _json(go("resource", "compute", "update", name, "--set", "mode=pilot", "--json"))
    assert isinstance(got, dict) and got["fields"]["mode"] == "pilot"

    rows = _json(go("resource", "compute", "list", "--json"))
    assert isinstance(rows, list) and rows[0]["name"] == "local"
    assert name in [r["name"] for r in rows]
    status = _json(go("resource", "status", name, "--json"))
    assert isinstance(status, list) and len(status) == 1
    assert (status[0]["work_pool"], status[0]["workers"], status[0]["queued"],
            status[0]["ready"], status[0]["mode"], status[0]["agents"]) == (
        name, [], 0, False, "pilot", 0)
    assert status[0]["pool_status"] in ("NOT_READY", "READY")
    every = _json(go("resource", "status", "--json"))
    assert isinstance(every, list) and {"local", name} <= {s["name"] for s in every}

    probe = go("resource", "test", name, "--json")
    assert probe.returncode == 1, probe.stdout + probe.stderr  # nothing listens there
    result = json.loads(probe.stdout)
    assert result["status"] == "failed" and result["seconds"] < 15 and result["checked"]

    # Credentials: bound, unbound, tested; then the resource and the credential go.
    cred = _json(go("resource", "unbind-credential", cid, name, "--json"))
    assert isinstance(cred, dict) and cred["bindings"] in ([], None)
    cred = _json(go("resource", "bind-credential", cid, name, "--json"))
    assert isinstance(cred, dict) and cred["bindings"] in ([f"compute_resource:{name}"], None)
    assert "no compute resource 'nowhere'" in _one_line(
        go("resource", "bind-credential", cid, "nowhere"), 2)
    tested = _json(go("resource", "test-credential", cid, "--json"))
    assert tested == {"ok": True, "keys": ["private_key"], "detail": tested["detail"]}

    made = go("resource", "storage", "create", store, "--type", "local", "--set",
              "path=/srv/data", "--project", project)
    assert made.returncode == 0, made.stderr
    got = _json(go("resource", "storage", "update", store, "--set", "path=/srv/other",
                   "--json"))
    assert isinstance(got, dict) and got["fields"]["path"] == "/srv/other"
    assert go("resource", "storage", "delete", store).returncode == 0
    assert go("resource", "compute", "delete", name).returncode == 0
    assert f"no compute resource {name!r}" in _one_line(
        go("resource", "compute", "get", name), 2)
    assert go("resource", "credential", "delete", cid).returncode == 0
    assert f"{cid}" in _one_line(go("credential", "get", cid), 2)
    return seen


def test_resource_commands_in_local_mode(prefect_api: str, home: Path,
                                         openbao_dev: tuple[str, str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = openbao_dev
    monkeypatch.setenv("AIRAVATA_OPENBAO_URL", url)
    monkeypatch.setenv("AIRAVATA_OPENBAO_TOKEN", root)
    monkeypatch.setenv("SSH_KEY", SECRET)
    made = cli("project", "create", "lab", "--description", "first")
    assert made.returncode == 0, made.stderr
    seen = _walk(cli, "lab")
    assert not any("not-a-key-but-secret" in s for s in seen)


def test_resource_and_plan_commands_in_server_mode(prefect_api: str, openbao_dev: tuple[str, str],
                                          tmp_path: Path) -> None:
    url, root = openbao_dev
    with api_server(tmp_path / "server", extra_env={"AIRAVATA_OPENBAO_URL": url,
                                                    "AIRAVATA_OPENBAO_TOKEN": root}) as api:
        api.add_user("carol", "carol-password-1").close()
        with api.client(api.tokens["carol"]) as carol:
            assert carol.post("/projects", json={"name": "carolslab"}).status_code == 201
        violations = tmp_path / "violations.log"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AIRAVATA_", "PREFECT_API"))}
        env.update(AIRAVATA_HOME=str(tmp_path / "cli-home"), SSH_KEY=SECRET,
                   AIRAVATA_TEST_VIOLATIONS=str(violations),
                   AIRAVATA_TEST_API_PORT=api.base.rsplit(":", 1)[1])
        assert _cli(env, "config", "set", "server", api.base).returncode == 0
        r = _cli(env, "auth", "login", "-u", "carol", "--password-stdin",
                 stdin="carol-password-1\n")
        assert r.returncode == 0, r.stderr
        seen = _walk(lambda *args: _cli(env, *args), "carolslab")
        # Planning: the server plans for who signed in, on what they may use; nothing stored.
        sweep = tmp_path / "sweep.yml"
        sweep.write_text("name: p\ntasks:\n  t:\n    command: 'true'\n"
                         "    task_inputs: {I: '1..4'}\n")
        plan = _json(_cli(env, "experiment", "plan", str(sweep), "--json"))
        assert isinstance(plan, dict) and plan["status"] in ("optimal", "feasible")
        assert sum(a["count"] for a in plan["assignments"]) == 4
        gpu = tmp_path / "gpu.yml"
        gpu.write_text("tasks:\n  g: {command: x, resources: {compute: {gpu: 64}}}\n")
        r = _cli(env, "experiment", "plan", str(gpu), "--json")
        assert r.returncode == 3 and json.loads(r.stdout)["status"] == "infeasible", r.stderr
        assert "--user: in server mode" in _one_line(
            _cli(env, "experiment", "plan", str(sweep), "--user", "bob"), 2)
        assert _cli(env, "experiment", "list", "--json").stdout.strip() == "[]"
        assert "no experiment" in _one_line(_cli(env, "experiment", "bundles", "nope"), 2)
        assert "no experiment" in _one_line(
            _cli(env, "experiment", "events", "nope", "t[0]"), 2)

        # Server mode keeps credentials at the owner's own path.
        r = _cli(env, "credential", "create", "x", "--from-env", "k=SSH_KEY", "--path", "a/b")
        assert "--path and --mount are for local mode" in _one_line(r, 2)
        assert not violations.exists(), violations.read_text()
        assert not any("not-a-key-but-secret" in s for s in seen)
        assert "not-a-key-but-secret" not in api.log.read_text()
