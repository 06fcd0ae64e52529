"""The pilot executor's queueing and its decisions to start agents, on a real SQLite store, with
stand-ins for a work pool: a slow starter (creating a flow run, waiting for a batch queue take
seconds there) and a launch whose flow runs no worker takes. The real pools are exercised in
test_pilots_pool.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from airavata_prefect.adapters.store import Store
from airavata_prefect.blocks import SlurmCluster
from airavata_prefect.domain.pilot import AGENTS_STEP
from airavata_prefect.domain.records import load_graph
from airavata_prefect.domain.states import BundleStatus, TaskState
from airavata_prefect.usecases.agent_starters import PoolAgents
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.pilot_dispatch import PilotExecutor
from airavata_prefect.usecases.settings import get_settings
from airavata_prefect.usecases.submit import submit


class SlowStarter:
    """Starts no agent, slowly: what matters here is what the executor does meanwhile."""

    slots, max_agents, startup_seconds = 1, 1, 30.0

    def __init__(self) -> None:
        self.calls: list[int] = []

    async def start(self, count: int, *, experiment_id: str, root: Path) -> list[str]:
        self.calls.append(count)
        await asyncio.sleep(1.0)
        return [f"{count} pretend agent(s)"]

    def failed(self) -> str | None:
        return None

    def pending(self) -> int:
        return 0

    def close(self) -> None:
        pass


def _experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int) -> tuple[Store, str]:
    monkeypatch.setenv("AIRAVATA_HOME", str(tmp_path))
    monkeypatch.delenv("AIRAVATA_DATABASE_URL", raising=False)
    settings = get_settings()
    store = Store(settings.db_url)
    spec = tmp_path / "e.yml"
    spec.write_text(f"tasks:\n  t: {{command: 'true', task_inputs: {{X: 1..{n}}}}}\n")
    return store, submit(Context(settings, store, "tester"), spec, [], authorize=False)


def test_instances_arriving_while_agents_start_are_queued(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, exp_id = _experiment(tmp_path, monkeypatch, 2)
    graph = load_graph(store.experiments.get(exp_id))
    starter = SlowStarter()
    ex = PilotExecutor(store, exp_id, graph, lambda s, i: "hpc", lambda r: starter)

    async def scenario() -> list[str]:
        cancel = asyncio.Event()
        seen: list[tuple[TaskState, str | None]] = []
        first = asyncio.ensure_future(ex(graph.instance("t", 0), 0,
                                         lambda st, m: seen.append((st, m)), cancel))
        await asyncio.sleep(0.3)  # queued; the starter is busy starting its agent
        assert starter.calls == [1]
        second = asyncio.ensure_future(ex(graph.instance("t", 1), 0,
                                          lambda st, m: seen.append((st, m)), cancel))
        await asyncio.sleep(1.5)  # the start has returned; no later instance comes
        queued = [i.instance_id for i in store.pilot.active_items(exp_id)]
        for f in (first, second):
            f.cancel()
        await asyncio.gather(first, second, return_exceptions=True)
        await ex.close()
        return queued

    try:
        assert asyncio.run(scenario()) == ["t[0]", "t[1]"]
    finally:
        store.close()


class NoWorker:
    """A work pool nobody serves: flow runs are created and stay scheduled."""

    def __init__(self) -> None:
        self.created: list[tuple[str, str, str]] = []

    async def create(self, resource: str, bundle_id: str, step: str,
                     job_variables: dict[str, object]) -> str:
        self.created.append((resource, bundle_id, step))
        return f"flow-run-{len(self.created)}"


def test_agents_waiting_for_a_worker_are_not_started_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the time an agent has to register, agents whose start no worker took are still
    counted: no second agents bundle piles up behind the first. Once submitted, they have
    that time again from the submission; then, never registered, they count as lost."""
    store, exp_id = _experiment(tmp_path, monkeypatch, 4)
    graph = load_graph(store.experiments.get(exp_id))
    launch = NoWorker()
    starter = PoolAgents(store, launch, "hpc",  # type: ignore[arg-type]
                         SlurmCluster(work_pool_name="hpc", mode="pilot", nodes=2,
                                      cores_per_node=2))
    starter.startup_seconds = 0.6
    ex = PilotExecutor(store, exp_id, graph, lambda s, i: "hpc", lambda r: starter,
                       supervise_every=0.1)

    async def scenario() -> None:
        cancel = asyncio.Event()
        waiting = [asyncio.ensure_future(ex(graph.instance("t", i), 0, lambda st, m: None,
                                            cancel)) for i in range(4)]
        await asyncio.sleep(2.0)  # three times the startup allowance
        assert len(launch.created) == 1
        [first] = store.bundles.of_experiment(exp_id)
        store.bundles.update(first.id, status=BundleStatus.SUBMITTED, infrastructure=["7"])
        await asyncio.sleep(0.3)  # in the batch queue: waited for
        assert len(launch.created) == 1
        await asyncio.sleep(1.2)  # never registered: lost, started again
        assert len(launch.created) == 2
        for f in waiting:
            f.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        await ex.close()

    try:
        asyncio.run(scenario())
        assert [step for _, _, step in launch.created] == ["agents", "agents"]
        bundles = store.bundles.of_experiment(exp_id)
        assert [b.step for b in bundles] == [AGENTS_STEP] * 2
        assert len(bundles[0].instances) == 2  # one per node: 4 instances, 2 slots each
        assert [b.flow_run_id for b in bundles] == ["flow-run-1", "flow-run-2"]
    finally:
        store.close()
