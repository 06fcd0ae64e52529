"""`airavata trace CORRELATION-ID` after a real action (a credential created through the CLI,
against real OpenBao, embedded SpiceDB and a real Prefect server): its audit rows, its events
read back from Prefect's events API and the log lines that name its id, in one timeline; and
one clear line for every bad input."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from airavata_prefect.adapters import prefect_events
from airavata_prefect.api import cli_trace
from airavata_prefect.usecases.correlation import correlated
from tests.cli_inproc import Ran
from tests.conftest import _free_port
from tests.test_cli import cli, write

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAB3NzaC1yc2EAAAADAQABAAABAQC7trace\n-----END"


@pytest.fixture()
def bao_env(openbao_dev: tuple[str, str], home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = openbao_dev
    monkeypatch.setenv("AIRAVATA_OPENBAO_URL", url)
    monkeypatch.setenv("AIRAVATA_OPENBAO_TOKEN", root)
    monkeypatch.setenv("AIRAVATA_USER", "alice")


def one_line_error(r: Ran, code: int = 2) -> str:
    assert r.returncode == code, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr.strip()


def _prefect_log(prefect_api: str, message: str) -> None:
    """A run log line of no run (the API keeps it): no run the request touched."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import LogCreate

    with get_client(sync_client=True) as client:
        client.request("POST", "/logs/", json=[LogCreate(
            name="prefect.flow_runs", level=20, message=message,
            timestamp=datetime.now(UTC)).model_dump(mode="json")])


@pytest.mark.prefect
def test_trace_of_a_credential_created_through_the_cli(bao_env: None, prefect_api: str,
                                                       home: Path, tmp_path: Path) -> None:
    key = write(tmp_path, KEY, "id_ed25519")
    with correlated() as asked:  # the id this one command runs under (one per process)
        r = cli("credential", "create", "trace-ssh", "--from-file", f"private_key={key}")
    assert r.returncode == 0, r.stderr
    # Its id, as a user finds it: in the audit trail.
    rows = [row for row in json.loads(cli("audit", "--json").stdout)
            if row["action"] == "credential.create"]
    assert [(row["object"], row["outcome"]) for row in rows] == [
        ("credential:trace-ssh", "ok")]
    cid = rows[0]["correlation_id"]
    assert cid == asked
    # Log lines that name it: the REST API's (its format puts the id in every line); and one
    # in the Prefect API of no run the request touched, which is not searched. The Prefect
    # server's own log (it echoes queries) is not read either.
    (home / "server").mkdir(parents=True, exist_ok=True)
    (home / "server" / "api.log").write_text(
        "2020-01-01 00:00:00,000 INFO [0000000000000000] airavata.api: GET /health 200\n"
        f"2020-01-01 00:00:01,250 INFO [{cid}] airavata.api: POST /credentials 201\n")
    _prefect_log(prefect_api, f"bundle b-1 of experiment e-1 (correlation id {cid})")
    (home / "server" / "prefect.log").write_text(f"[parameters: {{'lower_1': '{cid}'}}]\n")

    assert prefect_events.flush(30)
    deadline = time.monotonic() + 60
    while True:
        t = cli("trace", cid, "--json")
        assert t.returncode == 0, t.stderr
        doc = json.loads(t.stdout)
        if any(line["source"] == "event" for line in doc["lines"]) or \
                time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert doc["correlation_id"] == cid and doc["notes"] == [] and t.stderr == ""
    got = [(line["source"], line["what"], line["subject"], line["actor"], line["outcome"])
           for line in doc["lines"]]
    assert got == [
        ("log", "INFO", "api.log", None, None),  # 2020: the oldest
        ("audit", "credential.create", "credential:trace-ssh", "alice", "ok"),
        ("event", "credential.created", "credential:trace-ssh", "alice", None),
    ], doc["lines"]
    assert doc["lines"][0]["detail"] == "airavata.api: POST /credentials 201"
    written = datetime(2020, 1, 1, 0, 0, 1, 250000).astimezone(UTC)  # local time, in UTC
    assert doc["lines"][0]["at"] == written.isoformat()
    assert doc["lines"][2]["detail"] == "version=1"
    assert KEY[40:60] not in t.stdout  # the secret is in no source

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli_trace.out, "_width", 200)  # a terminal wide enough to keep rows whole
        table = cli("trace", cid)
    assert table.returncode == 0 and table.stderr == ""
    rows = [[cell.strip() for cell in line.split("│")[1:-1]]
            for line in table.stdout.splitlines() if line.startswith("│")]
    assert [row[1:5] for row in rows] == [
        ["log", "INFO", "api.log", ""],
        ["audit", "credential.create (ok)", "credential:trace-ssh", "alice"],
        ["event", "credential.created", "credential:trace-ssh", "alice"]]
    assert rows[0][5] == "airavata.api: POST /credentials 201"
    assert rows[0][0] == f"{written:%Y-%m-%d %H:%M:%S}.250"  # two days: dates shown
    assert f"correlation id {cid}: 1 audit rows, 1 events, 1 log lines (UTC)" in table.stdout

    # Prefect unreachable: what is here is still shown, with one line saying what is not.
    dead = f"http://127.0.0.1:{_free_port()}/api"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_API_URL", dead)
        partial = cli("trace", cid, "--json")
        assert partial.returncode == 0, partial.stderr
        assert [line["source"] for line in json.loads(partial.stdout)["lines"]] == [
            "log", "audit"]
        assert partial.stderr.strip().splitlines() == [
            f"warning: events and run logs not read: the Prefect API at {dead} does not "
            "answer (ConnectError: [Errno 111] Connection refused)"]
        unknown = cli("trace", "0123456789abcdef")
        assert one_line_error(unknown) == (
            "error: nothing carries correlation id 0123456789abcdef: no audit row, event or "
            f"log line; events and run logs not read: the Prefect API at {dead} does not "
            "answer (ConnectError: [Errno 111] Connection refused)")


