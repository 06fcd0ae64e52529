"""The `run_experiment` Prefect flow: one stored experiment, run to the end on the local resource.

Its only parameter is the experiment id: the spec and overrides are read from the store, so
nothing the user typed (or anything secret) lands in Prefect's flow-run parameters.

Up to `task_run_threshold` instances, every instance is a Prefect task run whose `wait_for` edges
are its upstream instances (a failed upstream shows as NotReady). Above it, one task run per step
reports progress through a Prefect progress artifact, so large sweeps keep the UI usable; the
instances themselves live in our store, API and CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State, StateType
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Failed

from airavata_prefect.adapters.db import Store, utcnow
from airavata_prefect.agent.local import LocalExecutor
from airavata_prefect.flows.dag import TaskGraph, TaskInstance, compile_graph
from airavata_prefect.flows.dispatch import RemoteExecutor, Routing, placed_resources
from airavata_prefect.flows.prefect_launch import PrefectLaunch
from airavata_prefect.flows.scheduler import Executor, Hooks, Outcome, Recorder, Scheduler, Summary
from airavata_prefect.flows.settings import Settings, get_settings
from airavata_prefect.flows.spec import parse_spec_text
from airavata_prefect.flows.states import ExperimentStatus, TaskState, Transition

PROGRESS_SECONDS = 2.0


def _prefect_state(iid: str, outcome: Outcome) -> State:
    if outcome.state == TaskState.COMPLETED:
        return Completed(message=f"{iid}: completed")
    if outcome.state == TaskState.CANCELED:
        return Cancelled(message=f"{iid}: {outcome.reason or 'canceled'}")
    return Failed(message=f"{iid}: {outcome.reason}")


@task(name="instance", task_run_name="{instance_id}", cache_policy=NO_CACHE,
      persist_result=False)
async def run_instance(instance_id: str, body: Callable[[], Awaitable[Outcome]]) -> State:
    return _prefect_state(instance_id, await body())


@task(name="step", task_run_name="{step} ({count} instances)", cache_policy=NO_CACHE,
      persist_result=False)
async def run_step(step: str, count: int, tracker: StepTracker) -> State:
    artifact = await acreate_progress_artifact(progress=0.0, description=f"{step}: 0/{count}")
    while True:  # always ends with a last update, however fast the step was
        finished = tracker.finished(step)
        done = tracker.settled(step)
        await aupdate_progress_artifact(artifact, progress=100.0 * done / count,
                                        description=f"{step}: {done}/{count} settled")
        if finished:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tracker.events[step].wait(), PROGRESS_SECONDS)
    counts = tracker.counts[step]
    bad = {k: v for k, v in counts.items() if k != TaskState.COMPLETED}
    text = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
    if not bad:
        return Completed(message=f"{step}: {text}")
    if set(bad) == {TaskState.CANCELED}:
        return Cancelled(message=f"{step}: {text}")
    return Failed(message=f"{step}: {text}")


class StepTracker:
    def __init__(self, graph: TaskGraph) -> None:
        self.totals = {s.name: s.count for s in graph.steps}
        self.counts: dict[str, dict[str, int]] = {s.name: {} for s in graph.steps}
        self.events = {s.name: asyncio.Event() for s in graph.steps}

    def settled(self, step: str) -> int:
        return sum(self.counts[step].values())

    def finished(self, step: str) -> bool:
        return self.settled(step) >= self.totals[step]

    def add(self, step: str, state: TaskState) -> None:
        self.counts[step][state] = self.counts[step].get(state, 0) + 1
        if self.finished(step):
            self.events[step].set()


class PerInstanceHooks(Hooks):
    """Each instance is a Prefect task run; `wait_for` carries the graph's edges into the UI."""

    def __init__(self, graph: TaskGraph) -> None:
        self.graph = graph
        self.states: dict[str, State] = {}

    def _upstream_states(self, inst_deps: tuple[str, ...]) -> list[State]:
        out = []
        for dep in inst_deps:
            if dep.endswith("[*]"):
                step = dep[:-3]
                out += [self.states[f"{step}[{i}]"] for i in range(self.graph.by_name[step].count)
                        if f"{step}[{i}]" in self.states]
            elif dep in self.states:
                out.append(self.states[dep])
        return out

    async def run(self, inst: TaskInstance, body: Callable[[], Awaitable[Outcome]]) -> Outcome:
        result: list[Outcome] = []

        async def capture() -> Outcome:
            result.append(await body())
            return result[0]

        self.states[inst.id] = await run_instance(
            inst.id, capture, wait_for=self._upstream_states(inst.depends_on), return_state=True)
        return result[0] if result else Outcome(TaskState.FAILED, None, "did not start")

    async def skipped(self, step: str, index: int, state: TaskState) -> None:
        inst = self.graph.instance(step, index)
        ups = self._upstream_states(inst.depends_on)
        reason = "canceled" if state == TaskState.CANCELED else "an upstream task did not complete"

        async def never() -> Outcome:  # runs only when no failed upstream is known to Prefect yet
            return Outcome(state, None, reason)

        self.states[inst.id] = await run_instance(inst.id, never, wait_for=ups,
                                                  return_state=True)


