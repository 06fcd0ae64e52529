"""Storage resources as staging sees them: fetch a path into a local directory.

S3 (adapters/s3.py), SFTP (adapters/sftp.py) and a local or NFS path (here) all read the same
way, so staging does not care where data lives.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Protocol


class StorageError(RuntimeError):
    """A storage resource refused or could not be reached; the message says which and why."""


class StorageReader(Protocol):
    name: str

    def fetch(self, remote: str, dest: Path) -> int:
        """Copy a file (into dest/<its name>) or a directory tree (into dest); the file count."""
        ...


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


def write_inside(root: Path, target: Path, data: bytes) -> None:
    """Write `target` (under `root`) whole or not at all: a temporary name, then a rename,
    which replaces a symlink standing there instead of writing through it; a folder that
    leads outside `root` is refused."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.parent.resolve().is_relative_to(root.resolve()):
        raise StorageError(f"refused to write {target}: its folder leads outside {root}")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


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


__all__ = ["LocalPath", "StorageError", "StorageReader", "confined", "write_inside"]