@pytest.mark.prefect
def test_bad_correlation_ids_are_one_line(prefect_api: str, home: Path) -> None:
    assert one_line_error(cli("trace", "no/such id")) == (
        "error: 'no/such id' is not a correlation id (8 to 64 letters, digits, '.', '_' or "
        "'-'; audit rows, API errors and X-Correlation-ID headers carry them)")
    assert "is not a correlation id" in one_line_error(cli("trace", "short"))
    assert one_line_error(cli("trace", "feedfacefeedface")) == (
        "error: nothing carries correlation id feedfacefeedface: no audit row, event or log "
        "line")


def test_through_the_rest_api_a_trace_is_the_callers_own(home: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A correlation id is whoever sends a request's choice: a user sees only their own audit
    rows and events under it, never another's, and no log lines."""
    from tests.api_harness import api_server

    monkeypatch.delenv("AIRAVATA_USER", raising=False)
    with api_server(home) as api:
        cid = "shared-trace-0042"
        with api.add_user("alice") as alice, api.add_user("mallory") as mallory:
            for who in (alice, mallory):  # both refused (audited), under the same id
                r = who.post("/users/admin/disable", headers={"X-Correlation-ID": cid})
                assert r.status_code == 403, r.text
            r = alice.get(f"/users/me/trace/{cid}")
            assert r.status_code == 200, r.text
            doc = r.json()
            assert doc["correlation_id"] == cid
            assert [(x["source"], x["actor"], x["outcome"]) for x in doc["lines"]] == [
                ("audit", "alice", "denied")]
            with api.as_admin() as admin:
                r = admin.get(f"/users/me/trace/{cid}")
            assert r.status_code == 404, r.text
            assert f"no audit row or event of yours carries correlation id {cid}" in (
                r.json()["error"]["message"])
            r = alice.get("/users/me/trace/no%20spaces%20here")
            assert r.status_code in (400, 422), r.text
            assert "not a correlation id" in r.text


@pytest.mark.prefect
def test_trace_of_an_experiment_run_through_its_deployment(home: Path, tmp_path: Path,
                                                           prefect_api: str) -> None:
    """Submit, its run's events (acting for its owner under the submit's id) and its flow
    run's own log line naming the id, read from that run's logs (no server text search)."""
    from airavata_prefect.adapters.store import Store
    from tests.conftest import experiment_stack

    spec = tmp_path / "traced.yml"
    spec.write_text("name: traced\ntasks:\n  t: {command: 'true', task_inputs: {X: 1..2}}\n")
    with experiment_stack(home, "door-trace") as stack:
        r = stack.airavata("experiment", "run", str(spec), "--deployment", "door-trace",
                           "--watch")
        assert r.returncode == 0, r.stdout + r.stderr
        store = Store(f"sqlite:///{home / 'airavata.db'}")
        (row,) = [a for a in store.audit.trail(actor="alice", limit=50)
                  if a.action == "scheduler.queue.submit"]
        store.close()
        cid = row.correlation_id
        deadline = time.monotonic() + 60
        while True:
            t = stack.airavata("trace", cid, "--json")
            assert t.returncode == 0, t.stderr
            lines = json.loads(t.stdout)["lines"]
            kinds = {(x["source"], x["what"]) for x in lines}
            if {("event", "experiment.completed"), ("log", "INFO")} <= kinds or \
                    time.monotonic() > deadline:
                break
            time.sleep(1)
    assert ("audit", "scheduler.queue.submit") in kinds, lines
    assert {("event", "experiment.submitted"), ("event", "experiment.running"),
            ("event", "experiment.completed"), ("event", "instance.completed")} <= kinds, lines
    runs = [x for x in lines if x["source"] == "log" and x["subject"].startswith("flow-run:")]
    assert runs and all(cid in x["detail"] for x in runs), lines
    assert {x["actor"] for x in lines if x["source"] == "event"} == {"alice"}
