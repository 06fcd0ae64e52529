"""Credential lifecycle and task delivery against real OpenBao and SpiceDB, audited throughout."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from airavata_prefect.adapters.openbao import OpenBao, SecretDenied, SecretRef
from airavata_prefect.adapters.spicedb import Authz, Subject
from airavata_prefect.adapters.store import Store
from airavata_prefect.usecases.correlation import correlated
from airavata_prefect.usecases.credentials import Binding, CredentialError, CredentialService
from tests.conftest import _free_port

SSH_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END"
S3_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture()
def svc(openbao_dev: tuple[str, str], tmp_path: Path) -> Iterator[CredentialService]:
    url, root = openbao_dev
    authz = Authz.embedded()
    authz.relate("group", "team", "member", Subject.user("dave"))
    authz.relate("group", "lab", "member", Subject.group("team"))
    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    yield CredentialService(store, authz, OpenBao(url, root))
    authz.close()
    store.close()


def refs() -> tuple[SecretRef, SecretRef]:
    base = uuid.uuid4().hex[:8]
    return SecretRef(f"users/alice/{base}/ssh"), SecretRef(f"users/alice/{base}/s3")


def test_lifecycle_is_checked_and_audited_without_secrets(svc: CredentialService) -> None:
    ssh, _ = refs()
    with correlated("corr-lifecycle"):
        assert svc.create("alice", "cred-ssh", ssh, {"private_key": SSH_KEY}) == 1
        svc.share("alice", "cred-ssh", Subject.group("lab"))
        assert svc.read("dave", "cred-ssh", ssh) == {"private_key": SSH_KEY}  # nested group
        with pytest.raises(CredentialError, match=re.escape(
                "user carol lacks credential.read on credential cred-ssh (correlation id "
                "corr-lifecycle)")):
            svc.read("carol", "cred-ssh", ssh)
        with pytest.raises(CredentialError, match=re.escape("user dave lacks credential.bind")):
            svc.bind("dave", "cred-ssh", "compute_resource", "cluster-a")  # bind without write
        svc.bind("alice", "cred-ssh", "compute_resource", "cluster-a")
        assert svc.rotate("alice", "cred-ssh", ssh, {"private_key": SSH_KEY + "2"}) == 2
        svc.unbind("alice", "cred-ssh", "compute_resource", "cluster-a")
    trail = svc.store.audit.trail(correlation_id="corr-lifecycle")
    assert [(r.actor, r.action, r.outcome) for r in trail] == [
        ("alice", "credential.create", "ok"), ("alice", "credential.share", "ok"),
        ("dave", "credential.read", "ok"), ("carol", "credential.read", "denied"),
        ("dave", "credential.bind", "denied"), ("alice", "credential.bind", "ok"),
        ("alice", "credential.rotate", "ok"), ("alice", "credential.unbind", "ok")]
    assert SSH_KEY[:30] not in str(trail) and "b3BlbnNzaC1rZXktdjEAAAAA" not in str(trail)


def test_task_token_is_scoped_and_survives_rotation(svc: CredentialService) -> None:
    ssh, s3 = refs()
    svc.create("alice", "cred-ssh", ssh, {"private_key": SSH_KEY})
    svc.create("alice", "cred-s3", s3, {"secret_key": S3_SECRET})
    other, _ = refs()
    svc.create("alice", "cred-other", other, {"password": "p"})
    token = svc.token_for_task("alice", [Binding("cluster-a", "cred-ssh", ssh),
                                         Binding("bucket", "cred-s3", s3)],
                               walltime_seconds=60, task="exp/sim[0]")
    task = svc.bao.as_token(token.token)
    assert task.get(s3) == {"secret_key": S3_SECRET}
    svc.rotate("alice", "cred-ssh", ssh, {"private_key": "NEW"})  # rotation mid-run
    assert task.get(SecretRef(ssh.path, version=1)) == {"private_key": SSH_KEY}
    assert task.get(ssh) == {"private_key": "NEW"}  # a new task would get the new one
    with pytest.raises(SecretDenied):
        task.get(other)  # not bound to this task
    svc.bao.revoke_task_token(token)
    with pytest.raises(SecretDenied):
        task.get(s3)


def test_a_missing_permission_stops_before_anything_is_issued(svc: CredentialService) -> None:
    ssh, s3 = refs()
    svc.create("alice", "cred-a", ssh, {"private_key": SSH_KEY})
    svc.create("bob", "cred-b", s3, {"secret_key": S3_SECRET})
    before = set(svc.bao._client.sys.list_policies()["data"]["policies"])
    with correlated("corr-denied"), pytest.raises(CredentialError) as info:
        svc.token_for_task("alice", [Binding("cluster-a", "cred-a", ssh),
                                     Binding("cluster-b", "cred-b", s3)],
                           walltime_seconds=60, task="exp/sim[1]")
    assert str(info.value) == ("cannot run exp/sim[1] on cluster-b: user alice lacks "
                               "credential.read on credential cred-b (correlation id "
                               "corr-denied)")
    assert set(svc.bao._client.sys.list_policies()["data"]["policies"]) == before
    assert [r.outcome for r in svc.store.audit.trail(correlation_id="corr-denied")] == \
        ["denied"]


def test_openbao_or_spicedb_down_fails_fast(svc: CredentialService, tmp_path: Path) -> None:
    ssh, _ = refs()
    svc.create("alice", "cred-a", ssh, {"private_key": SSH_KEY})
    port = _free_port()
    down = CredentialService(svc.store, svc.authz, OpenBao(f"http://127.0.0.1:{port}", "x",
                                                           timeout=2))
    with pytest.raises(CredentialError, match=f"cannot run t: OpenBao at http://127.0.0.1:"
                                              f"{port} is unreachable"):
        down.token_for_task("alice", [Binding("cluster-a", "cred-a", ssh)],
                            walltime_seconds=60, task="t")
    dead = Authz.embedded()
    dead.close()
    no_authz = CredentialService(svc.store, dead, svc.bao)
    with pytest.raises(CredentialError, match="SpiceDB could not answer"):
        no_authz.token_for_task("alice", [Binding("cluster-a", "cred-a", ssh)],
                                walltime_seconds=60, task="t")
