"""The SLURM adapter: generated scripts line by line, state mapping, then a real SLURM 22.05
reached three ways (local sbatch, sbatch over SSH, slurmrestd with a JWT)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from airavata_prefect.adapters.hosts import LocalHost, upload
from airavata_prefect.adapters.slurm import (
    JobRequest,
    SlurmCli,
    SlurmError,
    SlurmTask,
    array_chunks,
    array_spec,
    classify,
    format_time,
    job_script,
    parse_scontrol,
)
from airavata_prefect.adapters.slurm_rest import SlurmRest, job_properties
from airavata_prefect.adapters.ssh import SSHEndpoint, SSHHost
from airavata_prefect.domain.endings import Exit, Outcome, Requeue, judge
from airavata_prefect.domain.states import TaskState
from tests.services import Slurm, Sshd


def test_job_script_header_line_by_line() -> None:
    req = JobRequest(name="exp1-sim", workdir="/scratch/a b", command="exec bash run.sh",
                     partition="gpu", account="proj7", qos="high", nodes=2, cpus_per_task=8,
                     mem_mb=16384, gpus=2, time_seconds=90061, array="0-99%10",
                     extra=("--constraint=haswell", "exclusive"),
                     setup=("module load cuda/12",), environment={"A": "x y", "B": "it's"})
    assert job_script(req).splitlines() == [
        "#!/bin/bash",
        "#SBATCH --job-name=exp1-sim",
        "#SBATCH --chdir=/scratch/a b",
        "#SBATCH --output=slurm-%A_%a.out",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj7",
        "#SBATCH --qos=high",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=16384M",
        "#SBATCH --gpus=2",
        "#SBATCH --time=1-01:01:01",
        "#SBATCH --array=0-99%10",
        "#SBATCH --requeue",
        "#SBATCH --constraint=haswell",
        "#SBATCH --exclusive",
        "export A='x y'",
        "export B='it'\"'\"'s'",
        "module load cuda/12",
        "exec bash run.sh",
    ]


def test_minimal_script_and_gres_wins_over_gpus() -> None:
    lines = job_script(JobRequest(name="n", workdir="/w", command="true", gpus=1,
                                  gres="gpu:a100:1", requeue=False)).splitlines()
    assert lines == ["#!/bin/bash", "#SBATCH --job-name=n", "#SBATCH --chdir=/w",
                     "#SBATCH --output=slurm-%A_%a.out", "#SBATCH --nodes=1",
                     "#SBATCH --ntasks=1", "#SBATCH --cpus-per-task=1",
                     "#SBATCH --gres=gpu:a100:1", "#SBATCH --no-requeue", "true"]


def test_rest_properties_carry_the_same_request() -> None:
    props = job_properties(JobRequest(name="n", workdir="/w", command="true", cpus_per_task=4,
                                      mem_mb=2048, time_seconds=61, array="0-9%2",
                                      partition="debug"))
    assert props["time_limit"] == 2 and props["array"] == "0-9%2"
    assert props["memory_per_node"] == 2048 and props["partition"] == "debug"
    assert props["standard_output"] == "/w/slurm-%A_%a.out" and props["nodes"] == [1, 1]


def test_times_chunks_and_array_specs() -> None:
    assert format_time(59) == "00:00:59" and format_time(86400 * 2 + 3600) == "2-01:00:00"
    assert array_chunks(2500, 1001) == [(0, 1001), (1001, 1001), (2002, 498)]
    assert array_chunks(50, 1001) == [(0, 50)] and array_chunks(0, 10) == []
    assert array_spec(50, None) == "0-49" and array_spec(1, 5) == "0%5"


C, F, X = TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELED


# SLURM's states as facts, then the one mapping every resource uses: a signal is a failure,
# only scancel (someone) cancels, a timeout keeps the signal that stopped it, never exit 0.
@pytest.mark.parametrize(("state", "code", "sig", "want"), [
    ("COMPLETED", 0, None, (C, 0, None)),
    ("FAILED", 3, None, (F, 3, "exit code 3")),
    ("FAILED", 255, None, (F, 255, "exit code 255")),
    ("FAILED", 0, 9, (F, -9, "killed by signal 9 (SIGKILL)")),
    ("FAILED", 0, 15, (F, -15, "killed by signal 15 (SIGTERM)")),
    ("FAILED", 0, 11, (F, -11, "killed by signal 11 (SIGSEGV)")),
    ("CANCELLED", 0, 15, (X, -15, "canceled (scancel)")),
    ("CANCELLED by 0", 0, 9, (X, -9, "canceled (scancel)")),
    ("TIMEOUT", 0, None, (F, None, "timeout: exceeded its walltime")),
    ("TIMEOUT", 0, 15, (F, -15, "timeout: exceeded its walltime")),
    ("OUT_OF_MEMORY", 0, None, (F, None, "out of memory")),
    ("OUT_OF_MEMORY", 0, 9, (F, -9, "out of memory")),
])
def test_states_are_mapped_exactly(state: str, code: int, sig: int | None, want: tuple) -> None:
    end = classify(SlurmTask("1", 0, state, code, sig))
    assert isinstance(end, Exit) and judge(end) == Outcome(*want)


@pytest.mark.parametrize(("state", "want"), [
    ("NODE_FAIL", Requeue("node failure: re-queued")),
    ("BOOT_FAIL", Requeue("node boot failure: re-queued")),
    ("PREEMPTED", Requeue("preempted: re-queued", preempted=True)),
    ("PENDING", None), ("RUNNING", None), ("COMPLETING", None), ("CONFIGURING", None),
])
def test_requeued_and_active_states(state: str, want: Requeue | None) -> None:
    assert classify(SlurmTask("1", 0, state, 0, None)) == want


def test_scontrol_lines_and_a_pending_array_remainder() -> None:
    text = ("JobId=12 ArrayJobId=10 ArrayTaskId=2 JobName=x y JobState=FAILED "
            "Reason=NonZeroExitCode Dependency=(null) ExitCode=3:0 RunTime=00:00:01\n"
            "JobId=10 ArrayJobId=10 ArrayTaskId=4-6%2 JobState=PENDING Reason=JobArrayTaskLimit "
            "ExitCode=0:0\n"
            "JobId=20 JobName=single JobState=CANCELLED Reason=None ExitCode=0:15\n")
    assert parse_scontrol(text) == [
        SlurmTask("10", 2, "FAILED", 3, None, "NonZeroExitCode"),
        SlurmTask("10", 4, "PENDING", 0, None, "JobArrayTaskLimit"),
        SlurmTask("10", 5, "PENDING", 0, None, "JobArrayTaskLimit"),
        SlurmTask("10", 6, "PENDING", 0, None, "JobArrayTaskLimit"),
        SlurmTask("20", None, "CANCELLED", 0, 15, "None"),
    ]


# -- a real SLURM ------------------------------------------------------------------------------

SCENARIO = """case "${SLURM_ARRAY_TASK_ID:-x}" in
  0) exit 0 ;;
  1) exit 3 ;;
  2) kill -9 $$ ;;
  3) sleep 300 ;;
  *) true ;;
