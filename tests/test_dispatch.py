"""The dispatch core: ready instances batched into bundles, launched through a fake `Launch`
(an in-memory recorder, no Prefect), followed through the bundle events a fake worker writes to
a real SQLite store, with liveness checks and cancel."""

from __future__ import annotations

import asyncio
import re
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from airavata_prefect.adapters.store import Store, utcnow
from airavata_prefect.domain.compile import compile_graph
from airavata_prefect.domain.dag import TaskGraph, TaskInstance
from airavata_prefect.domain.endings import Outcome
from airavata_prefect.domain.records import BundleEvent, NewTask
from airavata_prefect.domain.scheduler import Report
from airavata_prefect.domain.spec import parse_spec_text
from airavata_prefect.domain.states import BundleStatus, TaskState
from airavata_prefect.usecases.dispatch import RemoteExecutor, Routing, job_variables

S = TaskState
SPEC = """\
    tasks:
      sim:
        command: x
        task_inputs: {I: 1..5}
        resources: {compute: {cpu: 4, ram_gb: 2, time: "0:10:00"}}
      post: {command: y, task_inputs: {J: 1..2}}
    """
SLURM_VARIABLES = {"cpus_per_task": 4, "nodes": 1, "gpus": 0, "mem_mb": 2048,
                   "time_limit": "0:10:00"}


class FakeLaunch:
    """Records every call; `create` returns flow run ids fr-1, fr-2, ... in call order."""

    def __init__(self, pools: dict[str, str] | None = None,
                 fail: dict[str, Exception] | None = None) -> None:
        self.pools = pools or {"r1": "slurm", "r2": "baremetal"}
        self.fail = fail or {}  # method name -> what it raises
        self.created: list[tuple[str, str, str, dict[str, Any]]] = []
        self.flow_run: dict[str, str] = {}  # bundle id -> its flow run id
        self.canceled: list[list[str]] = []
        self.pool_type_calls: list[str] = []
        self.endings: dict[str, str] = {}  # flow run id -> why it ended

    async def create(self, resource: str, bundle_id: str, step: str,
                     job_variables: dict[str, Any]) -> str:
        if "create" in self.fail:
            raise self.fail["create"]
        self.created.append((resource, bundle_id, step, job_variables))
        self.flow_run[bundle_id] = f"fr-{len(self.created)}"
        return self.flow_run[bundle_id]

    async def cancel(self, flow_run_ids: list[str]) -> None:
        self.canceled.append(list(flow_run_ids))

    async def ended(self, flow_run_id: str) -> str | None:
        return self.endings.get(flow_run_id)

    async def pool_type(self, resource: str) -> str:
        self.pool_type_calls.append(resource)
        if "pool_type" in self.fail:
            raise self.fail["pool_type"]
        return self.pools[resource]


class Reports:
    """What the executor reported, per instance id."""

    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[TaskState, str | None]]] = {}

    def to(self, inst: TaskInstance) -> Report:
        seen = self.seen.setdefault(inst.id, [])
        return lambda state, message: seen.append((state, message))


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'a.db'}")
    yield s
    s.close()


def experiment(store: Store, tmp_path: Path) -> tuple[str, TaskGraph]:
    """A stored experiment of SPEC (sim[0..4], post[0..1]) with its task rows."""
    text = textwrap.dedent(SPEC)
    graph = compile_graph(parse_spec_text(text, "x.yml"), {}, root=str(tmp_path / "runs"))
    exp_id = store.experiments.create(
        name="x", source="x.yml", spec_text=text, params={}, workdir_root=tmp_path / "runs",
        total=graph.total,
        tasks_iter=(NewTask(i.id, i.step, i.index, graph.workdir(i.step, i.index), "r1")
                    for i in graph.iter_instances()))
    return exp_id, graph


def executor(store: Store, exp_id: str, graph: TaskGraph, launch: FakeLaunch,
             where: Callable[[str, int], str] = lambda step, index: "r1",
             **options: Any) -> RemoteExecutor:
    fast: dict[str, Any] = {"window": 0.05, "poll": 0.01, "liveness_every": 0.03,
                            "cancel_confirm": 5.0}
    return RemoteExecutor(store, exp_id, graph, launch, where, **(fast | options))


