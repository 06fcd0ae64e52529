"""`airavata data ...`: files on a registered storage resource, as the acting user. Listing and
downloading need `storage.read` on the resource, uploading `storage.use` (a member who may
submit to its project); its credential is read from OpenBao as that user (`credential.read`,
audited) and lives in this process only. Locations are `STORAGE:/path`."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TypeVar

from airavata_prefect.adapters.openbao import SecretRef
from airavata_prefect.adapters.storage import Entry, StorageError, StorageReader
from airavata_prefect.usecases.authorization import audit, require
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.errors import BadInput, Unavailable

T = TypeVar("T")
LOCATION = re.compile(r"^([a-z][a-z0-9_-]{1,62}):(/.*)$")
MAX_LIST = 10_000


def parse_location(text: str) -> tuple[str, str]:
    """`STORAGE:/path` -> (storage, path); one message naming what was given otherwise."""
    m = LOCATION.match(text.strip())
    if not m:
        raise BadInput(f"{text!r}: expected STORAGE:/path (a registered storage resource and "
                       "a path on it)")
    storage, path = m[1], m[2]
    if ".." in PurePosixPath(path).parts or "\0" in path:
        raise BadInput(f"{text!r}: a path with '..' is not allowed")
    return storage, path


def open_storage(ctx: Context, storage: str, key: str) -> StorageReader:
    """The storage resource, opened with its credential as the acting user, once `key` is
    held on it (raises Forbidden, audited, otherwise)."""
    from airavata_prefect.usecases.catalog import credential_id, load_storage
    from airavata_prefect.usecases.credentials import _service

    block = asyncio.run(load_storage(storage))
    require(ctx, key, storage)
    secret = None
    if block.credential_ref is not None:
        ref = block.credential_ref
        cid = credential_id(ctx, ref)
        if cid is None:
            raise Unavailable(f"storage {storage}: no credential is registered at "
                              f"{ref.mount}/{ref.path}")
        secret = _service(ctx).read(ctx.user, cid, SecretRef(ref.path, ref.mount))
    try:
        return block.reader(storage, secret)
    except StorageError as exc:
        raise Unavailable(str(exc)) from None


def listing(ctx: Context, location: str, *, limit: int = 1000) -> list[Entry]:
    if not 1 <= limit <= MAX_LIST:
        raise BadInput(f"--limit: between 1 and {MAX_LIST}")
    storage, path = parse_location(location)
    return _storage_call(lambda: open_storage(ctx, storage, "storage.read").list(path, limit))


def download(ctx: Context, location: str, dest: Path) -> int:
    """A file into `dest/<its name>`, or a directory's files under `dest`; the count."""
    storage, path = parse_location(location)
    if dest.exists() and not dest.is_dir():
        raise BadInput(f"{dest}: exists and is not a directory")
    reader = open_storage(ctx, storage, "storage.read")
    return _storage_call(lambda: reader.fetch(path, dest))


def upload(ctx: Context, source: Path, location: str) -> int:
    """A file to the location, or a directory's files under it; audited."""
    storage, path = parse_location(location)
    if not source.exists():
        raise BadInput(f"{source}: no such file or directory")
    reader = open_storage(ctx, storage, "storage.use")
    count = _storage_call(lambda: reader.put(source, path))
    audit(ctx, "storage.use", f"storage_resource:{storage}", "ok",
          f"uploaded {count} file(s) to {path}")
    return count


def _storage_call(call: Callable[[], T]) -> T:
    try:
        return call()
    except StorageError as exc:
        raise Unavailable(str(exc)) from None
    except OSError as exc:
        raise BadInput(str(exc)) from None


__all__ = ["download", "listing", "open_storage", "parse_location", "upload"]
