"""`airavata experiment outputs|download`: an experiment's declared outputs, listed with sizes
and checksums, or brought here as files or one tar.gz; read locally or through the REST API
(server mode), where both arrive as one streamed archive."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from airavata_prefect.api import cli_remote
from airavata_prefect.api.cli_door import either, plain, print_json
from airavata_prefect.api.cli_experiments import ExperimentArg, experiment_app, out
from airavata_prefect.usecases import archives, queries
from airavata_prefect.usecases import outputs as use
from airavata_prefect.usecases.context import open_context

TaskOpt = typer.Option(None, "--task", "-t", metavar="TASK",
                       help="Only this step (sweep) or instance (sweep[3])")


def _params(task: str | None) -> dict[str, str]:
    return {"task": task} if task is not None else {}


@experiment_app.command("outputs")
def outputs_cmd(experiment: str = ExperimentArg, task: str | None = TaskOpt,
                as_json: bool = typer.Option(False, "--json")) -> None:
    """The declared outputs of the experiment's instances: path, size and sha256 of each one
    that exists, and why the others do not."""
    rows: list[dict[str, Any]] = either(
        lambda api: list(api.call("GET", f"/experiments/{experiment}/outputs",
                                  params=_params(task))),
        lambda ctx: plain(use.outputs(ctx, experiment, task=task)))
    if as_json:
        print_json(rows)
        return
    table = Table()
    for col in ("instance", "output", "path", "size", "sha256"):
        table.add_column(col, overflow="fold", justify="right" if col == "size" else "left")
    for r in rows:
        table.add_row(escape(r["instance_id"]), escape(r["name"]), escape(r["path"]),
                      f"{r['size']:,}" if r["exists"] else escape(r["note"] or "missing"),
                      (r["sha256"] or "")[:12])
    out.print(table)
    found = sum(r["exists"] for r in rows)
    out.print(f"{found} of {len(rows)} declared outputs exist", highlight=False)


@experiment_app.command("download")
def download_cmd(experiment: str = ExperimentArg, task: str | None = TaskOpt,
                 output_dir: Path = typer.Option(Path("."), "--output-dir", "-o",
                                                 help="Where to write (made if missing)"),
                 archive: bool = typer.Option(False, "--archive",
                                              help="One EXPERIMENT-outputs.tar.gz instead of "
                                                   "the files")) -> None:
    """Bring the experiment's existing outputs here, as OUTPUT_DIR/<step>/<index>/<path>, or
    as one tar.gz (--archive). Missing outputs are skipped (`outputs` says why)."""
    if (c := cli_remote.remote()) is not None:
        exp_id = str(c.call("GET", f"/experiments/{experiment}")["id"])
        name = f"{exp_id[:8]}-outputs.tar.gz"
        with c.download(f"/experiments/{exp_id}/outputs/archive", _params(task)) as chunks:
            written = ([archives.write_inside(output_dir, name, chunks)] if archive
                       else archives.extract(chunks, output_dir))
    else:
        with open_context() as ctx:
            exp = queries.experiment(ctx, experiment)
            if archive:
                written = [archives.write_inside(output_dir, f"{exp.short_id}-outputs.tar.gz",
                                            use.archive(ctx, exp.id, task=task))]
            else:
                written = use.copy_to(ctx, exp.id, output_dir, task=task)
    if archive:
        out.print(f"wrote {written[0]} ({written[0].stat().st_size:,} bytes)",
                  markup=False, highlight=False)
        return
    for path in written:
        out.print(f"wrote {path}", markup=False, highlight=False)
    out.print(f"{len(written)} output files in {output_dir}", markup=False, highlight=False)


__all__ = ["download_cmd", "outputs_cmd"]
