"""/experiments/{ref}/watch: a Server-Sent Events stream of an experiment's task state changes
(event `state`, id = its sequence number), progress (`status`) and the log lines of its
running instances on this host (`log`), closed with `end` when the experiment ends.

Resumable: reconnect with Last-Event-ID (or ?after=) and state changes continue after that
event exactly; log lines of instances still running start again from their beginning."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path as FsPath
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import StreamingResponse

from airavata_prefect.api.rest.deps import Ctx
from airavata_prefect.api.rest.routes_experiments import MAX_SEQ, event_out
from airavata_prefect.domain.states import EXPERIMENT_TERMINAL, TERMINAL, TaskState
from airavata_prefect.usecases import queries
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.correlation import correlation_id
from airavata_prefect.usecases.errors import describe

router = APIRouter(prefix="/experiments", tags=["experiments"])
MAX_LINES_PER_TICK = 500
log = logging.getLogger("airavata.api")


def _sse(event: str, data: object, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


class _Tail:
    """New whole lines of one log file since the last read."""

    def __init__(self, path: FsPath) -> None:
        self.path, self.offset, self.partial = path, 0, b""

    def read(self, final: bool = False) -> list[str]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read(1 << 20)
        except OSError:
            return []
        self.offset += len(chunk)
        data = self.partial + chunk
        lines = data.split(b"\n")
        self.partial = b"" if final else lines.pop()
        return [ln.decode(errors="replace") for ln in lines if ln or not final]


class _Watcher:
    def __init__(self, ctx: Context, exp_id: str, after: int) -> None:
        self.ctx, self.exp_id, self.after = ctx, exp_id, after
        self.tails: dict[tuple[str, str], _Tail] = {}
        self.last_counts: object = None

    def _track(self, instance_id: str) -> None:
        task = self.ctx.store.tasks.get(self.exp_id, instance_id)
        for stream in ("stdout", "stderr"):
            key = (instance_id, stream)
            if key not in self.tails:
                self.tails[key] = _Tail(FsPath(task.workdir) / f"{stream}.log")

    def start(self) -> list[str]:
        """Instances running now: their logs are followed from the start."""
        active = self.ctx.store.tasks.list(self.exp_id, states=[TaskState.RUNNING], limit=200)
        for t in active:
            self._track(t.instance_id)
        return []

    def tick(self) -> tuple[list[str], bool]:
        out: list[str] = []
        ended: set[str] = set()
        for e in self.ctx.store.tasks.events_after(self.exp_id, self.after, 1000):
            out.append(_sse("state", event_out(e).model_dump(mode="json"), e.seq))
            self.after = e.seq
            if e.to_state == TaskState.RUNNING:
                self._track(e.instance_id)
            elif e.to_state in TERMINAL:
                ended.add(e.instance_id)
        budget = MAX_LINES_PER_TICK
        for (instance_id, stream), tail in list(self.tails.items()):
            final = instance_id in ended
            for line in tail.read(final=final)[:budget]:
                out.append(_sse("log", {"instance_id": instance_id, "stream": stream,
                                        "line": line}))
                budget -= 1
            if final:
                del self.tails[(instance_id, stream)]
        exp, counts = queries.snapshot(self.ctx, self.exp_id)
        if counts != self.last_counts:
            self.last_counts = counts
            out.append(_sse("status", {"status": str(exp.status), "steps": counts}))
        if exp.status in EXPERIMENT_TERMINAL:
            more = self.ctx.store.tasks.events_after(self.exp_id, self.after, 1)
            if not more:
                out.append(_sse("end", {"status": str(exp.status), "message": exp.message}))
                return out, True
        return out, False


@router.get("/{ref}/watch", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
def watch(ctx: Ctx, ref: Annotated[str, Path(min_length=1, max_length=64)],
          after: int | None = Query(None, ge=0, le=MAX_SEQ,
                                    description="resume after this event id"),
          last_event_id: str | None = Header(None, max_length=32),
          interval: float = Query(0.5, ge=0.1, le=10)) -> StreamingResponse:
    """Follow an experiment live (Server-Sent Events) until it ends."""
    exp = queries.experiment(ctx, ref)  # checked here: a refusal is an ordinary 403
    cursor = after if after is not None else (  # (isdigit alone lets '²' through)
        min(int(last_event_id), MAX_SEQ) if last_event_id and last_event_id.isascii()
        and last_event_id.isdigit() else 0)
    watcher = _Watcher(ctx, exp.id, cursor)

    async def stream() -> AsyncIterator[str]:
        try:
            await anyio.to_thread.run_sync(watcher.start)
            yield ": watching " + exp.id + "\n\n"
            while True:
                chunks, done = await anyio.to_thread.run_sync(watcher.tick)
                for c in chunks:
                    yield c
                if done:
                    return
                await asyncio.sleep(interval)
        except Exception as exc:  # the status line is sent: end the stream with an event
            log.error("watch of %s failed: %s", exp.id, describe(exc), exc_info=exc)
            yield _sse("error", {"code": "internal", "message": f"internal error: "
                                 f"{type(exc).__name__} (the server log has it under this "
                                 "correlation id)", "correlation_id": correlation_id()})

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
