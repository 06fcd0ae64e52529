"""S3 (boto3): fetch a prefix into a local directory, and put files back.

Keys come from OpenBao and live only in the boto3 client of this object; an error message never
carries them (botocore's own messages do not either).
"""

from __future__ import annotations

from pathlib import Path

import boto3
import botocore.exceptions
from botocore.config import Config

from airavata_prefect.adapters.storage import Entry, StorageError, confined, local_files


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
            objects = [o["Key"] for page in pages for o in page.get("Contents", [])]
            exact = [k for k in objects if k == key]
            if exact:  # a single object: it becomes dest/<its name>
                target = confined(dest, Path(key).name, f"{self.name}: object {key!r}")
                self._client.download_file(self.bucket, key, str(target))
                return 1
            under = [k for k in objects if k.startswith(key.rstrip("/") + "/") or not key]
            # Every name checked before anything is written: a hostile listing writes nothing.
            targets = [(k, confined(dest, k[len(key):].lstrip("/") if key else k,
                                    f"{self.name}: object {k!r}")) for k in under]
            for k, target in targets:
                target.parent.mkdir(parents=True, exist_ok=True)
                self._client.download_file(self.bucket, k, str(target))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._fail(f"reading {remote}", exc) from None
        if not under:
            raise StorageError(f"{self.name} has nothing at {remote!r}")
        return len(under)

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
