"""`airavata resource ...`: compute and storage resources (list, get, create, update, delete),
their credentials (`resource credential ...`, bind-credential, unbind-credential,
test-credential), a connectivity test and how each compute resource stands (`status`). Every
command works in local mode (the store, as the OS login) and in server mode (the REST API)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand

from airavata_prefect.api.cli_credentials import bind, credential_app, test_credential
from airavata_prefect.api.cli_door import default_project, either, plain, print_json
from airavata_prefect.api.client import ApiClient, RemoteError
from airavata_prefect.usecases import resource_status, resources
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.errors import BadInput, Conflict

What = Literal["compute", "storage"]
resource_app = typer.Typer(no_args_is_help=True, help="Compute and storage resources, their "
                                                      "credentials and status.")
compute_app = typer.Typer(no_args_is_help=True, help="Compute resources (SLURM, bare metal, "
                                                     "Kubernetes).")
storage_app = typer.Typer(no_args_is_help=True, help="Storage resources (S3, SFTP, a path).")
resource_app.add_typer(compute_app, name="compute")
resource_app.add_typer(storage_app, name="storage")
resource_app.add_typer(credential_app, name="credential")
out = Console(soft_wrap=True)

SetOpt = typer.Option([], "--set", "-s", metavar="FIELD=VALUE",
                      help="A field of the resource (repeatable); VALUE may be JSON, e.g. "
                           "nodes=4 or environment='{\"SLURM_CONF\": \"/etc/slurm.conf\"}'")
CredOpt = typer.Option(None, "--credential", "-c", metavar="ID",
                       help="The credential to bind (you need credential.bind on it)")
HostKeyOpt = typer.Option(None, "--host-key-file", metavar="FILE",
                          help="The host's public key (e.g. from ssh-keyscan), pinned")
JsonOpt = typer.Option(False, "--json", help="Print JSON")
StorageOpt = typer.Option(False, "--storage", help="RESOURCE is a storage resource")


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


def _fields(what: What, kind: str, sets: list[str], host_key_file: Path | None
            ) -> dict[str, Any]:
    """--set pairs checked against the kind's fields here, before anything is sent."""
    from airavata_prefect.usecases.registration import kind_fields  # imports Prefect

    data = kind_fields(what, kind, sets)
    host_key = _host_key(host_key_file)
    if host_key is not None:
        data["host_key"] = host_key
    return data


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


# -- what each door does -----------------------------------------------------------------------


def _create(what: What, name: str, kind: str, data: dict[str, Any], project: str,
            credential: str | None, replace: bool) -> dict[str, Any]:
    """Register it; with `replace`, an existing one of that name is replaced instead (its
    credential becomes the one given: none unbinds it)."""
    def remote(api: ApiClient) -> dict[str, Any]:
        body = {"name": name, "kind": kind, "project": project, "fields": data,
                "credential": credential}
        try:
            return dict(api.call("POST", f"/resources/{what}", json=body))
        except RemoteError as exc:
            if exc.status != 409 or not replace:
                raise
        return dict(api.call("PUT", f"/resources/{what}/{name}",
                             json={"fields": data, "kind": kind, "project": project,
                                   "credential": credential}))

    def local(ctx: Context) -> dict[str, Any]:
        try:
            view = resources.create(ctx, what, name, kind, data, project=project,
                                    credential=credential)
        except Conflict:
            if not replace:
                raise
            view = resources.update(ctx, what, name, data, kind=kind, project=project,
                                    credential=credential)
        return dict(plain(view))

    return either(remote, local)


def _get(what: What, name: str) -> dict[str, Any]:
    return either(lambda api: dict(api.call("GET", f"/resources/{what}/{name}")),
                  lambda ctx: dict(plain(resources.get(ctx, what, name))))


