"""`airavata resource ...` against a real Prefect server, OpenBao and embedded SpiceDB: what
registration creates, and one clear line for every bad input."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from tests.test_cli import cli

pytestmark = pytest.mark.prefect


@pytest.fixture()
def bao_env(openbao_dev: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = openbao_dev
    monkeypatch.setenv("AIRAVATA_OPENBAO_URL", url)
    monkeypatch.setenv("AIRAVATA_OPENBAO_TOKEN", root)
    monkeypatch.setenv("AIRAVATA_USER", "alice")


def one_line_error(r, code: int = 2) -> str:
    assert r.returncode == code, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr.strip()


def test_registering_creates_block_pool_and_deployment(prefect_api: str, home: Path,
                                                       bao_env: None, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n")
    cid = f"k-{uuid.uuid4().hex[:6]}"
    assert cli("credential", "create", cid, "--from-file", f"private_key={key}").returncode == 0
    hostkey = tmp_path / "known"
    hostkey.write_text("[10.0.0.5]:22 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UO "
                       "\n")
    name = f"hpc-{uuid.uuid4().hex[:6]}"
    r = cli("resource", "compute", "create", name, "--type", "slurm", "--set",
            "login_host=10.0.0.5", "--set", "username=alice", "--set", "nodes=4", "--set",
            "cores_per_node=32", "--set", "partition=batch", "--set",
            'environment={"SLURM_CONF": "/etc/slurm/slurm.conf"}', "--host-key-file",
            str(hostkey), "--credential", cid)
    assert r.returncode == 0, r.stderr
    assert f"prefect worker start --pool {name} --type slurm" in r.stdout
    block = httpx.get(f"{prefect_api}/block_types/slug/airavata-slurm-cluster/block_documents/"
                      f"name/{name}").json()
    assert block["data"]["host_key"] == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UO"
    pool = httpx.get(f"{prefect_api}/work_pools/{name}").json()
    assert pool["type"] == "slurm"
    props = pool["base_job_template"]["variables"]["properties"]
    assert props["resource"]["default"] == name and props["partition"]["default"] == "batch"
    assert {"cpus_per_task", "mem_mb", "gres", "time_limit", "array_throttle",
            "setup_commands", "extra_sbatch"} <= set(props)
    dep = httpx.get(f"{prefect_api}/deployments/name/execute_bundle/{name}").json()
    assert dep["work_pool_name"] == name and dep["job_variables"] == {"resource": name}
    listed = cli("resource", "compute", "list")
    assert name in listed.stdout and "yes" in listed.stdout
    again = cli("resource", "compute", "create", name, "--type", "slurm")
    assert "exists: use --replace" in one_line_error(again)


@pytest.mark.parametrize(("args", "message"), [
    (["--type", "cloud"], "unknown type 'cloud' (one of: slurm, baremetal, kubernetes)"),
    (["--type", "slurm", "--set", "nodez=4"], "slurm resources have no field 'nodez'"),
    (["--type", "slurm", "--set", "nodes"], "--set 'nodes': expected FIELD=VALUE"),
    (["--type", "slurm", "--set", "nodes=-1"], "invalid SlurmCluster: nodes:"),
    (["--type", "baremetal", "--set", "host=h"], "invalid BareMetalHost: username: Field "
                                                  "required"),
    (["--type", "slurm", "--credential", "nobody-has-this"], "no credential 'nobody-has-this'"),
    (["--type", "slurm", "--host-key-file", "/nonexistent"], "--host-key-file: cannot read"),
])
def test_bad_input_is_one_line(prefect_api: str, home: Path, bao_env: None,
                               args: list[str], message: str) -> None:
    r = cli("resource", "compute", "create", f"x-{uuid.uuid4().hex[:6]}", *args)
    assert message in one_line_error(r)


def test_bad_names_and_another_users_credential(prefect_api: str, home: Path, bao_env: None,
                                                tmp_path: Path, monkeypatch) -> None:
    r = cli("resource", "compute", "create", "Bad_Name", "--type", "slurm")
    assert "use lowercase letters, digits and '-'" in one_line_error(r)
    key = tmp_path / "k"
    key.write_text("secret-value")
    cid = f"mine-{uuid.uuid4().hex[:6]}"
    assert cli("credential", "create", cid, "--from-file", f"key={key}").returncode == 0
    monkeypatch.setenv("AIRAVATA_USER", "mallory")
    r = cli("resource", "compute", "create", f"steal-{uuid.uuid4().hex[:6]}", "--type",
            "slurm", "--credential", cid, "--project", "malloryland")
    err = one_line_error(r, 4)
    assert f"user mallory lacks credential.bind on credential {cid}" in err
    assert "secret-value" not in r.stdout + r.stderr


def test_storage_resources(prefect_api: str, home: Path, bao_env: None) -> None:
    name = f"scratch-{uuid.uuid4().hex[:6]}"
    r = cli("resource", "storage", "create", name, "--type", "local", "--set", "path=/data")
    assert r.returncode == 0, r.stderr
    doc = httpx.get(f"{prefect_api}/block_types/slug/airavata-local-storage/block_documents/"
                    f"name/{name}").json()
    assert doc["data"]["path"] == "/data"
    r = cli("resource", "storage", "create", f"b-{uuid.uuid4().hex[:6]}", "--type", "s3")
    assert "invalid S3Storage: bucket: Field required" in one_line_error(r)
