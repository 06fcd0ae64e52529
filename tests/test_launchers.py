"""Launchers under a BundleRunner, against the real SLURM and sshd: arrays split at MaxArraySize,
a node failure re-queued, a dropped SSH connection survived, cancel killing a whole session."""

from __future__ import annotations

import asyncio
import subprocess
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from airavata_prefect.adapters.detached import BareMetalLauncher
from airavata_prefect.adapters.hosts import Host, LocalHost
from airavata_prefect.adapters.launcher import Launcher
from airavata_prefect.adapters.slurm import JobRequest, SlurmCli
from airavata_prefect.adapters.slurm_array import SlurmLauncher
from airavata_prefect.adapters.ssh import SSHEndpoint, SSHHost
from airavata_prefect.adapters.store import Store
from airavata_prefect.domain.bundle_layout import Member
from airavata_prefect.domain.compile import compile_graph
from airavata_prefect.domain.records import NewTask
from airavata_prefect.domain.spec import parse_spec_text
from airavata_prefect.usecases.bundles.runner import BundleJob, BundleRunner
from tests.services import Slurm, Sshd


def make_job(store: Store, tmp: Path, spec: str, host: Host, launcher: Launcher,
             remote_root: str, walltime: int | None = None) -> BundleJob:
    text = textwrap.dedent(spec)
    loaded = parse_spec_text(text, "x.yml")
    exp_id = str(uuid.uuid4())
    home = compile_graph(loaded, {}, root=str(tmp / "home" / exp_id))
    remote = compile_graph(loaded, {}, root=f"{remote_root}/{exp_id}")
    step = home.steps[0]
    store.experiments.create(
        experiment_id=exp_id, name="x", source="x.yml", spec_text=text, params={},
        workdir_root=tmp / "home", total=home.total,
        tasks_iter=(NewTask(i.id, i.step, i.index, home.workdir(i.step, i.index))
                    for i in home.iter_instances()))
    bundle_id = store.bundles.create(exp_id, "r", step.name, [(i, 0) for i in range(step.count)])
    return BundleJob(store, store.bundles.get(bundle_id), store.experiments.get(exp_id), remote,
                     home, [Member(remote.instance(step.name, i), 0) for i in range(step.count)],
                     host, launcher, walltime=walltime)


@pytest.fixture()
def store(tmp_path: Path):
    s = Store(f"sqlite:///{tmp_path / 'a.db'}")
    yield s
    s.close()


def _final(store: Store, job: BundleJob) -> dict[int, tuple[str, str | None]]:
    return {e.position: (e.state, e.message)
            for e in store.bundles.events_after(job.experiment.id, 0, bundle_id=job.id)
            if e.state in ("COMPLETED", "FAILED", "CANCELED")}


def test_a_sweep_splits_into_arrays_at_max_array_size(slurm: Slurm, store: Store,
                                                      tmp_path: Path) -> None:
    host = LocalHost(slurm.env)
    launcher = SlurmLauncher(SlurmCli(host), host, JobRequest(name="split", workdir="",
                                                                  command=""),
                             max_array_size=20, throttle=None)
    job = make_job(store, tmp_path, """\
        tasks:
          t: {command: 'echo "$I" > "$OUT"', task_inputs: {I: 1..50}, task_outputs: {OUT: o}}
        """, host, launcher, str(tmp_path / "cluster"))
    runner = BundleRunner(job, poll_seconds=0.3)
    assert asyncio.run(runner.run()) == {"COMPLETED": 50}
    assert len(runner.ids) == 3  # three sbatch calls: 20 + 20 + 10
    assert sorted(launcher.offsets.values()) == [0, 20, 40]
    assert Path(job.home.output_path("t", 49, "OUT")).read_text() == "50\n"


def _node(slurm: Slurm, state: str) -> None:
    env = {**slurm.env, "PATH": "/usr/bin:/bin"}
    # "resume" is refused once the node is back by itself (ReturnToService=2): not an error.
    subprocess.run(["scontrol", "update", "nodename=airavata-node", f"state={state}",
                    "reason=airavata-test"], env=env, check=state == "down", capture_output=True)
    if state == "resume":
        deadline = time.monotonic() + 30
        while "down" in subprocess.run(["sinfo", "-h", "-o", "%t"], env=env,
                                       capture_output=True, text=True).stdout:
            assert time.monotonic() < deadline, "the node did not come back"
            time.sleep(0.2)