def dispatch(ex: RemoteExecutor, graph: TaskGraph, items: list[tuple[str, int, int]],
             reports: Reports, cancel: asyncio.Event) -> list[asyncio.Task[Outcome]]:
    """Start (step, index, attempt) instances together, as the scheduler does."""
    tasks = []
    for step, index, attempt in items:
        inst = graph.instance(step, index)
        tasks.append(asyncio.ensure_future(ex(inst, attempt, reports.to(inst), cancel)))
    return tasks


async def until(ready: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.005)


async def complete_every_bundle(store: Store, exp_id: str, launch: FakeLaunch) -> None:
    """A worker that completes every instance of every bundle as soon as it is launched."""
    done: set[str] = set()
    while True:
        for _, bundle_id, _, _ in list(launch.created):
            if bundle_id not in done:
                done.add(bundle_id)
                n = len(store.bundles.get(bundle_id).instances)
                store.bundles.add_events(exp_id, bundle_id,
                                         [BundleEvent(p, S.COMPLETED, 0) for p in range(n)])
        await asyncio.sleep(0.005)


async def run_to_end(store: Store, exp_id: str, launch: FakeLaunch, ex: RemoteExecutor,
                     tasks: list[asyncio.Task[Outcome]]) -> list[Outcome]:
    worker = asyncio.ensure_future(complete_every_bundle(store, exp_id, launch))
    try:
        return await asyncio.wait_for(asyncio.gather(*tasks), 5)
    finally:
        worker.cancel()
        await ex.close()


# -- batching ----------------------------------------------------------------------------------


def test_instances_ready_together_go_out_as_one_bundle(store: Store, tmp_path: Path) -> None:
    exp_id, graph = experiment(store, tmp_path)
    launch = FakeLaunch()
    ex = executor(store, exp_id, graph, launch)

    async def scenario() -> list[Outcome]:
        tasks = dispatch(ex, graph, [("sim", 0, 0), ("sim", 1, 0), ("sim", 2, 1)], Reports(),
                         asyncio.Event())
        return await run_to_end(store, exp_id, launch, ex, tasks)

    assert asyncio.run(scenario()) == [Outcome(S.COMPLETED, 0, None)] * 3
    (row,) = store.bundles.of_experiment(exp_id)
    assert launch.created == [("r1", row.id, "sim", SLURM_VARIABLES)]
    assert launch.pool_type_calls == ["r1"]
    assert (row.resource, row.step, row.instances) == ("r1", "sim", ((0, 0), (1, 0), (2, 1)))
    assert (row.flow_run_id, row.status) == ("fr-1", BundleStatus.CREATED)


def test_max_bundle_splits_a_batch_ready_together(store: Store, tmp_path: Path) -> None:
    exp_id, graph = experiment(store, tmp_path)
    launch = FakeLaunch()
    ex = executor(store, exp_id, graph, launch, max_bundle=2)

    async def scenario() -> list[Outcome]:
        tasks = dispatch(ex, graph, [("sim", i, 0) for i in range(5)], Reports(),
                         asyncio.Event())
        return await run_to_end(store, exp_id, launch, ex, tasks)

    assert asyncio.run(scenario()) == [Outcome(S.COMPLETED, 0, None)] * 5
    assert sorted(b.instances for b in store.bundles.of_experiment(exp_id)) == [
        ((0, 0), (1, 0)), ((2, 0), (3, 0)), ((4, 0),)]
    assert len(launch.created) == 3