esac
"""


def _clients(slurm: Slurm, sshd: Sshd) -> Iterator[tuple[str, object, str]]:
    yield "local", SlurmCli(LocalHost(slurm.env)), f"/tmp/airavata-slurm-{uuid.uuid4().hex[:6]}"
    ssh = SSHHost(SSHEndpoint(sshd.host, sshd.port, sshd.user, sshd.host_key), sshd.private_key)
    yield "ssh", SlurmCli(ssh, env=slurm.env), f"{sshd.home}/slurm-{uuid.uuid4().hex[:6]}"
    yield "rest", SlurmRest(slurm.rest_url, "root", slurm.token("root")), \
        f"/tmp/airavata-rest-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def submitted(slurm: Slurm, sshd: Sshd) -> dict[str, tuple[object, dict[str, str]]]:
    """Every scenario on every route at once, so the slow ones (a time limit) overlap."""
    out = {}
    for route, client, workdir in _clients(slurm, sshd):
        host = client.host if isinstance(client, SlurmCli) else LocalHost()
        jobs: dict[str, str] = {}
        files = {}
        reqs = {
            "array": JobRequest(name="scenarios", workdir=workdir, command=SCENARIO,
                                array="0-49", output="/dev/null", time_seconds=600),
            "timeout": JobRequest(name="timeout", workdir=workdir, command="sleep 600",
                                  output="/dev/null", time_seconds=60),
        }
        for name, req in reqs.items():
            files[f"{name}.sh"] = job_script(req)
        upload(host, workdir, files)
        for name, req in reqs.items():
            jobs[name] = client.submit(req, f"{workdir}/{name}.sh")  # type: ignore[attr-defined]
        out[route] = (client, jobs)
    return out


def _wait(client, job: str, task: int | None, *, done: bool = True,
          timeout: float = 150) -> SlurmTask:
    """The task once it ended (or, with done=False, while it is still pending or running)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [t for t in client.tasks([job]) if t.task_id == task]
        if found and (classify(found[0]) is not None) == done:
            return found[0]
        assert time.monotonic() < deadline, f"task {job}_{task} still {found}"
        time.sleep(0.5)


