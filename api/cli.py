"""The `airavata` command line (typer + rich).

Exit status: 0 success; 1 an experiment that did not complete, or a failure outside the user's
input; 2 bad input (spec, parameters, arguments, unknown ids), one line per problem.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.table import Table

from airavata_prefect.adapters.db import NotFound, Store
from airavata_prefect.api import service
from airavata_prefect.api.cli_credentials import CredentialInputError, credential_app
from airavata_prefect.api.cli_resources import resource_app
from airavata_prefect.api.credentials import CredentialError
from airavata_prefect.api.errors import ResourceError
from airavata_prefect.flows import placement
from airavata_prefect.flows.problems import SpecError
from airavata_prefect.flows.resources import load_resources
from airavata_prefect.flows.settings import Settings, get_settings
from airavata_prefect.flows.spec import format_duration
from airavata_prefect.flows.states import ACTIVE, EXPERIMENT_TERMINAL, ExperimentStatus, TaskState

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="Airavata experiment orchestration on Prefect.")
experiment_app = typer.Typer(no_args_is_help=True, help="Compile, run and follow experiments.")
app.add_typer(experiment_app, name="experiment")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ExperimentArg = typer.Argument(..., help="Experiment id (or a unique prefix)",
                               metavar="EXPERIMENT")
ParamOpt = typer.Option([], "--param", "-p", help="Override a parameter: KEY=VALUE (repeatable)")


class UserError(Exception):
    """Bad input that is not a spec problem: printed as one line, exit status 2."""


def _store(settings: Settings) -> Store:
    return Store(settings.db_url)


def _readable(store: Store, settings: Settings, ref: str, key: str = "scheduler.queue.read"
              ) -> dict:
    """The experiment, if the user holds `key` on it (else Forbidden, audited)."""
    exp = store.get_experiment(ref)
    authz = service.authorizer(store)
    try:
        service.require(store, authz, settings.user, key, exp["id"])
    finally:
        authz.close()
    return exp


project_app = typer.Typer(no_args_is_help=True, help="Projects and their members.")
app.add_typer(project_app, name="project")
app.add_typer(credential_app, name="credential")
app.add_typer(resource_app, name="resource")


@project_app.command("add-member")
def add_member_cmd(
    project: str = typer.Argument(..., metavar="PROJECT"),
    user: str = typer.Argument(..., metavar="USER"),
    admin: bool = typer.Option(False, "--admin", help="As an admin (may manage the project)"),
) -> None:
    """Let USER submit to PROJECT (and, with --admin, manage it and read its experiments)."""
    settings = get_settings()
    store = _store(settings)
    authz = service.authorizer(store)
    try:
        service.ensure_project(store, authz, project, settings.user)
        service.require(store, authz, settings.user, "project.manage", project)
        authz.relate("project", project, "admin" if admin else "member",
                     service.Subject.user(user))
        store.audit(actor=settings.user, action="project.manage", obj=f"project:{project}",
                    correlation_id=service.correlation_id(), outcome="ok",
                    detail=f"{'admin' if admin else 'member'}: {user}")
    finally:
        authz.close()
    out.print(f"{user} is now {'an admin' if admin else 'a member'} of project {project}")


@experiment_app.command("compile")
def compile_cmd(
    file: Path = typer.Argument(..., help="Experiment YAML", metavar="FILE"),
    param: list[str] = ParamOpt,
    as_json: bool = typer.Option(False, "--json", help="Print every task instance as JSON"),
    max_instances: int | None = typer.Option(None, min=1, help="Expansion limit"),
    workdir: str | None = typer.Option(None, help="Root of the instances' working directories"),
) -> None:
    """Validate an experiment and expand it into its task instances."""
    settings = get_settings()
    _, _, graph = service.compile_file(
        file, param, root=workdir or str(settings.runs_dir / "<experiment-id>"),
        max_instances=max_instances or settings.max_instances)
    if as_json:
        write = sys.stdout.write
        write(f'{{"name": {json.dumps(graph.name)}, "total": {graph.total}, "tasks": [')
        for n, inst in enumerate(graph.iter_instances()):
            write(("," if n else "") + "\n  " + graph.instance_json(inst))
        write("\n]}\n")
        return
    table = Table(title=f"{graph.name}: {graph.total:,} task instances")
    for col in ("step", "instances", "foreach", "depends_on", "swept inputs", "retries"):
        table.add_column(col)
    for s in graph.steps:
        table.add_row(s.name, f"{s.count:,}", ", ".join(s.foreach) or "-",
                      ", ".join(s.barriers) or "-",
                      ", ".join(f"{k}({len(v)})" for k, v in s.axes) or "-", str(s.retries))
    out.print(table)


@experiment_app.command("plan")
def plan_cmd(
    file: Path = typer.Argument(..., help="Experiment YAML", metavar="FILE"),
    param: list[str] = ParamOpt,
    resources: Path | None = typer.Option(
        None, "--resources", "-r", metavar="RESOURCES.yml",
        help="Offline: plan against the compute resources in this file (default: this machine)"),
    user: str | None = typer.Option(None, help="Whose credentials decide eligibility "
                                                "(default: AIRAVATA_USER)"),
    time_limit: float = typer.Option(10.0, min=0.1, help="Solver time limit, seconds"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Decide where every task runs: exit 0 with a plan, 3 when none exists, 2 on bad input."""
    settings = get_settings()
    loaded, _, graph = service.compile_file(
        file, param, root=str(settings.runs_dir / "<experiment-id>"),
        max_instances=settings.max_instances)
    who = user or settings.user
    if resources:
        pool = load_resources(str(resources))
    else:  # online: this machine and the registered resources
        store = _store(settings)
        authz = service.authorizer(store)
        try:
            pool = service.planning_resources(store, authz, who)
        finally:
            authz.close()
    result = service.plan_experiment(loaded, graph, pool, user=who, time_limit=time_limit)
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        _print_plan(result)
    if result.status == "infeasible":
        raise typer.Exit(3)


