"""Compute resources as placement sees them: capacity, limits and prices.

Offline they come from a YAML file (`resources: [...]`); online from registered resource blocks.
The built-in `local` resource describes this machine.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from airavata_prefect.domain.spec import Duration, parse_duration
from airavata_prefect.domain.yamldoc import parse_located, read_source

LOCAL = "local"  # the built-in resource: the machine the experiment's flow runs on


class Prices(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    core_hour: float = Field(0, ge=0)
    gpu_hour: float = Field(0, ge=0)
    node_hour: float = Field(0, ge=0)


class ComputeResource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    # The compute kinds (blocks/), checked here so that a resources file with a typo fails
    # without loading Prefect; tests/test_blocks.py keeps the two lists equal.
    type: Literal["slurm", "kubernetes", "baremetal", "local"]
    nodes: int = Field(1, ge=1)
    cores_per_node: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    mem_gb_per_node: float = Field(0, ge=0)  # 0: not limited
    max_walltime: Duration | None = None
    queue_wait: Duration = "0:00:00"
    cost: Prices = Prices()
    egress_gb: dict[str, float] = {}  # price per GB moved in from each storage resource
    # Offline only: who holds a usable credential (absent: everyone). Online: SpiceDB says.
    users: list[str] | None = None
    # Runs wider tasks than it has cores by giving them all of them (the local machine);
    # memory stays a hard limit.
    oversubscribe: bool = False

    @field_validator("egress_gb")
    @classmethod
    def _prices(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k, p in v.items() if p < 0]
        if bad:
            raise ValueError(f"egress prices must be >= 0: {', '.join(bad)}")
        return v

    @property
    def max_walltime_seconds(self) -> int | None:
        return parse_duration(self.max_walltime) if self.max_walltime else None

    @property
    def queue_wait_seconds(self) -> int:
        return parse_duration(self.queue_wait)


class ResourceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    resources: list[ComputeResource] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> ResourceFile:
        names = [r.name for r in self.resources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"resource names must be unique: {', '.join(dupes)}")
        return self


def load_resources(path: str) -> list[ComputeResource]:
    """Raises SpecError with every problem located in the file."""
    doc, _ = parse_located(read_source(path), path, ResourceFile)
    return doc.resources


def local_resource() -> ComputeResource:
    """This machine: every core, its memory, no queue, no price."""
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
        mem = round(kb / 1024 / 1024, 1)
    except (OSError, StopIteration, ValueError):
        mem = 0.0
    return ComputeResource(name=LOCAL, type="local", nodes=1,
                           cores_per_node=os.cpu_count() or 1, mem_gb_per_node=mem,
                           oversubscribe=True)
