"""`airavata credential ...` (also `airavata resource credential ...`): secrets go to OpenBao,
permissions to SpiceDB, rows to the audit; in server mode, through the REST API.

Secret values are read from files or environment variables, never from the command line (where
any user could see them in the process list), and never printed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from airavata_prefect.api.cli_door import either, plain, print_json
from airavata_prefect.api.client import ApiClient
from airavata_prefect.usecases import credential_queries
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.errors import BadInput

credential_app = typer.Typer(no_args_is_help=True, help="Credentials (secrets live in OpenBao).")
out = Console(soft_wrap=True)

ValueOpt = typer.Option(
    [], "--from-file", "-f", metavar="KEY=FILE",
    help="A secret value from a file, e.g. private_key=~/.ssh/id_ed25519 (repeatable)")
EnvOpt = typer.Option([], "--from-env", "-e", metavar="KEY=VAR",
                      help="A secret value from an environment variable (repeatable)")
JsonOpt = typer.Option(False, "--json", help="Print JSON")
IdArg = typer.Argument(..., metavar="ID")


def _secret(from_file: list[str], from_env: list[str]) -> dict[str, str]:
    data: dict[str, str] = {}
    for item, kind in [(i, "file") for i in from_file] + [(i, "env") for i in from_env]:
        key, eq, source = item.partition("=")
        if not eq or not key or not source:
            raise BadInput(f"--from-{kind} {item!r}: expected KEY={kind.upper()}")
        if kind == "file":
            path = Path(source).expanduser()
            try:
                data[key] = path.read_text()
            except OSError as exc:
                raise BadInput(f"--from-file {key}: cannot read {path}: "
                               f"{exc.strerror}") from None
        elif source in os.environ:
            data[key] = os.environ[source]
        else:
            raise BadInput(f"--from-env {key}: ${source} is not set")
    if not data:
        raise BadInput("give the secret with --from-file KEY=FILE or --from-env KEY=VAR")
    return data


def _print(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(data)
        return
    out.print(f"credential {data['id']} (owner {data['owner']}) at {data['mount']}/"
              f"{data['path']}", markup=False, highlight=False)
    may = [w for w, ok in (("write", data["may_write"]), ("share", data["may_share"]),
                           ("delete", data["may_delete"])) if ok]
    out.print(f"  you may: read{''.join(', ' + m for m in may)}", markup=False)
    if data.get("bindings") is not None:
        out.print(f"  bound to: {', '.join(data['bindings']) or '-'}", markup=False)
    if data.get("shared_with") is not None:
        shares = [f"{s['who']} ({s['role']})" for s in data["shared_with"]]
        out.print(f"  shared with: {', '.join(shares) or '-'}", markup=False)


@credential_app.command("create")
def create_cmd(
    credential: str = typer.Argument(..., metavar="ID", help="A name, e.g. alice-ssh-cluster-a"),
    path: str | None = typer.Option(None, help="OpenBao path (default: users/USER/ID; local "
                                               "mode only)"),
    mount: str = typer.Option("secret", help="OpenBao KV v2 mount (local mode only)"),
    from_file: list[str] = ValueOpt,
    from_env: list[str] = EnvOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Store a new credential in OpenBao; you become its owner."""
    data = _secret(from_file, from_env)

    def remote(api: ApiClient) -> dict[str, Any]:
        if path is not None or mount != "secret":
            raise BadInput("--path and --mount are for local mode: the server keeps each "
                           "credential at secret/users/YOU/ID")
        return dict(api.call("POST", "/credentials", json={"id": credential, "secret": data}))

    def local(ctx: Context) -> dict[str, Any]:
        view, version = credential_queries.create(ctx, credential, data, path=path,
                                                  mount=mount)
        return {**plain(view), "version": version}

    made = either(remote, local)
    if as_json:
        print_json(made)
        return
    out.print(f"credential {credential} stored at {made['mount']}/{made['path']} (version "
              f"{made['version']}); keys: {', '.join(sorted(data))}", markup=False,
              highlight=False)