def _print_resource(what: What, data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(data)
        return
    out.print(f"{what} resource {data['name']} ({data['kind']})", markup=False)
    rows = {"project": data.get("project"), "credential": data.get("credential"),
            "work pool": data.get("work_pool"), "you may manage it": data.get("can_manage"),
            **data.get("fields", {})}
    for key, value in rows.items():
        if value is not None:
            out.print(f"  {key}: {value}", markup=False, highlight=False)
    if staging := data.get("staging"):
        out.print(f"  staging cache: {staging['cache_hits']} file(s) found there, "
                  f"{staging['cache_misses']} sent ({staging['bytes_sent']:,} bytes, "
                  f"{staging['bytes_spared']:,} spared), {staging['resent_after_mismatch']} "
                  "resent after a checksum mismatch", markup=False, highlight=False)


# -- the commands of compute and storage alike -------------------------------------------------


def _commands(app: typer.Typer, what: What, kinds: str) -> None:
    @app.command("list")
    def list_cmd(as_json: bool = JsonOpt) -> None:
        rows = either(lambda api: list(api.call("GET", f"/resources/{what}")),
                      lambda ctx: plain(resources.list_resources(ctx, what)))
        if as_json:
            print_json(rows)
            return
        table = Table()
        for col in ("name", "type", "project", "work pool", "credential", "you manage"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["name"], r["kind"], r.get("project") or "-",
                          r.get("work_pool") or "-", r.get("credential") or "-",
                          "yes" if r.get("can_manage") else "no")
        out.print(table)

    list_cmd.__doc__ = f"The {what} resources you may read."

    @app.command("get")
    def get_cmd(name: str = typer.Argument(..., metavar="NAME"), as_json: bool = JsonOpt
                ) -> None:
        _print_resource(what, _get(what, name), as_json)

    get_cmd.__doc__ = f"A {what} resource: its project, credential and fields."

    @app.command("create", cls=_KindsHelp if what == "compute" else TyperCommand)
    def create_cmd(
        name: str = typer.Argument(..., metavar="NAME"),
        kind: str = typer.Option(..., "--type", "-t", help=kinds),
        sets: list[str] = SetOpt, credential: str | None = CredOpt,
        host_key_file: Path | None = HostKeyOpt,
        project: str | None = typer.Option(None, help="Project that may use it "
                                                      "(AIRAVATA_PROJECT)"),
        replace: bool = typer.Option(False, "--replace", help="Replace an existing resource"),
        as_json: bool = JsonOpt,
    ) -> None:
        project = project or default_project()
        data = _create(what, name, kind, _fields(what, kind, sets, host_key_file), project,
                       credential, replace)
        if as_json:
            print_json(data)
        elif what == "compute":
            out.print(f"compute resource {name} ({kind}) registered in project {project}: "
                      f"work pool {data['work_pool']}; start its worker with:\n"
                      f"  prefect worker start --pool {data['work_pool']} "
                      f"--type {data['worker_type']}", markup=False, highlight=False)
        else:
            out.print(f"storage resource {name} ({kind}) registered in project {project}",
                      markup=False, highlight=False)

    create_cmd.__doc__ = ("Register a compute resource: its block, work pool and deployment."
                          if what == "compute" else "Register a storage resource that "
                          "experiments mount as NAME:/path:./local.")

    @app.command("update")
    def update_cmd(
        name: str = typer.Argument(..., metavar="NAME"),
        sets: list[str] = SetOpt, credential: str | None = CredOpt,
        no_credential: bool = typer.Option(False, "--no-credential",
                                           help="Unbind its credential"),
        host_key_file: Path | None = HostKeyOpt,
        project: str | None = typer.Option(None, help="Move it to this project"),
        as_json: bool = JsonOpt,
    ) -> None:
        if credential is not None and no_credential:
            raise BadInput("--credential and --no-credential: give one")
        current = _get(what, name)
        merged = {**current["fields"], **_fields(what, current["kind"], sets, host_key_file)}
        body: dict[str, Any] = {"fields": merged, "project": project}
        if credential is not None or no_credential:
            body["credential"] = credential

        def local(ctx: Context) -> dict[str, Any]:
            return dict(plain(resources.update(
                ctx, what, name, merged, project=project,
                credential=body.get("credential", resources.KEEP))))

        data = either(lambda api: dict(api.call("PUT", f"/resources/{what}/{name}", json=body)),
                      local)
        _print_resource(what, data, as_json)

    update_cmd.__doc__ = (f"Change some fields of a {what} resource (the others stay), its "
                          "credential or its project.")

    @app.command("delete")
    def delete_cmd(name: str = typer.Argument(..., metavar="NAME")) -> None:
        either(lambda api: api.call("DELETE", f"/resources/{what}/{name}"),
               lambda ctx: resources.delete(ctx, what, name))
        out.print(f"{what} resource {name} removed", markup=False)

    delete_cmd.__doc__ = (f"Remove a {what} resource"
                          + (": its block, bundle deployment and own work pool."
                             if what == "compute" else "."))


_commands(compute_app, "compute", "slurm | baremetal | kubernetes")
_commands(storage_app, "storage", "s3 | sftp | local")


# -- tests, status, credentials ----------------------------------------------------------------


@resource_app.command("test")
def test_cmd(name: str = typer.Argument(..., metavar="NAME"), storage: bool = StorageOpt,
             as_json: bool = JsonOpt) -> None:
    """Reach a resource as its work would, with its bound credential read as you; exit 1 when
    it cannot be reached."""
    what: What = "storage" if storage else "compute"
    probe = either(lambda api: dict(api.call("POST", f"/resources/{what}/{name}/test")),
                   lambda ctx: dict(plain(resources.check_connectivity(ctx, what, name))))
    if as_json:
        print_json(probe)
    else:
        out.print(f"{what} resource {name}: {probe['status']} ({probe['seconds']:.1f} s) "
                  f"{probe['detail']}", markup=False, highlight=False)
        out.print(f"  checked: {', '.join(probe['checked']) or '-'}", markup=False)
    if probe["status"] == "failed":
        sys.exit(1)


def _status_local(ctx: Context, name: str | None) -> list[dict[str, Any]]:
    return [{**plain(s), "ready": s.ready} for s in resource_status.status(ctx, name)]


@resource_app.command("status")
def status_cmd(name: str | None = typer.Argument(None, metavar="[NAME]"),
               as_json: bool = JsonOpt) -> None:
    """How each compute resource stands: its work pool, the workers polling it, the
    instances queued and running there, and in pilot mode its live agents."""
    rows = either(lambda api: ([api.call("GET", f"/resources/compute/{name}/status")]
                               if name else list(api.call("GET", "/resources/status"))),
                  lambda ctx: _status_local(ctx, name))
    if as_json:
        print_json(rows)
        return
    table = Table()
    for col in ("name", "type", "mode", "work pool", "pool", "workers", "agents", "queued",
                "running", "ready"):
        table.add_column(col)
    for r in rows:
        agents = f"{r['agents']} ({r['agent_slots']} slots)" if r["agents"] else "-"
        table.add_row(r["name"], r["kind"], r["mode"], r.get("work_pool") or "-",
                      r.get("pool_status") or "missing", str(len(r["workers"])), agents,
                      str(r["queued"]), str(r["running"]), "yes" if r["ready"] else "no")
    out.print(table)


CredArg = typer.Argument(..., metavar="CREDENTIAL")
ResourceArg = typer.Argument(..., metavar="RESOURCE")


def _bind(credential: str, resource: str, storage: bool, as_json: bool, remove: bool) -> None:
    data = bind(credential, resource, storage=storage, remove=remove)
    if as_json:
        print_json(data)
    else:
        out.print(f"credential {credential} {'unbound from' if remove else 'bound to'} "
                  f"{resource}", markup=False)


@resource_app.command("bind-credential")
def bind_credential_cmd(credential: str = CredArg, resource: str = ResourceArg,
                        storage: bool = StorageOpt, as_json: bool = JsonOpt) -> None:
    """Bind a credential to a compute (or storage) resource: its work uses it."""
    _bind(credential, resource, storage, as_json, remove=False)


@resource_app.command("unbind-credential")
def unbind_credential_cmd(credential: str = CredArg, resource: str = ResourceArg,
                          storage: bool = StorageOpt, as_json: bool = JsonOpt) -> None:
    """Unbind a credential from a compute (or storage) resource."""
    _bind(credential, resource, storage, as_json, remove=True)


@resource_app.command("test-credential")
def test_credential_cmd(credential: str = CredArg, as_json: bool = JsonOpt) -> None:
    """Prove you may read a credential and OpenBao holds it (only its keys' names are shown);
    exit 1 when it fails."""
    test_credential(credential, as_json)


__all__ = ["resource_app"]
