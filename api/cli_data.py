"""`airavata data list|upload|upload-dir|download|download-dir`: files on a registered storage
resource (`STORAGE:/path`), as the acting user; in server mode, through the REST API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from airavata_prefect.api.cli_door import either, plain, print_json
from airavata_prefect.api.client import ApiClient
from airavata_prefect.usecases import archives, data
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.errors import BadInput

data_app = typer.Typer(no_args_is_help=True,
                       help="Files on registered storage resources (STORAGE:/path).")
out = Console(soft_wrap=True)
LocationArg = typer.Argument(..., metavar="STORAGE:/PATH")


@data_app.command("list")
def list_cmd(location: str = LocationArg,
             limit: int = typer.Option(1000, "--limit", help="at most this many files"),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """The files at or under a path, with their sizes."""
    storage, path = data.parse_location(location)

    def remote(api: ApiClient) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = api.call("GET", f"/storage/{storage}/files",
                                              params={"path": path, "limit": limit})
        return rows

    rows = either(remote, lambda ctx: plain(data.listing(ctx, location, limit=limit)))
    if as_json:
        print_json(rows)
        return
    table = Table()
    table.add_column("path", overflow="fold")
    table.add_column("bytes", justify="right")
    for row in rows:
        table.add_row(row["path"], str(row["size"]))
    out.print(table)
    if len(rows) == limit:
        out.print(f"(the first {limit}; --limit for more)")


def _upload(source: Path, location: str, *, directory: bool) -> None:
    if directory != source.is_dir():
        raise BadInput(f"{source}: {'not a directory' if directory else 'a directory'} "
                       f"(use {'upload' if directory else 'upload-dir'})")
    storage, path = data.parse_location(location)

    def remote(api: ApiClient) -> int:
        files = [(source, path)] if not directory else [
            (p, f"{path.rstrip('/')}/{p.relative_to(source).as_posix()}")
            for p in sorted(source.rglob("*")) if p.is_file() and not p.is_symlink()]
        for local, where in files:
            with open(local, "rb") as f:
                api.call("PUT", f"/storage/{storage}/files", params={"path": where},
                         content=f.read())
        return len(files)

    def local(ctx: Context) -> int:
        return data.upload(ctx, source, location)

    count = either(remote, local)
    out.print(f"uploaded {count} file(s) to {location}")


@data_app.command("upload")
def upload_cmd(source: Path = typer.Argument(..., metavar="FILE"),
               location: str = LocationArg) -> None:
    """A file to STORAGE:/path (the file's path there)."""
    _upload(source, location, directory=False)


@data_app.command("upload-dir")
def upload_dir_cmd(source: Path = typer.Argument(..., metavar="DIR"),
                   location: str = LocationArg) -> None:
    """A directory's files under STORAGE:/path (symlinks are not followed)."""
    _upload(source, location, directory=True)


def _download(location: str, dest: Path) -> None:
    storage, path = data.parse_location(location)

    def remote(api: ApiClient) -> int:
        with api.download(f"/storage/{storage}/archive", {"path": path}) as chunks:
            return len(archives.extract(chunks, dest))

    count = either(remote, lambda ctx: data.download(ctx, location, dest))
    out.print(f"downloaded {count} file(s) into {dest}")


@data_app.command("download")
def download_cmd(location: str = LocationArg,
                 dest: Path = typer.Argument(Path("."), metavar="[DEST-DIR]")) -> None:
    """A file into DEST-DIR (default: here), under its own name."""
    _download(location, dest)


@data_app.command("download-dir")
def download_dir_cmd(location: str = LocationArg,
                     dest: Path = typer.Argument(..., metavar="DEST-DIR")) -> None:
    """A directory's files into DEST-DIR, keeping their paths below it."""
    _download(location, dest)


__all__ = ["data_app"]