def _outcome(task: SlurmTask) -> tuple[TaskState, int | None, str | None]:
    end = classify(task)
    assert isinstance(end, Exit), task
    state, code, reason, _ = judge(end)  # what it used is measured by run_one.sh, not here
    return state, code, reason


@pytest.mark.parametrize("route", ["local", "ssh", "rest"])
def test_completed_failed_killed_cancelled_and_an_array_of_50(route: str, submitted) -> None:
    client, jobs = submitted[route]
    running = _wait(client, jobs["array"], 3, done=False)
    while running.state != "RUNNING":
        running = _wait(client, jobs["array"], 3, done=False)
    client.cancel([jobs["array"] + "_3"])
    assert _outcome(_wait(client, jobs["array"], 0)) == (C, 0, None)
    assert _outcome(_wait(client, jobs["array"], 1)) == (F, 3, "exit code 3")
    assert _outcome(_wait(client, jobs["array"], 2))[:2] == (F, -9)  # its own kill -9: failed
    assert _outcome(_wait(client, jobs["array"], 3))[0] == X  # scancel: canceled
    for i in range(4, 50):
        assert _outcome(_wait(client, jobs["array"], i))[0] == C


@pytest.mark.parametrize("route", ["local", "ssh", "rest"])
def test_a_time_limit_ends_as_a_timeout(route: str, submitted) -> None:
    client, jobs = submitted[route]
    task = _wait(client, jobs["timeout"], None, timeout=240)
    state, code, reason = _outcome(task)
    assert (state, reason) == (F, "timeout: exceeded its walltime")
    assert code != 0  # the signal that stopped it, never a clean exit status


def test_jobs_over_ssh_run_as_the_ssh_user(slurm: Slurm, sshd: Sshd) -> None:
    ssh = SSHHost(SSHEndpoint(sshd.host, sshd.port, sshd.user, sshd.host_key), sshd.private_key)
    cli = SlurmCli(ssh, env=slurm.env)
    workdir = f"{sshd.home}/whoami-{uuid.uuid4().hex[:6]}"
    req = JobRequest(name="whoami", workdir=workdir, command="id -un > who.txt",
                     output="out.txt")
    upload(ssh, workdir, {"job.sh": job_script(req)})
    job = cli.submit(req, f"{workdir}/job.sh")
    assert _outcome(_wait(cli, job, None))[0] == C
    assert ssh.run(f"cat {workdir}/who.txt").text.strip() == sshd.user
    assert cli.max_array_size() == 1001


def test_errors_name_the_route(slurm: Slurm, tmp_path: Path) -> None:
    cli = SlurmCli(LocalHost(slurm.env))
    with pytest.raises(SlurmError, match="sbatch on local failed"):
        cli.submit(JobRequest(name="x", workdir=str(tmp_path), command="true"),
                   str(tmp_path / "missing.sh"))
    bad = SlurmRest(slurm.rest_url, "root", "not-a-token")
    with pytest.raises(SlurmError, match="refused") as err:
        bad.submit(JobRequest(name="x", workdir=str(tmp_path), command="true"))
    assert "not-a-token" not in str(err.value)
    gone = SlurmRest("http://127.0.0.1:9", "root", "t", timeout=2)
    with pytest.raises(SlurmError, match="unreachable"):
        gone.tasks(["1"])
    assert os.environ.get("SLURM_CONF") is None  # clients carry it; the test process does not
