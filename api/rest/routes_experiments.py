"""/experiments: create from YAML and run through the deployment path (Idempotency-Key
honoured), read status, tasks, events and logs, and cancel, pause, resume, retry, resubmit."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, Field

from airavata_prefect.api.rest.deps import Ctx, Writer
from airavata_prefect.api.rest.errors import CONFLICT, UNAVAILABLE, envelope
from airavata_prefect.api.views import StepUsageOut, UsageOut
from airavata_prefect.domain.records import Experiment, Task, TaskEvent
from airavata_prefect.domain.states import TaskState
from airavata_prefect.usecases import deployments, launch, lifecycle, queries
from airavata_prefect.usecases.spec_source import MAX_SPEC_BYTES, read_spec

router = APIRouter(prefix="/experiments", tags=["experiments"])
Ref = Annotated[str, Path(min_length=1, max_length=64,
                          description="experiment id or a unique prefix")]
Instance = Annotated[str, Path(min_length=1, max_length=300)]
MAX_SEQ = 2**63 - 1  # event sequence numbers are the store's 64-bit integers
DEPLOYMENT = Field(deployments.DEFAULT_DEPLOYMENT, min_length=1, max_length=63,
                   pattern=deployments.NAME.pattern,
                   description="deployment of run-experiment whose workers run it")


class ExperimentIn(BaseModel):
    spec: str = Field(min_length=1, max_length=MAX_SPEC_BYTES,
                      description="the experiment YAML text, or STORAGE:/path on a "
                                  "registered storage resource",
                      examples=["name: hello\ntasks:\n  greet:\n    command: 'echo hello'\n"])
    params: dict[str, str] = Field(default_factory=dict, description="parameter overrides")
    project: str | None = Field(None, min_length=1, max_length=200)
    name: str | None = Field(None, min_length=1, max_length=200)
    deployment: str = DEPLOYMENT
    compute: str | None = Field(None, min_length=1, max_length=200,
                                description="run every task on this compute resource")


class StartIn(BaseModel):
    deployment: str = DEPLOYMENT


class Started(BaseModel):
    experiment_id: str
    flow_run_id: str
    total_tasks: int
    replayed: bool = Field(description="an earlier request with this Idempotency-Key made it")


class ExperimentOut(BaseModel):
    id: str
    name: str
    status: str
    message: str | None
    project: str | None
    owner: str | None
    total_tasks: int
    paused: bool
    flow_run_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    steps: dict[str, dict[str, int]] | None = None
    params: dict[str, str]


class TaskOut(BaseModel):
    instance_id: str
    step: str
    idx: int
    state: str
    attempt: int
    exit_code: int | None
    reason: str | None
    resource: str | None
    started_at: datetime | None
    finished_at: datetime | None
    usage: UsageOut | None = None


class EventOut(BaseModel):
    seq: int
    instance_id: str
    from_state: str | None
    to_state: str
    attempt: int
    at: datetime
    message: str | None


class Message(BaseModel):
    message: str


def experiment_out(exp: Experiment, steps: dict[str, dict[str, int]] | None = None
                   ) -> ExperimentOut:
    return ExperimentOut(
        id=exp.id, name=exp.name, status=str(exp.status), message=exp.message,
        project=exp.project, owner=exp.owner, total_tasks=exp.total_tasks, paused=exp.paused,
        flow_run_id=exp.flow_run_id, created_at=exp.created_at, started_at=exp.started_at,
        finished_at=exp.finished_at, steps=steps, params=exp.params)


def task_out(t: Task) -> TaskOut:
    return TaskOut(instance_id=t.instance_id, step=t.step, idx=t.idx, state=str(t.state),
                   attempt=t.attempt, exit_code=t.exit_code, reason=t.reason,
                   resource=t.resource, started_at=t.started_at, finished_at=t.finished_at,
                   usage=UsageOut.model_validate(t.usage, from_attributes=True)
                   if t.usage else None)


def event_out(e: TaskEvent) -> EventOut:
    return EventOut(seq=e.seq, instance_id=e.instance_id,
                    from_state=str(e.from_state) if e.from_state else None,
                    to_state=str(e.to_state), attempt=e.attempt, at=e.at, message=e.message)


def _started(s: launch.Started) -> Started:
    return Started(experiment_id=s.experiment_id, flow_run_id=s.flow_run_id,
                   total_tasks=s.total_tasks, replayed=s.replayed)


@router.post("", response_model=Started, status_code=201,
             responses={**CONFLICT, **UNAVAILABLE})
def create(body: ExperimentIn, ctx: Ctx, _: Writer,
           idempotency_key: str | None = Header(None, max_length=200)) -> Started:
    """Validate, place and store an experiment, then start a flow run of the deployment that
    runs it. A repeated request with the same Idempotency-Key returns the first one's."""
    loaded = read_spec(body.spec, name=body.name or "", ctx=ctx, paths=False)
    params = [f"{k}={v}" for k, v in body.params.items()]
    return _started(launch.run(ctx, loaded, params, project=body.project,
                               deployment=body.deployment, idempotency_key=idempotency_key,
                               compute=body.compute))


