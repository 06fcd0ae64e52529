"""`airavata experiment bundles|agents`: what an experiment sent to its registered resources
(bundles) and the pilot agents that pulled its instances, read locally or through the REST
API (server mode)."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from airavata_prefect.api import cli_remote
from airavata_prefect.api.cli_experiments import ExperimentArg, experiment_app, out
from airavata_prefect.usecases import queries
from airavata_prefect.usecases.context import open_context


def _show(rows: list[dict[str, Any]], as_json: bool, columns: dict[str, Any]) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table()
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(cell(row) for cell in columns.values()))
    out.print(table)


@experiment_app.command("bundles")
def bundles_cmd(experiment: str = ExperimentArg,
                as_json: bool = typer.Option(False, "--json")) -> None:
    """The bundles sent to registered resources: where, how many, their jobs and flow runs."""
    if (c := cli_remote.remote()) is not None:
        rows = c.call("GET", f"/experiments/{experiment}/bundles")
    else:
        with open_context() as ctx:
            rows = [{"id": b.id, "resource": b.resource, "step": b.step,
                     "instances": len(b.instances), "status": str(b.status),
                     "jobs": list(b.infrastructure), "flow_run_id": b.flow_run_id,
                     "message": b.message, "created_at": b.created_at.isoformat(),
                     "finished_at": b.finished_at.isoformat() if b.finished_at else None}
                    for b in queries.bundles(ctx, experiment)]
    _show(rows, as_json, {
        "bundle": lambda b: b["id"][:8], "resource": lambda b: b["resource"],
        "step": lambda b: b["step"], "instances": lambda b: str(b["instances"]),
        "status": lambda b: b["status"], "jobs": lambda b: ", ".join(b["jobs"]),
        "message": lambda b: b["message"] or ""})


@experiment_app.command("agents")
def agents_cmd(experiment: str = ExperimentArg,
               as_json: bool = typer.Option(False, "--json")) -> None:
    """The pilot agents that worked for the experiment: where, how big, how many of its
    instances each ended, and why the gone ones stopped."""
    if (c := cli_remote.remote()) is not None:
        rows = c.call("GET", f"/experiments/{experiment}/agents")
    else:
        with open_context() as ctx:
            rows = [{"id": a.id, "resource": a.resource, "hostname": a.hostname,
                     "slots": a.slots, "cores": a.cores, "memory_bytes": a.memory_bytes,
                     "gpus": a.gpus, "allocation": a.allocation_id, "status": str(a.status),
                     "stopped_reason": a.stopped_reason,
                     "registered_at": a.registered_at.isoformat() if a.registered_at else None,
                     "heartbeat_at": a.heartbeat_at.isoformat() if a.heartbeat_at else None,
                     "ended": n} for a, n in queries.agents(ctx, experiment)]
    _show(rows, as_json, {
        "agent": lambda a: a["id"], "resource": lambda a: a["resource"],
        "host": lambda a: a["hostname"], "slots": lambda a: str(a["slots"]),
        "job": lambda a: a["allocation"], "status": lambda a: a["status"],
        "ended": lambda a: str(a["ended"]), "why stopped": lambda a: a["stopped_reason"]})


__all__ = ["agents_cmd", "bundles_cmd"]
