"""Every object fetched from S3 is checked against its listing (size, and MD5 where the ETag is
one), on the real SeaweedFS. The one stand-in is a faulty link around boto3's download, which
damages what arrives as a bad network or disk would."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from airavata_prefect.adapters.s3 import S3
from airavata_prefect.adapters.storage import StorageError
from tests.storages import s3_client


def _adapter(s3: Any, bucket: str) -> S3:
    s3_client(s3).create_bucket(Bucket=bucket)
    return S3(bucket, access_key=s3.access_key, secret_key=s3.secret_key, endpoint_url=s3.url)


def _damage(adapter: S3, times: int) -> list[str]:
    """Flip the first byte of the next `times` downloads; returns the keys downloaded."""
    real = adapter._client.download_file
    calls: list[str] = []

    def faulty(bucket: str, key: str, filename: str, **kw: Any) -> None:
        real(bucket, key, filename, **kw)
        calls.append(key)
        if len(calls) <= times:
            data = bytearray(Path(filename).read_bytes())
            data[0] ^= 0xFF
            Path(filename).write_bytes(bytes(data))

    adapter._client.download_file = faulty  # type: ignore[method-assign]
    return calls


def test_a_damaged_download_is_fetched_again(s3: Any, tmp_path: Path) -> None:
    adapter = _adapter(s3, "integrity-once")
    body = b"alpha=0.5\n" * 100
    s3_client(s3).put_object(Bucket="integrity-once", Key="run/params.txt", Body=body)
    calls = _damage(adapter, 1)
    assert adapter.fetch("run/params.txt", tmp_path / "d") == 1
    assert calls == ["run/params.txt", "run/params.txt"]
    assert (tmp_path / "d" / "params.txt").read_bytes() == body


def test_a_download_damaged_every_time_is_refused(s3: Any, tmp_path: Path) -> None:
    adapter = _adapter(s3, "integrity-always")
    body = b"1,2\n" * 10
    s3_client(s3).put_object(Bucket="integrity-always", Key="run/data/x.csv", Body=body)
    _damage(adapter, 99)
    md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
    with pytest.raises(StorageError, match=rf"'run/data/x.csv' arrived damaged 2 times "
                                           rf"\(listed 40 bytes, MD5 {md5}; got 40 bytes, "
                                           r"MD5 [0-9a-f]{32}\)"):
        adapter.fetch("run", tmp_path / "d")
    assert not (tmp_path / "d" / "data" / "x.csv").exists()  # nothing damaged stands
