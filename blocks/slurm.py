"""SLURM as a compute kind: a bundle becomes job arrays on the cluster, reached with the local
`sbatch`, over SSH to a login node (host key pinned), or through slurmrestd, as the block says.

`airavata resource compute create NAME --type slurm` (or `prefect work-pool create NAME --type
slurm`), then `prefect worker start --pool NAME`: each flow run in the pool is one bundle.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from prefect.workers.base import BaseJobConfiguration, BaseVariables
from pydantic import Field

from airavata_prefect.adapters.hosts import Host, LocalHost
from airavata_prefect.adapters.launcher import Session
from airavata_prefect.adapters.slurm import JobRequest, SlurmCli, SlurmClient, SlurmError
from airavata_prefect.adapters.slurm_array import SlurmLauncher
from airavata_prefect.adapters.ssh import SSHEndpoint, SSHHost
from airavata_prefect.blocks.compute import (
    BundleJobConfiguration,
    BundleVariables,
    ComputeBlock,
    mem_mb,
    template,
)
from airavata_prefect.domain.dag import StepPlan
from airavata_prefect.domain.spec import parse_duration


class SlurmJobConfiguration(BundleJobConfiguration):
    partition: str | None = Field(None, json_schema_extra=template("partition"))
    account: str | None = Field(None, json_schema_extra=template("account"))
    qos: str | None = Field(None, json_schema_extra=template("qos"))
    nodes: int = Field(1, json_schema_extra=template("nodes"))
    cpus_per_task: int = Field(1, json_schema_extra=template("cpus_per_task"))
    mem_mb: int | None = Field(None, json_schema_extra=template("mem_mb"))
    gpus: int = Field(0, json_schema_extra=template("gpus"))
    gres: str | None = Field(None, json_schema_extra=template("gres"))
    time_limit: str | None = Field(None, json_schema_extra=template("time_limit"))
    array_throttle: int | None = Field(None, json_schema_extra=template("array_throttle"))
    max_array_size: int | None = Field(None, json_schema_extra=template("max_array_size"))
    setup_commands: list[str] = Field(default_factory=list,
                                      json_schema_extra=template("setup_commands"))
    extra_sbatch: list[str] = Field(default_factory=list,
                                    json_schema_extra=template("extra_sbatch"))


class SlurmVariables(BundleVariables):
    partition: str | None = Field(None, description="Partition (queue)")
    account: str | None = Field(None, description="Account charged")
    qos: str | None = Field(None, description="Quality of service")
    nodes: int = Field(1, ge=1, description="Nodes per task")
    cpus_per_task: int = Field(1, ge=1, description="CPUs per task")
    mem_mb: int | None = Field(None, ge=1, description="Memory per node, MB")
    gpus: int = Field(0, ge=0, description="GPUs per task")
    gres: str | None = Field(None, description="Generic resources, e.g. gpu:a100:1 (wins "
                                               "over gpus)")
    time_limit: str | None = Field(None, description="Walltime per task, [D-]HH:MM:SS")
    array_throttle: int | None = Field(None, ge=1, description="At most this many array tasks "
                                                              "at once (%N)")
    max_array_size: int | None = Field(None, ge=1, description="Split arrays above this "
                                                              "(default: the cluster's)")
    setup_commands: list[str] = Field(
        default_factory=list, description="Run before each task: module load, conda activate")
    extra_sbatch: list[str] = Field(default_factory=list,
                                    description="Further sbatch options, e.g. --constraint=x")


class SlurmCluster(ComputeBlock):
    _block_type_name: ClassVar[str] = "Airavata SLURM Cluster"
    _block_type_slug: ClassVar[str] = "airavata-slurm-cluster"
    _description: ClassVar[str] = "A SLURM cluster reached over SSH, locally, or slurmrestd."
    kind: ClassVar[str] = "slurm"
    worker_type: ClassVar[str] = "slurm"
    job_configuration: ClassVar[type[BaseJobConfiguration]] = SlurmJobConfiguration
    job_variables_schema: ClassVar[type[BaseVariables] | None] = SlurmVariables

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

    @classmethod
    def job_variables(cls, step: StepPlan) -> dict[str, Any]:
        c = step.resources.compute
        if c is None:
            return {}
        out: dict[str, Any] = {"cpus_per_task": c.cpu, "nodes": c.node, "gpus": c.gpu}
        if c.ram_gb:
            out["mem_mb"] = mem_mb(c.ram_gb)
        if c.time:
            out["time_limit"] = c.time
        return out

    def agent_job_variables(self) -> dict[str, Any]:
        out: dict[str, Any] = {"nodes": 1, "cpus_per_task": self.cores_per_node,
                               "gpus": self.gpus_per_node}
        if self.mem_gb_per_node:
            out["mem_mb"] = mem_mb(self.mem_gb_per_node)
        if self.max_walltime:
            out["time_limit"] = self.max_walltime
        return out

    def pool_defaults(self) -> dict[str, Any]:
        return {"partition": self.partition, "account": self.account,
                "max_array_size": self.max_array_size}

    def open_session(self, configuration: Any, secret: dict[str, str] | None) -> Session:
        client, host = open_slurm(self, secret)
        cap = min(configuration.max_array_size or self.max_array_size, client.max_array_size())
        launcher = SlurmLauncher(client, host, base_request(configuration, self, "airavata"),
                                 max_array_size=cap, throttle=configuration.array_throttle)
        return Session(host, launcher, self.working_directory)


def base_request(configuration: SlurmJobConfiguration, block: SlurmCluster,
                 name: str) -> JobRequest:
    return JobRequest(
        name=name, workdir="", command="", partition=configuration.partition or block.partition,
        account=configuration.account or block.account, qos=configuration.qos,
        nodes=configuration.nodes, cpus_per_task=configuration.cpus_per_task,
        mem_mb=configuration.mem_mb, gpus=configuration.gpus, gres=configuration.gres,
        time_seconds=parse_duration(configuration.time_limit) if configuration.time_limit
        else None, extra=tuple(configuration.extra_sbatch),
        setup=tuple(configuration.setup_commands),
        environment={k: v for k, v in configuration.env.items() if v is not None})


def open_slurm(block: SlurmCluster, secret: dict[str, str] | None) -> tuple[SlurmClient, Host]:
    """The scheduler client and the host that holds the cluster's files, per `submit_via`."""
    def ssh_host() -> Host:
        if not (block.login_host and block.username and block.host_key):
            raise SlurmError("submit_via ssh needs login_host, username and host_key")
        if not secret or "private_key" not in secret:
            raise SlurmError("the cluster's credential has no private_key")
        return SSHHost(SSHEndpoint(block.login_host, block.port, block.username, block.host_key),
                       secret["private_key"], passphrase=secret.get("passphrase"))

    if block.submit_via == "local":
        host: Host = LocalHost(block.environment)
        return SlurmCli(host), host
    if block.submit_via == "ssh":
        host = ssh_host()
        return SlurmCli(host, env=block.environment), host
    from airavata_prefect.adapters.slurm_rest import SlurmRest
    if not block.rest_url:
        raise SlurmError("submit_via rest needs rest_url")
    if not secret or "token" not in secret:
        raise SlurmError("the cluster's credential has no token for slurmrestd")
    files = ssh_host() if block.login_host else LocalHost(block.environment)
    user = block.rest_user or block.username or ""
    return SlurmRest(block.rest_url, user, secret["token"]), files


__all__ = ["SlurmCluster", "SlurmJobConfiguration", "SlurmVariables", "base_request",
           "open_slurm"]
