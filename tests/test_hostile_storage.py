"""Whatever a storage server or compute resource sends, nothing is written outside its target:
object keys and listed names with `..`, symlinks out of a storage root, a symlink planted
where a file comes home. A hostile server cannot be run here (SeaweedFS refuses such keys,
OpenSSH never lists such names), so its listing is stood in for: botocore's Stubber on the
S3 client, an object with paramiko's listing call for SFTP."""

from __future__ import annotations

import stat
from pathlib import Path

import boto3
import botocore.exceptions
import paramiko
import pytest
from botocore.stub import Stubber

from airavata_prefect.adapters.s3 import S3
from airavata_prefect.adapters.sftp import _get_tree
from airavata_prefect.adapters.storage import LocalPath, StorageError, confined, write_inside


def test_confined_refuses_every_way_out(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    assert confined(dest, "a/b.txt", "x") == dest / "a" / "b.txt"
    for rel in ("../x", "a/../../x", "/etc/passwd", "", "a//b", "./a", "a/\0"):
        with pytest.raises(StorageError, match="refused"):
            confined(dest, rel, "obj")
    (dest / "out").symlink_to(tmp_path)  # planted inside, pointing out
    with pytest.raises(StorageError, match="leads outside"):
        confined(dest, "out/x.txt", "obj")


def test_a_hostile_s3_key_writes_nothing_outside(s3, tmp_path: Path) -> None:
    client = boto3.client("s3", endpoint_url=s3.url, aws_access_key_id=s3.access_key,
                          aws_secret_access_key=s3.secret_key, region_name="us-east-1")
    client.create_bucket(Bucket="hostile")
    # SeaweedFS refuses such a key on the way in; another server may keep it as sent, so
    # its listing is stood in for by botocore's own Stubber.
    with pytest.raises(botocore.exceptions.ClientError):
        client.put_object(Bucket="hostile", Key="run/sub/../../../escaped.txt", Body=b"x")
    reader = S3("hostile", access_key=s3.access_key, secret_key=s3.secret_key,
                endpoint_url=s3.url)
    dest = tmp_path / "a" / "b" / "dest"
    for key in ("run/sub/../../../escaped.txt", "run/../escaped.txt"):
        with Stubber(reader._client) as stub:
            stub.add_response("list_objects_v2", {"Contents": [{"Key": "run/ok.txt"},
                                                               {"Key": key}]},
                              {"Bucket": "hostile", "Prefix": "run", "Delimiter": ""})
            with pytest.raises(StorageError, match="refused"):
                reader.fetch("run", dest)
    assert not list(tmp_path.rglob("escaped.txt"))


class _Listing:
    """What a hostile SFTP server could list: names with `..`, a symlink to /etc/passwd."""

    def __init__(self, entries: dict[str, list[paramiko.SFTPAttributes]]) -> None:
        self.entries = entries
        self.got: list[tuple[str, str]] = []

    def listdir_attr(self, path: str) -> list[paramiko.SFTPAttributes]:
        return self.entries[path]

    def get(self, src: str, local: str) -> None:
        self.got.append((src, local))
        Path(local).write_text(src)


def _entry(name: str, mode: int) -> paramiko.SFTPAttributes:
    attr = paramiko.SFTPAttributes()
    attr.filename, attr.st_mode = name, mode
    return attr


def test_a_hostile_sftp_listing_writes_nothing_outside(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    ok = _Listing({"/d": [_entry("a.txt", stat.S_IFREG | 0o644),
                          _entry("passwd", stat.S_IFLNK | 0o777)]})
    assert _get_tree(ok, "/d", dest, "sftp://h") == 1  # type: ignore[arg-type]
    assert [p.name for p in dest.iterdir()] == ["a.txt"]  # the symlink is never followed
    for hostile in ("../escaped.txt", ".."):
        bad = _Listing({"/d": [_entry(hostile, stat.S_IFREG | 0o644)]})
        with pytest.raises(StorageError, match="refused"):
            _get_tree(bad, "/d", dest, "sftp://h")  # type: ignore[arg-type]
        assert bad.got == []
    assert not (tmp_path / "escaped.txt").exists()


def test_a_symlink_out_of_a_local_storage_root_is_not_copied(tmp_path: Path) -> None:
    root = tmp_path / "share"
    (root / "data").mkdir(parents=True)
    (root / "data" / "x.csv").write_text("1,2\n")
    (root / "data" / "passwd").symlink_to("/etc/passwd")
    (root / "data" / "inner").symlink_to(root / "data" / "x.csv")  # inside: kept
    dest = tmp_path / "dest"
    LocalPath(str(root)).fetch("data", dest)
    assert sorted(p.name for p in dest.iterdir()) == ["inner", "x.csv"]
    with pytest.raises(StorageError, match="leaves the storage root"):
        LocalPath(str(root)).fetch("data/passwd", tmp_path / "d2")


def test_a_file_coming_home_replaces_a_planted_symlink(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "s" / "0").mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (home / "s" / "0" / "out.txt").symlink_to(victim)
    write_inside(home, "s/0/out.txt", [b"result\n"])
    assert victim.read_text() == "keep me\n"
    assert (home / "s" / "0" / "out.txt").read_text() == "result\n"
    assert not (home / "s" / "0" / "out.txt").is_symlink()
    (home / "s" / "0" / "sub").symlink_to(tmp_path)
    with pytest.raises(StorageError, match="would be written outside"):
        write_inside(home, "s/0/sub/victim.txt", [b"evil\n"])
    assert victim.read_text() == "keep me\n"
    assert not list((home / "s" / "0").glob(".*.part"))  # nothing half-written left
