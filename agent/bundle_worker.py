"""The Prefect worker that runs bundles from its own process: each flow run in its pool is one
bundle, executed on the pool's resource (usecases/bundles/execute.py), and the flow run ends in
the state its instances reached.

A flow run's parameters are `experiment_id` and `bundle_id`, nothing else: the spec, the
instances and the resource come from the store and the resource's block. Nothing runs Prefect
inside the allocation ("bundle" mode), so compute nodes need no route back to us.
"""

from __future__ import annotations

import abc
import asyncio
from typing import Any, ClassVar

import anyio.abc
from prefect.client.schemas.objects import FlowRun, State
from prefect.states import Running
from prefect.workers.base import BaseWorker, BaseWorkerResult

from airavata_prefect.usecases.bundles.execute import (
    ThroughWorker,
    cancel_bundle,
    flow_state,
    run_bundle,
)
from airavata_prefect.usecases.kinds import ComputeBlock
from airavata_prefect.usecases.settings import get_settings


class BundleWorkerResult(BaseWorkerResult):
    pass


class BundleWorker(BaseWorker, abc.ABC):  # ABC: Prefect does not register it as a type
    """The worker of a compute kind whose bundles run from the worker's process. Subclasses
    (agent/workers.py, one per kind) set `kind` and Prefect's `type` and job configuration."""

    kind: ClassVar[type[ComputeBlock]]

    def opener(self, configuration: Any) -> ThroughWorker:
        return ThroughWorker(configuration, enforce_walltime=self.kind.enforce_walltime)

    async def run(self, flow_run: FlowRun, configuration: Any,
                  task_status: anyio.abc.TaskStatus[Any] | None = None) -> BundleWorkerResult:
        logger = self.get_flow_run_logger(flow_run)
        params = flow_run.parameters
        bundle_id = str(params["bundle_id"])
        started: list[str] = []
        running: list[asyncio.Future[None]] = []

        def submitted(ids: list[str]) -> None:
            started.append(f"{bundle_id}|{','.join(ids)}")
            if task_status is not None:
                task_status.started(started[0])  # Prefect records it as the infrastructure id
            running.append(asyncio.ensure_future(self._set_state(flow_run, Running())))

        try:
            result = await run_bundle(
                get_settings(), str(params["experiment_id"]), bundle_id,
                self.opener(configuration), flow_run_id=flow_run.id,
                poll_seconds=configuration.poll_seconds, logger=logger, submitted=submitted)
        finally:
            if not started and task_status is not None:
                task_status.started(f"{bundle_id}|")  # failed before submitting
        await asyncio.gather(*running)
        await self._set_state(flow_run, flow_state(result))
        return BundleWorkerResult(identifier=started[0] if started else bundle_id,
                                  status_code=0)

    async def kill_infrastructure(self, infrastructure_pid: str, configuration: Any,
                                  grace_seconds: int = 30) -> None:
        """Cancel a bundle (`bundle_id|id,id`), whether or not a worker still follows it."""
        bundle_id, _, ids = infrastructure_pid.partition("|")
        await cancel_bundle(get_settings(), bundle_id, ids.split(","), self.opener(configuration),
                            wait_seconds=max(5.0, 3 * float(configuration.poll_seconds)))

    async def _set_state(self, flow_run: FlowRun, state: State) -> None:
        # Nothing runs Prefect inside the allocation, so the worker reports the flow run's state.
        try:
            await self.client.set_flow_run_state(flow_run.id, state, force=True)
        except Exception as exc:  # our store holds the truth; Prefect shows it when it can
            self._logger.warning("could not set flow run %s to %s: %s", flow_run.id,
                                 state.type, exc)


__all__ = ["BundleWorker", "BundleWorkerResult"]
