"""Reading files to search them for what must not be there (secrets), safely.

A SQLite database (and its -wal and -shm) is read by a child process: were this process to open
and close it, the kernel would drop every POSIX lock this process holds on that file, SQLite's
included, and a later close of one of this process's own connections would think itself the
last, delete the -shm and -wal the others still use, and turn their next query into
"disk I/O error"."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path


def file_bytes(path: Path) -> bytes:
    if ".db" in path.name or path.suffix == ".sqlite":
        return subprocess.run(["cat", "--", str(path)], capture_output=True,
                              check=True).stdout
    return path.read_bytes()


def all_bytes(paths: Iterable[Path]) -> bytes:
    return b"".join(file_bytes(p) for p in paths)
