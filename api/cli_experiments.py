"""`airavata experiment ...`: compile, plan, run and follow experiments."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from airavata_prefect.api import cli_remote
from airavata_prefect.api.views import UsageOut, usage_cells
from airavata_prefect.domain.plan import Plan
from airavata_prefect.domain.records import Experiment, Task
from airavata_prefect.domain.resources import load_resources
from airavata_prefect.domain.spec import format_duration
from airavata_prefect.domain.states import ACTIVE, EXPERIMENT_TERMINAL, ExperimentStatus, TaskState
from airavata_prefect.usecases import deployments, launch, lifecycle, queries
from airavata_prefect.usecases.context import Context, open_context
from airavata_prefect.usecases.plan import compile_file, learned_runtimes, plan_experiment
from airavata_prefect.usecases.settings import get_settings

experiment_app = typer.Typer(no_args_is_help=True, help="Compile, run and follow experiments.")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ExperimentArg = typer.Argument(..., help="Experiment id (or a unique prefix)",
                               metavar="EXPERIMENT")
ParamOpt = typer.Option([], "--param", "-p", help="Override a parameter: KEY=VALUE (repeatable)")
DeploymentOpt = typer.Option(deployments.DEFAULT_DEPLOYMENT,
                             help="Deployment of run-experiment whose workers run it")


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
    _, _, graph = compile_file(
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
    loaded, _, graph = compile_file(
        file, param, root=str(settings.runs_dir / "<experiment-id>"),
        max_instances=settings.max_instances)
    who = user or settings.user
    if resources:
        result = plan_experiment(loaded, graph, load_resources(str(resources)), user=who,
                                 time_limit=time_limit)
    elif (c := cli_remote.remote()) is not None:  # the server plans, as who signed in
        result = cli_remote.plan(c, file, param, user=user, time_limit=time_limit)
    else:  # online: this machine and the registered resources
        from airavata_prefect.usecases.submit import planning_pool
        with open_context(settings, user=who) as ctx:
            pool = planning_pool(ctx)
            learned = learned_runtimes(ctx.store.tasks.runtimes, graph)
        result = plan_experiment(loaded, graph, pool, user=who, time_limit=time_limit,
                                 learned=learned)
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        _print_plan(result)
    if result.status == "infeasible":
        raise typer.Exit(3)


def _print_plan(p: Plan) -> None:
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
    for step, note in sorted(p.estimates.items()):
        out.print(f"{step}: runtime from history, {note}")


@experiment_app.command("run")
def run_cmd(
    file: Path = typer.Argument(..., help="Experiment YAML", metavar="FILE"),
    param: list[str] = ParamOpt,
    watch: bool = typer.Option(False, "--watch", "-w", help="Follow progress until it ends"),
    project: str | None = typer.Option(None, help="Project to run in (AIRAVATA_PROJECT)"),
    compute: str | None = typer.Option(None, help="Run every task on this compute resource"),
    deployment: str = DeploymentOpt,
) -> None:
    """Submit an experiment; a Prefect worker runs it (follow it with --watch or status)."""
    if (c := cli_remote.remote()) is not None:
        cli_remote.run(c, file, param, project=project, deployment=deployment,
                       compute=compute, do_watch=watch)
        return
    with open_context() as ctx:
        _started(ctx, launch.run(ctx, file, param, project=project, deployment=deployment,
                                 compute=compute), watch, "submitted")


def _started(ctx: Context, s: launch.Started, watch: bool, what: str) -> None:
    out.print(f"experiment [bold]{s.experiment_id}[/] {what}: {s.total_tasks:,} tasks, "
              f"working directory {s.workdir}, flow run {s.flow_run_id}")
    if watch:
        raise typer.Exit(_watch(ctx, s.experiment_id))
    out.print(f"follow it with: airavata experiment status {s.experiment_id[:8]} --watch")


@experiment_app.command("pause")
def pause_cmd(experiment: str = ExperimentArg) -> None:
    """Stop new tasks from starting (running ones finish); resume continues."""
    if (c := cli_remote.remote()) is not None:
        return cli_remote.action(c, experiment, "pause")
    with open_context() as ctx:
        out.print(lifecycle.set_paused(ctx, experiment, True))


@experiment_app.command("resume")
def resume_cmd(experiment: str = ExperimentArg) -> None:
    """Let a paused experiment start tasks again."""
    if (c := cli_remote.remote()) is not None:
        return cli_remote.action(c, experiment, "resume")
    with open_context() as ctx:
        out.print(lifecycle.set_paused(ctx, experiment, False))


@experiment_app.command("retry")
def retry_cmd(experiment: str = ExperimentArg,
              watch: bool = typer.Option(False, "--watch", "-w"),
              deployment: str = DeploymentOpt) -> None:
    """Run an ended experiment's failed, canceled and upstream-failed tasks again (same id)."""
    if (c := cli_remote.remote()) is not None:
        return cli_remote.restart(c, experiment, "retry", deployment, watch)
    with open_context() as ctx:
        started, n = launch.retry(ctx, experiment, deployment=deployment)
        _started(ctx, started, watch, f"retrying {n} task(s)")


