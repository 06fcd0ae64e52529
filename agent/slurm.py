"""The `slurm` Prefect worker type: a bundle becomes job arrays on a SLURM cluster.

`prefect work-pool create NAME --type slurm` then `prefect worker start --pool NAME` (the type
registers through the `prefect.collections` entry point). Each flow run in the pool is one
bundle: its instances go as one array (split at MaxArraySize) whose tasks each run one instance
(agent/run_one.sh). The cluster is reached with the local `sbatch`, over SSH to a login node
(host key pinned), or through slurmrestd, as its block says.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Collection
from typing import Any

from pydantic import Field

from airavata_prefect.adapters.hosts import Host, LocalHost, upload
from airavata_prefect.adapters.slurm import (
    Ending,
    JobRequest,
    SlurmCli,
    SlurmClient,
    SlurmError,
    array_chunks,
    array_spec,
    classify,
    job_script,
)
from airavata_prefect.adapters.ssh import SSHEndpoint, SSHHost
from airavata_prefect.agent.bundle_run import Verdict
from airavata_prefect.agent.execute import Session
from airavata_prefect.agent.worker import BundleJobConfiguration, BundleVariables, BundleWorker
from airavata_prefect.blocks import SlurmCluster
from airavata_prefect.flows.spec import parse_duration

ABSENT_POLLS = 3  # polls a task may be missing from the controller before it counts as lost


def _t(name: str) -> dict[str, Any]:
    return {"template": "{{ " + name + " }}"}


class SlurmJobConfiguration(BundleJobConfiguration):
    partition: str | None = Field(None, json_schema_extra=_t("partition"))
    account: str | None = Field(None, json_schema_extra=_t("account"))
    qos: str | None = Field(None, json_schema_extra=_t("qos"))
    nodes: int = Field(1, json_schema_extra=_t("nodes"))
    cpus_per_task: int = Field(1, json_schema_extra=_t("cpus_per_task"))
    mem_mb: int | None = Field(None, json_schema_extra=_t("mem_mb"))
    gpus: int = Field(0, json_schema_extra=_t("gpus"))
    gres: str | None = Field(None, json_schema_extra=_t("gres"))
    time_limit: str | None = Field(None, json_schema_extra=_t("time_limit"))
    array_throttle: int | None = Field(None, json_schema_extra=_t("array_throttle"))
    max_array_size: int | None = Field(None, json_schema_extra=_t("max_array_size"))
    setup_commands: list[str] = Field(default_factory=list,
                                      json_schema_extra=_t("setup_commands"))
    extra_sbatch: list[str] = Field(default_factory=list, json_schema_extra=_t("extra_sbatch"))


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


class SlurmLauncher:
    """A bundle as job arrays: array task t of the chunk at offset o runs position o + t."""

    requeues = True

    def __init__(self, client: SlurmClient, files: Host, base: JobRequest, *,
                 max_array_size: int, throttle: int | None) -> None:
        self.client = client
        self.files_host = files
        self.base = base
        self.max_array = max_array_size
        self.throttle = throttle
        self.name = client.name
        self.offsets: dict[str, int] = {}
        self.owner: dict[int, str] = {}  # the job that runs each position now (re-queues move it)
        self._absent: dict[int, int] = {}
        self._resubmits = 0

    def request(self, bdir: str, offset: int, array: str) -> JobRequest:
        b = shlex.quote(bdir)
        return dataclasses.replace(
            self.base, workdir=bdir, array=array, output=f"{bdir}/slurm-%A_%a.out",
            command=f"exec bash {b}/run_one.sh {b} $((SLURM_ARRAY_TASK_ID + {offset}))")

    def _chunks(self, count: int) -> list[tuple[int, int]]:
        return array_chunks(count, self.max_array)

    def files(self, bdir: str, count: int) -> dict[str, str]:
        return {f"job_{c}.sh": job_script(self.request(bdir, off, array_spec(n, self.throttle)))
                for c, (off, n) in enumerate(self._chunks(count))}

    def submit(self, bdir: str, count: int) -> list[str]:
        ids = []
        for c, (off, n) in enumerate(self._chunks(count)):
            job = self.client.submit(self.request(bdir, off, array_spec(n, self.throttle)),
                                     f"{bdir}/job_{c}.sh")
            self.offsets[job] = off
            self.owner.update(dict.fromkeys(range(off, off + n), job))
            ids.append(job)
        return ids

    def unmarked(self, ids: list[str], positions: Collection[int]) -> dict[int, Verdict]:
        want = set(positions)
        seen: set[int] = set()
        out: dict[int, Verdict] = {}
        for task in self.client.tasks(ids):
            if task.job_id not in self.offsets:
                continue
            k = self.offsets[task.job_id] + (task.task_id or 0)
            if k not in want or self.owner.get(k) != task.job_id:
                continue  # not asked about, or an earlier job's record of a re-queued task
            seen.add(k)
            verdict = classify(task)
            if verdict[0] != Ending.ACTIVE:
                out[k] = verdict
        for k in want - seen:  # gone from the controller, with no exit marker either
            self._absent[k] = self._absent.get(k, 0) + 1
            if self._absent[k] >= ABSENT_POLLS:
                out[k] = (Ending.FAILED, None, "ended without an exit status, and SLURM no "
                                               "longer knows the job")
        return out

    def cancel(self, ids: list[str]) -> None:
        self.client.cancel(ids)

    def resubmit(self, bdir: str, positions: list[int]) -> list[str]:
        ids = []
        for off, n in self._chunks(max(positions) + 1):
            mine = [k - off for k in sorted(positions) if off <= k < off + n]
            if not mine:
                continue
            self._resubmits += 1
            name = f"job_requeue_{self._resubmits}.sh"
            req = self.request(bdir, off, ",".join(map(str, mine)))
            upload(self.files_host, bdir, {name: job_script(req)})
            job = self.client.submit(req, f"{bdir}/{name}")
            self.offsets[job] = off
            self.owner.update({off + t: job for t in mine})
            ids.append(job)
        return ids


def base_request(configuration: SlurmJobConfiguration, block: SlurmCluster,
                 name: str) -> JobRequest:
    return JobRequest(
        name=name, workdir="", command="", partition=configuration.partition or block.partition,
        account=configuration.account or block.account, qos=configuration.qos,
        nodes=configuration.nodes, cpus_per_task=configuration.cpus_per_task,
        mem_mb=configuration.mem_mb, gpus=configuration.gpus, gres=configuration.gres,
        time_seconds=parse_duration(configuration.time_limit) if configuration.time_limit
        else None, extra=tuple(configuration.extra_sbatch),
        setup=tuple(configuration.setup_commands), environment=dict(configuration.env))


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


class SlurmWorker(BundleWorker):
    type = "slurm"
    job_configuration = SlurmJobConfiguration
    job_configuration_variables = SlurmVariables
    block_type = SlurmCluster
    _description = "Runs Airavata bundles as SLURM job arrays (local sbatch, SSH or slurmrestd)."
    _documentation_url = "https://github.com/apache/airavata"

    def open_session(self, block: Any, configuration: Any,
                     secret: dict[str, str] | None) -> Session:
        client, host = open_slurm(block, secret)
        cap = min(configuration.max_array_size or block.max_array_size,
                  client.max_array_size())
        launcher = SlurmLauncher(client, host, base_request(configuration, block, "airavata"),
                                 max_array_size=cap, throttle=configuration.array_throttle)
        return Session(host, launcher, block.working_directory)


__all__ = ["SlurmJobConfiguration", "SlurmLauncher", "SlurmVariables", "SlurmWorker",
           "base_request", "open_slurm"]
