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
from airavata_prefect.api.views import agent_out, bundle_out
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
            rows = [bundle_out(b).model_dump(mode="json")
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
            rows = [agent_out(a, n).model_dump(mode="json")
                    for a, n in queries.agents(ctx, experiment)]
    _show(rows, as_json, {
        "agent": lambda a: a["id"], "resource": lambda a: a["resource"],
        "host": lambda a: a["hostname"], "slots": lambda a: str(a["slots"]),
        "job": lambda a: a["allocation"], "status": lambda a: a["status"],
        "ended": lambda a: str(a["ended"]), "why stopped": lambda a: a["stopped_reason"]})


__all__ = ["agents_cmd", "bundles_cmd"]
