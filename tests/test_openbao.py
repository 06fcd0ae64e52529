"""The OpenBao adapter against a real OpenBao dev server: KV versions and task tokens."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from airavata_prefect.adapters.openbao import (
    OpenBao,
    SecretDenied,
    SecretNotFound,
    SecretRef,
    SecretUnavailable,
)
from tests.conftest import _free_port, _healthy


@pytest.fixture()
def bao(openbao_dev: tuple[str, str]) -> OpenBao:
    url, root = openbao_dev
    client = OpenBao(url, root)
    client.check()
    return client


def ref(name: str = "") -> SecretRef:
    return SecretRef(f"users/alice/{name or uuid.uuid4().hex[:8]}")


def test_kv_versions_survive_rotation(bao: OpenBao) -> None:
    key = ref()
    assert bao.put(key, {"private_key": "v1-secret"}) == 1
    assert bao.put(key, {"private_key": "v2-secret"}) == 2  # rotation
    assert bao.get(key) == {"private_key": "v2-secret"}     # new tasks get the new one
    pinned = SecretRef(key.path, version=1)                 # a running task keeps its version
    assert bao.get(pinned) == {"private_key": "v1-secret"}
    with pytest.raises(SecretNotFound, match="OpenBao has nothing at secret/users/alice/nope"):
        bao.get(ref("nope"))


def test_task_token_reads_exactly_its_credentials(bao: OpenBao) -> None:
    mine, other = ref("ssh"), ref("other")
    bao.put(mine, {"private_key": "K"})
    bao.put(other, {"password": "P"})
    token = bao.issue_task_token([mine], walltime_seconds=600, task="exp1/sim[3]")
    assert token.ttl_seconds == 600 + 300
    as_task = bao.as_token(token.token)
    assert as_task.get(mine) == {"private_key": "K"}
    with pytest.raises(SecretDenied, match="permission denied"):
        as_task.get(other)  # a token used outside its path
    with pytest.raises(SecretDenied):
        as_task.put(mine, {"private_key": "overwrite"})  # read only
    bao.revoke_task_token(token)
    with pytest.raises(SecretDenied):
        as_task.get(mine)  # revoked when the task ends
    bao.revoke_task_token(token)  # idempotent


def test_an_expired_task_token_is_refused(bao: OpenBao) -> None:
    key = ref()
    bao.put(key, {"token": "T"})
    token = bao.issue_task_token([key], walltime_seconds=1, task="t", margin_seconds=0)
    assert bao.as_token(token.token).get(key) == {"token": "T"}
    time.sleep(2.1)
    with pytest.raises(SecretDenied):
        bao.as_token(token.token).get(key)
    bao.revoke_task_token(token)  # cleans up the policy even when the token already expired


def test_unreachable_and_sealed_are_clear(tmp_path: Path) -> None:
    port = _free_port()
    gone = OpenBao(f"http://127.0.0.1:{port}", "x", timeout=2)
    with pytest.raises(SecretUnavailable, match=f"OpenBao at http://127.0.0.1:{port} is "
                                                "unreachable"):
        gone.check()
    with pytest.raises(SecretUnavailable, match="unreachable"):
        gone.get(ref())
    # A dev server of our own, sealed on purpose (the shared one must stay unsealed).
    root = uuid.uuid4().hex
    proc = subprocess.Popen([str(Path(sys.executable).parent / "bao"), "server", "-dev",
                             f"-dev-listen-address=127.0.0.1:{port}",
                             f"-dev-root-token-id={root}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not _healthy(f"{url}/v1/sys/health"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        sealed = OpenBao(url, root)
        sealed._client.sys.seal()
        with pytest.raises(SecretUnavailable, match="is sealed"):
            sealed.check()
        with pytest.raises(SecretUnavailable, match="sealed"):
            sealed.get(ref())
    finally:
        proc.terminate()
        proc.wait(10)


def test_persistent_server_keeps_secrets_across_restarts(tmp_path: Path) -> None:
    """scripts/openbao_server.sh: raft storage, init once, unseal on every start."""
    import json
    import os

    script = Path(__file__).resolve().parent.parent / "scripts" / "openbao_server.sh"
    port = _free_port()
    env = {**os.environ, "AIRAVATA_HOME": str(tmp_path), "BAO_PORT": str(port)}

    def run(cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(script), cmd], env=env, capture_output=True,
                              text=True, timeout=120)

    try:
        assert run("start").returncode == 0
        init = tmp_path / "openbao" / "init.json"
        assert oct(init.stat().st_mode & 0o777) == "0o600"
        root = json.loads(init.read_text())["root_token"]
        url = f"http://127.0.0.1:{port}"
        bao = OpenBao(url, root)
        bao._client.sys.enable_secrets_engine(backend_type="kv", path="secret",
                                              options={"version": "2"})
        bao.put(SecretRef("users/alice/ssh"), {"private_key": "K"})
        assert run("stop").returncode == 0
        time.sleep(1)
        assert run("start").returncode == 0  # unseals with the stored key
        assert run("status").stdout.startswith("unsealed")
        assert OpenBao(url, root).get(SecretRef("users/alice/ssh")) == {"private_key": "K"}
    finally:
        run("stop")