def test_max_bundle_splits_instances_arriving_one_by_one(store: Store, tmp_path: Path) -> None:
    exp_id, graph = experiment(store, tmp_path)
    launch = FakeLaunch()
    ex = executor(store, exp_id, graph, launch, max_bundle=2)
    reports, cancel = Reports(), asyncio.Event()

    async def scenario() -> list[Outcome]:
        tasks = []
        for i in range(5):
            tasks += dispatch(ex, graph, [("sim", i, 0)], reports, cancel)
            await asyncio.sleep(0)  # the flush of a full bundle runs before the next arrives
        return await run_to_end(store, exp_id, launch, ex, tasks)

    assert asyncio.run(scenario()) == [Outcome(S.COMPLETED, 0, None)] * 5
    # Which bundle's launch the fake answers first is the event loop's business, not ours:
    # the split is what counts, each bundle with a flow run of its own.
    bundles = store.bundles.of_experiment(exp_id)
    assert sorted(b.instances for b in bundles) == [((0, 0), (1, 0)), ((2, 0), (3, 0)),
                                                    ((4, 0),)]
    assert len({b.flow_run_id for b in bundles}) == 3
    assert launch.pool_type_calls == ["r1"]  # asked once per resource


def test_steps_and_resources_never_share_a_bundle(store: Store, tmp_path: Path) -> None:
    exp_id, graph = experiment(store, tmp_path)
    launch = FakeLaunch()
    placed = {"sim": ["r1", "r2", "r1"], "post": ["r1", "r1"]}
    ex = executor(store, exp_id, graph, launch, lambda step, index: placed[step][index])

    async def scenario() -> list[Outcome]:
        tasks = dispatch(ex, graph, [("sim", 0, 0), ("sim", 1, 0), ("post", 0, 0),
                                     ("sim", 2, 0), ("post", 1, 0)], Reports(), asyncio.Event())
        return await run_to_end(store, exp_id, launch, ex, tasks)

    assert asyncio.run(scenario()) == [Outcome(S.COMPLETED, 0, None)] * 5
    rows = {(b.resource, b.step): b.instances for b in store.bundles.of_experiment(exp_id)}
    assert rows == {("r1", "sim"): ((0, 0), (2, 0)), ("r2", "sim"): ((1, 0),),
                    ("r1", "post"): ((0, 0), (1, 0))}
    variables = {(r, step): v for r, _, step, v in launch.created}
    assert variables == {("r1", "sim"): SLURM_VARIABLES, ("r2", "sim"): {"cpus_per_task": 4},
                         ("r1", "post"): {}}  # post asks for no compute resources
    assert sorted(launch.pool_type_calls) == ["r1", "r2"]


# -- following ---------------------------------------------------------------------------------


def test_worker_events_become_states_and_outcomes(store: Store, tmp_path: Path) -> None:
    exp_id, graph = experiment(store, tmp_path)
    launch = FakeLaunch()
    ex = executor(store, exp_id, graph, launch)
    reports = Reports()

    async def scenario() -> list[Outcome]:
        tasks = dispatch(ex, graph, [("sim", 0, 0), ("sim", 1, 0)], reports, asyncio.Event())
        await until(lambda: bool(launch.created))
        bundle_id = launch.created[0][1]
        store.bundles.add_events(exp_id, bundle_id, [
            BundleEvent(0, S.DATA_STAGING), BundleEvent(1, S.DATA_STAGING),
            BundleEvent(0, S.ENV_SETUP), BundleEvent(0, S.RUNNING, message="on node n1"),
            BundleEvent(0, S.RUNNING, message="again"),  # no change: not reported twice
            BundleEvent(7, S.FAILED, 1, "no such position")])  # ignored
        await until(lambda: len(reports.seen["sim[0]"]) == 3)
        store.bundles.add_events(exp_id, bundle_id, [
            BundleEvent(0, S.OUTPUT_STAGING), BundleEvent(0, S.COMPLETED, 0),
            BundleEvent(0, S.FAILED, 9, "after the end: ignored"),
            BundleEvent(1, S.ENV_SETUP), BundleEvent(1, S.RUNNING),
            BundleEvent(1, S.FAILED, 3, "exit code 3")])
        try:
            return await asyncio.wait_for(asyncio.gather(*tasks), 5)
        finally:
            await ex.close()

    assert asyncio.run(scenario()) == [Outcome(S.COMPLETED, 0, None),
                                       Outcome(S.FAILED, 3, "exit code 3")]
    assert reports.seen == {
        "sim[0]": [(S.DATA_STAGING, None), (S.ENV_SETUP, None), (S.RUNNING, "on node n1"),
                   (S.OUTPUT_STAGING, None)],
        "sim[1]": [(S.DATA_STAGING, None), (S.ENV_SETUP, None), (S.RUNNING, None)]}


