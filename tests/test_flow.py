"""The run_experiment flow against a real Prefect API server: task runs, edges, progress."""

from __future__ import annotations

import asyncio
import os
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from airavata_prefect.adapters.store import Store
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.errors import NoPlacement
from airavata_prefect.usecases.settings import get_settings
from airavata_prefect.usecases.submit import submit as submit_experiment

pytestmark = pytest.mark.prefect

SPEC = """\
tasks:
  a: {command: '[ "$X" != 2 ] || exit 3; echo $X > $O', task_inputs: {X: 1..3},
      task_outputs: {O: o}}
  b: {command: 'cat $I', foreach: [a], task_inputs: {I: "${a.O}"}}
  c: {command: 'true', depends_on: [b]}
"""


def submit(tmp_path: Path, text: str = SPEC) -> tuple[Store, str]:
    spec = tmp_path / "exp.yml"
    spec.write_text(textwrap.dedent(text))
    settings = get_settings()
    ctx = Context(settings, Store(settings.db_url), "tester")
    return ctx.store, submit_experiment(ctx, spec, [], authorize=False)


def _api(path: str, body: dict) -> list[dict]:
    # Plain HTTP: Prefect 3.8's client sends None filters that its own server rejects.
    api = os.environ["PREFECT_API_URL"]
    r = httpx.post(f"{api}{path}", json={**body, "limit": 200}, timeout=30)
    r.raise_for_status()
    return r.json()


def task_runs(flow_run_id: str, names: set[str]) -> list[dict]:
    """Task runs reach the API asynchronously (events), and a run's custom name may arrive after
    its first state: wait until every expected name has settled (or a minute has passed)."""
    deadline = time.monotonic() + 60
    while True:
        runs = _api("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}},
                                          "sort": "EXPECTED_START_TIME_ASC"})
        settled = {r["name"] for r in runs if r["state"] and r["state"]["type"] != "RUNNING"}
        if settled >= names or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


def artifacts(flow_run_id: str) -> list[dict]:
    return _api("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}},
                                       "sort": "CREATED_DESC"})


def run_flow(exp_id: str):
    from airavata_prefect.flows.experiment_flow import run_experiment
    return asyncio.run(run_experiment(experiment_id=exp_id, return_state=True))


def test_per_instance_task_runs_carry_the_graph(prefect_api: str, home: Path,
                                                tmp_path: Path) -> None:
    store, exp_id = submit(tmp_path)
    state = run_flow(exp_id)
    assert state.is_failed()
    exp = store.experiments.get(exp_id)
    assert exp.status == "FAILED"
    assert exp.message == "4 completed, 1 failed, 2 upstream_failed"
    expected = {"a[0]", "a[1]", "a[2]", "b[0]", "b[1]", "b[2]", "c[0]"}
    runs = task_runs(exp.flow_run_id, expected)
    by_name = {r["name"]: r for r in runs}
    assert set(by_name) == expected
    assert by_name["a[1]"]["state"]["type"] == "FAILED"
    assert by_name["a[1]"]["state"]["message"] == "a[1]: exit code 3"
    assert by_name["b[1]"]["state"]["name"] == "NotReady"  # Prefect's own upstream-failed state
    assert by_name["b[0]"]["state"]["type"] == "COMPLETED"
    # The edges the UI draws: b[i] waits for a[i]; c waits for every b.
    wait_b0 = {i["id"] for i in by_name["b[0]"]["task_inputs"]["wait_for"]}
    assert wait_b0 == {by_name["a[0]"]["id"]}
    wait_c = {i["id"] for i in by_name["c[0]"]["task_inputs"]["wait_for"]}
    assert wait_c >= {by_name["b[0]"]["id"], by_name["b[2]"]["id"]}
    assert by_name["c[0]"]["state"]["name"] == "NotReady"
    found = artifacts(exp.flow_run_id)
    assert any(a["type"] == "table" for a in found)


