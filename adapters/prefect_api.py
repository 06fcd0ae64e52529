"""Prefect's API as the use cases need it: bundle flow runs in a resource's work pool, whether a
flow run is being cancelled, registered blocks, work pools and deployments.

Flows, tasks and artifacts are Prefect's own machinery, used where they run (flows/); this
module is the rest of what we ask of the Prefect server, each in one place.
"""

from __future__ import annotations

import os
from typing import Any
from uuid import UUID

import httpx
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.client.schemas.objects import State, StateType
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelling

_CANCELLING = (StateType.CANCELLING, StateType.CANCELLED)


class PrefectUnavailable(RuntimeError):
    """The Prefect API does not answer; the message says where it was looked for."""


def api_url() -> str | None:
    return os.environ.get("PREFECT_API_URL") or None


def _unavailable(exc: Exception, what: str) -> PrefectUnavailable:
    return PrefectUnavailable(f"{what}: the Prefect API at {api_url() or '(PREFECT_API_URL unset)'}"
                              f" does not answer ({exc})")


# -- flow runs ---------------------------------------------------------------------------------


def is_cancelling(state: State | None) -> bool:
    return state is not None and state.type in _CANCELLING


async def flow_run_cancelling(flow_run_id: Any) -> bool:
    """Whether someone cancelled this flow run (Cancel in the Prefect UI). The API being briefly
    unreachable says nothing, so it answers False then, never cancelling on a guess."""
    if not flow_run_id:
        return False
    try:
        async with get_client() as client:
            return is_cancelling((await client.read_flow_run(flow_run_id)).state)
    except Exception:
        return False


def flow_run_cancelling_sync(flow_run_id: Any) -> bool:
    """As `flow_run_cancelling`, from a thread with no event loop of its own."""
    if not flow_run_id:
        return False
    try:
        with get_client(sync_client=True) as client:
            return is_cancelling(client.read_flow_run(flow_run_id).state)
    except Exception:
        return False


class FlowRuns:
    """Bundles as flow runs of `<flow>/<resource>` in the resource's work pool, linked to the
    experiment's flow run as subflows, so the Prefect UI shows each bundle under it."""

    def __init__(self, flow_name: str, parameters: dict[str, str]) -> None:
        self.flow_name = flow_name
        self.parameters = parameters  # what every run of this experiment carries

    async def create(self, resource: str, bundle_id: str, step: str,
                     job_variables: dict[str, Any]) -> str:
        run = await run_deployment(  # type: ignore[misc]  # the async variant in a flow
            f"{self.flow_name}/{resource}",
            parameters={**self.parameters, "bundle_id": bundle_id},
            job_variables=job_variables or None, timeout=0, as_subflow=True,
            idempotency_key=bundle_id, flow_run_name=f"{step}@{resource} {bundle_id[:8]}")
        return str(run.id)

    async def cancel(self, flow_run_ids: list[str]) -> None:
        async with get_client() as client:
            for fid in flow_run_ids:
                await client.set_flow_run_state(fid, Cancelling(message="experiment canceled"),
                                                force=True)

    async def ended(self, flow_run_id: str) -> str | None:
        """None while the flow run may still report; else why it ended."""
        async with get_client() as client:
            try:
                state = (await client.read_flow_run(UUID(flow_run_id))).state
            except Exception:  # the API being briefly away says nothing about the run
                return None
        if state is None or not state.is_final():
            return None
        return f"its flow run ended {state.name}" + (f": {state.message}" if state.message
                                                      else "")

    async def pool_type(self, resource: str) -> str:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(f"{self.flow_name}/{resource}")
            if not deployment.work_pool_name:
                raise RuntimeError(f"deployment {self.flow_name}/{resource} has no work pool")
            return str((await client.read_work_pool(deployment.work_pool_name)).type)


# -- blocks ------------------------------------------------------------------------------------


def _filter(slugs: list[str], name: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"block_types": {"slug": {"any_": slugs}}, "include_secrets": False,
                            "limit": 200}
    if name is not None:
        body["block_documents"] = {"name": {"any_": [name]}, "is_anonymous": {"eq_": False}}
    return body


