"""The content-addressed cache on a compute resource, on this machine through a real shell
(the resource's own `sha256sum`, `tar`, `ln`). A faulty link is the one stand-in: it corrupts
what travels, as a flaky network or a bad disk would, so the verification on arrival can be
seen to catch it."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path
from typing import BinaryIO

import pytest

from airavata_prefect.adapters.hosts import CommandResult, LocalHost, Stdin
from airavata_prefect.adapters.storage import StorageError
from airavata_prefect.usecases.bundles.resource_cache import (
    CACHE_DIR,
    ResourceCache,
    hashed_files,
)


class FaultyLink(LocalHost):
    """This machine, reached through a link that flips a byte of the first `bad` files sent."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.bad = bad
        self.uploads = 0

    def run(self, command: str, *, stdin: Stdin | None = None,
            timeout: float | None = None, stdout: BinaryIO | None = None) -> CommandResult:
        if stdin is not None and "tar x" in command:
            self.uploads += 1
            stdin = self._corrupt(stdin if isinstance(stdin, bytes) else stdin.read())
        return super().run(command, stdin=stdin, timeout=timeout, stdout=stdout)

    def _corrupt(self, payload: bytes) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:*") as src, \
                tarfile.open(fileobj=out, mode="w") as dst:
            for member in src.getmembers():
                data = src.extractfile(member)
                body = data.read() if data is not None else None
                if body and self.bad > 0:
                    self.bad -= 1
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                dst.addfile(member, io.BytesIO(body) if body is not None else None)
        return out.getvalue()


def _inputs(root: Path) -> Path:
    (root / "data" / "deep").mkdir(parents=True)
    (root / "params.txt").write_text("alpha=0.5\n")
    (root / "data" / "x.csv").write_text("1,2\n")
    (root / "data" / "deep" / "same.csv").write_text("1,2\n")  # same content: one entry
    return root


def test_files_move_once_and_are_linked_read_only(tmp_path: Path) -> None:
    files = hashed_files(_inputs(tmp_path / "mount"))
    assert [f.rel for f in files] == ["data/deep/same.csv", "data/x.csv", "params.txt"]
    assert files[1].sha256 == hashlib.sha256(b"1,2\n").hexdigest() == files[0].sha256
    unique = {f.sha256: f for f in files}
    site = tmp_path / "site"
    cache = ResourceCache(LocalHost(), str(site), "here")

    first = cache.place(unique)
    assert (first.misses, first.hits, first.retries) == (2, 0, 0)
    assert first.bytes_moved == len(b"alpha=0.5\n") + len(b"1,2\n")
    again = cache.place(unique)  # a later bundle, or another experiment
    assert (again.misses, again.hits, again.bytes_moved) == (0, 2, 0)
    assert again.bytes_saved == first.bytes_moved

    target = site / "exp" / ".bundles" / "b1" / "mounts" / "0"
    cache.link(str(target), [(f.rel, f.sha256) for f in files])
    assert (target / "data" / "deep" / "same.csv").read_text() == "1,2\n"
    assert (target / "params.txt").read_text() == "alpha=0.5\n"
    entry = site / CACHE_DIR / "sha256" / files[2].sha256
    assert (target / "params.txt").resolve() == entry
    assert entry.stat().st_mode & 0o222 == 0  # an instance cannot change what others read
    assert sorted(p.name for p in (site / CACHE_DIR / "sha256").iterdir()) == sorted(unique)


def test_a_file_corrupted_on_the_way_is_sent_again(tmp_path: Path) -> None:
    files = {f.sha256: f for f in hashed_files(_inputs(tmp_path / "mount"))}
    link = FaultyLink(bad=1)
    totals = ResourceCache(link, str(tmp_path / "site"), "flaky").place(files)
    assert link.uploads == 2 and totals.retries == 1 and totals.misses == 2
    for digest in files:
        got = (tmp_path / "site" / CACHE_DIR / "sha256" / digest).read_bytes()
        assert hashlib.sha256(got).hexdigest() == digest


def test_a_file_corrupted_every_time_fails_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "mount").mkdir()
    (tmp_path / "mount" / "big.bin").write_bytes(os.urandom(4096))
    files = {f.sha256: f for f in hashed_files(tmp_path / "mount")}
    site = tmp_path / "site"
    with pytest.raises(StorageError, match=r"'big.bin' arrived corrupted at flaky 2 times "
                                           r"\(sha256 sent [0-9a-f]{16}…, found [0-9a-f]{16}…\)"):
        ResourceCache(FaultyLink(bad=10), str(site), "flaky").place(files)
    assert list((site / CACHE_DIR / "sha256").iterdir()) == []
    assert list((site / CACHE_DIR / "incoming").iterdir()) == []


def test_names_the_resource_protocol_cannot_carry_are_refused(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a\nb").write_text("x")
    with pytest.raises(StorageError, match="newline or tab"):
        hashed_files(tmp_path / "m")
