"""An experiment's life after submit: cancel, pause and resume, retry of an ended one,
resubmit. Each is permission-checked and audited."""

from __future__ import annotations

from dataclasses import dataclass

from airavata_prefect.adapters.store import Store
from airavata_prefect.domain.records import Experiment
from airavata_prefect.domain.states import (
    EXPERIMENT_TERMINAL,
    TERMINAL,
    ExperimentStatus,
    TaskState,
)
from airavata_prefect.usecases import events
from airavata_prefect.usecases.authorization import audit, require
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.errors import Conflict


def fail_unfinished(store: Store, exp_id: str, status: ExperimentStatus, message: str, *,
                    actor: str | None = None) -> None:
    """End an experiment no flow run will finish: cancel what never finished, keep what did.
    Its ending is an event, by `actor` (default: its owner)."""
    for task in store.tasks.list(exp_id, states=[s for s in TaskState if s not in TERMINAL]):
        store.tasks.transition(exp_id, task.instance_id, TaskState.CANCELED, message=message)
    if store.experiments.update(
            exp_id, status=status, message=message,
            expect=[s for s in ExperimentStatus if s not in EXPERIMENT_TERMINAL]):
        events.experiment_ended(store.experiments.get(exp_id), status, message, actor=actor)


@dataclass
class CancelResult:
    accepted: bool
    message: str


def cancel(ctx: Context, exp_ref: str) -> CancelResult:
    """Running instances are stopped, waiting ones never start. Needs scheduler.queue.cancel."""
    exp = ctx.store.experiments.get(exp_ref)
    require(ctx, "scheduler.queue.cancel", exp.id)
    ended = exp.status in EXPERIMENT_TERMINAL
    audit(ctx, "scheduler.queue.cancel", f"experiment:{exp.id}",
          "refused" if ended else "ok", str(exp.status))
    if ended:
        return CancelResult(False, f"experiment {exp.id} already ended ({exp.status})")
    ctx.store.experiments.request_cancel(exp.id)
    ctx.store.experiments.update(exp.id, status=ExperimentStatus.CANCELING,
                                 expect=[ExperimentStatus.RUNNING])
    if exp.status == ExperimentStatus.CREATED:
        # No flow run holds it yet: cancel it here (a run that starts later finds it ended).
        fail_unfinished(ctx.store, exp.id, ExperimentStatus.CANCELED, "canceled", actor=ctx.user)
        return CancelResult(True, f"experiment {exp.id} canceled")
    events.experiment_changed(ctx, exp, "cancel-requested")
    return CancelResult(True, f"cancel requested for experiment {exp.id}; "
                              "running tasks are being stopped")


def _ended_or_refuse(ctx: Context, exp: Experiment, key: str, action: str,
                    want_ended: bool) -> None:
    ended = exp.status in EXPERIMENT_TERMINAL
    if ended != want_ended:
        audit(ctx, key, f"experiment:{exp.id}", "refused", f"{action}: {exp.status}")
        raise Conflict(f"experiment {exp.id} is {exp.status}: {action} needs "
                       f"{'an ended' if want_ended else 'a running'} experiment")


def set_paused(ctx: Context, exp_ref: str, paused: bool) -> str:
    """Pause: no new instance starts (running ones finish); resume: they start again."""
    exp = ctx.store.experiments.get(exp_ref)
    require(ctx, "scheduler.instance.update", exp.id)
    action = "pause" if paused else "resume"
    _ended_or_refuse(ctx, exp, "scheduler.instance.update", action, want_ended=False)
    ctx.store.experiments.update(exp.id, paused=paused)
    audit(ctx, "scheduler.instance.update", f"experiment:{exp.id}", "ok", action)
    events.experiment_changed(ctx, exp, "paused" if paused else "resumed")
    return (f"experiment {exp.id} paused: running tasks finish, no new ones start" if paused
            else f"experiment {exp.id} resumed")


def retry(ctx: Context, exp_ref: str) -> tuple[Experiment, int]:
    """Make an ended experiment's failed, canceled and upstream-failed instances wait again,
    under the same id, with fresh retries; the caller starts a run of it."""
    exp = ctx.store.experiments.get(exp_ref)
    require(ctx, "scheduler.instance.update", exp.id)
    _ended_or_refuse(ctx, exp, "scheduler.instance.update", "retry", want_ended=True)
    again = [t.instance_id for t in ctx.store.tasks.list(exp.id, states=[
        TaskState.FAILED, TaskState.CANCELED, TaskState.UPSTREAM_FAILED])]
    if not again:
        raise Conflict(f"experiment {exp.id} has nothing to retry: every task completed")
    if not ctx.store.experiments.update(exp.id, status=ExperimentStatus.CREATED, message=None,
                                        cancel_requested=False, paused=False, finished_at=None,
                                        expect=[exp.status]):
        raise Conflict(f"experiment {exp.id} changed while it was being retried; try again")
    ctx.store.tasks.reset(exp.id, again, message="retried", fresh=True)
    audit(ctx, "scheduler.instance.update", f"experiment:{exp.id}", "ok",
          f"retry: {len(again)} tasks")
    events.experiment_changed(ctx, exp, "retried", tasks=len(again))
    return ctx.store.experiments.get(exp.id), len(again)


def resubmit(ctx: Context, exp_ref: str) -> str:
    """A new experiment from the same spec and parameters, in the same project."""
    from airavata_prefect.domain.spec import parse_spec_text
    from airavata_prefect.usecases.submit import submit

    exp = ctx.store.experiments.get(exp_ref)
    require(ctx, "scheduler.queue.read", exp.id)
    loaded = parse_spec_text(exp.spec_text, exp.source)
    return submit(ctx, loaded, [f"{k}={v}" for k, v in exp.params.items()],
                  project=exp.project)


__all__ = ["CancelResult", "cancel", "fail_unfinished", "resubmit", "retry", "set_paused"]
