"""The registered resources: compute and storage blocks in the Prefect API, by name, and the
compute resources a user may plan on. Every kind is a block class (blocks/)."""

from __future__ import annotations

from typing import TypeVar

from airavata_prefect.adapters import prefect_api
from airavata_prefect.blocks import (
    COMPUTE_KINDS,
    STORAGE_KINDS,
    ComputeBlock,
    CredentialRef,
    StorageBlock,
)
from airavata_prefect.domain.resources import LOCAL, ComputeResource, local_resource
from airavata_prefect.usecases.authorization import allowed
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.errors import BadInput, Unavailable

B = TypeVar("B", ComputeBlock, StorageBlock)
_COMPUTE_SLUGS = [k.get_block_type_slug() for k in COMPUTE_KINDS.values()]
_STORAGE_SLUGS = [k.get_block_type_slug() for k in STORAGE_KINDS.values()]


def registered_compute() -> list[tuple[str, ComputeBlock]]:
    """(name, block) of every registered compute resource; empty without a Prefect API."""
    try:
        found = prefect_api.read_blocks(_COMPUTE_SLUGS)
    except prefect_api.PrefectUnavailable as exc:
        raise Unavailable(str(exc)) from None
    return [(n, b) for n, b in found if isinstance(b, ComputeBlock) and n != LOCAL]


async def _load(name: str, kind: type[B], slugs: list[str], what: str) -> B:
    for _, block in await prefect_api.aread_blocks(slugs, name):
        if isinstance(block, kind):
            return block
    raise BadInput(f"no {what} resource {name!r} is registered "
                   f"(airavata resource {what} create)")


async def load_compute(name: str) -> ComputeBlock:
    return await _load(name, ComputeBlock, _COMPUTE_SLUGS, "compute")


async def load_storage(name: str) -> StorageBlock:
    return await _load(name, StorageBlock, _STORAGE_SLUGS, "storage")


def credential_id(ctx: Context, ref: CredentialRef | None) -> str | None:
    """The id of the credential a block refers to, if we know it."""
    return ctx.store.credentials.at(ref.mount, ref.path) if ref is not None else None


def planning_resources(ctx: Context) -> list[ComputeResource]:
    """This machine and every registered compute resource the acting user may use
    (`resource.use`: a member of its project). One whose credential they may not read stays
    in the list, ineligible, so plans say why."""
    pool = [local_resource()]
    for name, block in registered_compute():
        if not allowed(ctx, "resource.use", name):
            continue  # another project's: not the user's to see
        resource = block.to_compute_resource(name)
        if block.credential is not None:
            cid = credential_id(ctx, block.credential)
            ok = cid is not None and allowed(ctx, "credential.read", cid)
            resource = resource.model_copy(update={"users": [ctx.user] if ok else []})
        pool.append(resource)
    return pool


__all__ = ["credential_id", "load_compute", "load_storage", "planning_resources",
           "registered_compute"]
