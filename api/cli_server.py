"""`airavata server ...` (the embedded default) and `airavata deployment ...` (deployments of the
experiment flow, their service accounts and schedules)."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from airavata_prefect.usecases import agent_tokens, deployments, server
from airavata_prefect.usecases.context import open_context
from airavata_prefect.usecases.errors import BadInput
from airavata_prefect.usecases.settings import get_settings

server_app = typer.Typer(no_args_is_help=True, help="The embedded default on this machine.")
deployment_app = typer.Typer(no_args_is_help=True,
                             help="Deployments of the experiment flow and their schedules.")
out = Console(soft_wrap=True)


@server_app.command("start")
def start_cmd(
    worker: bool = typer.Option(True, help="Also start a worker for the default pool"),
    api: bool = typer.Option(True, help="Also start the REST API (AIRAVATA_API_PORT)"),
    agents: bool = typer.Option(True, help="Also start the agent service pilot agents pull "
                                "from (gRPC over TLS, AIRAVATA_AGENT_PORT)"),
) -> None:
    """Start the Prefect server, the default deployment, a worker, the REST API and the agent
    service (idempotent)."""
    settings = get_settings()
    started = server.start_prefect(settings)
    url = server.api_url(settings)
    os.environ["PREFECT_API_URL"] = url
    out.print(f"Prefect server {'started' if started else 'already up'}: "
              f"http://127.0.0.1:{settings.prefect_port} (logs: {server.state_dir(settings)})")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # Prefect may have read its settings before this address was known.
    with temporary_settings({PREFECT_API_URL: url}), open_context(settings) as ctx:
        account = deployments.register(ctx, deployments.DEFAULT_DEPLOYMENT,
                                       project=settings.project)
    out.print(f"deployment {account.deployment} (project {account.project}, acts as "
              f"{account.account}) in work pool {deployments.DEFAULT_POOL}")
    if worker:
        began = server.start_worker(settings, deployments.DEFAULT_POOL)
        with temporary_settings({PREFECT_API_URL: url}):
            deployments.wait_for_worker(deployments.DEFAULT_POOL)  # runs are taken from now on
        out.print(f"worker {'started' if began else 'already running'} for pool "
                  f"{deployments.DEFAULT_POOL}")
    if api:
        began = server.start_api(settings)
        out.print(f"REST API {'started' if began else 'already up'}: "
                  f"{server.rest_url(settings)}/api/v1 (docs: /api/v1/docs)")
    if agents:
        began = server.start_agent_service(settings)
        out.print(f"agent service {'started' if began else 'already up'}: "
                  f"{settings.agent_target} (TLS)")
    out.print(f"export PREFECT_API_URL={url}")


@server_app.command("stop")
def stop_cmd() -> None:
    """Stop what `server start` started under this AIRAVATA_HOME."""
    stopped = server.stop(get_settings())
    out.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@server_app.command("agent-key")
def agent_key_cmd() -> None:
    """Print the key that signs pilot agents' tokens (platform admins; audited), for where
    agents' tokens are minted away from this server: the `agent-key` of a Kubernetes
    resource's Secret. It signs nothing else: people's tokens need another key."""
    with open_context() as ctx:
        key = agent_tokens.export_key(ctx)
    print(key)


@server_app.command("status")
def status_cmd() -> None:
    """What runs of the embedded default; exit 1 when the Prefect server is down."""
    settings = get_settings()
    up = False
    for s in server.status(settings):
        out.print(f"{s.name}: {'up' if s.alive else 'down'}"
                  f"{f' (pid {s.pid})' if s.pid and s.alive else ''} {s.detail}  log: {s.log}")
        up = up or (s.name == "prefect" and s.alive)
    if not up:
        raise typer.Exit(1)


@deployment_app.command("create")
def create_cmd(
    name: str = typer.Argument(..., metavar="NAME"),
    project: str = typer.Option(..., help="The only project its runs may submit to"),
    pool: str = typer.Option(deployments.DEFAULT_POOL, help="Work pool whose workers run it"),
) -> None:
    """Create (or update) deployment run-experiment/NAME acting as its own service account."""
    with open_context() as ctx:
        account = deployments.register(ctx, name, project=project, pool=pool)
    out.print(f"deployment {account.deployment}: project {account.project}, acts as "
              f"{account.account}, pool {pool}")


@deployment_app.command("list")
def list_cmd() -> None:
    """Deployments of the experiment flow, with their projects and service accounts."""
    with open_context() as ctx:
        rows = ctx.store.service_accounts.list()
    table = Table()
    for col in ("deployment", "project", "acts as"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.deployment, r.project, r.account)
    out.print(table)


def _schedule(cron: str | None, interval: float | None, rrule: str | None, timezone: str) -> Any:
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule, RRuleSchedule

    given = [x for x in (cron, interval, rrule) if x is not None]
    if len(given) != 1:
        raise BadInput("give exactly one of --cron, --interval, --rrule")
    try:
        if cron is not None:
            return CronSchedule(cron=cron, timezone=timezone)
        if interval is not None:
            return IntervalSchedule(interval=timedelta(seconds=interval), timezone=timezone)
        return RRuleSchedule(rrule=rrule or "", timezone=timezone)
    except ValueError as exc:
        raise BadInput(f"schedule: {str(exc).splitlines()[-1].strip()}") from None


@deployment_app.command("schedule")
def schedule_cmd(
    deployment: str = typer.Argument(..., metavar="DEPLOYMENT", help="e.g. default"),
    slug: str = typer.Argument(..., metavar="NAME", help="The schedule's name"),
    spec: str = typer.Option(..., help="Experiment YAML file (its text goes in the schedule)"),
    param: list[str] = typer.Option([], "--param", "-p", help="KEY=VALUE for each firing"),
    cron: str | None = typer.Option(None, help="e.g. '0 2 * * *'"),
    interval: float | None = typer.Option(None, min=1, help="Seconds between firings"),
    rrule: str | None = typer.Option(None, help="An iCalendar RRULE"),
    timezone: str = typer.Option("UTC"),
) -> None:
    """Add (or replace) a schedule: each firing runs SPEC with these parameters."""
    from pathlib import Path

    from airavata_prefect.usecases.plan import compile_file
    settings = get_settings()
    compile_file(spec, param, root=str(settings.runs_dir / "<experiment-id>"),
                 max_instances=settings.max_instances)  # bad input fails here, not at 2 a.m.
    overrides = dict(p.split("=", 1) for p in param)
    when = _schedule(cron, interval, rrule, timezone)
    with open_context(settings) as ctx:
        sid = deployments.schedule(ctx, deployment, slug, when,
                                   {"spec": Path(spec).read_text(), "params": overrides})
    out.print(f"schedule {slug} ({sid}) on {deployments.FLOW}/{deployment}")


@deployment_app.command("schedules")
def schedules_cmd(deployment: str = typer.Argument(..., metavar="DEPLOYMENT"),
                  as_json: bool = typer.Option(False, "--json")) -> None:
    """The schedules of a deployment, with their parameters (overrides only)."""
    with open_context() as ctx:
        rows = deployments.schedules(ctx, deployment)
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = Table()
    for col in ("name", "active", "schedule", "params"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["slug"], str(r["active"]), r["schedule"], json.dumps(r["params"]))
    out.print(table)


@deployment_app.command("pause-schedule")
def pause_schedule_cmd(deployment: str = typer.Argument(..., metavar="DEPLOYMENT"),
                       slug: str = typer.Argument(..., metavar="NAME")) -> None:
    """Stop a schedule from firing (resume-schedule starts it again)."""
    with open_context() as ctx:
        deployments.set_schedule(ctx, deployment, slug, active=False)
    out.print(f"schedule {slug} paused")


@deployment_app.command("resume-schedule")
def resume_schedule_cmd(deployment: str = typer.Argument(..., metavar="DEPLOYMENT"),
                        slug: str = typer.Argument(..., metavar="NAME")) -> None:
    """Let a paused schedule fire again."""
    with open_context() as ctx:
        deployments.set_schedule(ctx, deployment, slug, active=True)
    out.print(f"schedule {slug} resumed")
