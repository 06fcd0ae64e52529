"""Pilot agents on a registered resource, started through its work pool: the local SLURM in
pilot mode (2 nodes of 2 cores), served by a real `prefect worker start`, with our agent
service as its own process. The experiment's flow starts the agents as one job array through
the pool; they pull the instances; nothing secret is in a job script or in Prefect."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from airavata_prefect.domain.pilot import AGENTS_STEP
from airavata_prefect.domain.states import TaskState
from tests.grid import Grid, grid
from tests.services import AgentService, Slurm, Sshd, free_port

pytestmark = pytest.mark.prefect


@pytest.fixture(scope="module")
def pg(prefect_api: str, openbao_dev: tuple[str, str], slurm: Slurm, sshd: Sshd,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Grid, AgentService]]:
    tmp = tmp_path_factory.mktemp("pilot-grid")
    port = free_port()
    with pytest.MonkeyPatch.context() as mp:
        # Set before the worker starts: it tells the agents where the service is.
        for k, v in {"AIRAVATA_AGENT_PORT": str(port), "AIRAVATA_AGENT_LEASE_SECONDS": "5",
                     "AIRAVATA_AGENT_HEARTBEAT_SECONDS": "1",
                     "AIRAVATA_AGENT_IDLE_SECONDS": "10"}.items():
            mp.setenv(k, v)
        with grid(tmp, openbao_dev, slurm, sshd, roles=("slurm-pilot", "baremetal-pilot")) as g:
            service = AgentService(g.home, port, {**os.environ})
            service.start()
            try:
                yield g, service
            finally:
                assert service.proc is not None
                service.proc.terminate()
                service.proc.wait(10)


def _jobs(slurm: Slurm, ids: tuple[str, ...]) -> list[str]:
    r = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(ids)],
                       env={"SLURM_CONF": str(slurm.conf), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True)
    return r.stdout.split()


def test_an_experiment_on_slurm_agents(pg: tuple[Grid, AgentService], tmp_path: Path,
                                       prefect_api: str) -> None:
    g, _ = pg
    spec = g.spec(tmp_path, """\
        tasks:
          sweep:
            command: 'echo "task $I in job $SLURM_ARRAY_JOB_ID" > out.txt; echo log-$I'
            task_inputs: {I: 1..20}
            task_outputs: {OUT: out.txt}
          after:
            command: 'cat "$IN" > copy.txt'
            foreach: [sweep]
            task_inputs: {IN: "${sweep.OUT}"}
        """, on="slurm-pilot")
    exp_id = g.submit(spec)
    state = g.run(exp_id)
    assert state.is_completed(), g.tasks(exp_id)
    tasks = g.tasks(exp_id)
    assert len(tasks) == 40 and {t.state for t in tasks.values()} == {"COMPLETED"}
    assert {t.resource for t in tasks.values()} == {g.names["slurm-pilot"]}
    # Each instance ended once, reported by an agent (no instance bundle went out).
    ended = Counter(e.instance_id for e in g.store.pilot.events_after(exp_id, 0)
                    if e.state in (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELED))
    assert len(ended) == 40 and set(ended.values()) == {1}
    bundles = g.bundles(exp_id)
    assert bundles and {b.step for b in bundles} == {AGENTS_STEP}
    # Agents ran inside the SLURM array: the instances saw its job id; outputs are home.
    home = Path(g.store.experiments.get(exp_id).workdir)
    jobs = {j for b in bundles for j in b.infrastructure}
    for i in range(20):
        text = (home / "sweep" / str(i) / "out.txt").read_text()
        assert text.startswith(f"task {i + 1} in job ") and text.split()[-1].split("_")[0] in {
            j.split("_")[0] for j in jobs}
        assert (home / "sweep" / str(i) / "stdout.log").read_text() == f"log-{i + 1}\n"
        assert (home / "after" / str(i) / "copy.txt").read_text() == text
    # At most one agent per node (2 nodes), registered for this resource and experiment.
    agents = g.store.pilot.agents(g.names["slurm-pilot"], exp_id, active_only=False)
    assert 1 <= len(agents) <= 2 * len(bundles)
    assert all(a.slots == 2 for a in agents)
    # The agents' job script asks for a node's worth and holds no token; the token file was
    # 0600 and is gone once the agents ended.
    first = bundles[0]
    bdir = home / ".bundles" / first.id
    script = (bdir / "job_0.sh").read_text()
    assert {"#SBATCH --cpus-per-task=2", "#SBATCH --time=00:10:00"} <= set(script.splitlines())
    assert f"#SBATCH --array=0-{len(first.instances) - 1}" in script.splitlines()
    assert "--token-file" in (bdir / "steps" / "agent.sh").read_text()
    for b in bundles:  # agents drain and stop once the experiment ended; so do their jobs
        _wait_ended(g, b.id)
    bundles = g.bundles(exp_id)
    assert not (bdir / "token").exists()
    assert not any(j for j in _jobs(g.slurm, tuple(jobs)) if j in ("PENDING", "RUNNING"))
    staged = b"".join(p.read_bytes() for p in bdir.rglob("*") if p.is_file())
    assert b"eyJ" not in staged  # no JWT anywhere among the staged files, logs included
    # Prefect shows the agents' flow runs under the experiment's, with ids as parameters only.
    runs = httpx.post(f"{prefect_api}/flow_runs/filter", json={"flow_runs": {"id": {
        "any_": [b.flow_run_id for b in bundles]}}}).json()
    assert len(runs) == len(bundles) and all(r["parent_task_run_id"] for r in runs)
    assert all(r["state"]["type"] == "COMPLETED" for r in runs), [b.message for b in bundles]
    assert all(set(r["parameters"]) == {"experiment_id", "bundle_id"} for r in runs)
    assert "eyJ" not in json.dumps(runs)


def _wait_ended(g: Grid, bundle_id: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while g.store.bundles.get(bundle_id).status not in ("COMPLETED", "FAILED", "CANCELED"):
        assert time.monotonic() < deadline, g.store.bundles.get(bundle_id)
        time.sleep(0.5)


def test_agents_that_cannot_see_the_experiment_fail_it_with_the_reason(
        pg: tuple[Grid, AgentService], tmp_path: Path) -> None:
    """The bare-metal host's SSH user cannot read this run's directory (a private /tmp here):
    the worker finds out before submitting anything, and the instances fail saying so, at
    once, not after agents that never come."""
    g, _ = pg
    spec = g.spec(tmp_path, """\
        tasks:
          s: {command: 'true', task_inputs: {I: 1..3}}
        """, on="baremetal-pilot")
    exp_id = g.submit(spec)
    started = time.monotonic()
    assert g.run(exp_id).is_failed()
    assert time.monotonic() - started < 60
    tasks = g.tasks(exp_id)
    assert {t.state for t in tasks.values()} == {"FAILED"}
    reason = tasks["s[0]"].reason or ""
    assert "does not see" in reason and "mode: bundle" in reason, reason
    assert not g.store.pilot.agents(g.names["baremetal-pilot"], exp_id, active_only=False)
    assert [b.status for b in g.bundles(exp_id)] == ["FAILED"]
    assert not g.store.pilot.active_items(exp_id)  # nothing left queued for a later agent


def test_a_token_file_is_private(tmp_path: Path) -> None:
    """Staged through the same upload as every bundle file: tar keeps the 0600."""
    from airavata_prefect.adapters.hosts import LocalHost, upload
    upload(LocalHost(), str(tmp_path / "b"), {"token": "x", "job.sh": "y"},
           executable=frozenset({"job.sh"}), private=frozenset({"token"}))
    assert stat.S_IMODE((tmp_path / "b" / "token").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "b" / "job.sh").stat().st_mode) & 0o111