@experiment_app.command("resubmit")
def resubmit_cmd(experiment: str = ExperimentArg,
                 watch: bool = typer.Option(False, "--watch", "-w"),
                 deployment: str = DeploymentOpt) -> None:
    """A new experiment from the same spec and parameters."""
    if (c := cli_remote.remote()) is not None:
        return cli_remote.restart(c, experiment, "resubmit", deployment, watch)
    with open_context() as ctx:
        _started(ctx, launch.resubmit(ctx, experiment, deployment=deployment), watch,
                 "submitted")


def _counts_table(exp: Experiment, counts: dict[str, dict[str, int]]) -> Table:
    table = Table(title=f"{exp.name} ({exp.short_id}) {exp.status} {exp.elapsed():.0f}s")
    table.add_column("step", no_wrap=True)
    for col in ("total", "waiting", "active", "done", "failed", "upstream", "canceled"):
        table.add_column(col, justify="right")
    for step, c in counts.items():
        active = sum(c.get(s, 0) for s in ACTIVE)
        table.add_row(step, str(sum(c.values())), str(c.get(TaskState.CREATED, 0)), str(active),
                      str(c.get(TaskState.COMPLETED, 0)), str(c.get(TaskState.FAILED, 0)),
                      str(c.get(TaskState.UPSTREAM_FAILED, 0)), str(c.get(TaskState.CANCELED, 0)))
    return table


def _watch(ctx: Context, exp_id: str, interval: float = 0.5) -> int:
    shown_link = False
    exp, counts = queries.snapshot(ctx, exp_id)
    try:
        with Live(console=out, auto_refresh=False, transient=False) as live:
            while True:
                exp, counts = queries.snapshot(ctx, exp_id)
                if exp.flow_run_id and not shown_link:
                    ui = queries.ui_url()
                    if ui:
                        live.console.print(f"Prefect UI: {ui}/runs/flow-run/{exp.flow_run_id}")
                    shown_link = True
                live.update(_counts_table(exp, counts), refresh=True)
                if exp.status in EXPERIMENT_TERMINAL:
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        err.print(f"stopped watching; the experiment keeps running. "
                  f"airavata experiment cancel {exp_id[:8]} stops it.")
        return 130
    out.print()
    _print_outcome(ctx, exp)
    return 0 if exp.status == ExperimentStatus.COMPLETED else 1


def _print_outcome(ctx: Context, exp: Experiment) -> None:
    out.print(f"experiment {exp.id} {exp.status}: {exp.message or ''}")
    failed = queries.failed_tasks(ctx, exp)
    for task in failed:
        out.print(f"  {task.instance_id} failed: {task.reason} "
                  f"(logs: {task.workdir}/stderr.log)")
    if exp.status == ExperimentStatus.FAILED and not failed and exp.message and exp.flow_run_id:
        ui = queries.ui_url()
        if ui:
            out.print(f"  see its flow run: {ui}/runs/flow-run/{exp.flow_run_id}")


