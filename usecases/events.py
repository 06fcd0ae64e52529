"""What each action tells Prefect's event system (domain/events.py, adapters/prefect_events.py),
from the records the use cases already hold: every event carries the request's correlation id
(usecases/correlation.py), the project, the experiment and who acts, so a Prefect automation
can react to it and `airavata trace` finds it.

Who acts: the user a door verified (Context.user, as in the audit rows); an experiment's run
acts for the experiment's owner. None of this may fail or slow an action: an event that cannot
be made is logged and skipped, and sending happens on another thread."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from airavata_prefect.adapters import prefect_events
from airavata_prefect.domain.events import (
    LifecycleEvent,
    Scalar,
    Subject,
    instance_event_kind,
    instance_subject,
)
from airavata_prefect.domain.records import Experiment
from airavata_prefect.domain.states import ExperimentStatus, Transition
from airavata_prefect.usecases.correlation import correlation_id

if TYPE_CHECKING:
    from airavata_prefect.usecases.context import Context

log = logging.getLogger("airavata.events")

_ENDED = {ExperimentStatus.COMPLETED: "completed", ExperimentStatus.FAILED: "failed",
          ExperimentStatus.CANCELED: "canceled"}


def _send(type_: str, subject: Subject, detail: dict[str, Scalar], *, actor: str | None,
          project: str | None = None, experiment: str | None = None,
          flow_run: str | None = None, occurred: datetime | None = None,
          labels: dict[str, str] | None = None) -> None:
    try:
        prefect_events.emit(LifecycleEvent(
            type_, subject, correlation_id(), actor, project_id=project,
            experiment_id=experiment, flow_run_id=flow_run or None, detail=detail,
            labels=labels or {}, occurred=occurred or datetime.now(UTC)))
    except Exception as exc:  # an event is never worth failing the action for
        if type_ not in _unsent:  # once per type: a fault of ours repeats for every instance
            _unsent.add(type_)
            log.warning("event %s not sent: %s", type_, exc)


_unsent: set[str] = set()


# -- experiments ---------------------------------------------------------------------------------


def _experiment(type_: str, exp: Experiment, actor: str | None,
                detail: dict[str, Scalar]) -> None:
    _send(type_, Subject("experiment", exp.id, exp.name), detail, actor=actor,
          project=exp.project, experiment=exp.id, flow_run=exp.flow_run_id)


def experiment_submitted(ctx: Context, experiment_id: str, *, name: str, project: str,
                         total: int) -> None:
    _send("experiment.submitted", Subject("experiment", experiment_id, name), {"tasks": total},
          actor=ctx.user, project=project, experiment=experiment_id)


def experiment_running(exp: Experiment, *, resumed_from: str | None = None) -> None:
    """Its run started (or took over a crashed one: `resumed_from`); acts for its owner."""
    _experiment("experiment.running", exp, exp.owner,
                {"tasks": exp.total_tasks, "resumed_from": resumed_from})


def experiment_ended(exp: Experiment, status: ExperimentStatus, message: str | None = None,
                     counts: dict[str, int] | None = None, *, actor: str | None = None) -> None:
    """It ended COMPLETED, FAILED or CANCELED (`counts`: instances per final state), by
    `actor` (someone who canceled it), else by its run, for its owner."""
    kind = _ENDED.get(status)
    if kind is None:
        log.warning("experiment %s: %s is not an ending; no event", exp.id, status)
        return
    per_state: dict[str, Scalar] = {str(state).lower(): n for state, n in (counts or {}).items()}
    _experiment(f"experiment.{kind}", exp, actor or exp.owner,
                {"status": str(status), "message": message, **per_state})


def experiment_changed(ctx: Context, exp: Experiment, change: str, /, **detail: Scalar) -> None:
    """Someone acted on it: canceled, cancel-requested, paused, resumed, retried."""
    _experiment(f"experiment.{change}", exp, ctx.user, detail)


# -- instances -----------------------------------------------------------------------------------

_RETRIES: OrderedDict[str, dict[str, int]] = OrderedDict()  # experiment id -> step -> retries


def _retries(exp: Experiment) -> dict[str, int]:
    """Each step's retries, from the experiment's stored spec (parsed once per experiment)."""
    known = _RETRIES.get(exp.id)
    if known is None:
        from airavata_prefect.domain.spec import parse_spec_text
        try:
            spec = parse_spec_text(exp.spec_text, exp.source).spec
            known = {name: task.retries or spec.retries for name, task in spec.tasks.items()}
        except Exception:
            known = {}
        _RETRIES[exp.id] = known
        while len(_RETRIES) > 64:
            _RETRIES.popitem(last=False)
    return known


def instance_events(experiment: Experiment, transitions: Iterable[Transition]) -> int:
    """The events of a batch of instance state changes (the run loop's, once stored): only
    the ends of attempts that ran (domain.events.instance_event_kind). How many were queued;
    never raises."""
    sent = 0
    try:
        retries: dict[str, int] | None = None
        for t in transitions:
            if retries is None:
                retries = _retries(experiment)
            step, _, rest = t.instance_id.partition("[")
            kind = instance_event_kind(t.from_state, t.to_state, t.attempt,
                                       retries.get(step, 0))
            if kind is None:
                continue
            index = rest.removesuffix("]")
            detail: dict[str, Scalar] = {
                "instance_id": t.instance_id, "step": step,
                "index": int(index) if index.isdigit() else None, "attempt": t.attempt,
                "state": str(t.to_state), "exit_code": t.exit_code, "message": t.message}
            _send(f"instance.{kind}", instance_subject(experiment.id, t.instance_id), detail,
                  actor=experiment.owner, project=experiment.project, experiment=experiment.id,
                  flow_run=experiment.flow_run_id, occurred=t.at,
                  labels={"airavata.step": step, "airavata.state": str(t.to_state)})
            sent += 1
    except Exception as exc:  # the run goes on without its events
        log.warning("experiment %s: instance events not sent: %s", experiment.id, exc)
    return sent


# -- resources and credentials -------------------------------------------------------------------

_RESOURCE_KIND = {"compute": "compute-resource", "storage": "storage-resource"}


def resource_changed(ctx: Context, change: str, what: str, name: str, /, *,
                     project: str | None = None, **detail: Scalar) -> None:
    """A compute or storage resource (`what`) was registered, updated, removed or tested."""
    _send(f"resource.{change}", Subject(_RESOURCE_KIND.get(what, what), name, name), detail,
          actor=ctx.user, project=project)


def credential_changed(actor: str, change: str, credential_id: str, /, **detail: Scalar
                       ) -> None:
    """A credential was created, rotated, shared, bound, unbound or deleted: its id, never
    its value."""
    _send(f"credential.{change}", Subject("credential", credential_id, credential_id), detail,
          actor=actor)


__all__ = ["credential_changed", "experiment_changed", "experiment_ended", "experiment_running",
           "experiment_submitted", "instance_events", "resource_changed"]
