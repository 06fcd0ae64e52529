"""`airavata credential ...` against real OpenBao and (embedded) SpiceDB: no secret leaks out."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.haystack import all_bytes
from tests.test_cli import AIRAVATA, cli, write

KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAB3NzaC1yc2EAAAADAQABAAABAQC7\n-----END"


@pytest.fixture()
def bao_env(openbao_dev: tuple[str, str], home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url, root = openbao_dev
    monkeypatch.setenv("AIRAVATA_OPENBAO_URL", url)
    monkeypatch.setenv("AIRAVATA_OPENBAO_TOKEN", root)
    return root


@pytest.mark.prefect
def test_create_share_bind_rotate(bao_env: str, prefect_api: str, home: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = write(tmp_path, KEY, "id_ed25519")
    monkeypatch.setenv("AIRAVATA_USER", "alice")
    r = cli("credential", "create", "alice-ssh", "--from-file", f"private_key={key_file}",
            "--path", f"users/alice/{tmp_path.name}/ssh")
    assert r.returncode == 0, r.stderr
    assert "(version 1); keys: private_key" in r.stdout and KEY[:20] not in r.stdout
    again = cli("credential", "create", "alice-ssh", "--from-file", f"private_key={key_file}")
    assert (again.returncode, again.stderr.strip()) == (
        2, "error: credential 'alice-ssh' exists: rotate it, or choose another id")
    made = cli("resource", "compute", "create", "cluster-a", "--type", "baremetal", "--set",
               "host=10.0.0.9", "--set", "username=alice", "--set",
               "host_key=ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UO")
    assert made.returncode == 0, made.stderr

    monkeypatch.setenv("AIRAVATA_USER", "bob")  # not shared with bob: he may not bind it
    r = cli("credential", "bind", "alice-ssh", "cluster-a")
    assert r.returncode == 4 and "user bob lacks credential.bind on credential alice-ssh" \
        in r.stderr and "(correlation id " in r.stderr

    monkeypatch.setenv("AIRAVATA_USER", "alice")
    assert cli("credential", "share", "alice-ssh", "bob").returncode == 2  # no account yet
    made = subprocess.run([AIRAVATA, "user", "create", "bob", "--password-stdin"],
                          input="bob-password-1\n", capture_output=True, text=True,
                          timeout=120)
    assert made.returncode == 0, made.stderr
    assert cli("credential", "share", "alice-ssh", "bob", "--writer").returncode == 0
    monkeypatch.setenv("AIRAVATA_USER", "bob")
    assert cli("credential", "bind", "alice-ssh", "cluster-b").returncode == 2  # none such
    assert cli("credential", "bind", "alice-ssh", "cluster-a").returncode == 0
    monkeypatch.setenv("NEW_KEY", KEY + "v2")
    r = cli("credential", "rotate", "alice-ssh", "--from-env", "private_key=NEW_KEY")
    assert r.returncode == 0 and "rotated to version 2" in r.stdout

    # Nothing of the key is in our database (audit trail, references) or in the output.
    db = all_bytes(home.glob("airavata.db*"))  # WAL included
    assert b"AAAAB3NzaC1yc2EAAAADAQABAAABAQC7" not in db
    assert b"users/alice/" in db  # the reference is


def test_bad_secret_sources_are_one_line(bao_env: str, tmp_path: Path) -> None:
    cases = [
        (["--from-file", "private_key"], "error: --from-file 'private_key': expected KEY=FILE"),
        (["--from-file", f"k={tmp_path / 'missing'}"],
         f"error: --from-file k: cannot read {tmp_path / 'missing'}: No such file or directory"),
        (["--from-env", "k=AIRAVATA_NOT_SET_ANYWHERE"],
         "error: --from-env k: $AIRAVATA_NOT_SET_ANYWHERE is not set"),
        ([], "error: give the secret with --from-file KEY=FILE or --from-env KEY=VAR"),
    ]
    for args, message in cases:
        r = cli("credential", "create", "c1", *args)
        assert (r.returncode, r.stderr.strip()) == (2, message), args


def test_without_an_openbao_token(home: Path, monkeypatch: pytest.MonkeyPatch,
                                  tmp_path: Path) -> None:
    monkeypatch.delenv("AIRAVATA_OPENBAO_TOKEN", raising=False)
    monkeypatch.setenv("X", "v")
    r = cli("credential", "create", "c1", "--from-env", "k=X")
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: AIRAVATA_OPENBAO_TOKEN is not set (the token this CLI "
                                "uses to reach OpenBao)")
