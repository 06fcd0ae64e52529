"""Kubernetes as a compute kind: prefect-kubernetes' worker, our Job template, an env allow-list.

`prefect work-pool create NAME --type airavata-kubernetes` (or `airavata resource compute
create NAME --type kubernetes`), then `prefect worker start --pool NAME`. Each bundle becomes a
Job whose pod runs the standard `prefect flow-run execute`, i.e. the `execute_bundle` flow,
which executes the bundle in place: the image must hold this package, the experiments' directory
comes from a PersistentVolumeClaim mounted at the same path as on the submitting side
(`runs_path`), and the store's URL from a Kubernetes Secret (`secret_name`) — never a value
in Prefect. In pilot mode each agent is a Job of its own (a node's worth of CPUs), which mints
its agent's token with the agents' key from that Secret and tells it where the service is
(`agent_url`).

The only change to prefect-kubernetes' worker: its job configuration passes into the Job env
what the pool or deployment set plus what `prefect flow-run execute` needs (PREFECT_API_URL and
Prefect's per-run `PREFECT__*` values), never the worker's other PREFECT_* settings (an API key,
a database URL) that prefect-kubernetes would otherwise copy into every Job.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

from prefect.workers.base import BaseJobConfiguration, BaseVariables
from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration
from pydantic import Field, model_validator

from airavata_prefect.blocks.compute import ComputeBlock, mem_mb
from airavata_prefect.domain.dag import StepPlan

NEEDED_BY_THE_POD = frozenset({"PREFECT_API_URL"})


def _explicit_names(env: Any) -> set[str]:
    if isinstance(env, dict):
        return set(env)
    return {item["name"] for item in env or [] if isinstance(item, dict) and "name" in item}


def _allowed(name: str, chosen: set[str]) -> bool:
    if not name.startswith("PREFECT_") or name.startswith("PREFECT__"):
        return True  # not a setting: ours, the user's, or Prefect's per-run metadata
    return name in chosen or name in NEEDED_BY_THE_POD


class AiravataKubernetesJobConfiguration(KubernetesWorkerJobConfiguration):
    def prepare_for_flow_run(self, flow_run: Any, *args: Any, **kwargs: Any) -> None:
        me: Any = self  # its env is a mapping, or a list of Kubernetes env entries
        chosen = _explicit_names(me.env)
        super().prepare_for_flow_run(flow_run, *args, **kwargs)
        if isinstance(me.env, dict):
            me.env = {k: v for k, v in me.env.items() if _allowed(k, chosen)}
        else:
            me.env = [e for e in me.env if _allowed(e.get("name", ""), chosen)]
        pod = self.job_manifest["spec"]["template"]["spec"]
        # prefect-kubernetes' own check wants these in the pod spec; Kubernetes defines them on
        # the Job (a strict API server refuses them where they were).
        for key in ("parallelism", "completions"):
            if key in pod:
                self.job_manifest["spec"][key] = pod.pop(key)
        for container in pod.get("containers", []):
            container["env"] = [e for e in container.get("env", [])
                                if _allowed(e.get("name", ""), chosen)]


def base_job_template() -> dict[str, Any]:
    """prefect-kubernetes' variables, plus GPUs, placement and the experiments' volume; a Job
    manifest that Kubernetes accepts as it is (tests validate it against the schemas)."""
    template = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
    props = template["variables"]["properties"]
    props["secret_name"] = {
        "type": "string", "default": "airavata", "title": "Kubernetes Secret",
        "description": "Holds database-url (the store) and optionally openbao-token and "
                       "agent-key; the pod reads them from there, Prefect never holds them"}
    props["image"]["default"] = "airavata-prefect:latest"
    props["gpu_limit"] = {"type": "integer", "minimum": 0, "default": 0,
                          "title": "GPUs", "description": "nvidia.com/gpu per pod"}
    props["node_selector"] = {"type": "object", "additionalProperties": {"type": "string"},
                              "title": "Node selector"}
    props["tolerations"] = {"type": "array", "items": {"type": "object"},
                            "title": "Tolerations"}
    props["runs_claim"] = {"type": "string", "default": "airavata-runs",
                           "title": "Experiments' volume",
                           "description": "PersistentVolumeClaim holding the experiments' "
                                          "directory"}
    props["runs_path"] = {"type": "string", "default": "/airavata",
                          "title": "Where it is mounted (AIRAVATA_HOME)"}
    props["agent_url"] = {"type": "string", "default": "", "title": "Agent service",
                          "description": "host:port where pods reach the agent service "
                                         "(pilot mode)"}
    container = {
        "name": "prefect-job", "args": "{{ command }}",
        # Written out, not "{{ env }}": the worker adds the pool's and deployment's env to
        # these, and Secret references cannot be expressed as a plain mapping.
        "env": [
            {"name": "AIRAVATA_HOME", "value": "{{ runs_path }}"},
            {"name": "AIRAVATA_DATABASE_URL", "valueFrom": {"secretKeyRef": {
                "name": "{{ secret_name }}", "key": "database-url"}}},
            {"name": "AIRAVATA_OPENBAO_TOKEN", "valueFrom": {"secretKeyRef": {
                "name": "{{ secret_name }}", "key": "openbao-token", "optional": True}}},
            # Pilot mode: the pod mints its agent's token with the agents' key alone
            # (`airavata server agent-key`) and tells it where to pull.
            {"name": "AIRAVATA_AGENT_KEY", "valueFrom": {"secretKeyRef": {
                "name": "{{ secret_name }}", "key": "agent-key", "optional": True}}},
            {"name": "AIRAVATA_AGENT_URL", "value": "{{ agent_url }}"},
        ],
        "image": "{{ image }}", "imagePullPolicy": "{{ image_pull_policy }}",
        "resources": {
            "limits": {"cpu": "{{ cpu_limit }}", "memory": "{{ memory_limit }}",
                       "nvidia.com/gpu": "{{ gpu_limit }}"},
            "requests": {"cpu": "{{ cpu_request }}", "memory": "{{ memory_request }}"}},
        "volumeMounts": [{"name": "airavata-runs", "mountPath": "{{ runs_path }}"}],
    }
    template["job_configuration"]["job_manifest"] = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"annotations": "{{ annotations }}", "generateName": "{{ name }}-",
                     "labels": "{{ labels }}", "namespace": "{{ namespace }}"},
        "spec": {
            "backoffLimit": "{{ backoff_limit }}",
            "ttlSecondsAfterFinished": "{{ finished_job_ttl }}",
            "template": {"spec": {
                "parallelism": 1, "completions": 1,  # moved to the Job spec when prepared
                "restartPolicy": "Never",
                "serviceAccountName": "{{ service_account_name }}",
                "nodeSelector": "{{ node_selector }}",
                "tolerations": "{{ tolerations }}",
                "containers": [container],
                "volumes": [{"name": "airavata-runs",
                             "persistentVolumeClaim": {"claimName": "{{ runs_claim }}"}}],
            }},
        },
    }
    return template


class KubernetesCluster(ComputeBlock):
    _block_type_name: ClassVar[str] = "Airavata Kubernetes Cluster"
    _block_type_slug: ClassVar[str] = "airavata-kubernetes-cluster"
    _description: ClassVar[str] = "A Kubernetes cluster; its kubeconfig lives in OpenBao."
    kind: ClassVar[str] = "kubernetes"
    worker_type: ClassVar[str] = "airavata-kubernetes"
    job_configuration: ClassVar[type[BaseJobConfiguration]] = AiravataKubernetesJobConfiguration
    job_variables_schema: ClassVar[type[BaseVariables] | None] = None
    worker_base = KubernetesWorker  # its pod runs `execute_bundle`: the bundle runs in place

    namespace: str = "default"
    image: str = "python:3.11-slim"
    service_account: str | None = None
    agent_url: str | None = Field(
        None, description="Where pods reach the agent service, host:port (pilot mode)")

    @model_validator(mode="after")
    def _agents_reach_the_service(self) -> KubernetesCluster:
        if self.mode == "pilot" and not self.agent_url:
            raise ValueError("mode: pilot on Kubernetes needs agent_url: where its pods reach "
                             "the agent service (host:port)")
        return self

    @classmethod
    def base_job_template(cls) -> dict[str, Any]:
        return base_job_template()

    @classmethod
    def job_variables(cls, step: StepPlan) -> dict[str, Any]:
        c = step.resources.compute
        if c is None:
            return {}
        out: dict[str, Any] = {"cpu_request": str(c.cpu), "gpu_limit": c.gpu}
        if c.ram_gb:
            out["memory_request"] = f"{mem_mb(c.ram_gb)}Mi"
        return out

    def agent_job_variables(self) -> dict[str, Any]:
        """One agent per pod, a node's worth: the pod runs the agents bundle in place."""
        out: dict[str, Any] = {"cpu_request": str(self.cores_per_node),
                               "gpu_limit": self.gpus_per_node}
        if self.mem_gb_per_node:
            out["memory_request"] = f"{mem_mb(self.mem_gb_per_node)}Mi"
        return out

    def pool_defaults(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "image": self.image,
                "service_account_name": self.service_account, "agent_url": self.agent_url or ""}


__all__ = ["AiravataKubernetesJobConfiguration", "KubernetesCluster", "base_job_template"]
