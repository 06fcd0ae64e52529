"""Lineage of outputs: where an output came from, by its id or by its path in an experiment's
directory (what `airavata data lineage` uses in server mode). Read permission on the
experiment is checked; records it came from follow, nearest first."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from airavata_prefect.api.rest.deps import Ctx
from airavata_prefect.api.rest.routes_experiments import Ref
from airavata_prefect.domain.lineage import OUTPUT_ID
from airavata_prefect.usecases import lineage as use

router = APIRouter(tags=["data"])
OutputId = Annotated[str, Path(min_length=16, max_length=16, pattern=f"^{OUTPUT_ID.pattern}$",
                               description="an output's id (16 hex digits), as `experiment "
                                           "outputs` and lineage answers show it")]
Depth = Annotated[int, Query(ge=0, le=use.MAX_DEPTH,
                             description="how many hops upstream to follow")]
PathQuery = Annotated[str, Query(min_length=1, max_length=4096,
                                 description="the output's path in the experiment's directory "
                                             "(`step/0/out.txt`), or absolute")]


class UpstreamOut(BaseModel):
    output_id: str
    instance_id: str
    name: str
    path: str
    sha256: str | None = Field(description="as read; null when it was missing")


class MountOut(BaseModel):
    mount: str = Field(description="the spec's storage:/remote:./local")
    path: str = Field(description="under the mount's target")
    sha256: str
    size: int


class OutputLineageOut(BaseModel):
    output_id: str
    experiment_id: str
    instance_id: str
    attempt: int
    name: str = Field(description="the output's name in the spec")
    path: str = Field(description="<step>/<index>/<path>, in the experiment's directory")
    sha256: str
    size: int
    script_sha256: str = Field(description="of the script the instance ran")
    parameters: dict[str, str] = Field(description="the instance's inputs")
    resource: str = Field(description="the compute resource it ran on")
    recorded_at: datetime
    upstream: list[UpstreamOut] = Field(description="upstream outputs it read")
    mounts: list[MountOut] = Field(description="storage-mount files it read")


class LineageOut(BaseModel):
    output_id: str = Field(description="the output asked about")
    experiment_id: str
    outputs: list[OutputLineageOut] = Field(description="it first, then what it came from, "
                                                        "nearest first, each once")
    truncated: bool = Field(description="some upstream outputs were not followed (depth)")


def lineage_out(found: use.Lineage) -> LineageOut:
    return LineageOut.model_validate(dataclasses.asdict(found))


@router.get("/lineage/{output_id}", response_model=LineageOut)
def by_id(ctx: Ctx, output_id: OutputId, depth: Depth = use.MAX_DEPTH) -> LineageOut:
    """Where an output came from: its instance, script hash, parameters and resource, and the
    outputs and mount files it read, with their checksums; then theirs."""
    return lineage_out(use.lineage(ctx, output_id, depth=depth))


@router.get("/experiments/{ref}/lineage", response_model=LineageOut)
def by_path(ctx: Ctx, ref: Ref, path: PathQuery, depth: Depth = use.MAX_DEPTH) -> LineageOut:
    """Where the output at a path in the experiment's directory came from."""
    return lineage_out(use.lineage_at(ctx, ref, path, depth=depth))


__all__ = ["LineageOut", "lineage_out", "router"]
