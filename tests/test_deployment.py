"""Every door runs experiments as flow runs of a deployment, executed by real Prefect workers:
`prefect deployment run`, `airavata experiment run`, schedules, Prefect's API with an
idempotency key; a killed run resumes by itself; service accounts stay in their project."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from airavata_prefect.adapters.store import Store
from tests.conftest import Stack, experiment_stack

pytestmark = pytest.mark.prefect

HELLO = """\
name: hello
parameters:
  WHO: {type: string, default: world}
tasks:
  greet:
    command: 'echo "hello $WHO $I" > "$OUT"'
    task_inputs: {I: 1..3}
    task_outputs: {OUT: out.txt}
  join:
    command: 'cat "$IN"'
    foreach: [greet]
    task_inputs: {IN: "${greet.OUT}"}
"""


def _api() -> str:
    return os.environ["PREFECT_API_URL"]


def _wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {check()!r}"[:3000])


def _flow_runs(**flt: Any) -> list[dict[str, Any]]:
    return httpx.post(f"{_api()}/flow_runs/filter", json={"flow_runs": flt,
                                                          "sort": "EXPECTED_START_TIME_ASC"}
                      ).json()


def _runs_of(stack: Stack) -> list[dict[str, Any]]:
    dep = httpx.get(f"{_api()}/deployments/name/run-experiment/{stack.deployment}").json()
    runs = httpx.post(f"{_api()}/flow_runs/filter", json={
        "deployments": {"id": {"any_": [dep["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"},
        timeout=60).json()
    assert isinstance(runs, list), runs
    return runs


def _store(stack: Stack) -> Store:
    return Store(stack.env.get("AIRAVATA_DATABASE_URL")
                 or f"sqlite:///{stack.home / 'airavata.db'}")


def _final(flow_run_id: str, timeout: float = 180) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        run = httpx.get(f"{_api()}/flow_runs/{flow_run_id}").json()
        return run if run["state"]["type"] in ("COMPLETED", "FAILED", "CANCELLED",
                                               "CRASHED") else None
    return _wait(done, timeout, f"flow run {flow_run_id} to end")


def test_prefect_deployment_run_with_a_spec_runs_the_experiment(home: Path, tmp_path: Path,
                                                                prefect_api: str) -> None:
    spec = tmp_path / "hello.yml"
    spec.write_text(HELLO)
    with experiment_stack(home, "door-cli") as stack:
        # The YAML text itself as the parameter (Prefect's --param takes one line: JSON here).
        r = stack.prefect("deployment", "run", "run-experiment/door-cli", "--params",
                          json.dumps({"spec": HELLO, "params": {"WHO": "prefect"}}))
        assert r.returncode == 0, r.stdout + r.stderr
        # And a path the worker can read.
        r2 = stack.prefect("deployment", "run", "run-experiment/door-cli", "--param",
                           f"spec={spec}")
        assert r2.returncode == 0, r2.stdout + r2.stderr
        runs = _wait(lambda: len(_runs_of(stack)) == 2 and _runs_of(stack), 30, "two runs")
        ended = [_final(r["id"]) for r in runs]
        assert [r["state"]["type"] for r in ended] == ["COMPLETED", "COMPLETED"]
        store = _store(stack)
        exps = sorted(store.experiments.list(), key=lambda e: e.created_at)
        assert [(e.name, e.status, e.params, e.owner, e.project) for e in exps] == [
            ("hello", "COMPLETED", {"WHO": "prefect"}, "deployment-door-cli", "default"),
            ("hello", "COMPLETED", {}, "deployment-door-cli", "default")]
        out = Path(exps[0].workdir) / "greet" / "2" / "out.txt"
        assert out.read_text() == "hello prefect 3\n"
        # Named and tagged after the experiment; its task runs and their edges in Prefect.
        first = ended[0]
        assert first["name"] == f"hello-{exps[0].short_id}"
        assert {"project:default", "user:deployment-door-cli",
                f"experiment:{exps[0].id}"} <= set(first["tags"])
        tasks = httpx.post(f"{_api()}/task_runs/filter", json={
            "flow_runs": {"id": {"any_": [first["id"]]}}}).json()
        by_name = {t["name"]: t for t in tasks}
        assert set(by_name) == {"greet[0]", "greet[1]", "greet[2]", "join[0]", "join[1]",
                                "join[2]"}
        assert all(t["state"]["type"] == "COMPLETED" for t in tasks)
        upstream = [i["id"] for i in by_name["join[2]"]["task_inputs"]["wait_for"]]
        assert upstream == [by_name["greet[2]"]["id"]]
        store.close()


def test_bad_specs_end_the_run_failed_with_one_clear_message(home: Path,
                                                             prefect_api: str) -> None:
    with experiment_stack(home, "door-bad") as stack:
        cases = {"tasks:\n  a: {command: 'true', foreach: [nope]}\n":
                 "spec:2:34: error: tasks.a.foreach[0]: unknown task 'nope'",
                 "/no/such/experiment.yml": "no such file",
                 "": "give `spec`"}
        for spec in cases:
            r = stack.prefect("deployment", "run", "run-experiment/door-bad", "--params",
                              json.dumps({"spec": spec}))
            assert r.returncode == 0, r.stderr
        runs = _wait(lambda: len(_runs_of(stack)) == 3 and _runs_of(stack), 30, "runs")
        messages = sorted(_final(r["id"])["state"]["message"] for r in runs)
        for expected in cases.values():
            assert any(expected in m for m in messages), (expected, messages)
        assert all("Traceback" not in m for m in messages)
        store = _store(stack)
        assert store.experiments.list() == []  # nothing stored from bad input
        store.close()


def test_the_same_idempotency_key_twice_starts_one_experiment(home: Path,
                                                              prefect_api: str) -> None:
    with experiment_stack(home, "door-api") as stack:
        dep = httpx.get(f"{_api()}/deployments/name/run-experiment/door-api").json()
        body = {"parameters": {"spec": HELLO}, "idempotency_key": "nightly-2026-12-01"}
        first = httpx.post(f"{_api()}/deployments/{dep['id']}/create_flow_run", json=body)
        second = httpx.post(f"{_api()}/deployments/{dep['id']}/create_flow_run", json=body)
        assert first.status_code in (200, 201) and second.status_code in (200, 201)
        assert first.json()["id"] == second.json()["id"]
        assert _final(first.json()["id"])["state"]["type"] == "COMPLETED"
        time.sleep(2)
        store = _store(stack)
        assert [e.status for e in store.experiments.list()] == ["COMPLETED"]
        store.close()


@pytest.mark.timeout(480)
def test_two_schedules_fire_with_their_own_parameters(home: Path, tmp_path: Path,
                                                      prefect_api: str) -> None:
    spec = tmp_path / "hello.yml"
    spec.write_text(HELLO)
    with experiment_stack(home, "door-sched") as stack:
        for who in ("morning", "evening"):
            r = stack.airavata("deployment", "schedule", "door-sched", who, "--spec", str(spec),
                               "--interval", "30", "-p", f"WHO={who}")
            assert r.returncode == 0, r.stderr
        listed = json.loads(stack.airavata("deployment", "schedules", "door-sched",
                                           "--json").stdout)
        assert {(s["slug"], s["params"]["WHO"], s["active"]) for s in listed} == {
            ("morning", "morning", True), ("evening", "evening", True)}
        store = _store(stack)

        def both() -> bool:
            done = {e.params.get("WHO") for e in store.experiments.list(100)
                    if e.status == "COMPLETED"}
            return {"morning", "evening"} <= done
        _wait(both, 240, "both schedules to fire and complete")
        for who in ("morning", "evening"):
            assert stack.airavata("deployment", "pause-schedule", "door-sched",
                                  who).returncode == 0
        listed = json.loads(stack.airavata("deployment", "schedules", "door-sched",
                                           "--json").stdout)
        assert {s["active"] for s in listed} == {False}
        bad = stack.airavata("deployment", "schedule", "door-sched", "x", "--spec", str(spec),
                             "--cron", "not a cron")
        assert bad.returncode == 2 and "schedule" in bad.stderr and "Traceback" not in bad.stderr
        store.close()


def test_a_killed_run_resumes_by_itself(home: Path, tmp_path: Path, prefect_api: str) -> None:
    """SIGKILL of the process running 20 x `sleep 1`: what it ran dies with it (its spawning
    process kills them when its pipe closes), a new run takes the experiment over, and only
    instances that had started before the kill run again."""
    log = tmp_path / "executions.log"
    starts = tmp_path / "starts.log"
    spec = tmp_path / "naps.yml"
    spec.write_text(f"""\