def read_blocks(slugs: list[str], name: str | None = None) -> list[tuple[str, Block]]:
    """Named blocks of these types (with this name), in one request; their classes must be
    imported (Prefect finds them by slug)."""
    if api_url() is None:
        return []
    try:
        with get_client(sync_client=True) as client:
            docs = client.request("POST", "/block_documents/filter",
                                  json=_filter(slugs, name)).json()
    except (httpx.HTTPError, OSError) as exc:
        raise _unavailable(exc, "cannot list registered resources") from None
    return _blocks(docs)


async def aread_blocks(slugs: list[str], name: str | None = None) -> list[tuple[str, Block]]:
    if api_url() is None:
        return []  # as read_blocks: never Prefect's temporary server
    try:
        async with get_client() as client:
            response = await client.request("POST", "/block_documents/filter",
                                            json=_filter(slugs, name))
    except (httpx.HTTPError, OSError) as exc:
        raise _unavailable(exc, "cannot read registered resources") from None
    return _blocks(response.json())


def _blocks(docs: list[dict[str, Any]]) -> list[tuple[str, Block]]:
    """(name, block) of each named document; no request per block."""
    from prefect.client.schemas.objects import BlockDocument

    return [(doc.name, Block._from_block_document(doc))
            for doc in BlockDocument.model_validate_list(docs)
            if doc.name and not doc.is_anonymous]


def save_block(block: Block, name: str, *, overwrite: bool) -> None:
    """Raises ValueError when the name is taken and `overwrite` is off."""
    block.save(name, overwrite=overwrite)


# -- work pools and deployments ----------------------------------------------------------------


def deployment_exists(name: str) -> bool:
    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(name)
            return True
    except ObjectNotFound:
        return False
    except (httpx.HTTPError, OSError) as exc:
        raise _unavailable(exc, f"cannot read deployment {name}") from None


def pool_type(pool: str) -> str | None:
    """The type of an existing work pool, or None when there is none of that name."""
    with get_client(sync_client=True) as client:
        try:
            return str(client.read_work_pool(pool).type)
        except ObjectNotFound:
            return None


def ensure_pool(pool: str, type_: str, template: dict[str, Any], description: str) -> None:
    """Create the work pool, or give an existing one of the same type this template."""
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
            client.update_work_pool(pool, WorkPoolUpdate(base_job_template=template))
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(
                name=pool, type=type_, base_job_template=template, description=description))


def ensure_deployment(flow_name: str, name: str, *, pool: str, entrypoint: str,
                      job_variables: dict[str, Any], description: str,
                      parameter_schema: dict[str, Any] | None = None,
                      tags: list[str] | None = None) -> str:
    """Create or update the deployment `flow_name/name`; its id. With a parameter schema,
    the UI's Custom run shows a form and Prefect checks each run's parameters against it."""
    extra: dict[str, Any] = {}
    if parameter_schema is not None:
        extra = {"parameter_openapi_schema": parameter_schema, "enforce_parameter_schema": True}
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(flow_name)
        return str(client.create_deployment(
            flow_id=flow_id, name=name, work_pool_name=pool, entrypoint=entrypoint,
            job_variables=job_variables, description=description, tags=tags or [],
            **({"enforce_parameter_schema": False} | extra)))


# -- the experiment flow's deployments, runs, schedules and automations ----------------------


def deployment_id(name: str) -> str | None:
    """The id of deployment `flow/name`, or None when there is none."""
    try:
        with get_client(sync_client=True) as client:
            return str(client.read_deployment_by_name(name).id)
    except ObjectNotFound:
        return None
    except (httpx.HTTPError, OSError) as exc:
        raise _unavailable(exc, f"cannot read deployment {name}") from None


def deployment_pool(name: str) -> str:
    with get_client(sync_client=True) as client:
        return str(client.read_deployment_by_name(name).work_pool_name or "")


def create_run(deployment: str, parameters: dict[str, Any], *, idempotency_key: str,
               name: str | None = None, tags: list[str] | None = None) -> str:
    """A flow run of the deployment (Prefect returns the same run for the same key)."""
    try:
        with get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name(deployment)
            run = client.create_flow_run_from_deployment(
                dep.id, parameters=parameters, idempotency_key=idempotency_key, name=name,
                tags=tags)
            return str(run.id)
    except ObjectNotFound:
        raise PrefectUnavailable(f"there is no deployment {deployment}: start the embedded "
                                 "default with `airavata server start`") from None
    except (httpx.HTTPError, OSError) as exc:
        raise _unavailable(exc, f"cannot start a run of {deployment}") from None


