"""An experiment's declared outputs: listed with sizes and checksums, or streamed as one tar.gz
(what `airavata experiment outputs|download` use in server mode)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from airavata_prefect.api.rest.deps import Ctx
from airavata_prefect.api.rest.routes_experiments import Ref
from airavata_prefect.usecases import outputs as use
from airavata_prefect.usecases import queries

router = APIRouter(prefix="/experiments", tags=["experiments"])
TaskQuery = Annotated[str | None, Query(min_length=1, max_length=300,
                                        description="only this step (`sweep`) or instance "
                                                    "(`sweep[3]`)")]


class OutputOut(BaseModel):
    experiment_id: str
    instance_id: str
    step: str
    index: int
    name: str = Field(description="the output's name in the spec")
    path: str = Field(description="<step>/<index>/<path>, in the experiment's directory")
    output_id: str = Field(description="its id for lineage (GET /lineage/{output_id}), "
                                       "recorded once its instance completes")
    state: str = Field(description="the instance's state")
    exists: bool
    size: int | None = Field(description="bytes, when it exists")
    sha256: str | None = Field(description="hex digest, when it exists")
    note: str | None = Field(description="why it does not exist")


def output_out(o: use.OutputFile) -> OutputOut:
    return OutputOut.model_validate(o, from_attributes=True)


@router.get("/{ref}/outputs", response_model=list[OutputOut])
def outputs(ctx: Ctx, ref: Ref, task: TaskQuery = None) -> list[OutputOut]:
    """Every declared output of the experiment's instances, with its size and sha256 where it
    exists; a link leading outside the experiment's directory is never read."""
    return [output_out(o) for o in use.outputs(ctx, ref, task=task)]


# (response_class Response: the route's media type would otherwise be documented for its error
# envelopes too, which are JSON.)
@router.get("/{ref}/outputs/archive", response_class=Response,
            responses={200: {"description": "a tar.gz of the existing outputs, members "
                                            "<step>/<index>/<path>",
                             "content": {"application/gzip": {
                                 "schema": {"type": "string", "format": "binary"}}}}})
def archive(ctx: Ctx, ref: Ref, task: TaskQuery = None) -> Response:
    """The existing outputs as one tar.gz, streamed as it is made."""
    exp = queries.experiment(ctx, ref)
    chunks = use.archive(ctx, exp.id, task=task)  # refusals are raised here, not mid-stream
    name = f"{exp.short_id}-outputs.tar.gz"
    return StreamingResponse(chunks, media_type="application/gzip",
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


__all__ = ["OutputOut", "output_out", "router"]