name: naps
tasks:
  nap:
    command: 'echo "$I" >> {starts}; sleep 1; echo "$I" >> {log}'
    task_inputs: {{I: 1..20}}
""")
    with experiment_stack(home, "door-crash") as stack:
        r = stack.airavata("experiment", "run", str(spec), "--deployment", "door-crash")
        assert r.returncode == 0, r.stderr
        _wait(lambda: log.exists() and len(log.read_text().split()) >= 4, 60, "4 done")
        engines = [int(p) for p in os.popen("pgrep -f prefect.engine").read().split()]
        assert engines, "no flow-run process to kill"
        for pid in engines:
            os.kill(pid, signal.SIGKILL)
        started = {f"nap[{int(i) - 1}]" for i in starts.read_text().split()}
        store = _store(stack)
        exp = store.experiments.list()[0]
        done = _wait(lambda: store.experiments.get(exp.id).status in (
            "COMPLETED", "FAILED", "CANCELED") and store.experiments.get(exp.id), 120,
            "the experiment to end")
        assert done.status == "COMPLETED" and done.resumes == 1
        lines = log.read_text().split()
        counts = {i: lines.count(str(i)) for i in range(1, 21)}
        twice = {f"nap[{i - 1}]" for i, n in counts.items() if n == 2}
        # Run again: what the store did not know had ended when the process died (the running
        # ones, and any whose completion was not yet written: at-least-once, never lost). Only
        # instances that had started before the kill run twice; those the store knew were
        # running say so in their events (one whose RUNNING was not yet written reruns as if
        # it had never started, so it need not).
        again = {e.instance_id for e in store.tasks.events(exp.id)
                 if e.message and "orchestrator stopped" in e.message}
        assert set(counts.values()) <= {1, 2} and (twice or again), (counts, again)
        assert twice <= started and again <= started, (twice, again, started)
        assert len(twice) <= 4 and len(again) <= 4  # two slots, plus one unwritten batch
        # The rerun ones used no retry: their attempt is still 0.
        assert {t.attempt for t in store.tasks.list(exp.id)} == {0}
        runs = [_final(r["id"]) for r in _runs_of(stack)]
        assert sorted(r["state"]["type"] for r in runs) == ["COMPLETED", "CRASHED"]
        assert all(f"experiment:{exp.id}" in r["tags"] for r in runs)
        store.close()


def test_service_accounts_stay_in_their_project(home: Path, tmp_path: Path,
                                                prefect_api: str) -> None:
    with experiment_stack(home, "door-lab", project="lab") as stack:
        r = stack.prefect("deployment", "run", "run-experiment/door-lab", "--params",
                          json.dumps({"spec": HELLO, "project": "other"}))
        assert r.returncode == 0, r.stderr
        run = _final(_wait(lambda: _runs_of(stack), 30, "a run")[0]["id"])
        assert run["state"]["type"] == "FAILED"
        assert "runs experiments in project lab only, not other" in run["state"]["message"]
        # Taken out of its project, the account is refused; both refusals are audited.
        out = stack.airavata("project", "remove-member", "lab", "deployment-door-lab")
        assert out.returncode == 0, out.stderr
        r = stack.prefect("deployment", "run", "run-experiment/door-lab", "--params",
                          json.dumps({"spec": HELLO}))
        assert r.returncode == 0, r.stderr
        second = _wait(lambda: len(_runs_of(stack)) == 2 and _runs_of(stack)[1], 30, "run 2")
        second = _final(second["id"])
        assert second["state"]["type"] == "FAILED"
        assert "permission denied" in second["state"]["message"]
        store = _store(stack)
        assert store.experiments.list() == []
        denied = [a for a in store.audit.trail(limit=100) if a.outcome == "denied"]
        details = " ".join(a.detail or "" for a in denied)
        assert run["id"] in details and second["id"] in details
        assert "run-experiment/door-lab" in details
        store.close()


def test_cli_run_pause_resume_retry_resubmit(home: Path, tmp_path: Path,
                                             prefect_api: str) -> None:
    flaky = tmp_path / "flaky.yml"
    marker = tmp_path / "second-time"
    flaky.write_text(f"""\
