"""SFTP storage (paramiko over adapters/ssh.py): fetch a file or a directory tree."""

from __future__ import annotations

import posixpath
import stat
from pathlib import Path

import paramiko

from airavata_prefect.adapters.hosts import HostError
from airavata_prefect.adapters.ssh import SSHHost
from airavata_prefect.adapters.storage import Entry, StorageError, confined, local_files


class SFTP:
    def __init__(self, host: SSHHost, root: str = "/") -> None:
        self.host = host
        self.root = root
        self.name = f"sftp://{host.name}{root}"

    def fetch(self, remote: str, dest: Path) -> int:
        path = posixpath.join(self.root, remote.lstrip("/"))
        dest.mkdir(parents=True, exist_ok=True)
        try:
            sftp = self.host.sftp()
        except HostError as exc:
            raise StorageError(f"{self.name}: {exc}") from None
        try:
            try:
                st = sftp.stat(path)
            except FileNotFoundError:
                raise StorageError(f"{self.name} has nothing at {remote!r}") from None
            if not stat.S_ISDIR(st.st_mode or 0):
                sftp.get(path, str(confined(dest, posixpath.basename(path),
                                            f"{self.name}: {remote!r}")))
                return 1
            return _get_tree(sftp, path, dest, self.name)
        except (OSError, paramiko.SSHException) as exc:
            raise StorageError(f"{self.name} failed reading {remote!r}: {exc}") from None
        finally:
            sftp.close()

    def put(self, local: Path, remote: str) -> int:
        files = local_files(local)
        base = posixpath.join(self.root, remote.strip("/"))
        try:
            sftp = self.host.sftp()
        except HostError as exc:
            raise StorageError(f"{self.name}: {exc}") from None
        try:
            for path, rel in files:
                target = base if local.is_file() else posixpath.join(base, rel)
                _makedirs(sftp, posixpath.dirname(target))
                sftp.put(str(path), target)
        except (OSError, paramiko.SSHException) as exc:
            raise StorageError(f"{self.name} failed writing {remote!r}: {exc}") from None
        finally:
            sftp.close()
        return len(files)

    def list(self, remote: str, limit: int) -> list[Entry]:
        path = posixpath.join(self.root, remote.lstrip("/"))
        try:
            sftp = self.host.sftp()
        except HostError as exc:
            raise StorageError(f"{self.name}: {exc}") from None
        out: list[Entry] = []
        try:
            try:
                st = sftp.stat(path)
            except FileNotFoundError:
                return []
            if not stat.S_ISDIR(st.st_mode or 0):
                return [Entry(posixpath.relpath(path, self.root), st.st_size or 0)]
            todo = [path]
            while todo and len(out) < limit:
                folder = todo.pop()
                for entry in sorted(sftp.listdir_attr(folder), key=lambda e: e.filename):
                    full = posixpath.join(folder, entry.filename)
                    if stat.S_ISDIR(entry.st_mode or 0):
                        todo.append(full)
                    elif stat.S_ISREG(entry.st_mode or 0) and len(out) < limit:
                        out.append(Entry(posixpath.relpath(full, self.root), entry.st_size or 0))
        except (OSError, paramiko.SSHException) as exc:
            raise StorageError(f"{self.name} failed listing {remote!r}: {exc}") from None
        finally:
            sftp.close()
        return sorted(out, key=lambda e: e.path)


def _makedirs(sftp: paramiko.SFTPClient, folder: str) -> None:
    parts = [p for p in folder.split("/") if p]
    current = "/" if folder.startswith("/") else ""
    for part in parts:
        current = posixpath.join(current, part)
        try:
            sftp.stat(current)
        except FileNotFoundError:
            sftp.mkdir(current)


def _get_tree(sftp: paramiko.SFTPClient, path: str, dest: Path, name: str) -> int:
    """Directories and regular files only (a symlink is neither: never followed), each name
    as the server lists it checked to stay inside `dest`."""
    count = 0
    for entry in sftp.listdir_attr(path):
        src = posixpath.join(path, entry.filename)
        if stat.S_ISDIR(entry.st_mode or 0):
            sub = confined(dest, entry.filename, f"{name}: {src!r}")
            sub.mkdir(exist_ok=True)
            count += _get_tree(sftp, src, sub, name)
        elif stat.S_ISREG(entry.st_mode or 0):
            sftp.get(src, str(confined(dest, entry.filename, f"{name}: {src!r}")))
            count += 1
    return count


__all__ = ["SFTP"]
