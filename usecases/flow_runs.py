"""What an experiment flow run runs, and as whom, before it runs it.

A flow run is given one of: `spec` (+ `params`, `project`, `name`): submit that experiment and
run it; `experiment_id`: run a stored one (the CLI submits, then starts a run this way);
`resume_of`: the automation that resumes a crashed run passes the dead run's id, and this run
takes its experiment over from the store (or, when it died before taking one, does what it was
asked).

Who acts is never a parameter. A run of a deployment acts as that deployment's service
account, in its project only; a stored experiment runs as the person who submitted it (they
were authorised then); a flow called in-process (tests, a notebook) acts as the OS user.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airavata_prefect.adapters import prefect_api
from airavata_prefect.adapters.store import ServiceAccount
from airavata_prefect.usecases import run
from airavata_prefect.usecases.authorization import audit
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.errors import BadInput, Forbidden
from airavata_prefect.usecases.spec_source import read_spec
from airavata_prefect.usecases.submit import submit


@dataclass(frozen=True)
class Asked:
    """A flow run's parameters."""

    spec: str = ""
    params: dict[str, str] | None = None
    project: str = ""
    name: str = ""
    experiment_id: str = ""
    resume_of: str = ""

    @classmethod
    def of(cls, parameters: dict[str, Any]) -> Asked:
        known = {k: v for k, v in parameters.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def acting_as(ctx: Context, deployment_id: str | None) -> ServiceAccount | None:
    """The service account of the deployment this run belongs to (None: not a deployment run).
    Raises Forbidden for a deployment nobody registered with `airavata deployment create`."""
    if not deployment_id:
        return None
    account = ctx.store.service_accounts.of(deployment_id)
    if account is None:
        audit(ctx, "scheduler.queue.submit", f"deployment:{deployment_id}", "denied",
              "no service account")
        raise Forbidden(f"deployment {deployment_id} has no service account: register it with "
                        "`airavata deployment create NAME --project PROJECT`")
    return account


def _submit(ctx: Context, asked: Asked, account: ServiceAccount | None, flow_run_id: str | None,
            deployment: str) -> str:
    if account is not None:
        ctx.user = account.account
        if asked.project and asked.project != account.project:
            detail = (f"deployment {account.deployment} belongs to project {account.project}; "
                      f"flow run {flow_run_id}")
            audit(ctx, "scheduler.queue.submit", f"project:{asked.project}", "denied", detail)
            raise Forbidden(f"deployment {account.deployment} runs experiments in project "
                            f"{account.project} only, not {asked.project}")
    project = account.project if account else (asked.project or ctx.settings.project)
    loaded = read_spec(asked.spec, name=asked.name, ctx=ctx)
    params = [f"{k}={v}" for k, v in (asked.params or {}).items()]
    try:
        return submit(ctx, loaded, params, project=project, origin_flow_run_id=flow_run_id)
    except Forbidden:
        audit(ctx, "scheduler.queue.submit", f"project:{project}", "denied",
              f"deployment {deployment or '-'}, flow run {flow_run_id}")
        raise


def begin(ctx: Context, asked: Asked, *, flow_run_id: str | None,
          deployment_id: str | None) -> run.Claimed:
    """Decide the experiment this flow run runs, submitting it when asked to, and claim it.
    Raises SpecError, Forbidden, NoPlacement, Unavailable, BadInput or run.NotWaiting."""
    account = acting_as(ctx, deployment_id)
    deployment = account.deployment if account else ""
    store = ctx.store
    if asked.resume_of:
        exp = store.experiments.run_by(asked.resume_of) \
            or store.experiments.submitted_by(asked.resume_of)
        if exp is not None:
            return run.claim(store, exp.id, flow_run_id, prefect_api.flow_run_ended)
        # It died before it took an experiment: do what it was asked, once.
        before = Asked.of(prefect_api.flow_run_parameters(asked.resume_of))
        if before.resume_of:
            raise BadInput(f"flow run {asked.resume_of} was itself a resumption and held no "
                           "experiment: nothing to resume")
        asked = before
    if asked.experiment_id:
        return run.claim(store, asked.experiment_id, flow_run_id, prefect_api.flow_run_ended)
    if not asked.spec:
        raise BadInput("give `spec` (the experiment YAML, or a path the worker can read) or "
                       "`experiment_id` (a stored experiment)")
    if flow_run_id:  # a retry of this same flow run: its experiment is already stored
        mine = store.experiments.submitted_by(flow_run_id)
        if mine is not None:
            return run.claim(store, mine.id, flow_run_id, prefect_api.flow_run_ended)
    exp_id = _submit(ctx, asked, account, flow_run_id, deployment)
    return run.claim(store, exp_id, flow_run_id)


__all__ = ["Asked", "acting_as", "begin"]
