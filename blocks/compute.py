"""Compute resources as Prefect blocks: where to connect, what placement needs, which pool."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from airavata_prefect.blocks.base import AiravataBlock
from airavata_prefect.blocks.credential import CredentialRef
from airavata_prefect.flows.resources import ComputeResource, Prices


class _Compute(AiravataBlock):
    """What placement needs to know about any compute resource."""

    _resource_type: ClassVar[str] = ""

    work_pool_name: str = Field(..., description="The Prefect work pool that runs its tasks")
    nodes: int = Field(1, ge=1)
    cores_per_node: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    mem_gb_per_node: float = Field(0, ge=0, description="0: not limited")
    max_walltime: str | None = Field(None, description="[D-]HH:MM:SS")
    queue_wait: str = Field("0:00:00", description="Expected queue wait, HH:MM:SS")
    cost: Prices = Field(default_factory=Prices)
    egress_gb: dict[str, float] = Field(default_factory=dict,
                                        description="Price per GB moved in, by storage")
    credential: CredentialRef | None = Field(None, description="Where its secret lives")

    def to_compute_resource(self, name: str) -> ComputeResource:
        return ComputeResource(
            name=name, type=self._resource_type, nodes=self.nodes,  # type: ignore[arg-type]
            cores_per_node=self.cores_per_node, gpus_per_node=self.gpus_per_node,
            mem_gb_per_node=self.mem_gb_per_node, max_walltime=self.max_walltime,
            queue_wait=self.queue_wait, cost=self.cost, egress_gb=self.egress_gb)


class SlurmCluster(_Compute):
    _block_type_name: ClassVar[str] = "Airavata SLURM Cluster"
    _block_type_slug: ClassVar[str] = "airavata-slurm-cluster"
    _description: ClassVar[str] = "A SLURM cluster reached over SSH, locally, or slurmrestd."
    _resource_type: ClassVar[str] = "slurm"

    submit_via: Literal["ssh", "local", "rest"] = "ssh"
    login_host: str | None = Field(None, description="SSH login node")
    port: int = Field(22, ge=1, le=65535)
    username: str | None = None
    host_key: str | None = Field(None, description="Pinned public host key (not a secret)")
    rest_url: str | None = Field(None, description="slurmrestd URL (submit_via: rest)")
    rest_user: str | None = Field(None, description="User the slurmrestd token is for "
                                                    "(default: username)")
    environment: dict[str, str] = Field(
        default_factory=dict, description="Exported before SLURM commands (e.g. SLURM_CONF); "
                                          "never a secret")
    working_directory: str = Field("~/airavata", description="Where experiments live on the "
                                                             "cluster's shared filesystem")
    partition: str | None = None
    account: str | None = None
    max_array_size: int = Field(1001, ge=1, description="The cluster's MaxArraySize")


class KubernetesCluster(_Compute):
    _block_type_name: ClassVar[str] = "Airavata Kubernetes Cluster"
    _block_type_slug: ClassVar[str] = "airavata-kubernetes-cluster"
    _description: ClassVar[str] = "A Kubernetes cluster; its kubeconfig lives in OpenBao."
    _resource_type: ClassVar[str] = "kubernetes"

    namespace: str = "default"
    image: str = "python:3.11-slim"
    service_account: str | None = None


class BareMetalHost(_Compute):
    _block_type_name: ClassVar[str] = "Airavata Bare-Metal Host"
    _block_type_slug: ClassVar[str] = "airavata-baremetal-host"
    _description: ClassVar[str] = "A host reached over SSH; tasks run in their own session."
    _resource_type: ClassVar[str] = "baremetal"

    host: str
    port: int = Field(22, ge=1, le=65535)
    username: str
    host_key: str = Field(..., description="Pinned public host key: unknown hosts are refused")
    working_directory: str = "~/airavata"
