"""A bare-metal host as a compute kind: a bundle runs over SSH on the host, detached in a
session of its own, P instances at a time (adapters/detached.py). Host keys are pinned; an
unknown host is refused. run_one.sh enforces each instance's walltime itself.
"""

from __future__ import annotations

from typing import Any, ClassVar

from prefect.workers.base import BaseJobConfiguration, BaseVariables
from pydantic import Field

from airavata_prefect.adapters.detached import BareMetalLauncher
from airavata_prefect.adapters.hosts import HostError
from airavata_prefect.adapters.launcher import Session
from airavata_prefect.adapters.ssh import SSHEndpoint, SSHHost
from airavata_prefect.blocks.compute import (
    BundleJobConfiguration,
    BundleVariables,
    ComputeBlock,
    template,
)
from airavata_prefect.domain.dag import StepPlan


class BareMetalJobConfiguration(BundleJobConfiguration):
    host: str | None = Field(None, json_schema_extra=template("host"))
    port: int | None = Field(None, json_schema_extra=template("port"))
    username: str | None = Field(None, json_schema_extra=template("username"))
    working_directory: str | None = Field(None, json_schema_extra=template("working_directory"))
    cpus_per_task: int = Field(1, json_schema_extra=template("cpus_per_task"))
    max_parallel: int | None = Field(None, json_schema_extra=template("max_parallel"))


class BareMetalVariables(BundleVariables):
    host: str | None = Field(None, description="Host (default: the resource's)")
    port: int | None = Field(None, ge=1, le=65535, description="SSH port (default: the "
                                                               "resource's)")
    username: str | None = Field(None, description="SSH user (default: the resource's)")
    working_directory: str | None = Field(None, description="Where experiments live on the "
                                                            "host (default: the resource's)")
    cpus_per_task: int = Field(1, ge=1, description="Cores each instance takes")
    max_parallel: int | None = Field(None, ge=1, description="Instances at once (default: "
                                                             "cores / cpus_per_task)")


class BareMetalHost(ComputeBlock):
    _block_type_name: ClassVar[str] = "Airavata Bare-Metal Host"
    _block_type_slug: ClassVar[str] = "airavata-baremetal-host"
    _description: ClassVar[str] = "A host reached over SSH; tasks run in their own session."
    kind: ClassVar[str] = "baremetal"
    worker_type: ClassVar[str] = "baremetal"
    job_configuration: ClassVar[type[BaseJobConfiguration]] = BareMetalJobConfiguration
    job_variables_schema: ClassVar[type[BaseVariables] | None] = BareMetalVariables
    enforce_walltime: ClassVar[bool] = True  # no scheduler here: run_one.sh stops instances

    host: str
    port: int = Field(22, ge=1, le=65535)
    username: str
    host_key: str = Field(..., description="Pinned public host key: unknown hosts are refused")
    working_directory: str = "~/airavata"

    @classmethod
    def job_variables(cls, step: StepPlan) -> dict[str, Any]:
        c = step.resources.compute
        return {"cpus_per_task": c.cpu} if c else {}

    def pool_defaults(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "username": self.username,
                "working_directory": self.working_directory}

    def open_session(self, configuration: Any, secret: dict[str, str] | None) -> Session:
        if not secret or "private_key" not in secret:
            raise HostError(f"host {self.host}: its credential has no private_key")
        endpoint = SSHEndpoint(configuration.host or self.host, configuration.port or self.port,
                               configuration.username or self.username, self.host_key)
        host = SSHHost(endpoint, secret["private_key"], passphrase=secret.get("passphrase"))
        parallel = configuration.max_parallel or max(
            1, self.cores_per_node // max(1, configuration.cpus_per_task))
        return Session(host, BareMetalLauncher(host, parallel),
                       configuration.working_directory or self.working_directory)


__all__ = ["BareMetalHost", "BareMetalJobConfiguration", "BareMetalVariables"]