def test_events_of_another_experiment_are_not_seen(store: Store, tmp_path: Path) -> None:
    exp_a, graph = experiment(store, tmp_path)
    exp_b, _ = experiment(store, tmp_path)
    launch_a, launch_b = FakeLaunch(), FakeLaunch()
    ex_a = executor(store, exp_a, graph, launch_a)
    ex_b = executor(store, exp_b, graph, launch_b)
    reports_a, reports_b = Reports(), Reports()

    async def scenario() -> list[Outcome]:
        tasks = (dispatch(ex_a, graph, [("sim", 0, 0)], reports_a, asyncio.Event())
                 + dispatch(ex_b, graph, [("sim", 0, 0)], reports_b, asyncio.Event()))
        await until(lambda: bool(launch_a.created and launch_b.created))
        a, b = launch_a.created[0][1], launch_b.created[0][1]
        store.bundles.add_events(exp_b, b, [BundleEvent(0, S.DATA_STAGING, message="b")])
        store.bundles.add_events(exp_a, a, [BundleEvent(0, S.DATA_STAGING, message="a")])
        store.bundles.add_events(exp_b, b, [BundleEvent(0, S.FAILED, 9, "b failed")])
        store.bundles.add_events(exp_a, a, [BundleEvent(0, S.COMPLETED, 0)])
        try:
            return await asyncio.wait_for(asyncio.gather(*tasks), 5)
        finally:
            await ex_a.close()
            await ex_b.close()

    assert asyncio.run(scenario()) == [Outcome(S.COMPLETED, 0, None),
                                       Outcome(S.FAILED, 9, "b failed")]
    assert (reports_a.seen, reports_b.seen) == ({"sim[0]": [(S.DATA_STAGING, "a")]},
                                                {"sim[0]": [(S.DATA_STAGING, "b")]})


@pytest.mark.parametrize(("method", "error", "reason"), [
    ("create", ConnectionError("prefect unreachable"),
     "cannot dispatch to r1: ConnectionError: prefect unreachable"),
    ("pool_type", RuntimeError("deployment execute_bundle/r1 has no work pool"),
     "cannot dispatch to r1: RuntimeError: deployment execute_bundle/r1 has no work pool"),
])
def test_a_launch_that_fails_fails_the_bundle(store: Store, tmp_path: Path, method: str,
                                              error: Exception, reason: str) -> None:
    exp_id, graph = experiment(store, tmp_path)
    launch = FakeLaunch(fail={method: error})
    ex = executor(store, exp_id, graph, launch)

    async def scenario() -> list[Outcome]:
        tasks = dispatch(ex, graph, [("sim", 0, 0), ("sim", 1, 0)], Reports(), asyncio.Event())
        return await run_to_end(store, exp_id, launch, ex, tasks)

    assert asyncio.run(scenario()) == [Outcome(S.FAILED, None, reason)] * 2
    (row,) = store.bundles.of_experiment(exp_id)
    assert (row.status, row.message, row.flow_run_id) == (BundleStatus.FAILED, reason, None)
    assert row.finished_at is not None
    assert launch.created == []


# -- cancel ------------------------------------------------------------------------------------


def test_cancel_before_dispatch_launches_nothing(store: Store, tmp_path: Path) -> None:
    exp_id, graph = experiment(store, tmp_path)
    launch = FakeLaunch()
    ex = executor(store, exp_id, graph, launch)
    cancel = asyncio.Event()
    cancel.set()

    async def scenario() -> list[Outcome]:
        tasks = dispatch(ex, graph, [("sim", 0, 0), ("sim", 1, 0)], Reports(), cancel)
        return await run_to_end(store, exp_id, launch, ex, tasks)

    assert asyncio.run(scenario()) == [
        Outcome(S.CANCELED, None, "canceled before it was dispatched")] * 2
    assert (launch.created, launch.pool_type_calls) == ([], [])
    assert store.bundles.of_experiment(exp_id) == []


