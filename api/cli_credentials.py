"""`airavata credential ...`: secrets go to OpenBao, permissions to SpiceDB, rows to the audit.

Secret values are read from files or environment variables, never from the command line (where
any user could see them in the process list), and never printed.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

from airavata_prefect.usecases import credentials
from airavata_prefect.usecases.context import open_context
from airavata_prefect.usecases.errors import BadInput

credential_app = typer.Typer(no_args_is_help=True, help="Credentials (secrets live in OpenBao).")
out = Console(soft_wrap=True)

ValueOpt = typer.Option(
    [], "--from-file", "-f", metavar="KEY=FILE",
    help="A secret value from a file, e.g. private_key=~/.ssh/id_ed25519 (repeatable)")
EnvOpt = typer.Option([], "--from-env", "-e", metavar="KEY=VAR",
                      help="A secret value from an environment variable (repeatable)")


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
        raise BadInput("give the secret with --from-file KEY=FILE or "
                                   "--from-env KEY=VAR")
    return data


@credential_app.command("create")
def create_cmd(
    credential: str = typer.Argument(..., metavar="ID", help="A name, e.g. alice-ssh-cluster-a"),
    path: str | None = typer.Option(None, help="OpenBao path (default: users/USER/ID)"),
    mount: str = typer.Option("secret", help="OpenBao KV v2 mount"),
    from_file: list[str] = ValueOpt,
    from_env: list[str] = EnvOpt,
) -> None:
    """Store a new credential in OpenBao; you become its owner."""
    data = _secret(from_file, from_env)
    with open_context() as ctx:
        ref, version = credentials.create(ctx, credential, data, path=path, mount=mount)
    out.print(f"credential {credential} stored at {mount}/{ref.path} (version {version}); "
              f"keys: {', '.join(sorted(data))}")


@credential_app.command("rotate")
def rotate_cmd(credential: str = typer.Argument(..., metavar="ID"),
               from_file: list[str] = ValueOpt, from_env: list[str] = EnvOpt) -> None:
    """Write a new version: running tasks keep theirs, new tasks get this one."""
    data = _secret(from_file, from_env)
    with open_context() as ctx:
        version = credentials.rotate(ctx, credential, data)
    out.print(f"credential {credential} rotated to version {version}")


@credential_app.command("share")
def share_cmd(credential: str = typer.Argument(..., metavar="ID"),
              who: str = typer.Argument(..., metavar="USER|group:NAME"),
              writer: bool = typer.Option(False, "--writer", help="May also rotate and bind")
              ) -> None:
    """Let a user or a group read (or, with --writer, also rotate and bind) a credential."""
    with open_context() as ctx:
        credentials.share(ctx, credential, who, writer=writer)
    out.print(f"credential {credential} shared with {who} as {'writer' if writer else 'reader'}")


@credential_app.command("bind")
def bind_cmd(credential: str = typer.Argument(..., metavar="ID"),
             resource: str = typer.Argument(..., metavar="RESOURCE"),
             storage: bool = typer.Option(False, "--storage", help="RESOURCE is storage"),
             remove: bool = typer.Option(False, "--remove", help="Unbind instead")) -> None:
    """Bind a credential to a compute (or storage) resource, or unbind it."""
    with open_context() as ctx:
        credentials.bind(ctx, credential, resource, storage=storage, remove=remove)
    out.print(f"credential {credential} {'unbound from' if remove else 'bound to'} {resource}")
