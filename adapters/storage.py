"""Storage resources as staging sees them: fetch a path into a local directory.

S3 (adapters/s3.py), SFTP (adapters/sftp.py) and a local or NFS path (here) all read the same
way, so staging does not care where data lives.
"""

from __future__ import annotations

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
        shutil.copytree(src, dest, dirs_exist_ok=True)
        return sum(1 for p in dest.rglob("*") if p.is_file())


__all__ = ["LocalPath", "StorageError", "StorageReader"]
