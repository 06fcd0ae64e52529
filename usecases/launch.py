"""Every door's one way to run an experiment: store it (submit), then start a flow run of a
deployment of run-experiment for it; an experiment whose run cannot start ends FAILED rather
than waiting for ever."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from airavata_prefect.domain.errors import NotFound
from airavata_prefect.domain.records import Experiment
from airavata_prefect.domain.spec import LoadedSpec
from airavata_prefect.domain.states import ExperimentStatus
from airavata_prefect.usecases import deployments, lifecycle, queries
from airavata_prefect.usecases.authorization import require
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.errors import BadInput, Conflict, Unavailable
from airavata_prefect.usecases.submit import submit


@dataclass(frozen=True)
class Started:
    experiment_id: str
    flow_run_id: str
    total_tasks: int
    workdir: str
    replayed: bool = False  # an Idempotency-Key found the experiment of an earlier request


def start(ctx: Context, exp_id: str, *, deployment: str = deployments.DEFAULT_DEPLOYMENT,
          key: str | None = None) -> Started:
    """A flow run of the deployment runs the stored experiment (`key`: its idempotency key,
    default the experiment id)."""
    exp = queries.experiment(ctx, exp_id)
    try:
        flow_run_id = deployments.start_run(exp, deployment=deployment, key=key)
    except Exception:
        lifecycle.fail_unfinished(ctx.store, exp.id, ExperimentStatus.FAILED,
                                  "no flow run could be started for it")
        raise
    return Started(exp.id, flow_run_id, exp.total_tasks, exp.workdir)


def _first_run(exp: Experiment, deployment: str) -> str:
    """The flow run the first request started, before that run has written its id on the
    experiment: Prefect answers the same run for the experiment's key ("" when it cannot)."""
    try:
        return deployments.start_run(exp, deployment=deployment)
    except (BadInput, NotFound, Unavailable):
        return ""


def run(ctx: Context, spec: str | Path | LoadedSpec, params: list[str], *,
        project: str | None = None, deployment: str = deployments.DEFAULT_DEPLOYMENT,
        idempotency_key: str | None = None, compute: str | None = None) -> Started:
    """Submit and start. With an idempotency key (per identity), a repeated request returns
    the experiment the first one created and starts nothing new."""
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= 200:
            raise BadInput("Idempotency-Key: 1 to 200 characters")
        held, earlier = ctx.store.idempotency.reserve(ctx.user, idempotency_key)
        if not held:
            if earlier is None:
                raise Conflict("a request with this Idempotency-Key is still in progress")
            exp = queries.experiment(ctx, earlier)
            return Started(exp.id, exp.flow_run_id or _first_run(exp, deployment),
                           exp.total_tasks, exp.workdir, replayed=True)
    try:
        exp_id = submit(ctx, spec, params, project=project, compute=compute,
                        before_store=lambda: deployments.check_runnable(deployment))
        started = start(ctx, exp_id, deployment=deployment)
    except BaseException:
        if idempotency_key is not None:
            ctx.store.idempotency.release(ctx.user, idempotency_key)
        raise
    if idempotency_key is not None:
        ctx.store.idempotency.settle(ctx.user, idempotency_key, exp_id)
    return started


def retry(ctx: Context, exp_ref: str, *, deployment: str = deployments.DEFAULT_DEPLOYMENT
          ) -> tuple[Started, int]:
    # Who may, first: an unknown or forbidden experiment is that, whatever Prefect says.
    require(ctx, "scheduler.instance.update", ctx.store.experiments.get(exp_ref).id)
    deployments.check_runnable(deployment)
    exp, n = lifecycle.retry(ctx, exp_ref)
    return start(ctx, exp.id, deployment=deployment, key=f"{exp.id}/retry/{uuid.uuid4()}"), n


def resubmit(ctx: Context, exp_ref: str, *, deployment: str = deployments.DEFAULT_DEPLOYMENT
             ) -> Started:
    queries.experiment(ctx, exp_ref)  # may read it, first
    deployments.check_runnable(deployment)
    return start(ctx, lifecycle.resubmit(ctx, exp_ref), deployment=deployment)


__all__ = ["Started", "resubmit", "retry", "run", "start"]
