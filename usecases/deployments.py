"""The experiment flow as Prefect deployments: every door (the CLI, the Prefect UI, `prefect
deployment run`, schedules, Prefect's API) starts experiments as flow runs of a deployment in a
work pool, run by Prefect workers. Each deployment belongs to one project and acts as its
service account; Prefect automations resume the runs that crash.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from airavata_prefect.adapters import prefect_api
from airavata_prefect.adapters.spicedb import Subject
from airavata_prefect.adapters.store import ServiceAccount
from airavata_prefect.domain.errors import NotFound
from airavata_prefect.domain.records import Experiment
from airavata_prefect.usecases.authorization import audit, ensure_project, require
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.errors import BadInput, Unavailable

FLOW = "run-experiment"
ENTRYPOINT = "airavata_prefect.flows.experiment_flow.run_experiment"  # a module path
DEFAULT_POOL = "default"
DEFAULT_DEPLOYMENT = "default"
HEARTBEAT_SECONDS = 30  # each experiment flow run beats this often (Prefect allows >= 30)
SILENT_AFTER = timedelta(seconds=90)  # no beat for this long: its host is gone: Crashed
RESUME_AUTOMATION = "airavata: resume crashed experiments"
SILENT_AUTOMATION = "airavata: experiment runs that stopped beating crashed"
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def account_of(deployment: str) -> str:
    """The service account a deployment acts as (a SpiceDB user id)."""
    return f"deployment-{deployment}"


def process_pool_template() -> dict[str, Any]:
    """Prefect's process pool template, with the heartbeat that tells a run whose host died."""
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    env = template["variables"]["properties"]["env"]
    env["default"] = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS)}
    return template


def ensure_automations() -> None:
    """A Crashed experiment run starts a resuming run of the same deployment; a run whose
    heartbeat stops (its host is gone) is marked Crashed first. Idempotent."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState, RunDeployment
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    ours = ResourceSpecification({"prefect.resource.role": "flow",
                                  "prefect.resource.name": FLOW})
    prefect_api.ensure_automation(AutomationCore(
        name=RESUME_AUTOMATION,
        description="Resume an experiment whose flow run crashed: a new run of the same "
                    "deployment takes it over from the store.",
        trigger=EventTrigger(expect={"prefect.flow-run.Crashed"}, match_related=ours,
                             posture=Posture.Reactive, threshold=1,
                             within=timedelta(seconds=0)),
        # A plain jinja kind: rendered as text (Prefect's default wraps it in tojson, which
        # cannot serialise the run's UUID).
        actions=[RunDeployment(source="inferred", parameters={"resume_of": {
            "__prefect_kind": "jinja", "template": "{{ flow_run.id }}"}})]))
    prefect_api.ensure_automation(AutomationCore(
        name=SILENT_AUTOMATION,
        description="An experiment run that stopped its heartbeat (its host or process is "
                    "gone) is marked Crashed, so it is resumed instead of Running for ever.",
        trigger=EventTrigger(after={"prefect.flow-run.heartbeat"},
                             expect={"prefect.flow-run.heartbeat",
                                     "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                                     "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed",
                                     "prefect.flow-run.Cancelling"},
                             match_related=ours, for_each={"prefect.resource.id"},
                             posture=Posture.Proactive, threshold=1, within=SILENT_AFTER),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, name="Crashed",
                                    message="its heartbeat stopped: the process or its host "
                                            "is gone")]))


def parameter_schema() -> dict[str, Any]:
    """The flow's typed parameters (loaded from its entrypoint, as `prefect deploy` does), so
    the UI's Custom run shows a form and Prefect checks each run's parameters."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema as schema_of

    return dict(schema_of(load_flow_from_entrypoint(ENTRYPOINT)).model_dump_for_openapi())


def register(ctx: Context, name: str, *, project: str, pool: str = DEFAULT_POOL,
             description: str = "") -> ServiceAccount:
    """Create or update the deployment `run-experiment/NAME` in `pool` (a process pool is
    made when missing), acting as its service account, a member of `project` only. Needs
    project.manage there; audited."""
    if not NAME.match(name):
        raise BadInput(f"deployment name {name!r}: use lowercase letters, digits and '-'")
    ensure_project(ctx, project)
    require(ctx, "project.manage", project)
    try:
        if prefect_api.pool_type(pool) is None:
            prefect_api.ensure_pool(pool, "process", process_pool_template(),
                                    "Runs Airavata experiments (the run-experiment flow).")
        dep_id = prefect_api.ensure_deployment(
            FLOW, name, pool=pool, entrypoint=ENTRYPOINT, job_variables={},
            description=description or f"Run an Airavata experiment in project {project}.",
            parameter_schema=parameter_schema(), tags=[f"project:{project}"])
        ensure_automations()
    except prefect_api.PrefectUnavailable as exc:
        raise Unavailable(str(exc)) from None
    account = ServiceAccount(dep_id, f"{FLOW}/{name}", account_of(name), project)
    previous = ctx.store.service_accounts.of(dep_id)
    if previous is not None and previous.project != project:
        ctx.authz.unrelate("project", previous.project, "member",
                           Subject.user(previous.account))
    ctx.authz.relate("project", project, "member", Subject.user(account.account))
    ctx.store.service_accounts.put(account, created_by=ctx.user)
    audit(ctx, "deployment.create", f"deployment:{account.deployment}", "ok",
          f"project {project}, pool {pool}, acts as {account.account}")
    return account


