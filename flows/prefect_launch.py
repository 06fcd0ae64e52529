"""Bundles as Prefect flow runs: `execute_bundle/<resource>` in the resource's work pool, linked
to the experiment's flow run as a subflow, so the Prefect UI shows each bundle under it."""

from __future__ import annotations

from typing import Any

from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.states import Cancelling

from airavata_prefect.flows.bundle_flow import FLOW_NAME


class PrefectLaunch:
    def __init__(self, experiment_id: str) -> None:
        self.experiment_id = experiment_id

    async def create(self, resource: str, bundle_id: str, step: str,
                     job_variables: dict[str, Any]) -> str:
        run = await run_deployment(  # type: ignore[misc]  # the async variant in a flow
            f"{FLOW_NAME}/{resource}",
            parameters={"experiment_id": self.experiment_id, "bundle_id": bundle_id},
            job_variables=job_variables or None, timeout=0, as_subflow=True,
            idempotency_key=bundle_id, flow_run_name=f"{step}@{resource} {bundle_id[:8]}")
        return str(run.id)

    async def cancel(self, flow_run_ids: list[str]) -> None:
        async with get_client() as client:
            for fid in flow_run_ids:
                await client.set_flow_run_state(fid, Cancelling(message="experiment canceled"),
                                                force=True)

    async def ended(self, flow_run_id: str) -> str | None:
        async with get_client() as client:
            try:
                state = (await client.read_flow_run(flow_run_id)).state
            except Exception:  # the API being briefly away says nothing about the run
                return None
        if state is None or not state.is_final():
            return None
        return f"its flow run ended {state.name}" + (f": {state.message}" if state.message
                                                      else "")

    async def pool_type(self, resource: str) -> str:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(f"{FLOW_NAME}/{resource}")
            if not deployment.work_pool_name:
                raise RuntimeError(f"deployment {FLOW_NAME}/{resource} has no work pool")
            return (await client.read_work_pool(deployment.work_pool_name)).type


__all__ = ["PrefectLaunch"]