def test_cancel_within_the_window_launches_nothing(store: Store, tmp_path: Path) -> None:
    exp_id, graph = experiment(store, tmp_path)
    launch = FakeLaunch()
    ex = executor(store, exp_id, graph, launch, window=0.3)
    cancel = asyncio.Event()

    async def scenario() -> list[Outcome]:
        tasks = dispatch(ex, graph, [("sim", 0, 0), ("sim", 1, 0)], Reports(), cancel)
        await asyncio.sleep(0.01)
        cancel.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 5)
        await asyncio.sleep(0.4)  # past the window: its flush finds nothing left
        await ex.close()
        return outcomes

    assert asyncio.run(scenario()) == [Outcome(S.CANCELED, None, "canceled")] * 2
    assert (launch.created, launch.canceled) == ([], [[]])
    assert store.bundles.of_experiment(exp_id) == []


def test_cancel_while_running_reaches_the_worker(store: Store, tmp_path: Path) -> None:
    exp_id, graph = experiment(store, tmp_path)
    launch = FakeLaunch()
    ex = executor(store, exp_id, graph, launch, cancel_confirm=5.0)
    reports, cancel = Reports(), asyncio.Event()

    async def worker() -> None:
        await until(lambda: bool(launch.created))
        bundle_id = launch.created[0][1]
        store.bundles.update(bundle_id, status=BundleStatus.SUBMITTED, heartbeat_at=utcnow())
        store.bundles.add_events(exp_id, bundle_id, [BundleEvent(p, s) for s in (
            S.DATA_STAGING, S.ENV_SETUP, S.RUNNING) for p in (0, 1)])
        await until(lambda: store.bundles.cancel_requested(bundle_id))
        store.bundles.add_events(exp_id, bundle_id, [
            BundleEvent(p, S.CANCELED, -15, "canceled") for p in (0, 1)])
        store.bundles.update(bundle_id, status=BundleStatus.CANCELED)

    async def scenario() -> tuple[list[Outcome], float]:
        tasks = dispatch(ex, graph, [("sim", 0, 0), ("sim", 1, 0)], reports, cancel)
        fake_worker = asyncio.ensure_future(worker())
        await until(lambda: all(r and r[-1][0] == S.RUNNING for r in reports.seen.values()))
        cancel.set()
        started = time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.gather(*tasks), 5), time.monotonic() - started
        finally:
            await fake_worker
            await ex.close()

    outcomes, took = asyncio.run(scenario())
    assert outcomes == [Outcome(S.CANCELED, -15, "canceled")] * 2
    assert took < 1.0  # confirmed by the worker, not assumed after cancel_confirm
    (row,) = store.bundles.of_experiment(exp_id)
    assert (row.cancel_requested, row.status) == (True, BundleStatus.CANCELED)
    assert launch.canceled == [["fr-1"]]


def test_a_cancel_the_worker_never_confirms_is_assumed(store: Store, tmp_path: Path) -> None:
    exp_id, graph = experiment(store, tmp_path)
    launch = FakeLaunch()
    ex = executor(store, exp_id, graph, launch, cancel_confirm=0.2)
    cancel = asyncio.Event()

    async def scenario() -> tuple[list[Outcome], float]:
        tasks = dispatch(ex, graph, [("sim", 0, 0)], Reports(), cancel)
        await until(lambda: bool(launch.created))
        await until(lambda: store.bundles.of_experiment(exp_id)[0].flow_run_id is not None)
        cancel.set()
        started = time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.gather(*tasks), 5), time.monotonic() - started
        finally:
            await ex.close()

    outcomes, took = asyncio.run(scenario())
    assert outcomes == [Outcome(S.CANCELED, None, "canceled (the worker did not confirm)")]
    assert 0.2 <= took < 1.0
    assert store.bundles.of_experiment(exp_id)[0].cancel_requested is True
    assert launch.canceled == [["fr-1"]]