@credential_app.command("list")
def list_cmd(as_json: bool = JsonOpt) -> None:
    """The credentials you may read: where they live, never their values."""
    rows = either(lambda api: list(api.call("GET", "/credentials")),
                  lambda ctx: plain(credential_queries.list_credentials(ctx)))
    if as_json:
        print_json(rows)
        return
    table = Table()
    for col in ("id", "owner", "where", "bound to"):
        table.add_column(col, overflow="fold")
    for r in rows:
        bound = "?" if r.get("bindings") is None else ", ".join(r["bindings"]) or "-"
        table.add_row(r["id"], r["owner"], f"{r['mount']}/{r['path']}", bound)
    out.print(table)


@credential_app.command("get")
def get_cmd(credential: str = IdArg, as_json: bool = JsonOpt) -> None:
    """One credential's metadata: owner, place in OpenBao, bindings and shares."""
    _print(either(lambda api: dict(api.call("GET", f"/credentials/{credential}")),
                  lambda ctx: dict(plain(credential_queries.get(ctx, credential)))), as_json)


@credential_app.command("delete")
def delete_cmd(credential: str = IdArg) -> None:
    """Remove a credential (owner only): every version in OpenBao, its shares and bindings."""
    either(lambda api: api.call("DELETE", f"/credentials/{credential}"),
           lambda ctx: credential_queries.delete(ctx, credential))
    out.print(f"credential {credential} deleted", markup=False)


@credential_app.command("rotate")
def rotate_cmd(credential: str = IdArg, from_file: list[str] = ValueOpt,
               from_env: list[str] = EnvOpt) -> None:
    """Write a new version: running tasks keep theirs, new tasks get this one."""
    data = _secret(from_file, from_env)
    version = either(
        lambda api: int(api.call("POST", f"/credentials/{credential}/rotate",
                                 json={"secret": data})["version"]),
        lambda ctx: credential_queries.rotate(ctx, credential, data))
    out.print(f"credential {credential} rotated to version {version}", markup=False)


@credential_app.command("share")
def share_cmd(credential: str = IdArg,
              who: str = typer.Argument(..., metavar="USER|group:NAME"),
              writer: bool = typer.Option(False, "--writer", help="May also rotate and bind")
              ) -> None:
    """Let a user or a group read (or, with --writer, also rotate and bind) a credential."""
    either(lambda api: api.call("POST", f"/credentials/{credential}/share",
                                json={"with": who, "writer": writer}),
           lambda ctx: credential_queries.share(ctx, credential, who, writer=writer))
    out.print(f"credential {credential} shared with {who} as "
              f"{'writer' if writer else 'reader'}", markup=False)


def bind(credential: str, resource: str, *, storage: bool, remove: bool) -> dict[str, Any]:
    """Bind (or unbind) a credential; the credential's metadata after it."""
    verb = "unbind" if remove else "bind"
    return either(
        lambda api: dict(api.call("POST", f"/credentials/{credential}/{verb}",
                                  json={"resource": resource, "storage": storage})),
        lambda ctx: dict(plain(credential_queries.bind(ctx, credential, resource,
                                                       storage=storage, remove=remove))))


@credential_app.command("bind")
def bind_cmd(credential: str = IdArg,
             resource: str = typer.Argument(..., metavar="RESOURCE"),
             storage: bool = typer.Option(False, "--storage", help="RESOURCE is storage"),
             remove: bool = typer.Option(False, "--remove", help="Unbind instead")) -> None:
    """Bind a credential to a compute (or storage) resource, or unbind it (also `airavata
    resource bind-credential|unbind-credential`)."""
    bind(credential, resource, storage=storage, remove=remove)
    out.print(f"credential {credential} {'unbound from' if remove else 'bound to'} {resource}",
              markup=False)


def test_credential(credential: str, as_json: bool) -> None:
    probe = either(lambda api: dict(api.call("POST", f"/credentials/{credential}/test")),
                   lambda ctx: dict(plain(credential_queries.probe(ctx, credential))))
    if as_json:
        print_json(probe)
    else:
        keys = ", ".join(probe["keys"]) or "-"
        out.print(f"credential {credential}: {'ok' if probe['ok'] else 'failed'}: "
                  f"{probe['detail']} (keys: {keys})", markup=False, highlight=False)
    if not probe["ok"]:
        sys.exit(1)


@credential_app.command("test")
def test_cmd(credential: str = IdArg, as_json: bool = JsonOpt) -> None:
    """Prove you may read it and OpenBao holds it (only its keys' names are shown)."""
    test_credential(credential, as_json)


__all__ = ["bind", "credential_app", "test_credential"]