@experiment_app.command("status")
def status_cmd(
    experiment: str = ExperimentArg,
    watch: bool = typer.Option(False, "--watch", "-w", help="Follow progress until it ends"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show an experiment's progress per step."""
    if (c := cli_remote.remote()) is not None:
        return cli_remote.status(c, experiment, do_watch=watch, as_json=as_json)
    with open_context() as ctx:
        exp = queries.experiment(ctx, experiment)
        if watch:
            raise typer.Exit(_watch(ctx, exp.id))
        exp, counts = queries.snapshot(ctx, exp.id)
        if as_json:
            print(json.dumps({
                "id": exp.id, "name": exp.name, "status": exp.status, "message": exp.message,
                "workdir": exp.workdir, "flow_run_id": exp.flow_run_id, "steps": counts,
                "plan": exp.plan.to_json() if exp.plan else None,
                **{k: v and v.isoformat() for k, v in (
                    ("created_at", exp.created_at), ("started_at", exp.started_at),
                    ("finished_at", exp.finished_at))}}, indent=2))
            return
        out.print(_counts_table(exp, counts))
        if exp.status in EXPERIMENT_TERMINAL:
            _print_outcome(ctx, exp)


@experiment_app.command("tasks")
def tasks_cmd(
    experiment: str = ExperimentArg,
    step: str | None = typer.Option(None, help="Only this step"),
    state: list[TaskState] = typer.Option([], help="Only these states (repeatable)"),
    limit: int = typer.Option(100, min=1, help="At most this many rows"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List task instances with their state, attempt, exit code and working directory."""
    if (c := cli_remote.remote()) is not None:
        return cli_remote.tasks(c, experiment, step=step, states=[str(s) for s in state],
                                limit=limit, as_json=as_json)
    with open_context() as ctx:
        exp = queries.experiment(ctx, experiment)
        rows = queries.tasks(ctx, exp.id, step=step, states=state, limit=limit)
    if as_json:
        print(json.dumps([{"instance_id": r.instance_id, "step": r.step, "idx": r.idx,
                           "state": r.state, "attempt": r.attempt, "exit_code": r.exit_code,
                           "reason": r.reason, "workdir": r.workdir, "resource": r.resource,
                           "usage": _usage(r)} for r in rows], indent=2))
        return
    table = Table(title=f"{exp.name} ({exp.short_id}): {len(rows)} task(s)")
    for col in ("task", "state", "attempt", "exit", "wall", "cpu", "memory", "reason",
                "workdir"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r.instance_id, r.state, str(r.attempt),
                      "" if r.exit_code is None else str(r.exit_code),
                      *usage_cells(_usage(r)), r.reason or "", r.workdir)
    out.print(table)


def _usage(t: Task) -> dict[str, Any] | None:
    return UsageOut.model_validate(t.usage, from_attributes=True).model_dump() if t.usage else None


@experiment_app.command("events")
def events_cmd(
    experiment: str = ExperimentArg,
    task: str | None = typer.Argument(None, help="Only this task instance, e.g. 'task1[3]'",
                                      metavar="[TASK]"),
    limit: int = typer.Option(200, min=1, help="At most this many, oldest first"),
) -> None:
    """Every state change of an experiment's task instances (or one of them), with reasons."""
    if (c := cli_remote.remote()) is not None:
        return cli_remote.events(c, experiment, limit, task)
    with open_context() as ctx:
        rows = queries.events(ctx, experiment, task, limit)
    table = Table()
    for col in ("at", "task", "attempt", "from", "to", "message"):
        table.add_column(col, overflow="fold")
    for e in rows:
        table.add_row(e.at.strftime("%H:%M:%S.%f")[:-3], e.instance_id, str(e.attempt),
                      e.from_state or "", e.to_state, e.message or "")
    out.print(table)


@experiment_app.command("list")
def list_cmd(limit: int = typer.Option(20, min=1, help="How many, newest first"),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """List the experiments you may read, newest first."""
    if (c := cli_remote.remote()) is not None:
        return cli_remote.experiments(c, limit, as_json)
    with open_context() as ctx:
        mine = queries.experiments(ctx, limit)
    if as_json:
        print(json.dumps([{"id": e.id, "name": e.name, "status": e.status,
                           "total_tasks": e.total_tasks, "project": e.project,
                           "created_at": e.created_at.isoformat(), "message": e.message}
                          for e in mine], indent=2))
        return
    table = Table()
    for col in ("id", "name", "status", "tasks", "created", "message"):
        table.add_column(col)
    for e in mine:
        table.add_row(e.short_id, e.name, e.status, f"{e.total_tasks:,}",
                      e.created_at.strftime("%Y-%m-%d %H:%M:%S"), e.message or "")
    out.print(table)


@experiment_app.command("cancel")
def cancel_cmd(experiment: str = ExperimentArg) -> None:
    """Cancel an experiment: running tasks are stopped, waiting ones never start."""
    if (c := cli_remote.remote()) is not None:
        return cli_remote.action(c, experiment, "cancel")
    with open_context() as ctx:
        result = lifecycle.cancel(ctx, experiment)
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
    if (c := cli_remote.remote()) is not None:
        return cli_remote.logs(c, experiment, task, stderr)
    with open_context() as ctx:
        log = queries.log_file(ctx, experiment, task, stderr=stderr)
    sys.stdout.write(log.read_text(errors="replace"))


@experiment_app.command("watch")
def watch_cmd(experiment: str = ExperimentArg) -> None:
    """Follow an experiment live until it ends (exit 0 when it completed)."""
    if (c := cli_remote.remote()) is not None:
        raise typer.Exit(cli_remote.watch(c, experiment))
    with open_context() as ctx:
        exp = queries.experiment(ctx, experiment)
        raise typer.Exit(_watch(ctx, exp.id))


@experiment_app.command("task")
def task_cmd(experiment: str = ExperimentArg,
             task: str = typer.Argument(..., help="Task instance id, e.g. 'task1[3]'",
                                        metavar="TASK")) -> None:
    """One task instance as JSON: state, attempt, exit code, reason, resource, times."""
    if (c := cli_remote.remote()) is not None:
        return cli_remote.task(c, experiment, task)
    with open_context() as ctx:
        exp = queries.experiment(ctx, experiment)
        t = ctx.store.tasks.get(exp.id, task)
    print(json.dumps({"instance_id": t.instance_id, "step": t.step, "idx": t.idx,
                      "state": t.state, "attempt": t.attempt, "exit_code": t.exit_code,
                      "reason": t.reason, "resource": t.resource, "workdir": t.workdir,
                      "started_at": t.started_at and t.started_at.isoformat(),
                      "finished_at": t.finished_at and t.finished_at.isoformat()}, indent=2))
