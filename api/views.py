"""What the doors show of an experiment's bundles and pilot agents: one shape for the REST
API's responses and the CLI's local rows (`--json` reads the same either way)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from airavata_prefect.domain.pilot import AgentInfo
from airavata_prefect.domain.records import Bundle
from airavata_prefect.domain.usage import format_bytes


class UsageOut(BaseModel):
    """What an attempt used (its last one): wall and CPU seconds, peak resident memory of its
    largest process, and the time it waited in a batch scheduler's queue."""

    wall_seconds: float
    cpu_seconds: float
    max_rss_bytes: int
    queue_seconds: float


class StepUsageOut(BaseModel):
    step: str
    measured: int  # instances that ended with a measurement
    wall_p50: float | None
    wall_p90: float | None
    cpu_p50: float | None
    cpu_p90: float | None
    rss_p50: int | None
    rss_p90: int | None
    rss_max: int | None
    queue_p90: float | None


def usage_cells(u: Mapping[str, Any] | None) -> tuple[str, str, str]:
    """(wall, cpu, peak memory) of a `UsageOut` dump as a table shows them; blanks where
    nothing was measured."""
    if not u:
        return "", "", ""
    rss = int(u.get("max_rss_bytes") or 0)
    return (f"{float(u['wall_seconds']):.2f}s", f"{float(u.get('cpu_seconds') or 0):.2f}s",
            format_bytes(rss) if rss else "")


class BundleOut(BaseModel):
    id: str
    resource: str
    step: str
    instances: int
    status: str
    jobs: list[str] = Field(description="the resource's job ids (or session) that ran it")
    flow_run_id: str | None
    message: str | None
    created_at: datetime
    finished_at: datetime | None


class AgentOut(BaseModel):
    id: str
    resource: str
    hostname: str
    slots: int = Field(description="instances it runs at once")
    cores: int
    memory_bytes: int
    gpus: int
    allocation: str = Field(description="its batch job (a SLURM job id), if any")
    status: str = Field(description="ACTIVE, or GONE (stopped or lost)")
    stopped_reason: str = Field(description="why it is GONE")
    registered_at: datetime | None
    heartbeat_at: datetime | None
    ended: int = Field(description="this experiment's attempts it brought to an end")


def bundle_out(b: Bundle) -> BundleOut:
    return BundleOut(id=b.id, resource=b.resource, step=b.step, instances=len(b.instances),
                     status=str(b.status), jobs=list(b.infrastructure),
                     flow_run_id=b.flow_run_id, message=b.message, created_at=b.created_at,
                     finished_at=b.finished_at)


def agent_out(a: AgentInfo, ended: int) -> AgentOut:
    return AgentOut(id=a.id, resource=a.resource, hostname=a.hostname, slots=a.slots,
                    cores=a.cores, memory_bytes=a.memory_bytes, gpus=a.gpus,
                    allocation=a.allocation_id, status=str(a.status),
                    stopped_reason=a.stopped_reason, registered_at=a.registered_at,
                    heartbeat_at=a.heartbeat_at, ended=ended)


__all__ = ["AgentOut", "BundleOut", "agent_out", "bundle_out"]
