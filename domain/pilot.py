"""Pilot mode: agents on compute nodes pull task instances from a queue in the store.

Typed records that cross the scheduler service, the store and the agents. A `WorkItem` is one
attempt of one instance, enqueued by the experiment's flow once its dependencies completed. An
agent claims it and holds a lease, named by `(item_id, epoch)`. Only the lease the store holds
now may report: a lease that expired (the agent stopped heartbeating) or was handed back puts
the item back in the queue with a new epoch, and a late report on the old epoch is refused.
That is what makes each attempt end exactly once, however many agents die on the way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

from airavata_prefect.domain.states import TERMINAL, TaskState
from airavata_prefect.domain.usage import Usage

# The step name of a bundle that starts agents on a resource rather than running a step's
# instances (spec step names cannot start with "@").
AGENTS_STEP = "@agents"


class ActiveItem(NamedTuple):
    """A work item not yet ended, as a resumed run finds it."""

    instance_id: str
    attempt: int
    item_id: int
    resource: str


class ItemStatus(StrEnum):
    READY = "READY"  # waiting for an agent
    LEASED = "LEASED"  # an agent holds it (and must renew its lease)
    DONE = "DONE"  # ended: COMPLETED, FAILED or CANCELED (its `state`)


class AgentStatus(StrEnum):
    ACTIVE = "ACTIVE"
    GONE = "GONE"  # stopped (idle, drained, its allocation ended) or lost (no heartbeat)


# What an agent may report of a lease it holds, in order; then one of TERMINAL.
PROGRESS = (TaskState.DATA_STAGING, TaskState.ENV_SETUP, TaskState.RUNNING,
            TaskState.OUTPUT_STAGING)
REPORTABLE = frozenset({*PROGRESS, TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELED})


@dataclass(frozen=True, slots=True)
class LeaseRef:
    item_id: int
    epoch: int


@dataclass(frozen=True, slots=True)
class TaskPayload:
    """Everything an agent needs to run one attempt; nothing secret."""

    script: str  # the rendered bash script
    script_sha256: str
    workdir: str  # relative to the agent's root: <experiment>/<step>/<index>
    env: dict[str, str] = field(default_factory=dict)  # the instance's own variables
    walltime_seconds: int | None = None
    outputs: tuple[str, ...] = ()  # relative to workdir, checked after a zero exit
    ram_gb: float = 0.0  # the step's memory limit (0: none)

    def to_json(self) -> dict[str, object]:
        return {"script": self.script, "script_sha256": self.script_sha256,
                "workdir": self.workdir, "env": dict(self.env),
                "walltime_seconds": self.walltime_seconds, "outputs": list(self.outputs),
                "ram_gb": self.ram_gb}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskPayload:
        walltime = data.get("walltime_seconds")
        return cls(script=str(data["script"]), script_sha256=str(data["script_sha256"]),
                   workdir=str(data["workdir"]),
                   env={str(k): str(v) for k, v in dict(data.get("env") or {}).items()},
                   walltime_seconds=int(walltime) if walltime else None,
                   outputs=tuple(str(o) for o in data.get("outputs") or ()),
                   ram_gb=float(data.get("ram_gb") or 0.0))


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One attempt of one instance, ready to run on `resource`."""

    experiment_id: str
    instance_id: str
    attempt: int
    resource: str
    payload: TaskPayload


@dataclass(frozen=True, slots=True)
class Claim:
    """A work item an agent now holds."""

    lease: LeaseRef
    experiment_id: str
    instance_id: str
    attempt: int
    payload: TaskPayload


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """What an agent reports of a lease: progress, or how the attempt ended."""

    lease: LeaseRef
    state: TaskState
    at: datetime
    exit_code: int | None = None
    message: str | None = None
    usage: Usage | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass(frozen=True, slots=True)
class PilotEvent:
    """A change of one work item, in the order the store recorded it; the experiment's flow
    reads these after its cursor and turns them into task states. `state` None: the item went
    back to the queue (`message` says why: a lost agent, a hand-back)."""

    id: int
    item_id: int
    experiment_id: str
    instance_id: str
    attempt: int
    state: TaskState | None
    at: datetime
    exit_code: int | None = None
    message: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """An agent as it registered (and as the store keeps it)."""

    id: str
    resource: str
    experiments: tuple[str, ...]  # what its token allows it to take
    hostname: str
    slots: int
    cores: int = 0
    memory_bytes: int = 0
    gpus: int = 0
    allocation_id: str = ""
    status: AgentStatus = AgentStatus.ACTIVE
    registered_at: datetime | None = None
    heartbeat_at: datetime | None = None
    stopped_reason: str = ""  # why it is GONE (what it said, or the service's verdict)


__all__ = ["PROGRESS", "REPORTABLE", "AgentInfo", "AgentStatus", "Claim", "ItemStatus",
           "LeaseRef", "PilotEvent", "StatusUpdate", "TaskPayload", "Usage", "WorkItem"]
