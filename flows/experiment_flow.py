"""The `run-experiment` Prefect flow: one experiment, run to its end (usecases/run.py), whichever
door started it: the Prefect UI's form, `prefect deployment run`, a schedule, Prefect's API, or
`airavata experiment run` (usecases/flow_runs.py decides what it runs, and as whom). No
parameter is ever secret, and identity is never one.

Up to `task_run_threshold` instances, every instance is a Prefect task run whose `wait_for` edges
are its upstream instances (a failed upstream shows as NotReady). Above it, one task run per step
reports progress through a Prefect progress artifact, so large sweeps keep the UI usable; the
instances themselves live in our store, API and CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict
from typing import Any, cast

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.runtime import deployment, flow_run
from prefect.states import Cancelled, Completed, Failed

from airavata_prefect.domain.dag import TaskGraph, TaskInstance
from airavata_prefect.domain.endings import Outcome
from airavata_prefect.domain.errors import NotFound
from airavata_prefect.domain.problems import SpecError
from airavata_prefect.domain.scheduler import Hooks
from airavata_prefect.domain.states import ExperimentStatus, TaskState, summarize
from airavata_prefect.usecases import deployments, flow_runs, lifecycle, run
from airavata_prefect.usecases.context import open_context
from airavata_prefect.usecases.correlation import correlated, correlation_id
from airavata_prefect.usecases.errors import BadInput, Forbidden, NoPlacement, Unavailable
from airavata_prefect.usecases.settings import get_settings

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
    text = summarize(counts)
    if not bad:
        return Completed(message=f"{step}: {text}")
    if set(bad) == {TaskState.CANCELED}:
        return Cancelled(message=f"{step}: {text}")
    return Failed(message=f"{step}: {text}")


def _task_run(call: object) -> Coroutine[Any, Any, State]:
    """An async task called with return_state=True: Prefect's stubs type the call as its
    State, but the call is a coroutine that gives the State."""
    return cast("Coroutine[Any, Any, State]", call)


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

        self.states[inst.id] = await _task_run(run_instance(
            inst.id, capture, wait_for=self._upstream_states(inst.depends_on), return_state=True))
        return result[0] if result else Outcome(TaskState.FAILED, None, "did not start")

    async def skipped(self, step: str, index: int, state: TaskState) -> None:
        inst = self.graph.instance(step, index)
        ups = self._upstream_states(inst.depends_on)
        reason = "canceled" if state == TaskState.CANCELED else "an upstream task did not complete"

        async def never() -> Outcome:  # runs only when no failed upstream is known to Prefect yet
            return Outcome(state, None, reason)

        self.states[inst.id] = await _task_run(run_instance(inst.id, never, wait_for=ups,
                                                            return_state=True))


class PerStepHooks(Hooks):
    """One Prefect task run per step, started when its first instance starts or settles."""

    def __init__(self, graph: TaskGraph) -> None:
        self.tracker = StepTracker(graph)
        self.step_runs: dict[str, asyncio.Task] = {}

    def _touch(self, step: str) -> None:
        if step not in self.step_runs:
            self.step_runs[step] = asyncio.ensure_future(_task_run(run_step(
                step, self.tracker.totals[step], self.tracker, return_state=True)))

    async def run(self, inst: TaskInstance, body: Callable[[], Awaitable[Outcome]]) -> Outcome:
        self._touch(inst.step)
        return await body()

    async def skipped(self, step: str, index: int, state: TaskState) -> None:
        self._touch(step)

    def settled(self, step: str, state: TaskState) -> None:
        self._touch(step)
        self.tracker.add(step, state)


def _failed(logger: Any, message: str) -> State:
    logger.error("%s", message)
    return Failed(message=message)


@flow(name=deployments.FLOW, persist_result=False, validate_parameters=True,
      description="Run an Airavata experiment: a parameter sweep over a graph of bash steps.")
async def run_experiment(
    spec: str = "",
    params: dict[str, str] = {},  # noqa: B006  (Prefect copies parameters)
    project: str = "",
    name: str = "",
    experiment_id: str = "",
    resume_of: str = "",
) -> Any:
    """Submit (or take over) an experiment and run it; the flow run ends Completed, Failed or
    Cancelled like it.

    Args:
        spec: The experiment YAML itself, or a path to it that the worker can read.
        params: Parameter overrides, NAME: value.
        project: Project to run in (default and only choice: the deployment's).
        name: Experiment name (default: the spec's, else the file name).
        experiment_id: Run a stored experiment instead (what `airavata experiment run` does).
        resume_of: Set by the automation that resumes a crashed run; leave empty.
    """
    logger = get_run_logger()
    settings = get_settings()
    flow_run_id = str(flow_run.id or "") or None
    asked = flow_runs.Asked(spec, dict(params or {}), project, name, experiment_id, resume_of)
    with open_context(settings) as ctx, correlated(
            ctx.store.audit.submit_correlation(experiment_id) if experiment_id else None):
        try:
            claimed = await asyncio.to_thread(flow_runs.begin, ctx, asked,
                                              flow_run_id=flow_run_id,
                                              deployment_id=str(deployment.id or "") or None)
        except (SpecError, Forbidden, NoPlacement, Unavailable, BadInput,
                run.NotWaiting) as exc:
            return _failed(logger, str(exc))
        except NotFound as exc:
            return _failed(logger, str(exc))
        exp, graph = claimed.experiment, claimed.graph
        if flow_run_id:
            with contextlib.suppress(Exception):  # a label is not worth failing the run for
                await deployments.label(flow_run_id, exp)
        if claimed.resumed_from:
            logger.warning("experiment %s: resumed from crashed flow run %s", exp.id,
                           claimed.resumed_from)
        if exp.plan is not None:
            plan = exp.plan
            await acreate_table_artifact(
                key=f"plan-{exp.short_id}", table=[asdict(a) for a in plan.assignments],
                description=(f"placement ({plan.status}, objective {plan.objective}): "
                             f"cost {plan.total_cost or 0:.2f}, makespan "
                             f"{plan.makespan_seconds or 0:.0f} s, gap {plan.gap or 0:.2%}"))
        per_instance = graph.total <= settings.task_run_threshold
        logger.info("experiment %s (%s): %d instances in %d steps, %s; correlation id %s",
                    exp.name, exp.id, graph.total, len(graph.steps),
                    "one task run per instance" if per_instance else "one task run per step",
                    correlation_id())
        hooks: PerInstanceHooks | PerStepHooks = (PerInstanceHooks(graph) if per_instance
                                                  else PerStepHooks(graph))
        try:
            status, text, summary = await run.execute(ctx.store, claimed, settings, hooks,
                                                      flow_run_id=flow_run_id)
        except Exception as exc:  # nothing else will end it: no view may show it running
            message = f"internal error: {type(exc).__name__}: {exc}"
            await asyncio.to_thread(lifecycle.fail_unfinished, ctx.store, exp.id,
                                    ExperimentStatus.FAILED, message)
            return _failed(logger, message)
        if isinstance(hooks, PerStepHooks) and hooks.step_runs:
            await asyncio.gather(*hooks.step_runs.values())
    await acreate_table_artifact(
        key=f"experiment-{exp.short_id}",
        table=[{"step": s, **{k.lower(): v for k, v in c.items()}}
               for s, c in summary.counts.items()],
        description=f"{exp.name}: {text}")
    logger.info("experiment %s ended %s: %s", exp.id, status, text)
    if status == ExperimentStatus.COMPLETED:
        return {"experiment_id": exp.id, "status": str(status), "summary": text}
    if status == ExperimentStatus.CANCELED:
        return Cancelled(message=text)
    return Failed(message=text)