def test_cancel_while_the_bundle_is_being_stored(store: Store, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancel that lands while `_flush` awaits `store.bundles.create` must still stop that
    bundle: no flow run may be left running unflagged and uncanceled."""
    exp_id, graph = experiment(store, tmp_path)
    launch = FakeLaunch()
    ex = executor(store, exp_id, graph, launch, cancel_confirm=0.3)
    cancel = asyncio.Event()
    entered, release = threading.Event(), threading.Event()
    create = store.bundles.create

    def gated_create(*args: Any) -> str:  # the real store, held at the moment of the race
        entered.set()
        release.wait(5)
        return create(*args)

    monkeypatch.setattr(store.bundles, "create", gated_create)

    async def scenario() -> list[Outcome]:
        tasks = dispatch(ex, graph, [("sim", 0, 0)], Reports(), cancel)
        try:
            await until(entered.is_set)
            cancel.set()
            await until(lambda: bool(launch.canceled))  # the executor handled the cancel
        finally:
            release.set()
        try:
            return await asyncio.wait_for(asyncio.gather(*tasks), 5)
        finally:
            await ex.close()

    (outcome,) = asyncio.run(scenario())
    assert outcome.state == S.CANCELED
    left_running = [bundle_id for _, bundle_id, _, _ in launch.created
                    if not store.bundles.cancel_requested(bundle_id)
                    and [launch.flow_run[bundle_id]] not in launch.canceled]
    assert left_running == []


# -- liveness ----------------------------------------------------------------------------------


def test_a_flow_run_that_ended_silently_fails_its_open_instances(store: Store,
                                                                 tmp_path: Path) -> None:
    exp_id, graph = experiment(store, tmp_path)
    launch = FakeLaunch()
    ex = executor(store, exp_id, graph, launch)
    why = "its flow run ended CRASHED: pod evicted"

    async def scenario() -> list[Outcome]:
        tasks = dispatch(ex, graph, [("sim", 0, 0), ("sim", 1, 0)], Reports(), asyncio.Event())
        await until(lambda: bool(launch.created))
        bundle_id = launch.created[0][1]
        # Its last event lands together with the end: read before the rest are failed.
        store.bundles.add_events(exp_id, bundle_id, [BundleEvent(0, S.COMPLETED, 0)])
        launch.endings[launch.flow_run[bundle_id]] = why
        try:
            return await asyncio.wait_for(asyncio.gather(*tasks), 5)
        finally:
            await ex.close()

    assert asyncio.run(scenario()) == [Outcome(S.COMPLETED, 0, None),
                                       Outcome(S.FAILED, None, why)]


def test_a_bundle_row_that_ended_fails_its_open_instances(store: Store,
                                                          tmp_path: Path) -> None:
    exp_id, graph = experiment(store, tmp_path)
    launch = FakeLaunch()
    ex = executor(store, exp_id, graph, launch)
    why = "staging failed: no space left on device"

    async def scenario() -> list[Outcome]:
        tasks = dispatch(ex, graph, [("sim", 0, 0), ("sim", 1, 0)], Reports(), asyncio.Event())
        await until(lambda: bool(launch.created))
        bundle_id = launch.created[0][1]
        store.bundles.add_events(exp_id, bundle_id, [BundleEvent(1, S.FAILED, 2, "exit code 2")])
        store.bundles.update(bundle_id, status=BundleStatus.FAILED, message=why)
        try:
            return await asyncio.wait_for(asyncio.gather(*tasks), 5)
        finally:
            await ex.close()

    assert asyncio.run(scenario()) == [Outcome(S.FAILED, None, why),
                                       Outcome(S.FAILED, 2, "exit code 2")]


def test_a_stale_heartbeat_fails_its_open_instances(store: Store, tmp_path: Path) -> None:
    exp_id, graph = experiment(store, tmp_path)
    launch = FakeLaunch()
    ex = executor(store, exp_id, graph, launch, lambda step, index: ["r1", "r2"][index],
                  stale_after=10.0)

    async def scenario() -> list[Outcome]:
        tasks = dispatch(ex, graph, [("sim", 0, 0), ("sim", 1, 0)], Reports(), asyncio.Event())
        await until(lambda: len(launch.created) == 2)
        bundle = {resource: bundle_id for resource, bundle_id, _, _ in launch.created}
        store.bundles.update(bundle["r1"], status=BundleStatus.SUBMITTED,
                             heartbeat_at=utcnow() - timedelta(seconds=30))
        store.bundles.update(bundle["r2"], status=BundleStatus.SUBMITTED, heartbeat_at=utcnow())
        try:
            await asyncio.wait_for(asyncio.shield(tasks[0]), 5)
            await asyncio.sleep(0.1)  # several liveness checks: the fresh one stays open
            assert not tasks[1].done()
            store.bundles.add_events(exp_id, bundle["r2"], [BundleEvent(0, S.COMPLETED, 0)])
            return await asyncio.wait_for(asyncio.gather(*tasks), 5)
        finally:
            await ex.close()

    stale, fresh = asyncio.run(scenario())
    assert fresh == Outcome(S.COMPLETED, 0, None)
    assert (stale.state, stale.exit_code) == (S.FAILED, None)
    found = re.fullmatch(r"its worker stopped reporting (\d+) s ago", stale.reason or "")
    assert found is not None, stale.reason
    assert 30 <= int(found[1]) <= 32


# -- routing and job variables -----------------------------------------------------------------


def test_routing_sends_each_instance_to_its_resources_executor(tmp_path: Path) -> None:
    graph = compile_graph(parse_spec_text(textwrap.dedent(SPEC), "x.yml"), {},
                          root=str(tmp_path))
    calls: list[tuple[str, str, int]] = []

    def fake(name: str, state: TaskState) -> Any:
        async def run(inst: TaskInstance, attempt: int, report: Report,
                      cancel: asyncio.Event) -> Outcome:
            calls.append((name, inst.id, attempt))
            return Outcome(state, 0, name)
        return run

    routing = Routing(fake("local", S.COMPLETED), fake("remote", S.FAILED),
                      {"sim": ["local", "r1", "local", "r2", "r1"], "post": ["r1", "local"]})

    async def scenario() -> list[Outcome]:
        cancel = asyncio.Event()
        return [await routing(graph.instance(step, i), 1, lambda s, m: None, cancel)
                for step, i in [("sim", 0), ("sim", 1), ("sim", 3), ("post", 0), ("post", 1)]]

    assert asyncio.run(scenario()) == [
        Outcome(S.COMPLETED, 0, "local"), Outcome(S.FAILED, 0, "remote"),
        Outcome(S.FAILED, 0, "remote"), Outcome(S.FAILED, 0, "remote"),
        Outcome(S.COMPLETED, 0, "local")]
    assert calls == [("local", "sim[0]", 1), ("remote", "sim[1]", 1), ("remote", "sim[3]", 1),
                     ("remote", "post[0]", 1), ("local", "post[1]", 1)]


@pytest.mark.parametrize(("step", "pool_type", "expected"), [
    ("sim", "slurm", SLURM_VARIABLES),
    ("sim", "baremetal", {"cpus_per_task": 4}),
    ("sim", "airavata-kubernetes",
     {"cpu_request": "4", "gpu_limit": 0, "memory_request": "2048Mi"}),
    ("sim", "process", {}),  # a pool type no kind runs
    ("post", "slurm", {}),  # a step that asks for no compute resources
    ("post", "baremetal", {}),
    ("post", "airavata-kubernetes", {}),
])
def test_job_variables(tmp_path: Path, step: str, pool_type: str,
                       expected: dict[str, Any]) -> None:
    graph = compile_graph(parse_spec_text(textwrap.dedent(SPEC), "x.yml"), {},
                          root=str(tmp_path))
    assert job_variables(graph.by_name[step], pool_type) == expected
