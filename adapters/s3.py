"""S3: fetch a prefix into a local directory, and put files back.

prefect-aws does the listing and the uploads (`S3Bucket`, with an `AwsCredentials` built here
in memory from what OpenBao gave and never saved as a block); downloads use its boto3 client
directly, because each must land under a temporary name and be checked against its listing
before it stands as the file (`S3Bucket.download_object_to_path` writes in place, unchecked).
Keys live only in this object; an error message never carries them (botocore's do not either).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, cast

import botocore.exceptions
from prefect_aws import AwsCredentials, S3Bucket
from prefect_aws.client_parameters import AwsClientParameters
from pydantic import SecretStr

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
        credentials = AwsCredentials(
            aws_access_key_id=access_key, aws_secret_access_key=SecretStr(secret_key),
            region_name=region or "us-east-1",
            aws_client_parameters=AwsClientParameters(
                endpoint_url=endpoint_url,
                config={"retries": {"max_attempts": 3, "mode": "standard"},
                        "connect_timeout": 10, "read_timeout": 60}))
        self._bucket = S3Bucket(bucket_name=bucket, bucket_folder=self.prefix,
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
                self._bucket.upload_from_path(path, base if local.is_file() else f"{base}/{rel}",
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
