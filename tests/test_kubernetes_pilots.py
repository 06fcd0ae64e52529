"""Pilot agents on Kubernetes. No API server can run here, so the cluster is stood in for by
what it does with each Job, and nothing more: every flow run the experiment's flow puts in the
resource's work pool is rendered into its Job exactly as the `airavata-kubernetes` worker
renders it (our template, the pool's and the flow run's variables), validated against the real
Kubernetes schemas, and its pod's container command (`prefect flow-run execute`) is run here as
a process with the pod's environment, the Secret references resolved from a dict as the kubelet
would. The experiment flow, Prefect, the store, the agent service and the agents are real."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import StateType

from airavata_prefect.adapters.store import Store
from airavata_prefect.blocks import KubernetesCluster
from airavata_prefect.blocks.kubernetes import AiravataKubernetesJobConfiguration
from airavata_prefect.domain.pilot import AGENTS_STEP
from airavata_prefect.domain.states import TaskState
from airavata_prefect.usecases import agent_tokens, registration
from airavata_prefect.usecases.authorization import ensure_project
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.settings import get_settings
from airavata_prefect.usecases.submit import submit
from tests.grid import AGENT
from tests.services import AgentService, free_port
from tests.test_kubernetes import K8S_VERSION

pytestmark = pytest.mark.prefect


class Cluster(threading.Thread):
    """Runs each flow run of one work pool as its pod would run: one process per Job."""

    def __init__(self, pool: str, secret: dict[str, str], volume: Path) -> None:
        super().__init__(daemon=True)
        self.pool, self.secret, self.volume = pool, secret, volume
        self.manifests: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, subprocess.Popen[bytes]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        async with get_client() as client:
            pool = await client.read_work_pool(self.pool)
            while not self.stop.is_set():
                runs = await client.read_flow_runs(
                    work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self.pool])),
                    flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))
                for run in runs:
                    if str(run.id) not in self.manifests:
                        deployment = await client.read_deployment(run.deployment_id)
                        values = {**(deployment.job_variables or {}),
                                  **(run.job_variables or {}),
                                  "runs_path": str(self.volume)}  # the shared volume's mount
                        config = await AiravataKubernetesJobConfiguration \
                            .from_template_and_values(pool.base_job_template, values)
                        config.prepare_for_flow_run(run)
                        self._start(str(run.id), config.job_manifest)
                await asyncio.sleep(0.5)

    def _start(self, run_id: str, manifest: dict[str, Any]) -> None:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
        self.manifests[run_id] = manifest
        (container,) = manifest["spec"]["template"]["spec"]["containers"]
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
               "HOME": os.environ.get("HOME", "/tmp")}
        for e in container["env"]:
            if "value" in e:
                env[e["name"]] = e["value"]
            elif (key := e["valueFrom"]["secretKeyRef"]["key"]) in self.secret:
                env[e["name"]] = self.secret[key]
        log = open(self.volume / f"pod-{run_id}.log", "wb")  # noqa: SIM115  the pod keeps it
        self.pods[run_id] = subprocess.Popen(container["args"], env=env, stdout=log,
                                             stderr=subprocess.STDOUT)
        log.close()

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.volume.glob("pod-*.log"))


@pytest.fixture()
def service(home: Path, prefect_api: str,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[AgentService]:
    port = free_port()
    for k, v in {"AIRAVATA_AGENT_PORT": str(port), "AIRAVATA_AGENT_LEASE_SECONDS": "5",
                 "AIRAVATA_AGENT_HEARTBEAT_SECONDS": "1",
                 "AIRAVATA_AGENT_IDLE_SECONDS": "10", "AIRAVATA_USER": "alice"}.items():
        monkeypatch.setenv(k, v)
    home.mkdir(parents=True, exist_ok=True)
    svc = AgentService(home, port, {**os.environ})
    svc.start()
    try:
        yield svc
    finally:
        assert svc.proc is not None
        svc.proc.terminate()
        svc.proc.wait(10)


def test_an_experiment_on_kubernetes_agents(service: AgentService, home: Path,
                                            tmp_path: Path) -> None:
    settings = get_settings()
    store = Store(settings.db_url)
    ctx = Context(settings, store, "alice")
    name = f"k8s-{uuid.uuid4().hex[:6]}"
    ensure_project(ctx, "lab")
    registration.register_compute(ctx, project="lab", name=name, block=KubernetesCluster(
        work_pool_name=name, nodes=2, cores_per_node=2, mode="pilot",
        agent_url=f"127.0.0.1:{service.port}", agent_command=AGENT,
        image="registry.example.org/airavata:1.0"))
    spec = tmp_path / "k8s.yml"
    spec.write_text(f"""\
