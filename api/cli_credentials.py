"""`airavata credential ...`: secrets go to OpenBao, permissions to SpiceDB, rows to the audit.

Secret values are read from files or environment variables, never from the command line (where
any user could see them in the process list), and never printed.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

from airavata_prefect.adapters.db import NotFound, Store
from airavata_prefect.adapters.openbao import OpenBao, SecretRef
from airavata_prefect.adapters.spicedb import Subject
from airavata_prefect.api import service
from airavata_prefect.api.credentials import CredentialService
from airavata_prefect.flows.settings import Settings, get_settings

credential_app = typer.Typer(no_args_is_help=True, help="Credentials (secrets live in OpenBao).")
out = Console(soft_wrap=True)

ValueOpt = typer.Option(
    [], "--from-file", "-f", metavar="KEY=FILE",
    help="A secret value from a file, e.g. private_key=~/.ssh/id_ed25519 (repeatable)")
EnvOpt = typer.Option([], "--from-env", "-e", metavar="KEY=VAR",
                      help="A secret value from an environment variable (repeatable)")


class CredentialInputError(Exception):
    """A bad secret source: exit status 2, one line."""


def _secret(from_file: list[str], from_env: list[str]) -> dict[str, str]:
    data: dict[str, str] = {}
    for item, kind in [(i, "file") for i in from_file] + [(i, "env") for i in from_env]:
        key, eq, source = item.partition("=")
        if not eq or not key or not source:
            raise CredentialInputError(f"--from-{kind} {item!r}: expected KEY={kind.upper()}")
        if kind == "file":
            path = Path(source).expanduser()
            try:
                data[key] = path.read_text()
            except OSError as exc:
                raise CredentialInputError(f"--from-file {key}: cannot read {path}: "
                                           f"{exc.strerror}") from None
        elif source in os.environ:
            data[key] = os.environ[source]
        else:
            raise CredentialInputError(f"--from-env {key}: ${source} is not set")
    if not data:
        raise CredentialInputError("give the secret with --from-file KEY=FILE or "
                                   "--from-env KEY=VAR")
    return data


def _service(settings: Settings) -> tuple[CredentialService, Store]:
    if settings.openbao_token is None:
        raise CredentialInputError("AIRAVATA_OPENBAO_TOKEN is not set (the token this CLI "
                                   "uses to reach OpenBao)")
    store = Store(settings.db_url)
    bao = OpenBao(settings.openbao_url, settings.openbao_token.get_secret_value())
    return CredentialService(store, service.authorizer(store), bao), store


def _subject(who: str) -> Subject:
    return Subject.group(who.removeprefix("group:")) if who.startswith("group:") \
        else Subject.user(who)


@credential_app.command("create")
def create_cmd(
    credential: str = typer.Argument(..., metavar="ID", help="A name, e.g. alice-ssh-cluster-a"),
    path: str | None = typer.Option(None, help="OpenBao path (default: users/USER/ID)"),
    mount: str = typer.Option("secret", help="OpenBao KV v2 mount"),
    from_file: list[str] = ValueOpt,
    from_env: list[str] = EnvOpt,
) -> None:
    """Store a new credential in OpenBao; you become its owner."""
    settings = get_settings()
    data = _secret(from_file, from_env)
    svc, store = _service(settings)
    ref = SecretRef(path or f"users/{settings.user}/{credential}", mount)
    try:
        store.credential(credential)
        raise CredentialInputError(f"credential {credential!r} exists: use rotate")
    except NotFound:
        pass
    version = svc.create(settings.user, credential, ref, data)
    store.add_credential(credential, owner=settings.user, mount=mount, path=ref.path)
    out.print(f"credential {credential} stored at {mount}/{ref.path} (version {version}); "
              f"keys: {', '.join(sorted(data))}")


@credential_app.command("rotate")
def rotate_cmd(credential: str = typer.Argument(..., metavar="ID"),
               from_file: list[str] = ValueOpt, from_env: list[str] = EnvOpt) -> None:
    """Write a new version: running tasks keep theirs, new tasks get this one."""
    settings = get_settings()
    data = _secret(from_file, from_env)
    svc, store = _service(settings)
    row = store.credential(credential)
    version = svc.rotate(settings.user, credential, SecretRef(row["path"], row["mount"]), data)
    out.print(f"credential {credential} rotated to version {version}")


@credential_app.command("share")
def share_cmd(credential: str = typer.Argument(..., metavar="ID"),
              who: str = typer.Argument(..., metavar="USER|group:NAME"),
              writer: bool = typer.Option(False, "--writer", help="May also rotate and bind")
              ) -> None:
    """Let a user or a group read (or, with --writer, also rotate and bind) a credential."""
    settings = get_settings()
    svc, store = _service(settings)
    store.credential(credential)
    svc.share(settings.user, credential, _subject(who), "writer" if writer else "reader")
    out.print(f"credential {credential} shared with {who} as {'writer' if writer else 'reader'}")


@credential_app.command("bind")
def bind_cmd(credential: str = typer.Argument(..., metavar="ID"),
             resource: str = typer.Argument(..., metavar="RESOURCE"),
             storage: bool = typer.Option(False, "--storage", help="RESOURCE is storage"),
             remove: bool = typer.Option(False, "--remove", help="Unbind instead")) -> None:
    """Bind a credential to a compute (or storage) resource, or unbind it."""
    settings = get_settings()
    svc, store = _service(settings)
    store.credential(credential)
    kind = "storage_resource" if storage else "compute_resource"
    (svc.unbind if remove else svc.bind)(settings.user, credential, kind, resource)
    out.print(f"credential {credential} {'unbound from' if remove else 'bound to'} {resource}")