def _print_plan(p: placement.Plan) -> None:
    if p.status == "infeasible":
        out.print(f"[bold red]infeasible[/] ({p.objective}): {p.reason}")
        return
    table = Table(title=f"{p.status} plan, objective {p.objective}: cost {p.total_cost:.2f}, "
                        f"makespan {format_duration(p.makespan_seconds or 0)}, gap {p.gap:.2%}, "
                        f"solved in {p.solve_seconds:.2f}s")
    for col in ("step", "resource", "tasks", "cost", "finishes at"):
        table.add_column(col, justify="left" if col in ("step", "resource") else "right")
    for a in p.assignments:
        table.add_row(a.step, a.resource, f"{a.count:,}", f"{a.cost:.2f}",
                      format_duration(a.finish_seconds))
    out.print(table)


@experiment_app.command("run")
def run_cmd(
    file: Path = typer.Argument(..., help="Experiment YAML", metavar="FILE"),
    param: list[str] = ParamOpt,
    watch: bool = typer.Option(False, "--watch", "-w", help="Follow progress until it ends"),
    project: str | None = typer.Option(None, help="Project to run in (AIRAVATA_PROJECT)"),
) -> None:
    """Submit an experiment; it runs in the background (follow it with --watch or status)."""
    settings = get_settings()
    store = _store(settings)
    authz = service.authorizer(store)
    try:
        exp_id = service.submit(store, settings, file, param, user=settings.user, authz=authz,
                                project=project)
    finally:
        authz.close()
    exp = store.get_experiment(exp_id)
    pid = service.start_runner(exp)
    store.update_experiment(exp_id, runner_pid=pid)
    out.print(f"experiment [bold]{exp_id}[/] submitted: {exp['total_tasks']:,} tasks, "
              f"working directory {exp['workdir']}")
    if watch:
        raise typer.Exit(_watch(store, exp_id))
    out.print(f"follow it with: airavata experiment status {exp_id[:8]} --watch")


def _counts_table(exp: dict, counts: dict[str, dict[str, int]], elapsed: float) -> Table:
    table = Table(title=f"{exp['name']} ({exp['id'][:8]}) {exp['status']} {elapsed:.0f}s")
    table.add_column("step", no_wrap=True)
    for col in ("total", "waiting", "active", "done", "failed", "upstream", "canceled"):
        table.add_column(col, justify="right")
    for step, c in counts.items():
        active = sum(c.get(s, 0) for s in ACTIVE)
        table.add_row(step, str(sum(c.values())), str(c.get(TaskState.CREATED, 0)), str(active),
                      str(c.get(TaskState.COMPLETED, 0)), str(c.get(TaskState.FAILED, 0)),
                      str(c.get(TaskState.UPSTREAM_FAILED, 0)), str(c.get(TaskState.CANCELED, 0)))
    return table


