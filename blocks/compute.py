"""Compute resources as Prefect blocks. Each block class is its compute kind, registered once:
its fields (where to connect, what placement needs), its Prefect worker type and typed job
configuration, the job variables a step asks for, its pool's defaults, and how to open a
session on it. Adding a kind is one module beside this one (slurm.py, baremetal.py,
kubernetes.py) and its import in blocks/__init__.py.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

from prefect.client.schemas.objects import FlowRun
from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorker
from pydantic import Field

from airavata_prefect.adapters.launcher import Session
from airavata_prefect.blocks.base import AiravataBlock
from airavata_prefect.blocks.credential import CredentialRef
from airavata_prefect.domain.dag import StepPlan
from airavata_prefect.domain.resources import ComputeResource, Prices

# kind name -> its block class, filled as kinds are defined
COMPUTE_KINDS: dict[str, type[ComputeBlock]] = {}


def template(name: str) -> dict[str, Any]:
    """A job configuration field filled from the pool's variable `name`."""
    return {"template": "{{ " + name + " }}"}


class BundleJobConfiguration(BaseJobConfiguration):
    """What every bundle worker reads from its pool's base job template."""

    resource: str = Field(json_schema_extra=template("resource"))
    poll_seconds: float = Field(1.0, json_schema_extra=template("poll_seconds"))

    def prepare_for_flow_run(self, flow_run: FlowRun, *args: Any, **kwargs: Any) -> None:
        # The job runs bash, not Prefect: none of the worker's own PREFECT_* settings (its API
        # URL, an API key) reach it, only the env the pool or deployment sets on purpose.
        chosen = dict(self.env)
        super().prepare_for_flow_run(flow_run, *args, **kwargs)
        self.env = {k: v for k, v in chosen.items() if v is not None}


class BundleVariables(BaseVariables):
    resource: str = Field(description="The compute resource (its block name) this pool runs")
    poll_seconds: float = Field(1.0, gt=0, description="How often the worker checks progress")


def mem_mb(ram_gb: float) -> int:
    return math.ceil(ram_gb * 1024)


class ComputeBlock(AiravataBlock):
    """What placement needs to know about any compute resource, and what a kind must say."""

    kind: ClassVar[str] = ""  # `--type` on the command line, ComputeResource.type
    worker_type: ClassVar[str] = ""  # the Prefect work pool type that runs its bundles
    job_configuration: ClassVar[type[BaseJobConfiguration]] = BundleJobConfiguration
    job_variables_schema: ClassVar[type[BaseVariables] | None] = BundleVariables
    # None: our bundle worker runs each bundle from its own process. Else this Prefect worker
    # type's infrastructure (a Kubernetes Job) runs the `execute_bundle` flow, in place there.
    worker_base: ClassVar[type[BaseWorker] | None] = None
    enforce_walltime: ClassVar[bool] = False  # no scheduler stops an instance at its walltime

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
    mode: Literal["bundle", "pilot"] = Field(
        "bundle", description="bundle: instances go out as job arrays / detached sessions; "
        "pilot: agents started through the pool pull instances from the scheduler service "
        "(compute nodes must reach it, and see the experiment's directory at the same path)")
    agent_command: str = Field(
        "airavata-agent", description="How an agent starts on the resource (pilot mode): the "
        "console script of an airavata-prefect install there")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("kind"):
            COMPUTE_KINDS[cls.kind] = cls

    # -- what placement sees -------------------------------------------------------------

    def to_compute_resource(self, name: str) -> ComputeResource:
        return ComputeResource(
            name=name, type=self.kind,
            nodes=self.nodes, cores_per_node=self.cores_per_node,
            gpus_per_node=self.gpus_per_node, mem_gb_per_node=self.mem_gb_per_node,
            max_walltime=self.max_walltime, queue_wait=self.queue_wait, cost=self.cost,
            egress_gb=self.egress_gb)

    # -- the kind ------------------------------------------------------------------------

    @classmethod
    def fields_help(cls) -> str:
        """This kind's own fields, for `--help` (every kind shares the placement fields)."""
        own = [n for n in cls.model_fields if n not in ComputeBlock.model_fields
               and n != "block_type_slug"]
        return f"{cls.kind}: {', '.join(own) or '(none of its own)'}."

    @classmethod
    def base_job_template(cls) -> dict[str, Any]:
        """The work pool's base job template, as Prefect's BaseWorker builds it from the job
        configuration and its variables."""
        schema = (cls.job_variables_schema or cls.job_configuration).model_json_schema()
        schema.pop("title", None)
        return {"job_configuration": cls.job_configuration.json_template(), "variables": schema}

    @classmethod
    def job_variables(cls, step: StepPlan) -> dict[str, Any]:
        """What a step asks of each task, in this kind's job variables."""
        return {}

    def agent_job_variables(self) -> dict[str, Any]:
        """What one agent's job asks for (pilot mode): a node's worth, for the resource's
        longest walltime."""
        return {}

    def pool_defaults(self) -> dict[str, Any]:
        """The pool's variable defaults this resource's fields give."""
        return {}

    def open_session(self, configuration: Any, secret: dict[str, str] | None) -> Session:
        """Connect with the bundle's short-lived secret (never stored)."""
        raise NotImplementedError(f"{self.kind} bundles run in their own Job, not a session")


__all__ = ["COMPUTE_KINDS", "BundleJobConfiguration", "BundleVariables", "ComputeBlock",
           "mem_mb", "template"]
