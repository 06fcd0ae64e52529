"""`airavata experiment usage`: what each step's instances used (p50 / p90 of wall time, CPU
and peak memory, and the peak), and the usage cells `experiment tasks` shows per instance."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from airavata_prefect.api import cli_remote
from airavata_prefect.api.cli_experiments import ExperimentArg, experiment_app
from airavata_prefect.domain.usage import format_bytes
from airavata_prefect.usecases import queries
from airavata_prefect.usecases.context import open_context

out = Console(soft_wrap=True)


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}s"


def _bytes(value: int | None) -> str:
    return "" if value is None else format_bytes(value)


def _pair(p50: str, p90: str) -> str:
    return f"{p50} / {p90}" if p50 else ""


@experiment_app.command("usage")
def usage_cmd(experiment: str = ExperimentArg,
              as_json: bool = typer.Option(False, "--json")) -> None:
    """What each step's instances used: p50 / p90 wall time, CPU and peak memory."""
    if (c := cli_remote.remote()) is not None:
        rows = c.call("GET", f"/experiments/{experiment}/usage")
    else:
        with open_context() as ctx:
            rows = [s.to_json() for s in queries.usage(ctx, experiment)]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{experiment}: usage per step (p50 / p90)")
    for col in ("step", "n", "wall", "cpu", "memory", "peak", "queue p90"):
        table.add_column(col, justify="left" if col == "step" else "right")
    for r in rows:
        table.add_row(r["step"], str(r["measured"]),
                      _pair(_seconds(r["wall_p50"]), _seconds(r["wall_p90"])),
                      _pair(_seconds(r["cpu_p50"]), _seconds(r["cpu_p90"])),
                      _pair(_bytes(r["rss_p50"]), _bytes(r["rss_p90"])), _bytes(r["rss_max"]),
                      _seconds(r["queue_p90"]))
    out.print(table)


__all__ = ["usage_cmd"]