def test_large_sweeps_get_one_task_run_per_step_with_progress(
        prefect_api: str, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRAVATA_TASK_RUN_THRESHOLD", "5")
    store, exp_id = submit(tmp_path)
    state = run_flow(exp_id)
    assert state.is_failed()
    exp = store.experiments.get(exp_id)
    expected = {"a (3 instances)", "b (3 instances)", "c (1 instances)"}
    runs = task_runs(exp.flow_run_id, expected)
    names = {r["name"]: r for r in runs}
    assert set(names) == expected
    assert names["a (3 instances)"]["state"]["message"] == "a: 2 completed, 1 failed"
    assert names["b (3 instances)"]["state"]["type"] == "FAILED"
    progress = [a for a in artifacts(exp.flow_run_id) if a["type"] == "progress"]
    assert len(progress) == 3 and all(float(a["data"]) == 100.0 for a in progress)
    assert store.tasks.state_counts(exp_id) == {"a": {"COMPLETED": 2, "FAILED": 1},
                                          "b": {"COMPLETED": 2, "UPSTREAM_FAILED": 1},
                                          "c": {"UPSTREAM_FAILED": 1}}


def test_completed_experiment_and_no_secrets_in_flow_parameters(
        prefect_api: str, home: Path, tmp_path: Path) -> None:
    spec = "tasks:\n  a: {command: 'echo ok', task_inputs: {X: [1, 2]}}\n"
    store, exp_id = submit(tmp_path, spec)
    state = run_flow(exp_id)
    assert state.is_completed()
    exp = store.experiments.get(exp_id)
    assert exp.status == "COMPLETED" and exp.finished_at is not None

    async def params() -> dict:
        from prefect.client.orchestration import get_client
        async with get_client() as client:
            return (await client.read_flow_run(exp.flow_run_id)).parameters

    # The stored experiment's id and empty defaults: nothing the user typed, nothing secret.
    assert {k: v for k, v in asyncio.run(params()).items() if v} == {"experiment_id": exp_id}


def test_a_flow_run_cannot_run_an_experiment_twice(prefect_api: str, home: Path,
                                                   tmp_path: Path) -> None:
    store, exp_id = submit(tmp_path, "tasks:\n  a: {command: 'true'}\n")
    assert run_flow(exp_id).is_completed()
    again = run_flow(exp_id)
    assert again.is_failed() and "not waiting to run (status COMPLETED)" in again.message
    assert store.tasks.state_counts(exp_id) == {"a": {"COMPLETED": 1}}


@pytest.mark.postgres
def test_the_flow_on_postgresql(prefect_api: str, home: Path, tmp_path: Path, pg_url: str,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRAVATA_DATABASE_URL", pg_url)
    store, exp_id = submit(tmp_path)
    assert store.engine.dialect.name == "postgresql"
    assert run_flow(exp_id).is_failed()
    assert store.tasks.state_counts(exp_id) == {"a": {"COMPLETED": 2, "FAILED": 1},
                                          "b": {"COMPLETED": 2, "UPSTREAM_FAILED": 1},
                                          "c": {"UPSTREAM_FAILED": 1}}
    events = store.tasks.events(exp_id, "a[1]")
    assert [e.to_state for e in events] == ["QUEUED", "DATA_STAGING", "ENV_SETUP", "RUNNING",
                                               "FAILED"]
    assert store.tasks.get(exp_id, "a[1]").exit_code == 3
    store.close()


def test_cancel_from_the_prefect_ui(prefect_api: str, home: Path, tmp_path: Path) -> None:
    """Pressing Cancel on the flow run (its state set to Cancelling) stops the experiment."""
    import threading

    store, exp_id = submit(tmp_path, "tasks:\n  slow: {command: 'sleep 60', "
                                     "task_inputs: {X: 1..4}}\n")
    result: list = []
    runner = threading.Thread(target=lambda: result.append(run_flow(exp_id)))
    runner.start()
    deadline = time.monotonic() + 60
    while not store.tasks.state_counts(exp_id).get("slow", {}).get("RUNNING"):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    flow_run_id = store.experiments.get(exp_id).flow_run_id
    r = httpx.post(f"{os.environ['PREFECT_API_URL']}/flow_runs/{flow_run_id}/set_state",
                   json={"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True})
    r.raise_for_status()
    runner.join(60)
    assert not runner.is_alive()
    assert store.experiments.get(exp_id).status == "CANCELED"
    assert store.tasks.state_counts(exp_id) == {"slow": {"CANCELED": 4}}


def test_the_plan_is_stored_used_and_shown(prefect_api: str, home: Path, tmp_path: Path) -> None:
    store, exp_id = submit(tmp_path, "tasks:\n  a: {command: 'true', task_inputs: {X: [1, 2]}}\n")
    exp = store.experiments.get(exp_id)
    assert exp.plan is not None and exp.plan.status == "optimal"
    assert exp.plan.to_json()["assignments"] == [
        {"step": "a", "resource": "local", "count": 2, "cost": 0.0,
         "finish_seconds": exp.plan.makespan_seconds}]
    assert {t.resource for t in store.tasks.list(exp_id)} == {"local"}
    assert run_flow(exp_id).is_completed()
    tables = [a for a in artifacts(store.experiments.get(exp_id).flow_run_id)
              if a["type"] == "table" and (a["key"] or "").startswith("plan-")]
    assert len(tables) == 1 and "placement (optimal, objective time)" in tables[0]["description"]


def test_no_placement_stores_nothing(home: Path, tmp_path: Path) -> None:
    spec = tmp_path / "gpu.yml"
    spec.write_text("tasks:\n  train: {command: x, resources: {compute: {gpu: 1}}}\n")
    settings = get_settings()
    ctx = Context(settings, Store(settings.db_url), "tester")
    with pytest.raises(NoPlacement, match=r"step train needs gpu=1: no eligible "
                                          r"resource \(local: no GPUs\)"):
        submit_experiment(ctx, spec, [], authorize=False)
    store = ctx.store
    assert store.experiments.list() == []
