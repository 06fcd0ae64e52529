"""The pilot executor's queueing, on a real SQLite store, with a starter standing in for a slow
work pool (creating a flow run and waiting for a batch queue take seconds there)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from airavata_prefect.adapters.store import Store
from airavata_prefect.domain.records import load_graph
from airavata_prefect.domain.states import TaskState
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

    def close(self) -> None:
        pass


def test_instances_arriving_while_agents_start_are_queued(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRAVATA_HOME", str(tmp_path))
    monkeypatch.delenv("AIRAVATA_DATABASE_URL", raising=False)
    settings = get_settings()
    store = Store(settings.db_url)
    spec = tmp_path / "e.yml"
    spec.write_text("tasks:\n  t: {command: 'true', task_inputs: {X: 1..2}}\n")
    exp_id = submit(Context(settings, store, "tester"), spec, [], authorize=False)
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
