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
from airavata_prefect.domain.dag import TaskGraph
from airavata_prefect.domain.plan import placed_resources
from airavata_prefect.domain.records import Experiment, load_graph
from airavata_prefect.domain.scheduler import Executor, Hooks, Recorder, Scheduler, Summary
from airavata_prefect.domain.states import ExperimentStatus, Transition, summarize
from airavata_prefect.usecases.dispatch import BUNDLE_FLOW, RemoteExecutor, Routing
from airavata_prefect.usecases.local import LocalExecutor
from airavata_prefect.usecases.settings import Settings


class NotWaiting(RuntimeError):
    """The experiment is not waiting to run (another flow run took it, or it ended)."""


@dataclass
class Claimed:
    experiment: Experiment
    graph: TaskGraph


def claim(store: Store, experiment_id: str, flow_run_id: str | None) -> Claimed:
    """Mark the experiment RUNNING under this flow run, once: a second claim is refused."""
    exp = store.experiments.get(experiment_id)
    graph = load_graph(exp)
    if not store.experiments.update(
            experiment_id, status=ExperimentStatus.RUNNING, flow_run_id=flow_run_id or "",
            runner_pid=os.getpid(), started_at=utcnow(), expect=[ExperimentStatus.CREATED]):
        raise NotWaiting(f"experiment {experiment_id} is not waiting to run (status "
                         f"{store.experiments.get(experiment_id).status})")
    return Claimed(store.experiments.get(experiment_id), graph)


def final_status(summary: Summary) -> tuple[ExperimentStatus, str]:
    text = summarize(summary.totals())
    if summary.canceled:
        return ExperimentStatus.CANCELED, text
    return (ExperimentStatus.COMPLETED if summary.ok else ExperimentStatus.FAILED), text


async def execute(store: Store, claimed: Claimed, settings: Settings, hooks: Hooks, *,
                  flow_run_id: str | None) -> tuple[ExperimentStatus, str, Summary]:
    """Run every instance to its end and store the experiment's status."""
    exp, graph = claimed.experiment, claimed.graph

    def is_cancelled() -> bool:  # `airavata experiment cancel`, or Cancel in the Prefect UI
        return (store.experiments.cancel_requested(exp.id)
                or prefect_api.flow_run_cancelling_sync(flow_run_id))

    local = LocalExecutor(graph, exp.id)
    placed = placed_resources(exp.plan, graph)
    remote: RemoteExecutor | None = None
    executor: Executor = local
    resource_of: Callable[[str, int], str] | None = None
    if placed is not None:
        where = placed  # bound for the closure below

        def resource_of(step: str, index: int) -> str:
            return where[step][index]

        launch = prefect_api.FlowRuns(BUNDLE_FLOW, {"experiment_id": exp.id})
        remote = RemoteExecutor(store, exp.id, graph, launch, resource_of)
        executor = Routing(local, remote, placed)

    def sink(batch: list[Transition]) -> None:
        store.tasks.apply_transitions(exp.id, batch)

    scheduler = Scheduler(
        graph, executor, Recorder(sink), concurrency=settings.concurrency,
        cancel_poll=settings.cancel_poll_seconds, is_cancelled=is_cancelled, hooks=hooks,
        resource_of=resource_of)
    try:
        summary = await scheduler.run()
    finally:
        if remote is not None:
            await remote.close()
    status, text = final_status(summary)
    store.experiments.update(exp.id, status=status, message=text)
    return status, text, summary


__all__ = ["Claimed", "NotWaiting", "claim", "execute", "final_status"]
