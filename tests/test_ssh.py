"""Hosts: this machine and a real sshd (paramiko, pinned host keys, key from memory only)."""

from __future__ import annotations

import resource
import subprocess
from typing import BinaryIO

import pytest

from airavata_prefect.adapters.hosts import HostError, LocalHost, check, download, upload
from airavata_prefect.adapters.ssh import HostKeyRefused, SSHEndpoint, SSHHost
from tests.services import Sshd, free_port


def endpoint(s: Sshd, **over: object) -> SSHEndpoint:
    return SSHEndpoint(**{"host": s.host, "port": s.port, "username": s.user,  # type: ignore[arg-type]
                          "host_key": s.host_key, **over})


@pytest.fixture()
def ssh(sshd: Sshd):
    host = SSHHost(endpoint(sshd), sshd.private_key)
    yield host
    host.close()


def test_runs_commands_with_exit_status_and_both_streams(ssh: SSHHost, sshd: Sshd) -> None:
    r = ssh.run("echo out; echo err >&2; exit 3")
    assert (r.exit_status, r.stdout, r.stderr) == (3, b"out\n", b"err\n")
    assert ssh.run("id -un").text.strip() == sshd.user
    assert ssh.run("cat", stdin=b"piped").stdout == b"piped"
    with pytest.raises(HostError, match=r"ls on airavata-ci@127\.0\.0\.1:\d+ failed \(exit 2\)"):
        check(ssh, "ls /nonexistent-dir")


def test_large_output_on_both_streams_does_not_stall(ssh: SSHHost) -> None:
    r = ssh.run("head -c 3000000 /dev/zero; head -c 3000000 /dev/zero >&2")
    assert (len(r.stdout), len(r.stderr)) == (3_000_000, 3_000_000)


def _public_key(tmp_path, kind: str) -> str:
    path = tmp_path / f"host_{kind}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def test_unknown_or_changed_host_keys_are_refused(sshd: Sshd, tmp_path) -> None:
    with pytest.raises(HostKeyRefused, match="differs from the pinned one"):
        SSHHost(endpoint(sshd, host_key=_public_key(tmp_path, "ed25519")),
                sshd.private_key).run("true")
    with pytest.raises(HostKeyRefused, match="refusing to connect"):  # another key type
        SSHHost(endpoint(sshd, host_key=_public_key(tmp_path, "rsa")),
                sshd.private_key).run("true")
    with pytest.raises(HostError, match=r"host key .* must be 'TYPE BASE64'"):
        SSHHost(endpoint(sshd, host_key="garbage"), sshd.private_key)


def test_wrong_key_unreachable_host_and_bad_key_text_are_clear(sshd: Sshd, tmp_path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
                   check=True)
    stranger = (tmp_path / "k").read_text()
    with pytest.raises(HostError, match="refused our key"):
        SSHHost(endpoint(sshd), stranger).run("true")
    port = free_port()
    with pytest.raises(HostError, match=f"cannot reach airavata-ci@127.0.0.1:{port}"):
        SSHHost(endpoint(sshd, port=port), sshd.private_key, timeout=3).run("true")
    with pytest.raises(HostError, match="private key could not be read"):
        SSHHost(endpoint(sshd), "not a key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "pw", "-f", str(tmp_path / "e")],
                   check=True)
    with pytest.raises(HostError, match="encrypted and no passphrase"):
        SSHHost(endpoint(sshd), (tmp_path / "e").read_text())
    assert SSHHost(endpoint(sshd), (tmp_path / "e").read_text(), passphrase="pw") is not None


def test_a_dropped_connection_reconnects(ssh: SSHHost) -> None:
    assert ssh.run("echo one").text == "one\n"
    transport = ssh.client().get_transport()
    assert transport is not None
    transport.close()  # the network drops
    assert ssh.run("echo two").text == "two\n"


def test_command_timeout_is_reported(ssh: SSHHost) -> None:
    with pytest.raises(HostError, match=r"timed out after 0\.5 s"):
        ssh.run("sleep 5", timeout=0.5)
    assert ssh.run("echo still-usable").text == "still-usable\n"


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_upload_and_download_round_trip(kind: str, ssh: SSHHost, sshd: Sshd) -> None:
    host = LocalHost() if kind == "local" else ssh
    base = (f"/tmp/airavata-hosts-{kind}-{free_port()}" if kind == "local"
            else f"{sshd.home}/hosts-test-{free_port()}")
    upload(host, base, {"a.txt": "alpha", "deep/dir/b.bin": b"\x00\x01", "run.sh": "echo hi\n"},
           executable=frozenset({"run.sh"}))
    assert host.run(f"cd {base} && ./run.sh").text == "hi\n"

    def fetch(directory: str, paths: list[str]) -> dict[str, bytes]:
        got: dict[str, bytes] = {}
        found = download(host, directory, paths, lambda rel, f: got.update({rel: f.read()}))
        assert found == set(got)
        return got

    assert fetch(base, ["a.txt", "deep/dir/b.bin", "missing.txt"]) == {
        "a.txt": b"alpha", "deep/dir/b.bin": b"\x00\x01"}
    assert fetch(base + "/nowhere", ["a.txt"]) == {}
    assert fetch(base, ["missing.txt", "a.txt"]) == {"a.txt": b"alpha"}  # the last one
    # Only what was asked for is handed over, whatever else the archive holds.
    assert fetch(base, ["deep/dir/b.bin"]) == {"deep/dir/b.bin": b"\x00\x01"}
    # A big file comes through a spool, never whole in this process's memory at once.
    host.run(f"head -c {64 << 20} /dev/urandom > {base}/big.bin")
    sizes: dict[str, int] = {}

    def count(rel: str, f: BinaryIO) -> None:
        sizes[rel] = sum(len(chunk) for chunk in iter(lambda: f.read(1 << 20), b""))

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert download(host, base, ["big.bin"], count) == {"big.bin"}
    assert sizes == {"big.bin": 64 << 20}
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak  # KiB
    assert grew < 32 << 10, grew
    host.run(f"rm -rf {base}")