def _watch(store: Store, exp_id: str, interval: float = 0.5) -> int:
    start = time.monotonic()
    shown_link = False
    exp = store.get_experiment(exp_id)
    try:
        with Live(console=out, auto_refresh=False, transient=False) as live:
            while True:
                exp = store.get_experiment(exp_id)
                if exp["flow_run_id"] and not shown_link:
                    ui = service.prefect_ui_url()
                    if ui:
                        live.console.print(f"Prefect UI: {ui}/runs/flow-run/{exp['flow_run_id']}")
                    shown_link = True
                live.update(_counts_table(exp, store.state_counts(exp_id),
                                          time.monotonic() - start), refresh=True)
                if exp["status"] in EXPERIMENT_TERMINAL:
                    break
                if service.reconcile(store, exp)["status"] in EXPERIMENT_TERMINAL:
                    continue  # show the final table once more
                time.sleep(interval)
    except KeyboardInterrupt:
        err.print(f"stopped watching; the experiment keeps running. "
                  f"airavata experiment cancel {exp_id[:8]} stops it.")
        return 130
    out.print()
    _print_outcome(store, exp)
    return 0 if exp["status"] == ExperimentStatus.COMPLETED else 1


def _print_outcome(store: Store, exp: dict) -> None:
    out.print(f"experiment {exp['id']} {exp['status']}: {exp['message'] or ''}")
    failed = store.tasks(exp["id"], states=[TaskState.FAILED], limit=10)
    for row in failed:
        out.print(f"  {row['instance_id']} failed: {row['reason']} "
                  f"(logs: {row['workdir']}/stderr.log)")
    if exp["status"] == ExperimentStatus.FAILED and not failed and exp["message"]:
        out.print(f"  see {exp['workdir']}/runner.log")


