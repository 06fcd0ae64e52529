"""Reading experiments, each read checked for the acting user (scheduler.queue.read): what the
CLI and, later, the REST API show."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from airavata_prefect.domain.pilot import AgentInfo
from airavata_prefect.domain.records import (
    AuditEntry,
    Bundle,
    Experiment,
    Task,
    TaskEvent,
    load_graph,
)
from airavata_prefect.domain.states import TaskState
from airavata_prefect.domain.usage import StepUsage, step_usage
from airavata_prefect.usecases.authorization import allowed, require
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.errors import BadInput

READ = "scheduler.queue.read"


def experiment(ctx: Context, ref: str) -> Experiment:
    """By id or unique prefix, if the user may read it."""
    exp = ctx.store.experiments.get(ref)
    require(ctx, READ, exp.id)
    return exp


def snapshot(ctx: Context, exp_id: str) -> tuple[Experiment, dict[str, dict[str, int]]]:
    """An experiment already checked, read again with its {step: {state: count}}."""
    exp = ctx.store.experiments.get(exp_id)
    return exp, ctx.store.tasks.state_counts(exp.id)


def experiments(ctx: Context, limit: int = 20) -> list[Experiment]:
    """The newest experiments the user may read."""
    return [e for e in ctx.store.experiments.list(limit)
            if allowed(ctx, READ, e.id)]


def tasks(ctx: Context, ref: str, *, step: str | None = None,
          states: list[TaskState] | None = None, limit: int | None = 100) -> list[Task]:
    exp = experiment(ctx, ref)
    rows = ctx.store.tasks.list(exp.id, states=[str(s) for s in states or []] or None,
                                step=step, limit=limit)
    if step and not rows and step not in ctx.store.tasks.state_counts(exp.id):
        raise BadInput(f"experiment {exp.short_id} has no step {step!r}")
    return rows


def usage(ctx: Context, ref: str) -> list[StepUsage]:
    """Per step, in the graph's order: what its measured instances used (p50, p90, peak)."""
    exp = experiment(ctx, ref)
    by_step = ctx.store.tasks.usage_by_step(exp.id)
    steps = list(ctx.store.tasks.state_counts(exp.id))
    order = {s.name: i for i, s in enumerate(load_graph(exp).steps)}
    steps.sort(key=lambda s: order.get(s, len(order)))
    return [step_usage(s, by_step.get(s, [])) for s in steps]


def failed_tasks(ctx: Context, exp: Experiment, limit: int = 10) -> list[Task]:
    return ctx.store.tasks.list(exp.id, states=[TaskState.FAILED], limit=limit)


def log_file(ctx: Context, ref: str, instance_id: str, *, stderr: bool) -> Path:
    exp = experiment(ctx, ref)
    task = ctx.store.tasks.get(exp.id, instance_id)
    log = Path(task.workdir) / ("stderr.log" if stderr else "stdout.log")
    if not log.exists():
        raise BadInput(f"{instance_id} has no {log.name} yet (state {task.state})")
    return log


def events(ctx: Context, ref: str, instance_id: str | None = None,
           limit: int | None = None) -> list[TaskEvent]:
    """State changes of an experiment's instances (or one of them), in order."""
    exp = experiment(ctx, ref)
    if instance_id is not None:
        ctx.store.tasks.get(exp.id, instance_id)  # NotFound names it
    return ctx.store.tasks.events(exp.id, instance_id, limit=limit)


def bundles(ctx: Context, ref: str) -> list[Bundle]:
    """The bundles an experiment sent to registered resources, oldest first."""
    return ctx.store.bundles.of_experiment(experiment(ctx, ref).id)


class AgentWork(NamedTuple):
    agent: AgentInfo
    ended: int  # the experiment's attempts it brought to an end


def agents(ctx: Context, ref: str) -> list[AgentWork]:
    """The pilot agents that worked (or may work) for an experiment, oldest first, with how
    many of its attempts each ended; gone ones say why."""
    exp = experiment(ctx, ref)
    ended = ctx.store.pilot.ended_by_agent(exp.id)
    return [AgentWork(a, ended.get(a.id, 0))
            for a in ctx.store.pilot.agents(None, exp.id, active_only=False)]


def my_audit(ctx: Context, correlation_id: str | None = None, limit: int = 200
             ) -> list[AuditEntry]:
    """The audit rows of the acting user's own actions (and refusals)."""
    return ctx.store.audit.trail(correlation_id=correlation_id, actor=ctx.user, limit=limit)


def ui_url() -> str | None:
    """The Prefect UI's address, from PREFECT_UI_URL or PREFECT_API_URL."""
    api = os.environ.get("PREFECT_UI_URL") or os.environ.get("PREFECT_API_URL")
    return api.rstrip("/").removesuffix("/api") if api else None


__all__ = ["AgentWork", "agents", "bundles", "events", "experiment", "experiments",
           "failed_tasks", "log_file", "my_audit", "snapshot", "tasks", "ui_url"]
