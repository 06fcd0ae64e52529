"""Running a stored experiment: claim it, schedule its instances on the resources its plan chose
(this machine's slots, or bundles through the resources' work pools), record every state
change, and end it with a status. The Prefect flow (flows/experiment_flow.py) is the door that
calls this, with hooks that show the run as task runs."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from airavata_prefect.adapters import prefect_api
from airavata_prefect.adapters.store import Store, utcnow
from airavata_prefect.blocks import ComputeBlock
from airavata_prefect.domain.dag import TaskGraph
from airavata_prefect.domain.pilot import ActiveItem
from airavata_prefect.domain.plan import placed_resources
from airavata_prefect.domain.records import Bundle, Experiment, load_graph
from airavata_prefect.domain.resources import LOCAL
from airavata_prefect.domain.scheduler import (
    REMOTE_SLOTS,
    Executor,
    Hooks,
    Recorder,
    Resume,
    Scheduler,
    Summary,
)
from airavata_prefect.domain.states import (
    BUNDLE_ENDED,
    TERMINAL,
    BundleStatus,
    ExperimentStatus,
    TaskState,
    Transition,
    summarize,
)
from airavata_prefect.usecases import agent_starters, events, lineage
from airavata_prefect.usecases.catalog import load_compute
from airavata_prefect.usecases.conda_envs import CondaEnvironments
from airavata_prefect.usecases.dispatch import BUNDLE_FLOW, RemoteExecutor, Routing
from airavata_prefect.usecases.live_usage import LiveUsage
from airavata_prefect.usecases.local import LocalExecutor
from airavata_prefect.usecases.local_mounts import LocalMounts
from airavata_prefect.usecases.pilot_dispatch import AgentStarter, PilotExecutor
from airavata_prefect.usecases.pip_envs import PipEnvironments
from airavata_prefect.usecases.settings import Settings


class NotWaiting(RuntimeError):
    """The experiment is not waiting to run (another flow run took it, or it ended)."""


MAX_RESUMES = 5  # a run that crashes every time is not resumed for ever
CRASHED = "its orchestrator stopped while it ran; it runs again (no retry used)"


@dataclass
class Claimed:
    experiment: Experiment
    graph: TaskGraph
    resumed_from: str | None = None  # the dead flow run this one took the experiment from
    rerun: bool = False  # it ran before (a retry): what completed then stays completed


def claim(store: Store, experiment_id: str, flow_run_id: str | None,
          is_dead: Callable[[str], bool] = lambda _: False) -> Claimed:
    """Mark the experiment RUNNING under this flow run, once: a second claim is refused. A
    running experiment whose flow run `is_dead` (Crashed) is taken over and resumed."""
    exp = store.experiments.get(experiment_id)
    graph = load_graph(exp)
    if store.experiments.update(
            experiment_id, status=ExperimentStatus.RUNNING, flow_run_id=flow_run_id or "",
            runner_pid=os.getpid(), started_at=utcnow(), expect=[ExperimentStatus.CREATED]):
        return Claimed(store.experiments.get(experiment_id), graph,
                       rerun=exp.started_at is not None)
    exp = store.experiments.get(experiment_id)
    old = exp.flow_run_id
    if (exp.status in (ExperimentStatus.RUNNING, ExperimentStatus.CANCELING) and old
            and flow_run_id and old != flow_run_id and is_dead(old)):
        if store.experiments.take_over(exp.id, old, flow_run_id, MAX_RESUMES):
            return Claimed(store.experiments.get(experiment_id), graph, resumed_from=old)
        if exp.resumes >= MAX_RESUMES:
            message = f"its orchestrator crashed {exp.resumes + 1} times; not resumed again"
            store.experiments.update(exp.id, status=ExperimentStatus.FAILED, message=message,
                                     expect=[exp.status])
            events.experiment_ended(exp, ExperimentStatus.FAILED, message)
            raise NotWaiting(f"experiment {experiment_id}: {message}")
    raise NotWaiting(f"experiment {experiment_id} is not waiting to run (status "
                     f"{exp.status})")


@dataclass
class ResumePoint:
    resume: Resume
    bundles: list[Bundle]  # still out on registered resources: followed, never sent twice
    items: list[ActiveItem]  # queued for agents or held by one: followed too


def resume_point(store: Store, exp: Experiment) -> ResumePoint:
    """Where the dead run left the experiment: ended instances stay ended; instances in a
    bundle still out on a registered resource, or queued for agents, are followed there (never
    sent twice); the rest, and anything that was running in the dead run's own processes, run
    again without using up a retry."""
    bundles = [b for b in store.bundles.of_experiment(exp.id)
               if b.status not in BUNDLE_ENDED and b.flow_run_id]
    items = store.pilot.active_items(exp.id)
    out = {f"{b.step}[{index}]" for b in bundles for index, _ in b.instances}
    out |= {i.instance_id for i in items}
    for b in store.bundles.of_experiment(exp.id, active_only=True):
        if not b.flow_run_id:  # stored, never sent: its instances go out again
            store.bundles.update(b.id, status=BundleStatus.FAILED, message=CRASHED)
    resume = Resume()
    again = []
    for t in store.tasks.list(exp.id):
        if t.state in TERMINAL:
            resume.settled[t.instance_id] = t.state
        elif t.instance_id in out and t.state != TaskState.CREATED:
            resume.active[t.instance_id] = (t.state, t.attempt)
        else:
            resume.attempts[t.instance_id] = t.attempt
            if t.state != TaskState.CREATED:
                again.append(t.instance_id)
    store.tasks.reset(exp.id, again, message=CRASHED)
    return ResumePoint(resume, bundles, items)


async def pilot_resources(placed: dict[str, list[str]] | None) -> dict[str, ComputeBlock]:
    """The placed resources whose block says `mode: pilot`. One that cannot be read is left
    to the bundle path, which says why it cannot reach it."""
    names = {r for where in (placed or {}).values() for r in where} - {LOCAL}
    out: dict[str, ComputeBlock] = {}
    for name in sorted(names):
        try:
            block = await load_compute(name)
        except Exception:
            continue
        if block.mode == "pilot":
            out[name] = block
    return out


def final_status(summary: Summary) -> tuple[ExperimentStatus, str]:
    text = summarize(summary.totals())
    if summary.canceled:
        return ExperimentStatus.CANCELED, text
    return (ExperimentStatus.COMPLETED if summary.ok else ExperimentStatus.FAILED), text


async def execute(store: Store, claimed: Claimed, settings: Settings, hooks: Hooks, *,
                  flow_run_id: str | None) -> tuple[ExperimentStatus, str, Summary]:
    """Run every instance to its end and store the experiment's status."""
    exp, graph = claimed.experiment, claimed.graph
    events.experiment_running(exp, resumed_from=claimed.resumed_from)
    point = (resume_point(store, exp) if claimed.resumed_from or claimed.rerun
             else ResumePoint(Resume(), [], []))
    resume, adopt = point.resume, point.bundles

    def is_cancelled() -> bool:  # `airavata experiment cancel`, or Cancel in the Prefect UI
        return (store.experiments.cancel_requested(exp.id)
                or prefect_api.flow_run_cancelling_sync(flow_run_id))

    def is_paused() -> bool:  # `airavata experiment pause`
        return store.experiments.get(exp.id).paused

    placed = placed_resources(exp.plan, graph)
    launch = prefect_api.FlowRuns(BUNDLE_FLOW, {"experiment_id": exp.id})
    pilot_blocks = await pilot_resources(placed)
    mounts = LocalMounts(store, settings, exp, graph)
    here = LocalExecutor(graph, exp.id, mounts, PipEnvironments(settings),
                         CondaEnvironments(settings),
                         LiveUsage(lambda usages: store.tasks.live_usage(exp.id, usages)))
    local: Executor = here
    pilot: PilotExecutor | None = None
    local_items = any(i.resource == LOCAL for i in point.items)
    if settings.local_mode == "pilot" or point.items or pilot_blocks:

        def starter_for(resource: str) -> AgentStarter:
            if resource == LOCAL:
                return agent_starters.LocalAgents(settings)
            if resource not in pilot_blocks:  # an earlier run's items; the mode changed since
                raise RuntimeError(f"{resource} is not in pilot mode any more")
            return agent_starters.PoolAgents(store, launch, resource, pilot_blocks[resource])

        pilot = PilotExecutor(store, exp.id, graph,
                              lambda step, index: placed[step][index] if placed else LOCAL,
                              starter_for, mounts=mounts)
        pilot.adopt(point.items,
                    {iid: st for iid, (st, _) in resume.active.items()})
        if settings.local_mode == "pilot" or local_items:
            local = pilot  # (local items an earlier run queued are followed whatever the mode)
    remote: RemoteExecutor | None = None
    executor: Executor = local
    resource_of: Callable[[str, int], str] | None = None
    if placed is not None:
        where = placed  # bound for the closure below

        def resource_of(step: str, index: int) -> str:
            return where[step][index]

        remote = RemoteExecutor(store, exp.id, graph, launch, resource_of)
        executor = Routing(local, remote, placed, pilot=pilot,
                           pilots=frozenset(pilot_blocks) | {i.resource for i in point.items})
        if adopt:
            remote.adopt(adopt, {iid: st for iid, (st, _) in resume.active.items()})

    # Every mode's attempts end through this one executor: lineage is recorded there, once.
    executor = lineage.recording(executor, store, exp.id, graph,
                                 resource_of or (lambda step, index: LOCAL))

    def sink(batch: list[Transition]) -> None:
        store.tasks.apply_transitions(exp.id, batch)
        events.instance_events(exp, batch)  # after the write (never raises)

    scheduler = Scheduler(
        graph, executor, Recorder(sink),
        # In pilot mode the agents' slots bound what runs at once; the queue takes the rest.
        concurrency=REMOTE_SLOTS if local is pilot else settings.concurrency,
        cancel_poll=settings.cancel_poll_seconds, is_cancelled=is_cancelled, hooks=hooks,
        resource_of=resource_of, is_paused=is_paused, resume=resume)
    try:
        summary = await scheduler.run()
    finally:
        mounts.close()
        await here.close()
        if remote is not None:
            await remote.close()
        if pilot is not None:
            await pilot.close()
    status, text = final_status(summary)
    store.experiments.update(exp.id, status=status, message=text)
    events.experiment_ended(exp, status, text, summary.totals())
    return status, text, summary


__all__ = [
    "MAX_RESUMES",
    "Claimed",
    "NotWaiting",
    "ResumePoint",
    "claim",
    "execute",
    "final_status",
    "resume_point",
]