def run_name(exp: Experiment) -> str:
    return f"{exp.name}-{exp.short_id}"


def run_tags(exp: Experiment) -> list[str]:
    return [f"project:{exp.project or ''}", f"user:{exp.owner or ''}", f"experiment:{exp.id}"]


async def label(flow_run_id: str, exp: Experiment) -> None:
    """Name and tag the flow run after its experiment, so Prefect users can filter by them."""
    await prefect_api.label_run(flow_run_id, run_name(exp), run_tags(exp))


def wait_for_worker(pool: str, timeout: float = 60.0) -> None:
    """Until a worker polls `pool` (a worker just started takes a few seconds)."""
    import time

    deadline = time.monotonic() + timeout
    while not prefect_api.online_workers(pool):
        if time.monotonic() > deadline:
            raise Unavailable(f"no worker came online for work pool {pool!r} within "
                              f"{timeout:.0f} s")
        time.sleep(0.5)


def check_runnable(deployment: str) -> str:
    """Raise Unavailable unless `run-experiment/DEPLOYMENT` exists and a worker polls its pool
    now (BadInput for a name no deployment can have, NotFound for one nobody created, but the
    default: that is the installation's own); its full name."""
    if not NAME.match(deployment):
        raise BadInput(f"deployment name {deployment!r}: lowercase letters, digits and '-'")
    full = f"{FLOW}/{deployment}"
    if not prefect_api.api_url():
        raise Unavailable("PREFECT_API_URL is not set: start the embedded default with "
                          "`airavata server start` and export the address it prints")
    try:
        if prefect_api.deployment_id(full) is None:
            if deployment != DEFAULT_DEPLOYMENT:
                raise NotFound(f"there is no deployment {full} (airavata deployment create "
                               "makes one)")
            raise Unavailable(f"there is no deployment {full}: start the embedded default "
                              "with `airavata server start`")
        pool = prefect_api.deployment_pool(full)
        if not prefect_api.online_workers(pool):
            raise Unavailable(f"no worker polls work pool {pool!r}: start one with "
                              f"`airavata server start` or `prefect worker start --pool {pool}`")
    except prefect_api.PrefectUnavailable as exc:
        raise Unavailable(str(exc)) from None
    return full


def start_run(exp: Experiment, *, deployment: str = DEFAULT_DEPLOYMENT, key: str | None = None,
              parameters: dict[str, Any] | None = None) -> str:
    """A flow run of `run-experiment/DEPLOYMENT` that runs the stored experiment; the same
    `key` (default: the experiment id) never starts a second one. Refuses at once when no
    worker polls the deployment's pool, rather than leaving a Late run behind."""
    full = check_runnable(deployment)
    try:
        return prefect_api.create_run(full, parameters or {"experiment_id": exp.id},
                                      idempotency_key=key or exp.id, name=run_name(exp),
                                      tags=run_tags(exp))
    except prefect_api.PrefectUnavailable as exc:
        raise Unavailable(str(exc)) from None


def _account(ctx: Context, deployment: str) -> ServiceAccount:
    full = f"{FLOW}/{deployment}"
    try:
        dep_id = prefect_api.deployment_id(full)
    except prefect_api.PrefectUnavailable as exc:
        raise Unavailable(str(exc)) from None
    account = ctx.store.service_accounts.of(dep_id) if dep_id else None
    if account is None:
        raise NotFound(f"no deployment {full} (create it with airavata deployment create)")
    return account


def schedule(ctx: Context, deployment: str, slug: str, when: Any,
             parameters: dict[str, Any]) -> str:
    """Add or replace a schedule of the deployment; each firing is one experiment with these
    parameters. Needs project.manage in the deployment's project (its runs act there)."""
    account = _account(ctx, deployment)
    require(ctx, "project.manage", account.project)
    sid = prefect_api.add_schedule(account.deployment, when, parameters, slug)
    audit(ctx, "deployment.schedule", f"deployment:{account.deployment}", "ok", slug)
    return sid


def schedules(ctx: Context, deployment: str) -> list[dict[str, Any]]:
    account = _account(ctx, deployment)
    require(ctx, "project.read", account.project)
    out = []
    for sch in prefect_api.schedules(account.deployment):
        params = dict(sch.parameters or {})
        out.append({"slug": sch.slug, "id": str(sch.id), "active": sch.active,
                    "schedule": sch.schedule.model_dump_json(exclude_none=True),
                    "params": params.get("params", {}), "has_spec": bool(params.get("spec"))})
    return out


def set_schedule(ctx: Context, deployment: str, slug: str, *, active: bool) -> None:
    account = _account(ctx, deployment)
    require(ctx, "project.manage", account.project)
    if not prefect_api.set_schedule_active(account.deployment, slug, active):
        raise NotFound(f"deployment {account.deployment} has no schedule {slug!r}")
    audit(ctx, "deployment.schedule", f"deployment:{account.deployment}", "ok",
          f"{slug} {'resumed' if active else 'paused'}")


__all__ = [
    "DEFAULT_DEPLOYMENT",
    "DEFAULT_POOL",
    "ENTRYPOINT",
    "FLOW",
    "account_of",
    "check_runnable",
    "ensure_automations",
    "label",
    "process_pool_template",
    "register",
    "run_name",
    "run_tags",
    "schedule",
    "schedules",
    "set_schedule",
    "start_run",
]
