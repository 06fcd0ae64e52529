"""Kubernetes. No API server can run here, so the Job is rendered exactly as the worker renders
it (prefect-kubernetes' job configuration with our template) and validated against the real
Kubernetes schemas; what the pod runs (the `execute_bundle` flow body) runs here for real.
A real cluster is exercised by `make test-kubernetes` (tests/kubernetes_cluster/), which needs
a KUBECONFIG and is not part of `make test`."""

from __future__ import annotations

import asyncio
import textwrap
import uuid
from pathlib import Path

import kubernetes_validate
import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_KEY, PREFECT_LOGGING_LEVEL, temporary_settings

from airavata_prefect.adapters.store import Store
from airavata_prefect.blocks import KubernetesCluster
from airavata_prefect.blocks.kubernetes import AiravataKubernetesJobConfiguration
from airavata_prefect.domain.compile import compile_graph
from airavata_prefect.domain.records import NewTask
from airavata_prefect.domain.spec import parse_spec_text
from airavata_prefect.usecases.dispatch import job_variables
from airavata_prefect.usecases.registration import pool_template

K8S_VERSION = "1.30"
SECRET = "pnu_an-api-key-only-the-worker-may-hold"


def render(values: dict, cls: type = AiravataKubernetesJobConfiguration) -> dict:
    block = KubernetesCluster(work_pool_name="k8s", namespace="science",
                              image="registry.example.org/airavata:1.0", service_account="runner")
    template = pool_template("k8s", block)
    config = asyncio.run(cls.from_template_and_values(template, values))
    flow_run = FlowRun(id=uuid.uuid4(), name="sim@k8s b1", flow_id=uuid.uuid4(),
                       parameters={"experiment_id": "e", "bundle_id": "b"})
    config.prepare_for_flow_run(flow_run)
    return config.job_manifest


def step_variables(spec: str) -> dict:
    graph = compile_graph(parse_spec_text(textwrap.dedent(spec), "x.yml"), {}, root="/r")
    return job_variables(graph.steps[0], "airavata-kubernetes")


@pytest.mark.prefect
def test_the_job_manifest_is_valid_kubernetes(prefect_api: str) -> None:
    values = step_variables("""\
        tasks:
          train: {command: x, resources: {compute: {cpu: 4, gpu: 1, ram_gb: 8}}}
        """) | {"node_selector": {"accelerator": "a100"},
                "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]}
    manifest = render(values)
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert manifest["metadata"]["namespace"] == "science"
    assert container["image"] == "registry.example.org/airavata:1.0"
    assert container["args"] == ["prefect", "flow-run", "execute"]
    assert container["resources"] == {
        "limits": {"nvidia.com/gpu": 1},
        "requests": {"cpu": "4", "memory": "8192Mi"}}
    assert pod["serviceAccountName"] == "runner" and pod["restartPolicy"] == "Never"
    assert (manifest["spec"]["parallelism"], manifest["spec"]["completions"]) == (1, 1)
    assert pod["nodeSelector"] == {"accelerator": "a100"}
    assert pod["tolerations"][0]["key"] == "gpu"
    assert container["volumeMounts"] == [{"name": "airavata-runs", "mountPath": "/airavata"}]
    assert pod["volumes"] == [{"name": "airavata-runs",
                               "persistentVolumeClaim": {"claimName": "airavata-runs"}}]
    env = {e["name"]: e for e in container["env"]}
    # The store's URL (it may hold a password) is a reference to a Kubernetes Secret.
    assert env["AIRAVATA_DATABASE_URL"] == {"name": "AIRAVATA_DATABASE_URL", "valueFrom": {
        "secretKeyRef": {"name": "airavata", "key": "database-url"}}}
    assert "PREFECT__FLOW_RUN_ID" in env and "PREFECT_API_URL" in env


@pytest.mark.prefect
def test_a_manifest_kubernetes_would_refuse_is_caught(prefect_api: str) -> None:
    manifest = render({})
    manifest["spec"]["template"]["spec"]["parallelism"] = 1  # a Job field in the pod spec
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


@pytest.mark.prefect
def test_the_workers_own_prefect_settings_stay_out_of_the_job(prefect_api: str) -> None:
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    with temporary_settings({PREFECT_API_KEY: SECRET, PREFECT_LOGGING_LEVEL: "DEBUG"}):
        stock = render({}, KubernetesWorkerJobConfiguration)
        ours = render({"env": {"PREFECT_LOGGING_LEVEL": "INFO", "OMP_NUM_THREADS": "4"}})

    def env(m: dict) -> dict:
        return {e["name"]: e.get("value")
                for e in m["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert env(stock)["PREFECT_API_KEY"] == SECRET  # what prefect-kubernetes alone would do
    assert "PREFECT_API_KEY" not in env(ours) and SECRET not in str(ours)
    assert env(ours)["PREFECT_LOGGING_LEVEL"] == "INFO"  # set on purpose: kept, as set
    assert env(ours)["OMP_NUM_THREADS"] == "4" and env(ours)["PREFECT_API_URL"] == prefect_api
    kubernetes_validate.validate(ours, K8S_VERSION, strict=True)


@pytest.mark.prefect
def test_the_pod_runs_its_bundle_in_place(prefect_api: str, home: Path) -> None:
    """What a pod runs: the execute_bundle flow, on the machine (and volume) it runs on."""
    from airavata_prefect.flows.bundle_flow import execute_bundle
    from airavata_prefect.usecases.settings import get_settings

    name = f"k8s-{uuid.uuid4().hex[:6]}"
    KubernetesCluster(work_pool_name=name, cores_per_node=8).save(name)
    text = textwrap.dedent("""\
        tasks:
          sim:
            command: 'echo "$I in $PWD" > "$OUT"; [ "$I" = 2 ] && exit 5; true'
            task_inputs: {I: 1..3}
            task_outputs: {OUT: out.txt}
        """)
    store = Store(get_settings().db_url)
    root = get_settings().runs_dir.resolve()
    exp_id = str(uuid.uuid4())
    graph = compile_graph(parse_spec_text(text, "x.yml"), {}, root=str(root / exp_id))
    store.experiments.create(experiment_id=exp_id, name="x", source="x.yml", spec_text=text,
                            params={}, workdir_root=root, total=3, owner="alice",
                            tasks_iter=(NewTask(i.id, i.step, i.index,
                                                graph.workdir(i.step, i.index), name)
                                        for i in graph.iter_instances()))
    bundle_id = store.bundles.create(exp_id, name, "sim", [(0, 0), (1, 0), (2, 0)])
    state = asyncio.run(execute_bundle(exp_id, bundle_id, return_state=True))
    assert state.is_failed() and state.message == "2 completed, 1 failed"
    final = {e.position: (e.state, e.exit_code)
             for e in store.bundles.events_after(exp_id, 0, bundle_id=bundle_id)
             if e.state in ("COMPLETED", "FAILED")}
    assert final == {0: ("COMPLETED", 0), 1: ("FAILED", 5), 2: ("COMPLETED", 0)}
    out = Path(graph.output_path("sim", 0, "OUT")).read_text()
    assert out == f"1 in {graph.workdir('sim', 0)}\n"  # ran in the experiment's own directory
    assert Path(graph.workdir("sim", 0), "stdout.log").exists()
    store.close()


def test_the_templates_in_deployments_are_current() -> None:
    from airavata_prefect.agent.templates import DEPLOYMENTS, rendered

    for name, text in rendered().items():
        assert (DEPLOYMENTS / name).read_text() == text, \
            f"deployments/{name} is stale: run .venv/bin/python -m airavata_prefect.agent.templates"
