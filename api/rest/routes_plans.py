"""`POST /plans` (where would this experiment run, without storing it), an experiment's bundles
and pilot agents, and one task instance's state changes: what `airavata experiment
plan|bundles|agents|events TASK` show in server mode."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from airavata_prefect.api.rest.deps import Ctx, Writer
from airavata_prefect.api.rest.errors import UNAVAILABLE
from airavata_prefect.api.rest.routes_experiments import EventOut, event_out
from airavata_prefect.api.views import AgentOut, BundleOut, agent_out, bundle_out
from airavata_prefect.domain.plan import Plan
from airavata_prefect.usecases import queries
from airavata_prefect.usecases.plan import compile_file, learned_runtimes, plan_experiment
from airavata_prefect.usecases.spec_source import MAX_SPEC_BYTES, read_spec
from airavata_prefect.usecases.submit import planning_pool

router = APIRouter(tags=["experiments"])
Ref = Annotated[str, Path(min_length=1, max_length=64,
                          description="experiment id or a unique prefix")]
Instance = Annotated[str, Path(min_length=1, max_length=300)]
MAX_SOLVE_SECONDS = 30.0  # the solver runs in a request thread: bounded


class PlanIn(BaseModel):
    spec: str = Field(min_length=1, max_length=MAX_SPEC_BYTES,
                      description="the experiment YAML text, or STORAGE:/path on a "
                                  "registered storage resource")
    params: dict[str, str] = Field(default_factory=dict, description="parameter overrides")
    time_limit: float = Field(10.0, gt=0, le=MAX_SOLVE_SECONDS,
                              description="the solver's time limit, seconds")


class AssignmentOut(BaseModel):
    step: str
    resource: str
    count: int
    cost: float
    finish_seconds: float


class PlanOut(BaseModel):
    status: str = Field(description="optimal | feasible | infeasible")
    objective: str
    total_cost: float | None
    makespan_seconds: float | None
    gap: float | None
    solve_seconds: float
    assignments: list[AssignmentOut]
    reason: str | None = Field(description="why there is no plan, when infeasible")
    estimates: dict[str, str] = Field(default_factory=dict, description=(
        "steps whose runtime came from earlier runs of their script, and what they took"))


def plan_out(p: Plan) -> PlanOut:
    return PlanOut(status=p.status, objective=p.objective, total_cost=p.total_cost,
                   makespan_seconds=p.makespan_seconds, gap=p.gap,
                   solve_seconds=p.solve_seconds, reason=p.reason, estimates=p.estimates,
                   assignments=[AssignmentOut(step=a.step, resource=a.resource, count=a.count,
                                              cost=a.cost, finish_seconds=a.finish_seconds)
                                for a in p.assignments])


@router.post("/plans", response_model=PlanOut, responses=UNAVAILABLE)
def plan(body: PlanIn, ctx: Ctx, _: Writer) -> PlanOut:
    """Where every task of this experiment would run, on the compute resources you may use;
    nothing is stored. An experiment with no placement answers status `infeasible`."""
    loaded = read_spec(body.spec, ctx=ctx, paths=False)
    graph = compile_file(loaded, [f"{k}={v}" for k, v in body.params.items()],
                         root=str(ctx.settings.runs_dir / "<experiment-id>"),
                         max_instances=ctx.settings.max_instances)[2]
    return plan_out(plan_experiment(loaded, graph, planning_pool(ctx), user=ctx.user,
                                    learned=learned_runtimes(ctx.store.tasks.runtimes, graph),
                                    time_limit=body.time_limit))


@router.get("/experiments/{ref}/bundles", response_model=list[BundleOut])
def bundles(ctx: Ctx, ref: Ref) -> list[BundleOut]:
    """The bundles sent to registered resources: where, how many, their jobs and flow runs."""
    return [bundle_out(b) for b in queries.bundles(ctx, ref)]


@router.get("/experiments/{ref}/agents", response_model=list[AgentOut])
def agents(ctx: Ctx, ref: Ref) -> list[AgentOut]:
    """The pilot agents that worked for the experiment (pilot mode), oldest first."""
    return [agent_out(a, n) for a, n in queries.agents(ctx, ref)]


@router.get("/experiments/{ref}/tasks/{instance_id}/events", response_model=list[EventOut])
def task_events(ctx: Ctx, ref: Ref, instance_id: Instance,
                limit: int = Query(500, ge=1, le=5000)) -> list[EventOut]:
    """One task instance's state changes, oldest first, with their reasons."""
    return [event_out(e) for e in queries.events(ctx, ref, instance_id, limit)]
