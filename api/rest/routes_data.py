"""Files on registered storage resources (what `airavata data` uses in server mode): list,
download as one streamed tar.gz, upload one file. Reads need `storage.read` on the resource,
uploads `storage.use`; the resource's credential is read as the caller and never leaves the
server."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from airavata_prefect.api.rest.deps import Ctx, Writer
from airavata_prefect.api.rest.errors import UNAVAILABLE
from airavata_prefect.usecases import archives, data

router = APIRouter(prefix="/storage", tags=["data"])
Storage = Annotated[str, Path(min_length=2, max_length=63, pattern=r"^[a-z][a-z0-9_-]{1,62}$",
                              description="a registered storage resource")]
Where = Annotated[str, Query(min_length=1, max_length=1024, pattern=r"^/",
                             description="a path on it, from its root")]


class EntryOut(BaseModel):
    path: str
    size: int


class UploadOut(BaseModel):
    files: int


@router.get("/{storage}/files", response_model=list[EntryOut], responses=UNAVAILABLE)
def files(ctx: Ctx, storage: Storage, path: Where = "/",
          limit: int = Query(1000, ge=1, le=data.MAX_LIST)) -> list[EntryOut]:
    """The files at or under a path, with their sizes."""
    return [EntryOut(path=e.path, size=e.size)
            for e in data.listing(ctx, f"{storage}:{path}", limit=limit)]


@router.get("/{storage}/archive", response_class=Response,
            responses={**UNAVAILABLE, 200: {
                "description": "a tar.gz of the file, or of the directory's files",
                "content": {"application/gzip": {"schema": {"type": "string",
                                                             "format": "binary"}}}}})
def archive(ctx: Ctx, storage: Storage, path: Where) -> Response:
    """A file, or a directory's files, as one tar.gz streamed as it is made."""
    scratch = FsPath(tempfile.mkdtemp(prefix="airavata-data-"))
    try:
        data.download(ctx, f"{storage}:{path}", scratch)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return StreamingResponse(archives.tar_gz(archives.tree_members(scratch)),
                             media_type="application/gzip",
                             background=BackgroundTask(shutil.rmtree, scratch, True))


@router.put("/{storage}/files", response_model=UploadOut, status_code=201,
            responses=UNAVAILABLE)
async def upload(request: Request, ctx: Ctx, _: Writer, storage: Storage,
                 path: Where) -> UploadOut:
    """The request's body, as the file at `path` (its bytes as sent)."""
    with tempfile.TemporaryDirectory(prefix="airavata-upload-") as tmp:
        local = FsPath(tmp) / (path.rstrip("/").rsplit("/", 1)[-1] or "upload")
        with open(local, "wb") as f:
            async for chunk in request.stream():
                f.write(chunk)
        count = await run_in_threadpool(data.upload, ctx, local, f"{storage}:{path}")
    return UploadOut(files=count)


__all__ = ["router"]