def test_a_node_failure_is_requeued_not_failed(slurm: Slurm, store: Store,
                                               tmp_path: Path) -> None:
    host = LocalHost(slurm.env)
    launcher = SlurmLauncher(SlurmCli(host), host,
                             JobRequest(name="nodefail", workdir="", command="",
                                        requeue=False),  # so SLURM ends it NODE_FAIL
                             max_array_size=1001, throttle=None)
    job = make_job(store, tmp_path, """\
        tasks:
          t: {command: 'sleep 3; echo "$I" > "$OUT"', task_inputs: {I: 1..2},
              task_outputs: {OUT: o}}
        """, host, launcher, str(tmp_path / "cluster"))
    runner = BundleRunner(job, poll_seconds=0.3)

    async def scenario() -> dict[str, int]:
        task = asyncio.ensure_future(runner.run())
        deadline = time.monotonic() + 60
        while sum(s == "RUNNING" for s in runner.state.values()) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        _node(slurm, "down")
        try:
            while len(runner.ids) < 2:  # the re-queued instances went out again
                assert time.monotonic() < deadline + 60
                await asyncio.sleep(0.2)
        finally:
            _node(slurm, "resume")
        return await task

    assert asyncio.run(scenario()) == {"COMPLETED": 2}
    assert runner.requeues == {0: 1, 1: 1}


@pytest.fixture()
def ssh(sshd: Sshd):
    host = SSHHost(SSHEndpoint(sshd.host, sshd.port, sshd.user, sshd.host_key),
                   sshd.private_key)
    yield host
    host.close()


def test_bare_metal_survives_a_dropped_connection(ssh: SSHHost, sshd: Sshd, store: Store,
                                                   tmp_path: Path) -> None:
    job = make_job(store, tmp_path, """\
        tasks:
          t: {command: 'sleep 2; echo "$I" > "$OUT"; [ "$I" = 3 ] && exit 7; true',
              task_inputs: {I: 1..3}, task_outputs: {OUT: o}}
        """, ssh, BareMetalLauncher(ssh, 3), f"{sshd.home}/drop-{uuid.uuid4().hex[:6]}")
    runner = BundleRunner(job, poll_seconds=0.3)

    async def scenario() -> dict[str, int]:
        task = asyncio.ensure_future(runner.run())
        while not runner.ids:
            await asyncio.sleep(0.1)
        transport = ssh.client().get_transport()
        assert transport is not None
        transport.close()  # the network drops while the instances run
        return await task

    assert asyncio.run(scenario()) == {"COMPLETED": 2, "FAILED": 1}
    assert _final(store, job)[2] == ("FAILED", "exit code 7")


def test_bare_metal_cancel_kills_the_whole_session(ssh: SSHHost, sshd: Sshd, store: Store,
                                                   tmp_path: Path) -> None:
    launcher = BareMetalLauncher(ssh, 2)
    job = make_job(store, tmp_path, """\
        tasks:
          t: {command: '(sleep 300; echo escaped > /tmp/never) & sleep 300',
              task_inputs: {I: 1..2}}
        """, ssh, launcher, f"{sshd.home}/cancel-{uuid.uuid4().hex[:6]}")
    cancel = asyncio.Event()

    async def cancelled() -> bool:
        return cancel.is_set()

    runner = BundleRunner(job, poll_seconds=0.3, cancelled=cancelled)

    async def scenario() -> dict[str, int]:
        task = asyncio.ensure_future(runner.run())
        while sum(s == "RUNNING" for s in runner.state.values()) < 2:
            await asyncio.sleep(0.1)
        session = runner.ids[0]
        assert ssh.run(f"pgrep -s {session} | wc -l").text.strip() not in ("", "0")
        cancel.set()
        counts = await task
        assert ssh.run(f"pgrep -s {session}").exit_status == 1  # nothing of it is left
        return counts

    assert asyncio.run(scenario()) == {"CANCELED": 2}
