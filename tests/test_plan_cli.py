"""`airavata experiment plan`: JSON shape, exit codes 0/2/3, located errors, explanations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SAMPLE
from tests.test_cli import cli, script, write

RESOURCES = str(ROOT / "examples" / "resources.yml")


def test_sample_plan_json(home: Path) -> None:
    r = cli("experiment", "plan", str(SAMPLE), "--resources", RESOURCES, "--json")
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    assert set(p) == {"status", "objective", "total_cost", "makespan_seconds", "gap",
                      "solve_seconds", "assignments", "reason", "estimates"}
    assert p["status"] == "optimal" and p["objective"] == "time" and p["reason"] is None
    assert p["estimates"] == {}  # offline (--resources): no history is read
    per_step: dict[str, int] = {}
    for a in p["assignments"]:
        assert set(a) == {"step", "resource", "count", "cost", "finish_seconds"}
        assert a["resource"] in ("cluster-a", "cloud")  # no GPUs needed; gpu-cluster is alice's
        per_step[a["step"]] = per_step.get(a["step"], 0) + a["count"]
    assert per_step == {"task1": 500, "task2": 500}
    assert p["total_cost"] == sum(a["cost"] for a in p["assignments"])
    assert p["makespan_seconds"] == max(a["finish_seconds"] for a in p["assignments"])


def test_plan_table_and_the_local_default(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL")  # no Prefect configured: this machine alone
    r = cli("experiment", "plan", str(ROOT / "examples" / "hello_sweep.yml"))
    assert r.returncode == 0 and "optimal plan, objective time" in r.stdout
    assert "local" in r.stdout


def test_infeasible_exits_3_with_the_reason(home: Path, tmp_path: Path) -> None:
    spec = write(tmp_path, """\
        tasks:
          gpu_train: {command: train, resources: {compute: {gpu: 1, time: "1:00:00"}}}
        """)
    r = cli("experiment", "plan", spec, "--resources", RESOURCES, "--user", "bob", "--json")
    assert r.returncode == 3
    p = json.loads(r.stdout)
    assert p["status"] == "infeasible" and p["assignments"] == []
    assert p["reason"] == ("step gpu_train needs gpu=1, time=01:00:00: no eligible resource "
                           "(cluster-a: no GPUs; gpu-cluster: no credential for user bob; "
                           "cloud: no GPUs)")
    ok = cli("experiment", "plan", spec, "--resources", RESOURCES, "--user", "alice", "--json")
    assert ok.returncode == 0
    assert json.loads(ok.stdout)["assignments"][0]["resource"] == "gpu-cluster"


def test_deadline_that_cannot_be_met(home: Path, tmp_path: Path) -> None:
    spec = write(tmp_path, """\
        constraints: {deadline: "0:10:00"}
        tasks:
          sim: {command: x, task_inputs: {N: 1..100}, resources: {compute: {time: "1:00:00"}}}
        """)
    r = cli("experiment", "plan", spec, "--resources", RESOURCES)
    assert r.returncode == 3
    assert "infeasible (cost): deadline 00:10:00 cannot be met: the fastest placement needs " \
           "01:00:00" in r.stdout


def test_bad_resources_file_and_unknown_names_exit_2(home: Path, tmp_path: Path) -> None:
    bad = write(tmp_path, """\
        resources:
          - {name: a, type: slurm, cores: 4}
          - {name: a, type: pbs}
        """, "res.yml")
    r = cli("experiment", "plan", str(SAMPLE), "--resources", bad)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"{bad}:2:28: error: resources[0].cores: unknown key 'cores'",
        f"{bad}:3:21: error: resources[1].type: input should be 'slurm', 'kubernetes', "
        "'baremetal' or 'local' (got 'pbs')",
    ]
    spec = write(tmp_path, "constraints: {preferred: [clustr-a], excluded: [cloud]}\n"
                           "tasks:\n  a: {command: x}\n")
    r = cli("experiment", "plan", spec, "--resources", RESOURCES)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"{spec}:1:27: error: constraints.preferred[0]: unknown "
                                "resource 'clustr-a' (resources: cloud, cluster-a, gpu-cluster)")
    r = cli("experiment", "plan", spec, "--resources", str(tmp_path / "missing.yml"))
    assert r.returncode == 2 and "missing.yml: error: <document>: no such file" in r.stderr


@pytest.mark.prefect
def test_online_plan_uses_registered_blocks_and_their_credentials(
        prefect_api: str, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airavata_prefect.blocks import CredentialRef, SlurmCluster

    reg = subprocess.run([str(Path(sys.executable).parent / "prefect"), "block", "register",
                          "-m", "airavata_prefect.blocks"], capture_output=True, text=True,
                         env=os.environ.copy(), timeout=120)
    assert reg.returncode == 0, reg.stderr
    SlurmCluster(work_pool_name="slurm-online", nodes=16, cores_per_node=32,
                 cost={"core_hour": 0.0}).save("online-a", overwrite=True)
    SlurmCluster(work_pool_name="gpu", nodes=2, cores_per_node=16, gpus_per_node=4,
                 credential=CredentialRef(path="users/zed/gpu")).save("gpu-locked",
                                                                      overwrite=True)
    SlurmCluster(work_pool_name="other", nodes=64, cores_per_node=64).save("other-project",
                                                                          overwrite=True)
    monkeypatch.setenv("AIRAVATA_USER", "alice")
    # What `airavata resource compute create` records: the resources' project (alice's).
    from airavata_prefect.adapters.spicedb import Subject
    from airavata_prefect.usecases.authorization import ensure_project
    from airavata_prefect.usecases.context import open_context
    with open_context(user="alice") as ctx:
        ensure_project(ctx, "default")
        for name in ("online-a", "gpu-locked"):
            ctx.authz.relate("compute_resource", name, "project", Subject("project", "default"))
    wide = write(tmp_path, """\
        tasks:
          sim:
            command: x
            task_inputs: {N: 1..200}
            resources: {compute: {cpu: 4, time: "1:00:00"}}
        """)
    r = cli("experiment", "plan", wide, "--json")
    assert r.returncode == 0, r.stderr
    used = {a["resource"] for a in json.loads(r.stdout)["assignments"]}
    assert "online-a" in used  # 128 slots beat this machine's few cores
    gpu = write(tmp_path, "tasks:\n  train: {command: x, resources: {compute: {gpu: 1}}}\n",
                "gpu.yml")
    r = cli("experiment", "plan", gpu, "--json")
    assert r.returncode == 3
    reason = json.loads(r.stdout)["reason"]
    assert "local: no GPUs" in reason and "online-a: no GPUs" in reason
    assert "gpu-locked: no credential for user alice" in reason
    assert "other-project" not in reason  # another project's resource: not alice's to see


def test_online_plan_with_prefect_down_is_one_line(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    from tests.conftest import _free_port

    dead = f"http://127.0.0.1:{_free_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", dead)
    spec = write(tmp_path, "tasks:\n  a: {command: x}\n")
    r = script("experiment", "plan", spec, timeout=120)  # a new process reads the URL
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: cannot list registered resources: the Prefect API at "
                               f"{dead} does not answer")
    assert len(r.stderr.strip().splitlines()) == 1