@experiment_app.command("status")
def status_cmd(
    experiment: str = ExperimentArg,
    watch: bool = typer.Option(False, "--watch", "-w", help="Follow progress until it ends"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show an experiment's progress per step."""
    settings = get_settings()
    store = _store(settings)
    exp = service.reconcile(store, _readable(store, settings, experiment))
    if watch:
        raise typer.Exit(_watch(store, exp["id"]))
    counts = store.state_counts(exp["id"])
    if as_json:
        print(json.dumps({"id": exp["id"], "name": exp["name"], "status": exp["status"],
                          "message": exp["message"], "workdir": exp["workdir"],
                          "flow_run_id": exp["flow_run_id"], "steps": counts,
                          "plan": exp["plan"],
                          **{k: exp[k] and exp[k].isoformat()
                             for k in ("created_at", "started_at", "finished_at")}}, indent=2))
        return
    out.print(_counts_table(exp, counts, _elapsed(exp)))
    if exp["status"] in EXPERIMENT_TERMINAL:
        _print_outcome(store, exp)


def _elapsed(exp: dict) -> float:
    # SQLite hands back naive datetimes; we always store UTC.
    start, end = (t and (t if t.tzinfo else t.replace(tzinfo=UTC))
                  for t in (exp["started_at"], exp["finished_at"]))
    if not start:
        return 0.0
    if end is None:
        return time.time() - start.timestamp()
    return (end - start).total_seconds()


@experiment_app.command("tasks")
def tasks_cmd(
    experiment: str = ExperimentArg,
    step: str | None = typer.Option(None, help="Only this step"),
    state: list[TaskState] = typer.Option([], help="Only these states (repeatable)"),
    limit: int = typer.Option(100, min=1, help="At most this many rows"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List task instances with their state, attempt, exit code and working directory."""
    settings = get_settings()
    store = _store(settings)
    exp = _readable(store, settings, experiment)
    rows = store.tasks(exp["id"], states=[str(s) for s in state] or None, step=step,
                       limit=limit)
    if step and not rows and step not in store.state_counts(exp["id"]):
        raise UserError(f"experiment {exp['id'][:8]} has no step {step!r}")
    if as_json:
        keys = ("instance_id", "step", "idx", "state", "attempt", "exit_code", "reason",
                "workdir")
        print(json.dumps([{k: r[k] for k in keys} for r in rows], indent=2))
        return
    table = Table(title=f"{exp['name']} ({exp['id'][:8]}): {len(rows)} task(s)")
    for col in ("task", "state", "attempt", "exit", "reason", "workdir"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["instance_id"], r["state"], str(r["attempt"]),
                      "" if r["exit_code"] is None else str(r["exit_code"]), r["reason"] or "",
                      r["workdir"])
    out.print(table)


@experiment_app.command("list")
def list_cmd(limit: int = typer.Option(20, min=1, help="How many, newest first")) -> None:
    """List the experiments you may read, newest first."""
    settings = get_settings()
    store = _store(settings)
    table = Table()
    for col in ("id", "name", "status", "tasks", "created", "message"):
        table.add_column(col)
    authz = service.authorizer(store)
    try:
        mine = [e for e in store.list_experiments(limit)
                if authz.check(settings.user, "scheduler.queue.read", e["id"])]
    finally:
        authz.close()
    for e in mine:
        e = service.reconcile(store, e)
        table.add_row(e["id"][:8], e["name"], e["status"], f"{e['total_tasks']:,}",
                      e["created_at"].strftime("%Y-%m-%d %H:%M:%S"), e["message"] or "")
    out.print(table)


@experiment_app.command("cancel")
def cancel_cmd(experiment: str = ExperimentArg) -> None:
    """Cancel an experiment: running tasks are stopped, waiting ones never start."""
    settings = get_settings()
    store = _store(settings)
    _readable(store, settings, experiment, "scheduler.queue.cancel")
    result = service.cancel(store, experiment, user=settings.user)
    out.print(result.message)
    if not result.accepted:
        raise typer.Exit(1)


@experiment_app.command("logs")
def logs_cmd(
    experiment: str = ExperimentArg,
    task: str = typer.Argument(..., help="Task instance id, e.g. 'task1[3]'", metavar="TASK"),
    stderr: bool = typer.Option(False, "--stderr", help="Show stderr instead of stdout"),
) -> None:
    """Print a task instance's stdout (or stderr)."""
    settings = get_settings()
    store = _store(settings)
    exp = _readable(store, settings, experiment)
    row = store.task(exp["id"], task)
    log = Path(row["workdir"]) / ("stderr.log" if stderr else "stdout.log")
    if not log.exists():
        raise UserError(f"{task} has no {log.name} yet (state {row['state']})")
    sys.stdout.write(log.read_text(errors="replace"))


def main() -> None:
    try:
        app(standalone_mode=True)
    except SpecError as exc:
        for p in exc.problems:
            err.print(p.render(), markup=False, highlight=False)
        sys.exit(2)
    except (NotFound, UserError, CredentialInputError, ResourceError) as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(2)
    except service.NoPlacement as exc:
        err.print(f"error: no placement: {exc}", markup=False, highlight=False)
        sys.exit(3)
    except service.Forbidden as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(4)
    except service.Unavailable as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(1)
    except CredentialError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(4 if exc.denied else 1)
    except ValidationError as exc:  # settings from AIRAVATA_* variables
        for e in exc.errors():
            name = "AIRAVATA_" + "_".join(str(p) for p in e["loc"]).upper()
            err.print(f"error: {name}={e.get('input')!r}: {e['msg']}", markup=False,
                      highlight=False)
        sys.exit(2)
    except Exception as exc:
        if os.environ.get("AIRAVATA_DEBUG"):
            raise
        err.print(f"error: {_describe(exc)}", markup=False, highlight=False)
        sys.exit(1)


def _describe(exc: Exception) -> str:
    from sqlalchemy.exc import SQLAlchemyError
    if isinstance(exc, SQLAlchemyError):
        url = get_settings().db_url
        from sqlalchemy.engine import make_url
        safe = make_url(url).render_as_string(hide_password=True)
        return f"database {safe}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    return f"{type(exc).__name__}: {exc}"
