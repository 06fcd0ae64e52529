"""Registering compute and storage resources: a Prefect block (references, never secrets), for
compute a work pool of the kind's worker type with its base job template and the deployment
its bundles run as, the resource's project and bound credential in SpiceDB, and an audit row.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from pydantic import ValidationError

from airavata_prefect.adapters import prefect_api
from airavata_prefect.adapters.spicedb import Subject
from airavata_prefect.blocks import (
    COMPUTE_KINDS,
    STORAGE_KINDS,
    ComputeBlock,
    CredentialRef,
    StorageBlock,
)
from airavata_prefect.domain.errors import NotFound
from airavata_prefect.usecases.authorization import audit, require
from airavata_prefect.usecases.catalog import credential_id
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.dispatch import BUNDLE_ENTRYPOINT, BUNDLE_FLOW
from airavata_prefect.usecases.errors import BadInput

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def compute_help() -> str:
    """Each compute kind's own fields, for `airavata resource compute create --help`."""
    kinds = "\n\n".join(k.fields_help() for k in COMPUTE_KINDS.values())
    return ("Fields by type (--set FIELD=VALUE).\n\n" + kinds + "\n\n"
            "Every type, for placement: nodes, cores_per_node, gpus_per_node, mem_gb_per_node, "
            "max_walltime, queue_wait, cost, egress_gb; and work_pool_name (default: NAME).")


def parse_fields(kind: str, fields: list[str], types: dict[str, type[Any]]
                 ) -> tuple[type[Any], dict[str, Any]]:
    """`KEY=VALUE` pairs -> block fields (values may be JSON: numbers, lists, objects)."""
    if kind not in types:
        raise BadInput(f"unknown type {kind!r} (one of: {', '.join(types)})")
    cls = types[kind]
    known = {k for k in cls.model_fields if k not in ("credential", "block_type_slug")}
    data: dict[str, Any] = {}
    for item in fields:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise BadInput(f"--set {item!r}: expected FIELD=VALUE")
        if key not in known:
            raise BadInput(f"--set {key}: {kind} resources have no field {key!r} "
                           f"(fields: {', '.join(sorted(known))})")
        try:
            data[key] = json.loads(raw)
        except ValueError:
            data[key] = raw
    return cls, data


def kind_fields(what: str, kind: str, fields: list[str]) -> dict[str, Any]:
    """`--set` pairs for a compute (or storage) resource of `kind`, checked against its
    fields."""
    kinds: dict[str, type[Any]] = dict(COMPUTE_KINDS if what == "compute" else STORAGE_KINDS)
    return parse_fields(kind, fields, kinds)[1]


def build_block(cls: type[Any], data: dict[str, Any], credential: CredentialRef | None) -> Any:
    try:
        return cls(**data, **({"credential": credential} if credential else {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        raise BadInput(f"invalid {cls.__name__}: {problems}") from None


def check_name(name: str) -> None:
    if not NAME.match(name):
        raise BadInput(f"resource name {name!r}: use lowercase letters, digits and '-' "
                       "(it names a Prefect block and work pool)")


def credential_ref(ctx: Context, credential: str | None) -> CredentialRef | None:
    """The reference for a credential the acting user may bind (checked and audited)."""
    if credential is None:
        return None
    try:
        row = ctx.store.credentials.get(credential)
    except NotFound:
        raise BadInput(f"no credential {credential!r} (airavata credential create)") from None
    require(ctx, "credential.bind", credential)
    return CredentialRef(mount=row.mount, path=row.path)


def pool_template(name: str, block: ComputeBlock) -> dict[str, Any]:
    """The kind's base job template, its variables defaulting to this resource's."""
    template = copy.deepcopy(block.base_job_template())
    props = template["variables"]["properties"]
    for key, value in {"resource": name, **block.pool_defaults()}.items():
        if key in props and value is not None:
            props[key]["default"] = value
    return template


def _save(block: Any, what: str, name: str, replace: bool) -> None:
    try:
        prefect_api.save_block(block, name, overwrite=replace)
    except ValueError as exc:
        raise BadInput(f"{what} resource {name!r} exists: use --replace to change it"
                       if "already in use" in str(exc) else str(exc)) from None


def _relate(ctx: Context, object_type: str, name: str, project: str,
            credential: CredentialRef | None) -> None:
    ctx.authz.relate(object_type, name, "project", Subject("project", project))
    cid = credential_id(ctx, credential)
    if cid:
        ctx.authz.relate(object_type, name, "bound_credential", Subject("credential", cid))


def register_compute(ctx: Context, *, project: str, name: str, block: ComputeBlock,
                     replace: bool = False) -> dict[str, str]:
    """Save the block, ensure its work pool and deployment, record it in SpiceDB; audited."""
    check_name(name)
    require(ctx, "project.manage", project)
    pool = block.work_pool_name
    existing = prefect_api.pool_type(pool)
    if existing is not None and existing != block.worker_type:
        raise BadInput(f"work pool {pool!r} exists with type {existing}, not "
                       f"{block.worker_type}: choose another work_pool_name")
    _save(block, "compute", name, replace)
    prefect_api.ensure_pool(pool, block.worker_type, pool_template(name, block),
                            f"Airavata compute resource {name} ({block.kind})")
    deployment_id = prefect_api.ensure_deployment(
        BUNDLE_FLOW, name, pool=pool, entrypoint=BUNDLE_ENTRYPOINT,
        job_variables={"resource": name}, description=f"Bundles of task instances placed on {name}")
    _relate(ctx, "compute_resource", name, project, block.credential)
    audit(ctx, "resource.register", f"compute_resource:{name}", "ok",
          f"{block.kind}, work pool {pool}, deployment {BUNDLE_FLOW}/{name}")
    return {"block": name, "work_pool": pool, "deployment": deployment_id,
            "worker_type": block.worker_type}


def register_storage(ctx: Context, *, project: str, name: str, block: StorageBlock,
                     replace: bool = False) -> None:
    check_name(name)
    require(ctx, "project.manage", project)
    _save(block, "storage", name, replace)
    _relate(ctx, "storage_resource", name, project, block.credential_ref)
    audit(ctx, "resource.register", f"storage_resource:{name}", "ok", block.kind)


__all__ = ["build_block", "check_name", "compute_help", "credential_ref", "kind_fields",
           "parse_fields", "pool_template", "register_compute", "register_storage"]
