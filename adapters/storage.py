"""Storage resources as staging and `airavata data` see them: fetch a path into a local
directory, put files there, list what is there.

S3 (adapters/s3.py), SFTP (adapters/sftp.py) and a local or NFS path (here) all read the same
way, so staging does not care where data lives.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class StorageError(RuntimeError):
    """A storage resource refused or could not be reached; the message says which and why."""


@dataclass(frozen=True)
class Entry:
    """A file on a storage resource: its path there (from the storage's root) and size."""

    path: str
    size: int


class StorageReader(Protocol):
    name: str

    def fetch(self, remote: str, dest: Path) -> int:
        """Copy a file (into dest/<its name>) or a directory tree (into dest); the file count."""
        ...

    def put(self, local: Path, remote: str) -> int:
        """Copy a file to `remote`, or a directory's files under `remote/`; the file count."""
        ...

    def list(self, remote: str, limit: int) -> list[Entry]:
        """The files at or under `remote`, at most `limit`, by path."""
        ...


def sha256_of(path: Path) -> str:
    """A file's sha256, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def local_files(local: Path) -> list[tuple[Path, str]]:
    """What `put` sends: a file, or a directory's regular files (symlinks are not followed),
    with their paths relative to it."""
    if local.is_file():
        return [(local, local.name)]
    if not local.is_dir():
        raise StorageError(f"{local}: no such file or directory")
    return sorted((p, p.relative_to(local).as_posix()) for p in local.rglob("*")
                  if p.is_file() and not p.is_symlink())


def confined(dest: Path, rel: str, what: str) -> Path:
    """`dest/rel`, refused when a remote name would put it anywhere else: an absolute path,
    a `..` or an empty segment, or a symlink already inside `dest` pointing out."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) \
            or "\0" in rel:
        raise StorageError(f"{what}: refused, its name would write outside {dest}")
    target = dest.joinpath(*parts)
    if not target.parent.resolve().is_relative_to(dest.resolve()):
        raise StorageError(f"{what}: refused, its folder leads outside {dest}")
    return target


def write_inside(dest: Path, rel: str, data: Iterable[bytes]) -> Path:
    """Write `data` to `dest/rel` whole or not at all: a temporary name, then a rename, which
    replaces a link standing at the target instead of writing through it. Refused when that
    place is outside `dest` (`..`, an absolute path, or a link on the way)."""
    base = os.path.realpath(dest)
    target = Path(base, rel)
    if (not rel or os.path.isabs(rel) or ".." in Path(rel).parts
            or os.path.commonpath([base, os.path.realpath(target.parent)]) != base):
        raise StorageError(f"{rel!r} would be written outside {dest}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.commonpath([base, os.path.realpath(target.parent)]) != base:  # raced meanwhile
        raise StorageError(f"{rel!r} would be written outside {dest}")
    tmp = target.parent / f".{target.name}.{os.getpid()}.part"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in data:
                f.write(chunk)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


class LocalPath:
    """A directory visible where the worker runs (a local disk or an NFS mount)."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self.name = f"local path {root}"

    def fetch(self, remote: str, dest: Path) -> int:
        src = self.root / remote.lstrip("/")
        if not src.resolve().is_relative_to(self.root.resolve()):
            raise StorageError(f"{self.name}: {remote!r} leaves the storage root")
        dest.mkdir(parents=True, exist_ok=True)
        if src.is_file():
            shutil.copy2(src, dest / src.name)
            return 1
        if not src.is_dir():
            raise StorageError(f"{self.name} has nothing at {remote!r}")
        root = self.root.resolve()

        def outside(folder: str, names: list[str]) -> set[str]:
            # A symlink out of the storage root would copy whatever it names on this machine.
            return {n for n in names if (p := Path(folder) / n).is_symlink()
                    and not p.resolve().is_relative_to(root)}

        shutil.copytree(src, dest, dirs_exist_ok=True, ignore=outside)
        return sum(1 for p in dest.rglob("*") if p.is_file())

    def put(self, local: Path, remote: str) -> int:
        files = local_files(local)
        for path, rel in files:
            where = remote.strip("/") if local.is_file() else f"{remote.strip('/')}/{rel}"
            target = confined(self.root, where.lstrip("/"), f"{self.name}: {remote!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        return len(files)

    def list(self, remote: str, limit: int) -> list[Entry]:
        root = self.root.resolve()
        base = (self.root / remote.strip("/")).resolve()
        if not base.is_relative_to(root):
            raise StorageError(f"{self.name}: {remote!r} leaves the storage root")
        found = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        return [Entry(p.relative_to(root).as_posix(), p.stat().st_size) for p in found[:limit]
                if p.resolve().is_relative_to(root)]


__all__ = ["Entry", "LocalPath", "StorageError", "StorageReader", "confined", "local_files",
           "sha256_of", "write_inside"]
