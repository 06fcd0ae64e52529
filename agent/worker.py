"""What every bundle worker does with a flow run: execute its bundle (agent/execute.py) and end
the flow run in the state its instances reached.

A flow run's parameters are `experiment_id` and `bundle_id`, nothing else: the spec, the
instances and the resource come from the store and the resource's block. The worker never runs
Prefect inside the allocation ("bundle" mode), so compute nodes need no route back to us.
"""

from __future__ import annotations

import abc
import asyncio
from contextlib import ExitStack
from typing import Any, ClassVar

import anyio.abc
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.states import Cancelled, Completed, Failed, Running
from prefect.workers.base import (
    BaseJobConfiguration,
    BaseVariables,
    BaseWorker,
    BaseWorkerResult,
)
from pydantic import Field

from airavata_prefect.adapters.bundle_store import BUNDLE_ENDED, BundleStatus
from airavata_prefect.adapters.db import Store
from airavata_prefect.agent.execute import Opener, Session, execute_bundle, fail_all, open_resource
from airavata_prefect.flows.settings import get_settings
from airavata_prefect.flows.states import TaskState


class BundleJobConfiguration(BaseJobConfiguration):
    """What every bundle worker reads from its pool's base job template."""

    resource: str = Field(json_schema_extra={"template": "{{ resource }}"})
    poll_seconds: float = Field(1.0, json_schema_extra={"template": "{{ poll_seconds }}"})

    def prepare_for_flow_run(self, flow_run: FlowRun, *args: Any, **kwargs: Any) -> None:
        # The job runs bash, not Prefect: none of the worker's own PREFECT_* settings (its API
        # URL, an API key) reach it, only the env the pool or deployment sets on purpose.
        chosen = dict(self.env)
        super().prepare_for_flow_run(flow_run, *args, **kwargs)
        self.env = {k: v for k, v in chosen.items() if v is not None}


class BundleVariables(BaseVariables):
    resource: str = Field(description="The compute resource (its block name) this pool runs")
    poll_seconds: float = Field(1.0, gt=0, description="How often the worker checks progress")


class BundleWorkerResult(BaseWorkerResult):
    pass


class BundleWorker(BaseWorker, abc.ABC):  # type: ignore[type-arg]  # ABC: not registered
    """Subclasses set `type`, the job configuration, and how to open their resource."""

    block_type: ClassVar[Any]
    enforce_walltime: ClassVar[bool] = False  # True where no scheduler enforces it

    def open_session(self, block: Any, configuration: Any,
                     secret: dict[str, str] | None) -> Session:
        raise NotImplementedError

    def opener(self, configuration: Any) -> Opener:
        return Opener(self.block_type, configuration.resource,
                      lambda block, secret: self.open_session(block, configuration, secret),
                      enforce_walltime=self.enforce_walltime)

    async def run(self, flow_run: FlowRun, configuration: Any,
                  task_status: anyio.abc.TaskStatus[Any] | None = None) -> BundleWorkerResult:
        logger = self.get_flow_run_logger(flow_run)
        params = flow_run.parameters
        settings = get_settings()
        store = Store(settings.db_url)
        bundle_id = str(params["bundle_id"])
        started: list[str] = []
        running: list[asyncio.Future[None]] = []

        def submitted(ids: list[str]) -> None:
            started.append(f"{bundle_id}|{','.join(ids)}")
            if task_status is not None:
                task_status.started(started[0])  # Prefect records it as the infrastructure id
            running.append(asyncio.ensure_future(self._set_state(flow_run, Running())))

        async def cancelled() -> bool:
            if store.bundles.cancel_requested(bundle_id):
                return True
            try:
                state = (await self.client.read_flow_run(flow_run.id)).state
            except Exception:  # the API being briefly away must not cancel anything
                return False
            return state is not None and state.type in (StateType.CANCELLING,
                                                        StateType.CANCELLED)

        try:
            outcome = await execute_bundle(
                store, settings, str(params["experiment_id"]), bundle_id,
                self.opener(configuration), poll_seconds=configuration.poll_seconds,
                logger=logger, submitted=submitted, cancelled=cancelled)
        finally:
            if not started and task_status is not None:
                task_status.started(f"{bundle_id}|")  # failed before submitting
            store.close()
        await asyncio.gather(*running)
        await self._set_state(flow_run, final_state(outcome.counts, outcome.message,
                                                    outcome.canceled))
        return BundleWorkerResult(identifier=started[0] if started else bundle_id,
                                  status_code=0)

    async def kill_infrastructure(self, infrastructure_pid: str, configuration: Any,
                                  grace_seconds: int = 30) -> None:
        """Cancel a bundle (`bundle_id|id,id`). The worker following it sees the request in the
        store and cancels; when nobody follows it (that worker is gone), cancel here."""
        bundle_id, _, ids = infrastructure_pid.partition("|")
        settings = get_settings()
        store = Store(settings.db_url)
        try:
            store.bundles.request_cancel([bundle_id])
            loop = asyncio.get_running_loop()
            deadline = loop.time() + max(5.0, 3 * float(configuration.poll_seconds))
            while loop.time() < deadline:
                bundle = store.bundles.get(bundle_id)
                if bundle["status"] in BUNDLE_ENDED:
                    return
                await asyncio.sleep(0.5)
            exp = store.get_experiment(bundle["experiment_id"])
            with ExitStack() as stack:
                session, _, _ = await open_resource(stack, store, settings, bundle, exp,
                                                    self.opener(configuration), walltime=None,
                                                    mounts=[])
                await asyncio.to_thread(session.launcher.cancel,
                                        [i for i in ids.split(",") if i])
            fail_all(store, bundle, exp["id"], "canceled", state=TaskState.CANCELED,
                     status=BundleStatus.CANCELED)
        finally:
            store.close()

    async def _set_state(self, flow_run: FlowRun, state: Any) -> None:
        # Nothing runs Prefect inside the allocation, so the worker reports the flow run's state.
        try:
            await self.client.set_flow_run_state(flow_run.id, state, force=True)
        except Exception as exc:  # our store holds the truth; Prefect shows it when it can
            self._logger.warning("could not set flow run %s to %s: %s", flow_run.id,
                                 state.type, exc)


def final_state(counts: dict[str, int], message: str, canceled: bool) -> Any:
    if canceled:
        return Cancelled(message=message)
    if set(counts) == {str(TaskState.COMPLETED)}:
        return Completed(message=message)
    return Failed(message=message)


__all__ = ["BundleJobConfiguration", "BundleVariables", "BundleWorker", "BundleWorkerResult",
           "Session", "final_state"]
