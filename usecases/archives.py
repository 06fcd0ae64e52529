"""tar.gz in and out as streams of chunks, never a whole archive or file in memory: what
`experiment download` and `data download` send over the REST API and unpack on the other side.

The tar stream is written by hand (headers from TarInfo.tobuf, data, NUL padding) through one
gzip compressor, so no more than a CHUNK of any file is ever held, however large. Unpacking
writes regular files only, each through `write_inside`: a member named `..`, absolute or
reached through a link is refused, whatever the archive says.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from airavata_prefect.adapters.storage import StorageError
from airavata_prefect.adapters.storage import write_inside as _write_inside
from airavata_prefect.usecases.errors import BadInput

CHUNK = 1 << 20  # reads, checksums and copies go 1 MiB at a time: memory stays bounded


def chunks(fd: int, size: int) -> Iterator[bytes]:
    """At most `size` bytes of the open file, CHUNK at a time."""
    left = size
    while left > 0 and (data := os.read(fd, min(CHUNK, left))):
        left -= len(data)
        yield data


def write_inside(dest: Path, rel: str, data: Iterable[bytes]) -> Path:
    """`dest/rel` written whole or not at all; BadInput when it would be outside `dest`."""
    try:
        return _write_inside(dest, rel, data)
    except StorageError as exc:
        raise BadInput(str(exc)) from None


def tar_gz(members: Iterable[tuple[str, int]]) -> Iterator[bytes]:
    """A tar.gz of (member name, open regular file) pairs, as chunks; each file is closed
    once written."""
    z = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # 16+: the gzip format
    offset = 0
    for name, fd in members:
        try:
            st = os.fstat(fd)
            info = tarfile.TarInfo(name)
            info.size, info.mtime = st.st_size, int(st.st_mtime)
            info.mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644  # no setuid bits
            header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            buf, left = z.compress(header), info.size
            for data in chunks(fd, info.size):
                left -= len(data)
                if buf := buf + z.compress(data):
                    yield buf
                    buf = b""
        finally:
            os.close(fd)
        # A file that shrank while it was read is padded to the size its header declared.
        if buf := buf + z.compress(tarfile.NUL * (left + -info.size % tarfile.BLOCKSIZE)):
            yield buf
        offset += len(header) + info.size + -info.size % tarfile.BLOCKSIZE
    end = 2 * tarfile.BLOCKSIZE  # the end-of-archive marker, then padding to a whole record
    end += -(offset + end) % tarfile.RECORDSIZE
    yield z.compress(tarfile.NUL * end) + z.flush()


def tree_members(root: Path) -> Iterator[tuple[str, int]]:
    """A directory's regular files (links not followed) as tar_gz members, by relative path."""
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            yield path.relative_to(root).as_posix(), os.open(path, os.O_RDONLY | os.O_NOFOLLOW)


class _ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (tarfile reads the archive from it)."""

    def __init__(self, data: Iterator[bytes]) -> None:
        self._chunks, self._left = data, memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._left = memoryview(nxt)
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


def extract(data: Iterator[bytes], dest: Path) -> list[Path]:
    """The archive's regular files under `dest` (write_inside refuses any other place)."""
    written = []
    try:
        with tarfile.open(fileobj=io.BufferedReader(_ChunkReader(data), CHUNK),
                          mode="r|gz") as tar:
            for member in tar:
                f = tar.extractfile(member) if member.isfile() else None
                if f is not None:
                    written.append(write_inside(dest, member.name,
                                                iter(partial(f.read, CHUNK), b"")))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BadInput(f"the archive could not be unpacked into {dest}: {exc}") from None
    return written


__all__ = ["CHUNK", "chunks", "extract", "tar_gz", "tree_members", "write_inside"]
