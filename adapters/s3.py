"""S3: fetch a prefix into a local directory, and put files back.

prefect-aws does the listing and the uploads (`S3Bucket`, with an `AwsCredentials` built here
in memory from what OpenBao gave and never saved as a block); downloads use its boto3 client
directly, because each must land under a temporary name and be checked against its listing
before it stands as the file (`S3Bucket.download_object_to_path` writes in place, unchecked).
Keys live only in this object; an error message never carries them (botocore's do not either).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import botocore.exceptions
from prefect_aws import AwsCredentials, S3Bucket
from prefect_aws.client_parameters import AwsClientParameters
from pydantic import SecretStr

from airavata_prefect.adapters.storage import (
    Entry,
    StorageError,
    confined,
    local_files,
    sha256_of,
    write_inside,
)

ATTEMPTS = 2
_CHUNK = 1 << 20
_THREADS = 8  # parts of one object fetched at once
_MD5 = re.compile(r"[0-9a-f]{32}")  # a single-part upload's ETag
_MULTIPART = re.compile(r"[0-9a-f]{32}-[0-9]+")  # the MD5 of its parts' MD5s, and their count
_quiet = logging.getLogger("airavata.storage.s3")


@dataclass(frozen=True)
class _Arrived:
    size: int
    etag: str  # as S3 computes it for this content
    sha256: str


class _Bucket(S3Bucket):
    """prefect-aws's S3Bucket, without its INFO line per object (a run moving thousands of
    files would send each to Prefect's log). Never saved: its own type name keeps Prefect's
    block registry's `s3-bucket` pointing at prefect-aws's class."""

    _block_type_name = "Airavata S3 Bucket"

    @property
    def logger(self) -> logging.Logger:
        return _quiet


class S3:
    def __init__(self, bucket: str, *, access_key: str, secret_key: str,
                 endpoint_url: str | None = None, region: str | None = None,
                 prefix: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.name = f"s3://{bucket}" + (f" at {endpoint_url}" if endpoint_url else "")
        credentials = AwsCredentials(
            aws_access_key_id=access_key, aws_secret_access_key=SecretStr(secret_key),
            region_name=region or "us-east-1",
            aws_client_parameters=AwsClientParameters(
                endpoint_url=endpoint_url,
                config={"retries": {"max_attempts": 3, "mode": "standard"},
                        "connect_timeout": 10, "read_timeout": 60}))
        self._bucket = _Bucket(bucket_name=bucket, bucket_folder=self.prefix,
                                credentials=credentials)
        self._client = credentials.get_s3_client()  # the one S3Bucket uses (prefect-aws caches)

    def _key(self, path: str) -> str:
        path = path.strip("/")
        return f"{self.prefix}/{path}" if self.prefix and path else (self.prefix or path)

    def _fail(self, what: str, exc: Exception) -> StorageError:
        if isinstance(exc, botocore.exceptions.ClientError):
            code = exc.response.get("Error", {}).get("Code", "error")
            hint = {"SignatureDoesNotMatch": "the secret key is wrong",
                    "InvalidAccessKeyId": "the access key is unknown",
                    "AccessDenied": "access denied", "NoSuchBucket": "no such bucket"}.get(code)
            return StorageError(f"{self.name} refused {what}: {hint or code}")
        return StorageError(f"{self.name} is unreachable ({what}): {type(exc).__name__}")

    def fetch(self, remote: str, dest: Path) -> int:
        """Copy the object `remote`, or every object under the prefix `remote/`, into `dest`
        (a directory). Returns how many files were copied."""
        key = self._key(remote)
        dest.mkdir(parents=True, exist_ok=True)
        try:
            objects = self._list(remote)
            exact = [o for o in objects if o["Key"] == key]
            if exact:  # a single object: it becomes dest/<its name>
                target = confined(dest, Path(key).name, f"{self.name}: object {key!r}")
                self._get(exact[0], target)
                return 1
            under = [o for o in objects if o["Key"].startswith(key.rstrip("/") + "/") or not key]
            # Every name checked before anything is written: a hostile listing writes nothing.
            targets = [(o, confined(dest, o["Key"][len(key):].lstrip("/") if key else o["Key"],
                                    f"{self.name}: object {o['Key']!r}")) for o in under]
            for o, target in targets:
                target.parent.mkdir(parents=True, exist_ok=True)
                self._get(o, target)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._fail(f"reading {remote}", exc) from None
        if not under:
            raise StorageError(f"{self.name} has nothing at {remote!r}")
        return len(under)

    def _get(self, listed: dict[str, Any], target: Path) -> None:
        """Download one object and check what arrived: its size against the listing, its
        ETag (a single-part upload's is its MD5, a multipart one's the MD5 of its parts'
        MD5s), and its sha256 when the object carries one (our `put` stores it). A damaged
        copy is fetched again, then refused; it lands under a temporary name, so a broken
        transfer never stands as the file."""
        key = listed["Key"]
        size = int(listed["Size"]) if "Size" in listed else None
        etag = str(listed.get("ETag", "")).strip('"')
        for _ in range(ATTEMPTS):
            if _MULTIPART.fullmatch(etag):  # large: its parts at once, each hashed
                got, wanted = self._parts(key, target, int(etag.split("-")[1]))
            else:  # one stream, hashed as it is written
                got, wanted = self._stream(key, target)
            size_ok = size is None or got.size == size
            etag_ok = not (_MD5.fullmatch(etag) or _MULTIPART.fullmatch(etag)) or got.etag == etag
            if size_ok and etag_ok and wanted in (None, got.sha256):
                return
        target.unlink(missing_ok=True)
        raise StorageError(f"{self.name}: {key!r} arrived damaged {ATTEMPTS} times (listed "
                           f"{size} bytes, ETag {etag or 'none'}"
                           f"{f', sha256 {wanted}' if wanted else ''}; got {got.size} bytes, "
                           f"ETag {got.etag}, sha256 {got.sha256 or 'not read'})")

    def _parts(self, key: str, target: Path, parts: int) -> tuple[_Arrived, str | None]:
        """A multipart object fetched part by part in parallel threads, each part's MD5 taken
        as it arrives (their MD5 is the ETag); the sha256 is read after, only when the object
        carries one to check."""
        head = self._client.head_object(Bucket=self.bucket, Key=key, PartNumber=1)
        part_size = int(head["ContentLength"])
        wanted = head.get("Metadata", {}).get("sha256")
        tmp = target.parent / f".{target.name}.{os.getpid()}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)

        def fetch(n: int) -> tuple[bytes, int]:
            body = self._client.get_object(Bucket=self.bucket, Key=key, PartNumber=n)["Body"]
            md5, offset, size = hashlib.md5(usedforsecurity=False), (n - 1) * part_size, 0
            for chunk in body.iter_chunks(_CHUNK):
                md5.update(chunk)
                os.pwrite(fd, chunk, offset + size)
                size += len(chunk)
            return md5.digest(), size

        try:
            with ThreadPoolExecutor(max_workers=min(_THREADS, parts)) as pool:
                done = list(pool.map(fetch, range(1, parts + 1)))
            os.close(fd)
            fd = -1
            os.replace(tmp, target)
        finally:
            if fd >= 0:
                os.close(fd)
            tmp.unlink(missing_ok=True)
        etag = hashlib.md5(b"".join(d for d, _ in done), usedforsecurity=False).hexdigest()
        sha = sha256_of(target) if wanted else ""
        return _Arrived(sum(n for _, n in done), f"{etag}-{parts}", sha), wanted

    def _stream(self, key: str, target: Path) -> tuple[_Arrived, str | None]:
        reply = self._client.get_object(Bucket=self.bucket, Key=key)
        md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
        size = 0

        def chunks() -> Iterator[bytes]:
            nonlocal size
            for chunk in reply["Body"].iter_chunks(_CHUNK):
                md5.update(chunk)
                sha.update(chunk)
                size += len(chunk)
                yield chunk

        write_inside(target.parent, target.name, chunks())
        return _Arrived(size, md5.hexdigest(), sha.hexdigest()), \
            reply.get("Metadata", {}).get("sha256")

    def put(self, local: Path, remote: str) -> int:
        files = local_files(local)
        base = remote.strip("/")
        try:
            for path, rel in files:
                # The sha256 travels with the object: whoever fetches it checks it.
                self._bucket.upload_from_path(
                    path, base if local.is_file() else f"{base}/{rel}",
                    ExtraArgs={"Metadata": {"sha256": sha256_of(path)}},
                    _sync=True)  # type: ignore[arg-type]
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._fail(f"writing {remote}", exc) from None
        return len(files)

    def _list(self, remote: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The listing under `remote` (keys from the bucket's root, sizes, ETags)."""
        # _sync: a plain call, even from a thread where an event loop runs
        listed = self._bucket.list_objects(folder=remote.strip("/"), max_items=limit,
                                           _sync=True)  # type: ignore[call-arg]
        return cast(list[dict[str, Any]], listed)

    def list(self, remote: str, limit: int) -> list[Entry]:
        key = self._key(remote)
        out: list[Entry] = []
        try:
            for o in self._list(remote):
                k = o["Key"]
                if k == key or not key or k.startswith(key.rstrip("/") + "/"):
                    out.append(Entry(k[len(self.prefix):].lstrip("/") if self.prefix else k,
                                     int(o.get("Size", 0))))
                if len(out) >= limit:
                    return out
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._fail(f"listing {remote}", exc) from None
        return out


__all__ = ["S3"]