name: flaky
tasks:
  work:
    command: 'sleep 3; [ "$I" != 3 ] || [ -e {marker} ]'
    task_inputs: {{I: 1..10}}
  after: {{command: 'true', depends_on: [work]}}
""")
    with experiment_stack(home, "door-life") as stack:
        r = stack.airavata("experiment", "run", str(flaky), "--deployment", "door-life")
        assert r.returncode == 0, r.stderr
        exp_id = r.stdout.split()[1]
        store = _store(stack)
        _wait(lambda: any(t.state == "COMPLETED" for t in store.tasks.list(exp_id)), 60,
              "a first task")
        assert stack.airavata("experiment", "pause", exp_id).returncode == 0
        time.sleep(5)  # the running ones finish; no new one starts
        frozen = {t.instance_id: t.state for t in store.tasks.list(exp_id)}
        time.sleep(3)
        assert {t.instance_id: t.state for t in store.tasks.list(exp_id)} == frozen
        assert "RUNNING" not in frozen.values()
        assert stack.airavata("experiment", "resume", exp_id).returncode == 0
        _wait(lambda: store.experiments.get(exp_id).status == "FAILED", 90, "it to fail")
        states = {t.instance_id: t.state for t in store.tasks.list(exp_id)}
        assert states["work[2]"] == "FAILED" and states["after[0]"] == "UPSTREAM_FAILED"
        # A running experiment cannot be retried; an ended one can't be paused.
        assert stack.airavata("experiment", "pause", exp_id).returncode == 2
        marker.touch()
        r = stack.airavata("experiment", "retry", exp_id, "--deployment", "door-life",
                           "--watch")
        assert r.returncode == 0, r.stdout + r.stderr
        assert {t.state for t in store.tasks.list(exp_id)} == {"COMPLETED"}
        r = stack.airavata("experiment", "retry", exp_id, "--deployment", "door-life")
        assert r.returncode == 2 and "nothing to retry" in r.stderr
        r = stack.airavata("experiment", "resubmit", exp_id, "--deployment", "door-life",
                           "--watch")
        assert r.returncode == 0, r.stdout + r.stderr
        assert len(store.experiments.list()) == 2
        actions = [a.action for a in store.audit.trail(limit=200) if a.outcome == "ok"]
        assert actions.count("scheduler.instance.update") >= 3  # pause, resume, retry
        store.close()


def test_run_without_a_worker_says_so_and_stores_nothing(home: Path, tmp_path: Path,
                                                         prefect_api: str) -> None:
    spec = tmp_path / "hello.yml"
    spec.write_text(HELLO)
    with experiment_stack(home, "door-idle", workers=0) as stack:
        started = time.monotonic()
        r = stack.airavata("experiment", "run", str(spec), "--deployment", "door-idle")
        assert r.returncode == 1
        assert time.monotonic() - started < 20
        assert "no worker polls work pool 'door-idle'" in r.stderr
        assert "Traceback" not in r.stderr
        missing = stack.airavata("experiment", "run", str(spec), "--deployment", "nope")
        assert missing.returncode == 2 and "no deployment run-experiment/nope" in missing.stderr
        store = _store(stack)
        assert store.experiments.list() == []
        store.close()


@pytest.mark.timeout(900)
def test_two_workers_run_twenty_experiments_each_instance_once(home: Path, tmp_path: Path,
                                                               pg_url: str,
                                                               prefect_api: str) -> None:
    """Scale-out: two workers on one pool, the PostgreSQL store; half the experiments from
    `airavata`, half through Prefect's API, all at once."""
    log = tmp_path / "executions.log"
    spec = tmp_path / "tagged.yml"
    text = f"""\
name: tagged
parameters:
  TAG: {{type: string, default: none}}
tasks:
  work:
    command: 'echo "$TAG $I" >> {log}'
    task_inputs: {{I: 1..3}}
"""
    spec.write_text(text)
    with experiment_stack(home, "door-scale", workers=2, db_url=pg_url,
                         worker_args=("--limit", "4")) as stack:
        dep = httpx.get(f"{_api()}/deployments/name/run-experiment/door-scale").json()
        clis = [subprocess.Popen(
            [str(Path(sys.executable).parent / "airavata"), "experiment", "run", str(spec),
             "--deployment", "door-scale", "-p", f"TAG=cli{k}"], env=stack.env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(10)]
        for k in range(10):
            r = httpx.post(f"{_api()}/deployments/{dep['id']}/create_flow_run", json={
                "parameters": {"spec": text, "params": {"TAG": f"api{k}"}}}, timeout=120)
            assert r.status_code in (200, 201), r.text
        for p in clis:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, out + err
        store = _store(stack)

        def ended() -> bool:
            exps = store.experiments.list(100)
            return len(exps) == 20 and all(e.status in ("COMPLETED", "FAILED", "CANCELED")
                                           for e in exps)
        _wait(ended, 600, "20 experiments to end")
        assert {e.status for e in store.experiments.list(100)} == {"COMPLETED"}
        lines = log.read_text().splitlines()
        expected = {f"{src}{k} {i}" for src in ("cli", "api") for k in range(10)
                    for i in range(1, 4)}
        assert sorted(lines) == sorted(expected)  # every instance ran, each exactly once
        # The store's experiment ends a moment before its flow run reports its own end.
        runs = [_final(r["id"]) for r in _runs_of(stack)]
        assert len(runs) == 20 and {r["state"]["type"] for r in runs} == {"COMPLETED"}
        # Both workers took runs.
        took = [(home / f"worker{n}.log").read_text().count("submitting flow run")
                for n in range(2)]
        assert all(took), took
        store.close()
