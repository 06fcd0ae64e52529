"""Every object fetched from S3 is checked on arrival, on the real SeaweedFS: its size against
the listing, its ETag (MD5, or the multipart MD5 of MD5s) and the sha256 our `put` stores with
it. The one stand-in is a faulty link around boto3's transfer, which damages what arrives as
a bad network or disk would."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig

from airavata_prefect.adapters.s3 import S3
from airavata_prefect.adapters.storage import StorageError
from tests.storages import s3_client


def _adapter(s3: Any, bucket: str) -> S3:
    s3_client(s3).create_bucket(Bucket=bucket)
    return S3(bucket, access_key=s3.access_key, secret_key=s3.secret_key, endpoint_url=s3.url)


class _Damaged:
    """A streaming body whose first byte arrives flipped."""

    def __init__(self, body: Any) -> None:
        self.body = body

    def iter_chunks(self, size: int) -> Any:
        first = True
        for chunk in self.body.iter_chunks(size):
            if first and chunk:
                chunk, first = bytes([chunk[0] ^ 0xFF]) + chunk[1:], False
            yield chunk


def _damage(adapter: S3, times: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Flip the first byte of the next `times` GETs (an object, or a part of one); the keys
    fetched.
    (prefect-aws shares one client among equal credentials: the patch is undone after.)"""
    client = adapter._client
    get_object = client.get_object
    calls: list[str] = []

    def faulty_get(**kw: Any) -> dict[str, Any]:
        reply = get_object(**kw)
        calls.append(kw["Key"])
        if len(calls) <= times:
            reply["Body"] = _Damaged(reply["Body"])
        return dict(reply)

    monkeypatch.setattr(client, "get_object", faulty_get)
    return calls


def test_a_damaged_download_is_fetched_again(s3: Any, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = _adapter(s3, "integrity-once")
    body = b"alpha=0.5\n" * 100
    s3_client(s3).put_object(Bucket="integrity-once", Key="run/params.txt", Body=body)
    calls = _damage(adapter, 1, monkeypatch)
    assert adapter.fetch("run/params.txt", tmp_path / "d") == 1
    assert calls == ["run/params.txt", "run/params.txt"]
    assert (tmp_path / "d" / "params.txt").read_bytes() == body


def test_a_download_damaged_every_time_is_refused(s3: Any, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = _adapter(s3, "integrity-always")
    body = b"1,2\n" * 10
    s3_client(s3).put_object(Bucket="integrity-always", Key="run/data/x.csv", Body=body)
    _damage(adapter, 99, monkeypatch)
    md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
    with pytest.raises(StorageError, match=rf"'run/data/x.csv' arrived damaged 2 times "
                                           rf"\(listed 40 bytes, ETag {md5}; got 40 bytes, "
                                           r"ETag [0-9a-f]{32}, sha256 [0-9a-f]{64}\)"):
        adapter.fetch("run", tmp_path / "d")
    assert list((tmp_path / "d").rglob("*x.csv*")) == []  # nothing damaged stands, no part


def test_a_multipart_object_is_checked_by_its_parts(s3: Any, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = _adapter(s3, "integrity-multi")
    body = os.urandom(11 * 1024 * 1024)  # three parts of 5 MiB at most
    config = TransferConfig(multipart_threshold=5 * 1024 * 1024,
                            multipart_chunksize=5 * 1024 * 1024)
    s3_client(s3).upload_fileobj(io.BytesIO(body), "integrity-multi", "big.bin", Config=config)
    listed = s3_client(s3).list_objects_v2(Bucket="integrity-multi")["Contents"][0]
    assert listed["ETag"].strip('"').endswith("-3")  # the server kept it multipart
    calls = _damage(adapter, 1, monkeypatch)
    adapter.fetch("big.bin", tmp_path / "d")
    assert calls == ["big.bin"] * 6  # three parts, twice: a flipped byte shows in the ETag
    assert (tmp_path / "d" / "big.bin").read_bytes() == body


def test_what_we_put_carries_its_sha256_and_is_checked_against_it(s3: Any,
                                                                   tmp_path: Path) -> None:
    adapter = _adapter(s3, "integrity-sha")
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "a.txt").write_bytes(b"results\n")
    assert adapter.put(tmp_path / "up", "out") == 1
    head = s3_client(s3).head_object(Bucket="integrity-sha", Key="out/a.txt")
    assert head["Metadata"] == {"sha256": hashlib.sha256(b"results\n").hexdigest()}
    # Another writer replaced the content but not its sha256 (the ETag is the new MD5):
    s3_client(s3).put_object(Bucket="integrity-sha", Key="out/a.txt", Body=b"tampered\n",
                             Metadata=head["Metadata"])
    with pytest.raises(StorageError, match=r"arrived damaged 2 times .* sha256 "
                                           + head["Metadata"]["sha256"]):
        adapter.fetch("out/a.txt", tmp_path / "d")
