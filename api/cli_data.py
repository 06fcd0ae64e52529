"""`airavata data list|upload|upload-dir|download|download-dir`: files on a registered storage
resource (`STORAGE:/path`), as the acting user; in server mode, through the REST API. And
`airavata data lineage`: where an experiment's output came from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from airavata_prefect.api.cli_door import either, plain, print_json
from airavata_prefect.api.client import ApiClient, RemoteError
from airavata_prefect.domain.lineage import experiments_in_path
from airavata_prefect.usecases import archives, data, lineage
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


# -- lineage ------------------------------------------------------------------------------------


def _lineage_ref(ref: str) -> str:
    """One of lineage.FORMS; a relative path to an existing file is made absolute here."""
    try:
        lineage.parse_ref(ref)
    except BadInput:
        if not os.path.lexists(ref):
            raise
        return os.path.abspath(ref)
    return ref


def _lineage_remote(api: ApiClient, ref: str, depth: int) -> dict[str, Any]:
    parsed = lineage.parse_ref(ref)
    params: dict[str, Any] = {"depth": depth}
    if parsed.output_id is not None:
        found: dict[str, Any] = api.call("GET", f"/lineage/{parsed.output_id}", params=params)
        return found
    if parsed.experiment is not None:
        found = api.call("GET", f"/experiments/{parsed.experiment}/lineage",
                         params={**params, "path": parsed.path})
        return found
    path = parsed.path or ""
    refused: RemoteError | None = None
    for experiment in experiments_in_path(path):  # the server resolves the path itself
        try:
            found = api.call("GET", f"/experiments/{experiment}/lineage",
                             params={**params, "path": path})
            return found
        except RemoteError as exc:
            if exc.status not in (400, 404):
                raise
            refused = refused or exc
    if refused is not None:
        raise refused
    raise BadInput(f"{path}: not in any experiment's directory (expected {lineage.FORMS})")


def _lineage_local(ctx: Context, ref: str, depth: int) -> dict[str, Any]:
    found: dict[str, Any] = plain(lineage.lineage(ctx, ref, depth=depth))
    for o in found["outputs"]:
        o["recorded_at"] = o["recorded_at"].isoformat()
    return found


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "(missing)"


def _lineage_tree(found: dict[str, Any]) -> Tree:
    """The output, what made it and what it read; an upstream output recorded is a subtree."""
    records = {o["output_id"]: o for o in found["outputs"]}
    shown: set[str] = set()

    def label(o: dict[str, Any]) -> str:
        return (f"[bold]{escape(o['path'])}[/]  id {o['output_id']}  sha256 "
                f"{_short(o['sha256'])}  {o['size']:,} bytes")

    def grow(node: Tree, o: dict[str, Any]) -> None:
        shown.add(o["output_id"])
        node.add(escape(f"made by {o['instance_id']} (attempt {o['attempt']}) on "
                        f"{o['resource']} at {o['recorded_at'][:19].replace('T', ' ')}"))
        node.add(f"script sha256 {_short(o['script_sha256'])}")
        if o["parameters"]:
            node.add(escape("parameters " + " ".join(f"{k}={v}" for k, v in
                                                      sorted(o["parameters"].items()))))
        for m in o["mounts"]:
            node.add(escape(f"mount {m['mount']}: {m['path']}  sha256 {_short(m['sha256'])}  "
                            f"{m['size']:,} bytes"))
        for u in o["upstream"]:
            rec = records.get(u["output_id"])
            read = f"read sha256 {_short(u['sha256'])}"
            if rec is None or u["output_id"] in shown:
                why = "shown above" if rec is not None else "not followed" \
                    if found["truncated"] else "no record"
                node.add(escape(f"{u['path']}  id {u['output_id']}  {read} ({why})"))
                continue
            changed = (f"  [yellow]changed since: it {read}[/]"
                       if u["sha256"] and u["sha256"] != rec["sha256"] else "")
            grow(node.add(label(rec) + changed), rec)

    root = records[found["output_id"]]
    tree = Tree(label(root))
    grow(tree, root)
    return tree


@data_app.command("lineage")
def lineage_cmd(ref: str = typer.Argument(..., metavar="PATH|OUTPUT-ID",
                                          help="an output id, EXPERIMENT:PATH, or a file in "
                                               "an experiment's directory"),
                depth: int = typer.Option(lineage.MAX_DEPTH, "--depth", min=0,
                                          max=lineage.MAX_DEPTH,
                                          help="hops upstream to follow"),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Where an output came from: the instance that made it (attempt, resource), its script's
    sha256 and parameters, and the upstream outputs and mount files it read with their
    checksums, followed upstream."""
    ref = _lineage_ref(ref)
    found = either(lambda api: _lineage_remote(api, ref, depth),
                   lambda ctx: _lineage_local(ctx, ref, depth))
    if as_json:
        print_json(found)
        return
    out.print(_lineage_tree(found), highlight=False, soft_wrap=False)  # wrapped, not cut
    if found["truncated"]:
        out.print(f"(more upstream outputs not followed: --depth {depth}, at most "
                  f"{lineage.MAX_OUTPUTS} outputs)", highlight=False)


__all__ = ["data_app"]
