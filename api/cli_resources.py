"""`airavata resource ...`: register compute and storage resources (blocks, work pools,
deployments, their project and bound credential in SpiceDB), and list them."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from airavata_prefect.adapters.db import Store
from airavata_prefect.api import service
from airavata_prefect.api.errors import ResourceError
from airavata_prefect.flows.settings import get_settings

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

COMPUTE_HELP = (
    "Fields by type (--set FIELD=VALUE).\n\n"
    "slurm: submit_via (ssh|local|rest), login_host, port, username, rest_url, rest_user, "
    "environment, working_directory, partition, account, max_array_size.\n\n"
    "baremetal: host, port, username, working_directory.\n\n"
    "kubernetes: namespace, image, service_account.\n\n"
    "Every type, for placement: nodes, cores_per_node, gpus_per_node, mem_gb_per_node, "
    "max_walltime, queue_wait, cost, egress_gb; and work_pool_name (default: NAME).")


def _host_key(data: dict, host_key_file: Path | None) -> None:
    if host_key_file is None:
        return
    try:
        text = host_key_file.expanduser().read_text()
    except OSError as exc:
        raise ResourceError(f"--host-key-file: cannot read {host_key_file}: "
                                      f"{exc.strerror}") from None
    for line in text.splitlines():
        parts = line.split()
        # an ssh-keyscan line starts with the host; a .pub file with the key type
        if len(parts) >= 2 and parts[0].startswith(("ssh-", "ecdsa-")):
            data["host_key"] = f"{parts[0]} {parts[1]}"
            return
        if len(parts) >= 3 and parts[1].startswith(("ssh-", "ecdsa-")):
            data["host_key"] = f"{parts[1]} {parts[2]}"
            return
    raise ResourceError(f"--host-key-file: no public key in {host_key_file}")


def _register(what: str, name: str, kind: str, fields: list[str], credential: str | None,
              host_key_file: Path | None, project: str | None, replace: bool) -> tuple[str, dict]:
    """The shared path of `compute create` and `storage create`: fields to a block, the
    credential checked and bound, then registration. Returns the project and what was made."""
    from airavata_prefect.api import resources

    settings = get_settings()
    types = resources.COMPUTE_TYPES if what == "compute" else resources.STORAGE_TYPES
    cls, data = resources.parse_fields(kind, fields, types)
    resources.check_name(name)
    if what == "compute":
        data.setdefault("work_pool_name", name)
    _host_key(data, host_key_file)
    store = Store(settings.db_url)
    authz = service.authorizer(store)
    try:
        project = project or settings.project
        service.ensure_project(store, authz, project, settings.user)
        ref = resources.credential_ref(store, authz, settings.user, credential)
        if ref is not None and kind == "local":
            raise ResourceError("a local path takes no credential")
        block = resources.build_block(cls, data, ref)
        if what == "compute":
            return project, resources.register_compute(
                store, authz, actor=settings.user, project=project, name=name, kind=kind,
                block=block, replace=replace)
        resources.register_storage(store, authz, actor=settings.user, project=project,
                                   name=name, block=block, replace=replace)
        return project, {}
    finally:
        authz.close()


@compute_app.command("create", epilog=COMPUTE_HELP)
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
    settings = get_settings()
    store = Store(settings.db_url)
    authz = service.authorizer(store)
    try:
        pool = service.planning_resources(store, authz, settings.user)
    finally:
        authz.close()
    table = Table()
    for col in ("name", "type", "nodes", "cores/node", "gpus/node", "max walltime",
                "usable by you"):
        table.add_column(col)
    for r in pool:
        table.add_row(r.name, r.type, str(r.nodes), str(r.cores_per_node),
                      str(r.gpus_per_node), r.max_walltime or "-",
                      "yes" if r.users is None or settings.user in r.users
                      else "no: no credential")
    out.print(table)