class PerStepHooks(Hooks):
    """One Prefect task run per step, started when its first instance starts or settles."""

    def __init__(self, graph: TaskGraph) -> None:
        self.tracker = StepTracker(graph)
        self.step_runs: dict[str, asyncio.Task] = {}

    def _touch(self, step: str) -> None:
        if step not in self.step_runs:
            self.step_runs[step] = asyncio.ensure_future(run_step(
                step, self.tracker.totals[step], self.tracker, return_state=True))

    async def run(self, inst: TaskInstance, body: Callable[[], Awaitable[Outcome]]) -> Outcome:
        self._touch(inst.step)
        return await body()

    async def skipped(self, step: str, index: int, state: TaskState) -> None:
        self._touch(step)

    def settled(self, step: str, state: TaskState) -> None:
        self._touch(step)
        self.tracker.add(step, state)


def _sink(store: Store, exp_id: str) -> Callable[[list[Transition]], None]:
    return lambda batch: store.apply_transitions(exp_id, batch)


def _cancelling_in_prefect(flow_run_id: str | None) -> bool:
    """A flow run started outside a worker is not stopped by Prefect itself: we watch for it."""
    if not flow_run_id:
        return False
    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
    except Exception:  # the API being briefly unreachable must not cancel anything
        return False
    return state is not None and state.type in (StateType.CANCELLING, StateType.CANCELLED)


def _final_status(summary: Summary) -> tuple[ExperimentStatus, str]:
    text = ", ".join(f"{v} {k.lower()}" for k, v in sorted(summary.totals().items()))
    if summary.canceled:
        return ExperimentStatus.CANCELED, text
    return (ExperimentStatus.COMPLETED if summary.ok else ExperimentStatus.FAILED), text


async def execute_experiment(store: Store, exp: dict, graph: TaskGraph, settings: Settings,
                             *, per_instance: bool) -> Summary:
    hooks: PerInstanceHooks | PerStepHooks = (PerInstanceHooks(graph) if per_instance
                                              else PerStepHooks(graph))
    flow_run_id = flow_run.id

    def is_cancelled() -> bool:  # `airavata experiment cancel`, or Cancel in the Prefect UI
        return store.cancel_requested(exp["id"]) or _cancelling_in_prefect(flow_run_id)

    local = LocalExecutor(graph, exp["id"])
    placed = placed_resources(exp.get("plan"), graph)
    remote: RemoteExecutor | None = None
    executor: Executor = local
    if placed is not None:
        where = placed  # bound for the lambdas below

        def resource_of(step: str, index: int) -> str:
            return where[step][index]

        remote = RemoteExecutor(store, exp["id"], graph, PrefectLaunch(exp["id"]), resource_of)
        executor = Routing(local, remote, placed)
    scheduler = Scheduler(
        graph, executor, Recorder(_sink(store, exp["id"])), concurrency=settings.concurrency,
        cancel_poll=settings.cancel_poll_seconds, is_cancelled=is_cancelled, hooks=hooks,
        resource_of=resource_of if placed is not None else None)
    try:
        summary = await scheduler.run()
    finally:
        if remote is not None:
            await remote.close()
    if isinstance(hooks, PerStepHooks) and hooks.step_runs:
        await asyncio.gather(*hooks.step_runs.values())
    return summary


@flow(name="run_experiment", flow_run_name="{experiment_id}", persist_result=False,
      validate_parameters=True)
async def run_experiment(experiment_id: str) -> Any:
    """Run a stored experiment; the flow run ends Completed, Failed or Cancelled like it."""
    logger = get_run_logger()
    settings = get_settings()
    store = Store(settings.db_url)
    try:
        exp = store.get_experiment(experiment_id)
        loaded = parse_spec_text(exp["spec_text"], exp["source"])
        graph = compile_graph(loaded, exp["params"], root=exp["workdir"],
                              max_instances=settings.max_instances)
        started = store.update_experiment(
            experiment_id, status=ExperimentStatus.RUNNING, flow_run_id=str(flow_run.id or ""),
            runner_pid=os.getpid(), started_at=utcnow(), expect=[ExperimentStatus.CREATED])
        if not started:
            return Failed(message=f"experiment {experiment_id} is not waiting to run "
                                  f"(status {store.get_experiment(experiment_id)['status']})")
        if exp["plan"]:
            plan = exp["plan"]
            await acreate_table_artifact(
                key=f"plan-{experiment_id[:8]}", table=plan["assignments"],
                description=(f"placement ({plan['status']}, objective {plan['objective']}): "
                             f"cost {plan['total_cost']:.2f}, makespan "
                             f"{plan['makespan_seconds']:.0f} s, gap {plan['gap']:.2%}"))
        per_instance = graph.total <= settings.task_run_threshold
        logger.info("experiment %s (%s): %d instances in %d steps, %s", exp["name"],
                    experiment_id, graph.total, len(graph.steps),
                    "one task run per instance" if per_instance else "one task run per step")
        summary = await execute_experiment(store, exp, graph, settings, per_instance=per_instance)
        status, text = _final_status(summary)
        store.update_experiment(experiment_id, status=status, message=text)
        await acreate_table_artifact(
            key=f"experiment-{experiment_id[:8]}",
            table=[{"step": s, **{k.lower(): v for k, v in c.items()}}
                   for s, c in summary.counts.items()],
            description=f"{exp['name']}: {text}")
        logger.info("experiment %s ended %s: %s", experiment_id, status, text)
        if status == ExperimentStatus.COMPLETED:
            return {"experiment_id": experiment_id, "status": str(status), "summary": text}
        if status == ExperimentStatus.CANCELED:
            return Cancelled(message=text)
        return Failed(message=text)
    finally:
        store.close()