@router.get("", response_model=list[ExperimentOut])
def list_experiments(ctx: Ctx, limit: int = Query(20, ge=1, le=500)) -> list[ExperimentOut]:
    """The newest experiments you may read."""
    return [experiment_out(e) for e in queries.experiments(ctx, limit)]


@router.get("/{ref}", response_model=ExperimentOut)
def status(ctx: Ctx, ref: Ref) -> ExperimentOut:
    """Status, with task counts by step and state."""
    exp = queries.experiment(ctx, ref)
    exp, counts = queries.snapshot(ctx, exp.id)
    return experiment_out(exp, counts)


@router.get("/{ref}/tasks", response_model=list[TaskOut])
def tasks(ctx: Ctx, ref: Ref, step: str | None = Query(None, max_length=200),
          state: list[TaskState] = Query(default_factory=list),
          limit: int = Query(100, ge=1, le=10_000)) -> list[TaskOut]:
    return [task_out(t) for t in queries.tasks(ctx, ref, step=step, states=state, limit=limit)]


@router.get("/{ref}/usage", response_model=list[StepUsageOut])
def usage(ctx: Ctx, ref: Ref) -> list[StepUsageOut]:
    """Per step: p50 / p90 of its instances' wall time, CPU and peak memory, and the peak."""
    return [StepUsageOut.model_validate(s, from_attributes=True)
            for s in queries.usage(ctx, ref)]


@router.get("/{ref}/tasks/{instance_id}", response_model=TaskOut)
def task(ctx: Ctx, ref: Ref, instance_id: Instance
         ) -> TaskOut:
    exp = queries.experiment(ctx, ref)
    return task_out(ctx.store.tasks.get(exp.id, instance_id))


@router.get("/{ref}/events", response_model=list[EventOut])
def events(ctx: Ctx, ref: Ref, after: int = Query(0, ge=0, le=MAX_SEQ),
           limit: int = Query(500, ge=1, le=5000)) -> list[EventOut]:
    """State changes after event `after`, oldest first."""
    exp = queries.experiment(ctx, ref)
    return [event_out(e) for e in ctx.store.tasks.events_after(exp.id, after, limit)]


# (response_class Response, not PlainTextResponse: the route's media type would be documented
# for its error envelopes too, which are JSON.)
@router.get("/{ref}/tasks/{instance_id}/logs", response_class=Response,
            responses={200: {"description": "the log's text",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
def logs(ctx: Ctx, ref: Ref, instance_id: Instance,
         stream: Literal["stdout", "stderr"] = "stdout") -> Response:
    """A task instance's stdout or stderr."""
    return PlainTextResponse(queries.log_file(ctx, ref, instance_id,
                                              stderr=stream == "stderr").read_text(
        errors="replace"))


@router.post("/{ref}/run", response_model=Started, status_code=201,
             responses={**CONFLICT, **UNAVAILABLE})
def run(body: StartIn, ctx: Ctx, _: Writer, ref: Ref) -> Started:
    """Start a flow run for a stored experiment that has none yet (its id is the key)."""
    return _started(launch.start(ctx, ref, deployment=body.deployment))


@router.post("/{ref}/cancel", response_model=Message, responses=CONFLICT)
def cancel(ctx: Ctx, _: Writer, ref: Ref) -> Any:
    result = lifecycle.cancel(ctx, ref)
    if not result.accepted:
        return envelope(409, "conflict", result.message)
    return Message(message=result.message)


@router.post("/{ref}/pause", response_model=Message, responses=CONFLICT)
def pause(ctx: Ctx, _: Writer, ref: Ref) -> Message:
    return Message(message=lifecycle.set_paused(ctx, ref, True))


@router.post("/{ref}/resume", response_model=Message, responses=CONFLICT)
def resume(ctx: Ctx, _: Writer, ref: Ref) -> Message:
    return Message(message=lifecycle.set_paused(ctx, ref, False))


@router.post("/{ref}/retry", response_model=Started, status_code=201,
             responses={**CONFLICT, **UNAVAILABLE})
def retry(body: StartIn, ctx: Ctx, _: Writer, ref: Ref) -> Started:
    """Run an ended experiment's failed, canceled and upstream-failed tasks again."""
    started, _n = launch.retry(ctx, ref, deployment=body.deployment)
    return _started(started)


@router.post("/{ref}/resubmit", response_model=Started, status_code=201,
             responses={**CONFLICT, **UNAVAILABLE})
def resubmit(body: StartIn, ctx: Ctx, _: Writer, ref: Ref) -> Started:
    """A new experiment from the same spec and parameters."""
    return _started(launch.resubmit(ctx, ref, deployment=body.deployment))