tasks:
  sweep:
    command: 'echo "task $I" > out.txt'
    task_inputs: {{I: 1..12}}
    task_outputs: {{OUT: out.txt}}
constraints:
  excluded: [local]
  preferred: [{name}]
""")
    exp_id = submit(ctx, spec, [], project="lab")
    # The pods' Secret: the store's URL and the agents' key, never the people's key.
    cluster = Cluster(name, {"database-url": settings.db_url,
                             "agent-key": agent_tokens.agent_key(settings)}, home)
    cluster.start()
    try:
        from airavata_prefect.flows.experiment_flow import run_experiment

        state = asyncio.run(run_experiment(experiment_id=exp_id, return_state=True))
        assert state.is_completed(), (state.message, cluster.logs())
        deadline = time.monotonic() + 60  # the agents drain and stop; their pods end
        while any(p.poll() is None for p in cluster.pods.values()):
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.5)
    finally:
        cluster.stop.set()
        cluster.join(10)
        for p in cluster.pods.values():
            if p.poll() is None:
                p.kill()
    tasks = store.tasks.list(exp_id)
    assert len(tasks) == 12 and {t.state for t in tasks} == {TaskState.COMPLETED}
    assert {t.resource for t in tasks} == {name}
    workdir = Path(store.experiments.get(exp_id).workdir)
    assert (workdir / "sweep" / "3" / "out.txt").read_text() == "task 4\n"
    # One pod per agent, a node's worth each, at most `nodes` of them, all ended cleanly.
    agents_bundles = [b for b in store.bundles.of_experiment(exp_id) if b.step == AGENTS_STEP]
    assert 1 <= len(cluster.pods) <= 2 and len(agents_bundles) == len(cluster.pods)
    assert all(len(b.instances) == 1 for b in agents_bundles)
    assert all(p.returncode == 0 for p in cluster.pods.values()), cluster.logs()
    for manifest in cluster.manifests.values():
        (container,) = manifest["spec"]["template"]["spec"]["containers"]
        assert container["resources"]["requests"]["cpu"] == "2"
        env = {e["name"]: e for e in container["env"]}
        assert env["AIRAVATA_AGENT_URL"]["value"] == f"127.0.0.1:{service.port}"
        assert env["AIRAVATA_AGENT_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "agent-key"
        assert agent_tokens.agent_key(settings) not in str(manifest)
    agents = store.pilot.agents(name, exp_id, active_only=False)
    assert agents and all(a.slots == 2 for a in agents)
    assert sum(store.pilot.ended_by_agent(exp_id).values()) == 12
    assert not list(workdir.glob(".bundles/*/token"))  # each pod removed its agent's token
    ctx.close()
    store.close()


def test_kubernetes_pilot_mode_needs_where_pods_reach_the_service() -> None:
    with pytest.raises(ValueError, match="needs agent_url"):
        KubernetesCluster(work_pool_name="k", mode="pilot")
    block = KubernetesCluster(work_pool_name="k", mode="pilot", agent_url="sched:50051",
                              cores_per_node=8, gpus_per_node=1, mem_gb_per_node=32)
    assert block.agent_job_variables() == {"cpu_request": "8", "gpu_limit": 1,
                                           "memory_request": "32768Mi"}
    assert block.pool_defaults()["agent_url"] == "sched:50051"
