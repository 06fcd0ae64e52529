"""Registering compute and storage resources: a Prefect block (references, never secrets), a work
pool of the resource's type with its base job template, the deployment its bundles run as, the
resource's project and bound credential in SpiceDB, and an audit row.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from airavata_prefect.adapters.db import NotFound, Store
from airavata_prefect.adapters.spicedb import Authz, Subject
from airavata_prefect.api.correlation import correlation_id
from airavata_prefect.api.errors import ResourceError
from airavata_prefect.api.service import require
from airavata_prefect.blocks import (
    BareMetalHost,
    CredentialRef,
    KubernetesCluster,
    LocalStorage,
    S3Storage,
    SFTPStorage,
    SlurmCluster,
)
from airavata_prefect.flows.bundle_flow import ENTRYPOINT, FLOW_NAME

COMPUTE_TYPES: dict[str, type] = {"slurm": SlurmCluster, "baremetal": BareMetalHost,
                                  "kubernetes": KubernetesCluster}
STORAGE_TYPES: dict[str, type] = {"s3": S3Storage, "sftp": SFTPStorage, "local": LocalStorage}
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def parse_fields(kind: str, fields: list[str], types: dict[str, type]) -> tuple[type, dict]:
    """`KEY=VALUE` pairs -> block fields (values may be JSON: numbers, lists, objects)."""
    if kind not in types:
        raise ResourceError(f"unknown type {kind!r} (one of: {', '.join(types)})")
    cls = types[kind]
    known = {k for k in cls.model_fields if k not in ("credential", "block_type_slug")}
    data: dict[str, Any] = {}
    for item in fields:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise ResourceError(f"--set {item!r}: expected FIELD=VALUE")
        if key not in known:
            raise ResourceError(f"--set {key}: {kind} resources have no field {key!r} "
                                f"(fields: {', '.join(sorted(known))})")
        try:
            data[key] = json.loads(raw)
        except ValueError:
            data[key] = raw
    return cls, data


def build_block(cls: type, data: dict[str, Any], credential: CredentialRef | None) -> Any:
    try:
        return cls(**data, **({"credential": credential} if credential else {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        raise ResourceError(f"invalid {cls.__name__}: {problems}") from None


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise ResourceError(f"resource name {name!r}: use lowercase letters, digits and '-' "
                            "(it names a Prefect block and work pool)")


def credential_ref(store: Store, authz: Authz, actor: str, credential_id: str | None
                   ) -> CredentialRef | None:
    """The reference for a credential the actor may bind (checked and audited)."""
    if credential_id is None:
        return None
    try:
        row = store.credential(credential_id)
    except NotFound:
        raise ResourceError(f"no credential {credential_id!r} (airavata credential create)"
                            ) from None
    require(store, authz, actor, "credential.bind", credential_id)
    return CredentialRef(mount=row["mount"], path=row["path"])


def pool_type(kind: str) -> str:
    from airavata_prefect.agent.workers import WORKERS
    return str(WORKERS[kind].type)


def pool_template(kind: str, name: str, block: Any) -> dict[str, Any]:
    """The worker type's base job template, its variables defaulting to this resource's."""
    from airavata_prefect.agent.workers import WORKERS
    template = copy.deepcopy(WORKERS[kind].get_default_base_job_template())
    props = template["variables"]["properties"]
    defaults: dict[str, Any] = {"resource": name}
    if kind == "slurm":
        defaults |= {"partition": block.partition, "account": block.account,
                     "max_array_size": block.max_array_size}
    elif kind == "baremetal":
        defaults |= {"host": block.host, "port": block.port, "username": block.username,
                     "working_directory": block.working_directory}
    elif kind == "kubernetes":
        defaults |= {"namespace": block.namespace, "image": block.image,
                     "service_account_name": block.service_account}
    for key, value in defaults.items():
        if key in props and value is not None:
            props[key]["default"] = value
    return template


def register_compute(store: Store, authz: Authz, *, actor: str, project: str, name: str,
                     kind: str, block: Any, replace: bool = False) -> dict[str, str]:
    """Save the block, ensure its work pool and deployment, record it in SpiceDB; audited."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    check_name(name)
    require(store, authz, actor, "project.manage", project)
    pool = block.work_pool_name
    template = pool_template(kind, name, block)
    try:
        block.save(name, overwrite=replace)
    except ValueError as exc:
        raise ResourceError(f"compute resource {name!r} exists: use --replace to change it"
                            if "already in use" in str(exc) else str(exc)) from None
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_work_pool(pool)
            if existing.type != pool_type(kind):
                raise ResourceError(f"work pool {pool!r} exists with type {existing.type}, "
                                    f"not {pool_type(kind)}: choose another work_pool_name")
            client.update_work_pool(pool, WorkPoolUpdate(base_job_template=template))
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(
                name=pool, type=pool_type(kind), base_job_template=template,
                description=f"Airavata compute resource {name} ({kind})"))
        flow_id = client.create_flow_from_name(FLOW_NAME)
        deployment_id = client.create_deployment(
            flow_id=flow_id, name=name, work_pool_name=pool, entrypoint=ENTRYPOINT,
            path=str(Path(__file__).resolve().parent.parent), job_variables={"resource": name},
            description=f"Bundles of task instances placed on {name}",
            enforce_parameter_schema=False)
    authz.relate("compute_resource", name, "project", Subject("project", project))
    if block.credential is not None:
        cid = store.credential_at(block.credential.mount, block.credential.path)
        if cid:
            authz.relate("compute_resource", name, "bound_credential", Subject("credential", cid))
    store.audit(actor=actor, action="resource.register", obj=f"compute_resource:{name}",
                correlation_id=correlation_id(), outcome="ok",
                detail=f"{kind}, work pool {pool}, deployment {FLOW_NAME}/{name}")
    return {"block": name, "work_pool": pool, "deployment": str(deployment_id),
            "worker_type": pool_type(kind)}


def register_storage(store: Store, authz: Authz, *, actor: str, project: str, name: str,
                     block: Any, replace: bool = False) -> None:
    check_name(name)
    require(store, authz, actor, "project.manage", project)
    try:
        block.save(name, overwrite=replace)
    except ValueError as exc:
        raise ResourceError(f"storage resource {name!r} exists: use --replace to change it"
                            if "already in use" in str(exc) else str(exc)) from None
    authz.relate("storage_resource", name, "project", Subject("project", project))
    credential = getattr(block, "credential", None)
    if credential is not None:
        cid = store.credential_at(credential.mount, credential.path)
        if cid:
            authz.relate("storage_resource", name, "bound_credential", Subject("credential", cid))
    store.audit(actor=actor, action="resource.register", obj=f"storage_resource:{name}",
                correlation_id=correlation_id(), outcome="ok", detail=type(block).__name__)


__all__ = ["COMPUTE_TYPES", "STORAGE_TYPES", "ResourceError", "build_block", "check_name",
           "credential_ref", "parse_fields", "pool_template", "pool_type", "register_compute",
           "register_storage"]
