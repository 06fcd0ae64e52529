"""`airavata resource ...`: register compute and storage resources (blocks, work pools,
deployments, their project and bound credential in SpiceDB), and list them."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand

from airavata_prefect.usecases.context import open_context
from airavata_prefect.usecases.errors import BadInput

resource_app = typer.Typer(no_args_is_help=True, help="Compute and storage resources.")
compute_app = typer.Typer(no_args_is_help=True, help="Compute resources (SLURM, bare metal, "
                                                     "Kubernetes).")
storage_app = typer.Typer(no_args_is_help=True, help="Storage resources (S3, SFTP, a path).")
resource_app.add_typer(compute_app, name="compute")
resource_app.add_typer(storage_app, name="storage")
out = Console(soft_wrap=True)

SetOpt = typer.Option([], "--set", "-s", metavar="FIELD=VALUE",
                      help="A field of the resource (repeatable); VALUE may be JSON, e.g. "
                           "nodes=4 or environment='{\"SLURM_CONF\": \"/etc/slurm.conf\"}'")
CredOpt = typer.Option(None, "--credential", "-c", metavar="ID",
                       help="The credential to bind (you need credential.bind on it)")
HostKeyOpt = typer.Option(None, "--host-key-file", metavar="FILE",
                          help="The host's public key (e.g. from ssh-keyscan), pinned")
ProjectOpt = typer.Option(None, help="Project that may use it (AIRAVATA_PROJECT)")
ReplaceOpt = typer.Option(False, "--replace", help="Overwrite an existing resource")

def _host_key(host_key_file: Path | None) -> str | None:
    """The public key in an ssh-keyscan line or a .pub file."""
    if host_key_file is None:
        return None
    try:
        text = host_key_file.expanduser().read_text()
    except OSError as exc:
        raise BadInput(f"--host-key-file: cannot read {host_key_file}: "
                                      f"{exc.strerror}") from None
    for line in text.splitlines():
        parts = line.split()
        # an ssh-keyscan line starts with the host; a .pub file with the key type
        if len(parts) >= 2 and parts[0].startswith(("ssh-", "ecdsa-")):
            return f"{parts[0]} {parts[1]}"
        if len(parts) >= 3 and parts[1].startswith(("ssh-", "ecdsa-")):
            return f"{parts[1]} {parts[2]}"
    raise BadInput(f"--host-key-file: no public key in {host_key_file}")


def _register(what: str, name: str, kind: str, fields: list[str], credential: str | None,
              host_key_file: Path | None, project: str | None, replace: bool
              ) -> tuple[str, dict[str, str]]:
    from airavata_prefect.usecases.registration import register  # imports Prefect

    host_key = _host_key(host_key_file)
    with open_context() as ctx:
        return register(ctx, what, name, kind, fields, credential=credential,
                        host_key=host_key, project=project, replace=replace)


class _KindsHelp(TyperCommand):
    """Each kind's fields in `--help`, read from the kinds when help is shown (they load
    Prefect, which other commands need not wait for)."""

    @property  # click's plain attribute, computed here
    def epilog(self) -> str:
        from airavata_prefect.usecases.registration import compute_help
        return compute_help()

    @epilog.setter
    def epilog(self, value: str | None) -> None:
        return None


@compute_app.command("create", cls=_KindsHelp)
def compute_create(
    name: str = typer.Argument(..., metavar="NAME"),
    kind: str = typer.Option(..., "--type", "-t", help="slurm | baremetal | kubernetes"),
    fields: list[str] = SetOpt, credential: str | None = CredOpt,
    host_key_file: Path | None = HostKeyOpt, project: str | None = ProjectOpt,
    replace: bool = ReplaceOpt,
) -> None:
    """Register a compute resource: its block, work pool and deployment."""
    project, done = _register("compute", name, kind, fields, credential, host_key_file,
                              project, replace)
    out.print(f"compute resource {name} ({kind}) registered in project {project}: work pool "
              f"{done['work_pool']}; start its worker with:\n"
              f"  prefect worker start --pool {done['work_pool']} --type {done['worker_type']}")


@storage_app.command("create")
def storage_create(
    name: str = typer.Argument(..., metavar="NAME"),
    kind: str = typer.Option(..., "--type", "-t", help="s3 | sftp | local"),
    fields: list[str] = SetOpt, credential: str | None = CredOpt,
    host_key_file: Path | None = HostKeyOpt, project: str | None = ProjectOpt,
    replace: bool = ReplaceOpt,
) -> None:
    """Register a storage resource that experiments mount as NAME:/path:./local."""
    project, _ = _register("storage", name, kind, fields, credential, host_key_file, project,
                          replace)
    out.print(f"storage resource {name} ({kind}) registered in project {project}")


@compute_app.command("list")
def compute_list() -> None:
    """The compute resources you may use, as placement sees them."""
    from airavata_prefect.usecases.submit import planning_pool

    with open_context() as ctx:
        pool = planning_pool(ctx)
    table = Table()
    for col in ("name", "type", "nodes", "cores/node", "gpus/node", "max walltime",
                "usable by you"):
        table.add_column(col)
    for r in pool:
        table.add_row(r.name, r.type, str(r.nodes), str(r.cores_per_node),
                      str(r.gpus_per_node), r.max_walltime or "-",
                      "yes" if r.users is None or ctx.user in r.users else "no: no credential")
    out.print(table)
