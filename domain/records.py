"""Typed records of what the store holds: experiments, their task instances, bundles and what
workers report of them. Frozen: a record is a reading, and changes go through the store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airavata_prefect.domain.compile import compile_graph
from airavata_prefect.domain.dag import TaskGraph
from airavata_prefect.domain.plan import Plan
from airavata_prefect.domain.spec import parse_spec_text
from airavata_prefect.domain.states import BundleStatus, ExperimentStatus, TaskState
from airavata_prefect.domain.usage import Usage


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; everything is stored in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Experiment:
    id: str
    name: str
    source: str  # where the spec came from (a file name), for messages
    spec_text: str
    params: dict[str, str]  # run-time overrides
    status: ExperimentStatus
    message: str | None
    workdir: str  # the experiment's directory here: <runs>/<id>
    total_tasks: int
    cancel_requested: bool
    flow_run_id: str | None
    runner_pid: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    plan: Plan | None
    owner: str | None  # who submitted it (credential checks act for them)
    project: str | None
    paused: bool = False  # no new instance starts until it is resumed
    resumes: int = 0  # how many times a crashed run of it was resumed
    origin_flow_run_id: str | None = None  # the flow run that submitted it (a `spec` run)

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Experiment:
        return cls(
            id=row["id"], name=row["name"], source=row["source"], spec_text=row["spec_text"],
            params=dict(row["params"] or {}), status=ExperimentStatus(row["status"]),
            message=row["message"], workdir=row["workdir"], total_tasks=row["total_tasks"],
            cancel_requested=bool(row["cancel_requested"]), flow_run_id=row["flow_run_id"],
            runner_pid=row["runner_pid"], created_at=utc(row["created_at"]) or row["created_at"],
            started_at=utc(row["started_at"]), finished_at=utc(row["finished_at"]),
            plan=Plan.from_json(row["plan"]) if row["plan"] else None, owner=row["owner"],
            project=row["project"], paused=bool(row["paused"]), resumes=row["resumes"] or 0,
            origin_flow_run_id=row["origin_flow_run_id"])

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def elapsed(self, now: datetime | None = None) -> float:
        """Seconds it has run (until it ended)."""
        if self.started_at is None:
            return 0.0
        end = self.finished_at or now or datetime.now(UTC)
        return (end - self.started_at).total_seconds()


def load_graph(experiment: Experiment, root: str | None = None) -> TaskGraph:
    """The experiment's task graph as it was compiled at submit (the spec and overrides are
    stored; the limit is its own size), its working directories under `root` (default: the
    experiment's directory here)."""
    return compile_graph(parse_spec_text(experiment.spec_text, experiment.source),
                         experiment.params, root=root or experiment.workdir,
                         max_instances=max(1, experiment.total_tasks))


@dataclass(frozen=True, slots=True)
class Task:
    """One task instance's row."""

    experiment_id: str
    instance_id: str
    step: str
    idx: int
    state: TaskState
    attempt: int
    exit_code: int | None
    reason: str | None
    resource: str | None
    workdir: str
    started_at: datetime | None
    finished_at: datetime | None
    usage: Usage | None = None  # what its last attempt used, once it ended (where measured)

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Task:
        return cls(
            experiment_id=row["experiment_id"], instance_id=row["instance_id"],
            step=row["step"], idx=row["idx"], state=TaskState(row["state"]),
            attempt=row["attempt"], exit_code=row["exit_code"], reason=row["reason"],
            resource=row["resource"], workdir=row["workdir"],
            started_at=utc(row["started_at"]), finished_at=utc(row["finished_at"]),
            usage=_usage(row))


def _usage(row: Mapping[Any, Any]) -> Usage | None:
    if row.get("wall_seconds") is None:
        return None
    return Usage(wall_seconds=row["wall_seconds"], cpu_seconds=row["cpu_seconds"] or 0.0,
                 max_rss_bytes=row["max_rss_bytes"] or 0,
                 queue_seconds=row["queue_seconds"] or 0.0)


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One state change of a task instance, as it was recorded."""

    instance_id: str
    from_state: TaskState | None
    to_state: TaskState
    attempt: int
    at: datetime
    message: str | None
    seq: int = 0  # its place in the store's event log (a watcher resumes after it)

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> TaskEvent:
        return cls(instance_id=row["instance_id"],
                   from_state=TaskState(row["from_state"]) if row["from_state"] else None,
                   to_state=TaskState(row["to_state"]), attempt=row["attempt"],
                   at=utc(row["at"]) or row["at"], message=row["message"], seq=row["id"])


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task row as submit writes it."""

    instance_id: str
    step: str
    idx: int
    workdir: str
    resource: str = "local"
    script_hash: str | None = None  # its step's script (domain/lineage.script_sha256)


@dataclass(frozen=True, slots=True)
class Bundle:
    """Placed instances of one step that one flow run in a resource's work pool runs."""

    id: str
    experiment_id: str
    resource: str
    step: str
    instances: tuple[tuple[int, int], ...]  # (index, attempt) by position
    status: BundleStatus
    flow_run_id: str | None
    infrastructure: tuple[str, ...]  # job ids or a session, for cancel and follow-up
    cancel_requested: bool
    message: str | None
    created_at: datetime
    heartbeat_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Bundle:
        return cls(
            id=row["id"], experiment_id=row["experiment_id"], resource=row["resource"],
            step=row["step"], instances=tuple((int(i), int(a)) for i, a in row["instances"]),
            status=BundleStatus(row["status"]), flow_run_id=row["flow_run_id"],
            infrastructure=tuple(row["infrastructure"] or ()),
            cancel_requested=bool(row["cancel_requested"]), message=row["message"],
            created_at=utc(row["created_at"]) or row["created_at"],
            heartbeat_at=utc(row["heartbeat_at"]), finished_at=utc(row["finished_at"]))


@dataclass(frozen=True, slots=True)
class BundleEvent:
    """What a worker saw happen to the instance at `position` of a bundle."""

    position: int
    state: TaskState
    exit_code: int | None = None
    message: str | None = None
    id: int = 0  # its order in the store (0 before it is written)
    bundle_id: str = ""
    usage: Usage | None = None  # what the attempt used, with its end (where it was measured)

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> BundleEvent:
        line = row.get("usage")
        return cls(position=row["position"], state=TaskState(row["state"]),
                   exit_code=row["exit_code"], message=row["message"], id=row["id"],
                   bundle_id=row["bundle_id"], usage=Usage.parse(line) if line else None)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One privileged action or refusal. Never holds a secret."""

    id: int
    at: datetime
    actor: str
    action: str  # a permission key or an action name, e.g. credential.read
    object: str  # "kind:id", e.g. experiment:1a2b...
    correlation_id: str
    outcome: str  # ok | allowed | denied | refused | error
    detail: str | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> AuditEntry:
        return cls(id=row["id"], at=utc(row["at"]) or row["at"], actor=row["actor"],
                   action=row["action"], object=row["object"],
                   correlation_id=row["correlation_id"], outcome=row["outcome"],
                   detail=row["detail"])


__all__ = ["AuditEntry", "Bundle", "BundleEvent", "Experiment", "NewTask", "Task", "TaskEvent",
           "load_graph", "utc"]
