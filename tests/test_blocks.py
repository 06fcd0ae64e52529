"""Resource blocks: registered in a real Prefect server, round-tripped, never holding a secret."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
from pydantic import SecretBytes, SecretStr

from airavata_prefect import blocks
from airavata_prefect.blocks import BareMetalHost, CredentialRef, SlurmCluster

ALL = [b for n in blocks.__all__ if isinstance(b := getattr(blocks, n), type)]
SECRET_NAMES = {"password", "private_key", "token", "secret", "secret_key", "access_key",
                "kubeconfig", "passphrase", "api_key"}


def _types(annotation: Any) -> set[Any]:
    out = {annotation}
    for arg in get_args(annotation):
        out |= _types(arg)
    return out


@pytest.mark.parametrize("block", ALL, ids=[b.__name__ for b in ALL])
def test_no_field_can_hold_a_secret(block: type) -> None:
    for name, field in block.model_fields.items():
        assert name not in SECRET_NAMES, f"{block.__name__}.{name}"
        kinds = _types(field.annotation)
        assert not kinds & {SecretStr, SecretBytes}, f"{block.__name__}.{name}"
        assert "SecretDict" not in {getattr(k, "__name__", "") for k in kinds}


def test_every_compute_kind_is_a_placement_resource_type() -> None:
    from airavata_prefect.domain.resources import ComputeResource
    declared = set(get_args(ComputeResource.model_fields["type"].annotation))
    assert declared == {*blocks.COMPUTE_KINDS, "local"}


def test_blocks_map_to_placement_resources() -> None:
    host = BareMetalHost(work_pool_name="bm", host="10.0.0.5", username="runner",
                         host_key="ssh-ed25519 AAAA...", nodes=1, cores_per_node=8,
                         cost={"core_hour": 0.02})
    r = host.to_compute_resource("lab-box")
    assert (r.name, r.type, r.cores_per_node, r.cost.core_hour) == ("lab-box", "baremetal", 8,
                                                                    0.02)


@pytest.mark.prefect
def test_registered_and_round_tripped_without_secrets(prefect_api: str) -> None:
    r = subprocess.run([str(Path(sys.executable).parent / "prefect"), "block", "register",
                        "-m", "airavata_prefect.blocks"], capture_output=True, text=True,
                       env=os.environ.copy(), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for slug in ("airavata-slurm-cluster", "airavata-credential-ref", "airavata-s3-storage"):
        assert httpx.get(f"{prefect_api}/block_types/slug/{slug}").status_code == 200
    name = f"cluster-{uuid.uuid4().hex[:6]}"
    SlurmCluster(work_pool_name="slurm-a", login_host="login.example.org",
                 host_key="ssh-ed25519 AAAAC3Nza", nodes=4, cores_per_node=32,
                 credential=CredentialRef(path="users/alice/ssh/cluster-a", version=2)
                 ).save(name)
    loaded = SlurmCluster.load(name)
    assert loaded.credential is not None and loaded.credential.secret_ref().version == 2
    doc = httpx.get(f"{prefect_api}/block_types/slug/airavata-slurm-cluster/block_documents/"
                    f"name/{name}", params={"include_secrets": "true"}).json()
    # What Prefect stores (and hands out with include_secrets) is the reference alone.
    data = doc["data"]
    assert set(data) <= set(SlurmCluster.model_fields)
    credential = data["credential"]
    if "$ref" in credential:  # a nested block is stored as its own document
        credential = httpx.get(f"{prefect_api}/block_documents/"
                               f"{credential['$ref']['block_document_id']}",
                               params={"include_secrets": "true"}).json()["data"]
    credential.pop("block_type_slug", None)  # Prefect's own bookkeeping
    assert credential == {"mount": "secret", "path": "users/alice/ssh/cluster-a", "version": 2}