async def label_run(flow_run_id: str, name: str, tags: list[str]) -> None:
    """Name and tag a running flow run (its tags are kept, ours added)."""
    async with get_client() as client:
        run = await client.read_flow_run(UUID(flow_run_id))
        await client.update_flow_run(UUID(flow_run_id), name=name,
                                     tags=sorted({*run.tags, *tags}))


def flow_run_ended(flow_run_id: str) -> bool:
    """Whether the flow run is in a final state (Crashed, Failed, ...); False when unknown."""
    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(flow_run_id)).state
    except Exception:
        return False
    return state is not None and state.is_final()


def flow_run_parameters(flow_run_id: str) -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        return dict(client.read_flow_run(UUID(flow_run_id)).parameters)


def online_workers(pool: str) -> list[str]:
    """Names of the workers polling this pool now (heartbeat within Prefect's window)."""
    try:
        with get_client(sync_client=True) as client:
            workers = client.read_workers_for_work_pool(pool, offset=0, limit=200)
    except ObjectNotFound:
        return []
    except (httpx.HTTPError, OSError) as exc:
        raise _unavailable(exc, f"cannot read the workers of pool {pool}") from None
    return [w.name for w in workers if str(w.status).upper().endswith("ONLINE")]


def pool_state(pool: str) -> tuple[str | None, list[str]]:
    """A work pool's status (READY, NOT_READY, PAUSED; None when there is no such pool) and
    the names of the workers polling it now."""
    try:
        with get_client(sync_client=True) as client:
            found = client.read_work_pool(pool)
            workers = client.read_workers_for_work_pool(pool, offset=0, limit=200)
    except ObjectNotFound:
        return None, []
    except (httpx.HTTPError, OSError) as exc:
        raise _unavailable(exc, f"cannot read work pool {pool}") from None
    status = found.status.value if found.status is not None else None
    if found.is_paused:
        status = "PAUSED"
    return status, [w.name for w in workers if str(w.status).upper().endswith("ONLINE")]


def ensure_automation(automation: Any) -> str:
    """Create the automation, or replace the one of the same name (idempotent)."""
    with get_client(sync_client=True) as client:
        for old in client.read_automations_by_name(automation.name):
            client.delete_automation(old.id)
        return str(client.create_automation(automation))


def add_schedule(deployment: str, schedule: Any, parameters: dict[str, Any], slug: str,
                 active: bool = True) -> str:
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
        for old in dep.schedules:
            if old.slug == slug:
                client.delete_deployment_schedule(dep.id, old.id)
        made = client.create_deployment_schedules(dep.id, [(schedule, active)],
                                                  parameters=parameters, slug=slug)
        return str(made[0].id)


def schedules(deployment: str) -> list[Any]:
    with get_client(sync_client=True) as client:
        return list(client.read_deployment_by_name(deployment).schedules)


def set_schedule_active(deployment: str, slug: str, active: bool, attempts: int = 4) -> bool:
    """Pausing deletes the schedule's future runs, which can race a worker taking one (the
    server answers 500 then): tried again a few times."""
    import time

    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
        for sch in dep.schedules:
            if sch.slug != slug:
                continue
            for attempt in range(attempts):
                try:
                    client.update_deployment_schedule(dep.id, sch.id, active=active)
                    return True
                except httpx.HTTPStatusError as exc:
                    if exc.response.status_code < 500 or attempt == attempts - 1:
                        raise
                    time.sleep(0.5 * (attempt + 1))
    return False


__all__ = [
    "FlowRuns",
    "PrefectUnavailable",
    "add_schedule",
    "api_url",
    "aread_blocks",
    "create_run",
    "deployment_exists",
    "deployment_id",
    "deployment_pool",
    "ensure_automation",
    "ensure_deployment",
    "ensure_pool",
    "flow_run_cancelling",
    "flow_run_cancelling_sync",
    "flow_run_ended",
    "flow_run_parameters",
    "is_cancelling",
    "label_run",
    "online_workers",
    "pool_type",
    "read_blocks",
    "save_block",
    "schedules",
    "set_schedule_active",
]
