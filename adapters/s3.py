"""S3 (boto3): fetch a prefix into a local directory, and put files back.

Keys come from OpenBao and live only in the boto3 client of this object; an error message never
carries them (botocore's own messages do not either).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config

from airavata_prefect.adapters.storage import Entry, StorageError, confined, local_files

ATTEMPTS = 2
_MD5 = re.compile(r"[0-9a-f]{32}")  # a multipart upload's ETag is not an MD5 ("...-N")


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class S3:
    def __init__(self, bucket: str, *, access_key: str, secret_key: str,
                 endpoint_url: str | None = None, region: str | None = None,
                 prefix: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.name = f"s3://{bucket}" + (f" at {endpoint_url}" if endpoint_url else "")
        self._client = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region or "us-east-1",
            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            config=Config(retries={"max_attempts": 3, "mode": "standard"},
                          connect_timeout=10, read_timeout=60))

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
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=key)
            objects = [o for page in pages for o in page.get("Contents", [])]
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
        """Download one object and check it against its listing: its size, and its MD5 when
        the ETag is one (a single-part upload). A damaged copy is fetched again, then refused;
        boto3 writes under a temporary name, so a broken transfer never stands as the file."""
        key = listed["Key"]
        size = int(listed["Size"]) if "Size" in listed else None
        etag = str(listed.get("ETag", "")).strip('"')
        md5 = etag if _MD5.fullmatch(etag) else None
        for _ in range(ATTEMPTS):
            self._client.download_file(self.bucket, key, str(target))
            got_size = target.stat().st_size
            got_md5 = _md5(target) if md5 else None
            if got_size == (got_size if size is None else size) and got_md5 == md5:
                return
        target.unlink(missing_ok=True)
        found = f"{got_size} bytes" + (f", MD5 {got_md5}" if md5 else "")
        raise StorageError(f"{self.name}: {key!r} arrived damaged {ATTEMPTS} times "
                           f"(listed {size} bytes{f', MD5 {md5}' if md5 else ''}; got {found})")

    def put(self, local: Path, remote: str) -> int:
        files = local_files(local)
        base = remote.strip("/")
        try:
            for path, rel in files:
                key = self._key(base if local.is_file() else f"{base}/{rel}")
                self._client.upload_file(str(path), self.bucket, key)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._fail(f"writing {remote}", exc) from None
        return len(files)

    def list(self, remote: str, limit: int) -> list[Entry]:
        key = self._key(remote)
        out: list[Entry] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=key)
            for page in pages:
                for o in page.get("Contents", []):
                    k = o["Key"]
                    if k == key or not key or k.startswith(key.rstrip("/") + "/"):
                        out.append(Entry(k[len(self.prefix):].lstrip("/") if self.prefix
                                         else k, int(o.get("Size", 0))))
                    if len(out) >= limit:
                        return out
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._fail(f"listing {remote}", exc) from None
        return out


__all__ = ["S3"]
