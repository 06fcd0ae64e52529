"""Typed lifecycle events: what happened to an experiment, an instance, a resource or a
credential, who did it, and under which request (correlation id). Pure records: the adapter
(adapters/prefect_events.py) turns them into Prefect events, so Prefect automations can react
to them, and reads them back for `airavata trace`.

The Prefect shape, one scheme for every event:

- name: `airavata.<family>.<kind>`, e.g. `airavata.experiment.submitted`;
- resource (what it is about): `airavata.<subject>.<id>` with the labels automations match on:
  `airavata.experiment.<uuid>`, `airavata.instance.<experiment uuid>.<step>[<index>]`,
  `airavata.compute-resource.<name>`, `airavata.storage-resource.<name>`,
  `airavata.credential.<id>`; its labels carry the correlation id, project, experiment and
  actor too (`airavata.correlation-id`, `airavata.project`, ...);
- related resources, by role: `project` (`airavata.project.<name>`), `actor`
  (`airavata.user.<name>`), `correlation` (`airavata.correlation.<id>`: how `airavata trace`
  finds every event of one request), `experiment` (for an instance's event) and `flow-run`
  (`prefect.flow-run.<uuid>`, the run that acts, when known);
- payload: `correlation_id`, `project_id`, `experiment_id`, `actor` always (null when the
  subject has none), then the kind's own details.

Never a secret: a credential's id is named, never its value; details are scalars under names
that cannot be a secret's (checked here)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from airavata_prefect.domain.states import TaskState

NAMESPACE = "airavata"

# family -> the kinds of event it has
EVENT_TYPES: dict[str, frozenset[str]] = {
    "experiment": frozenset({"submitted", "running", "completed", "failed", "canceled",
                             "cancel-requested", "paused", "resumed", "retried"}),
    # `failed`: for good; `attempt-failed`: an attempt failed and the step retries it
    "instance": frozenset({"completed", "failed", "attempt-failed", "canceled"}),
    "resource": frozenset({"registered", "updated", "removed", "tested"}),
    "credential": frozenset({"created", "rotated", "shared", "bound", "unbound", "deleted"}),
}
# subject kind -> its family
SUBJECTS: dict[str, str] = {"experiment": "experiment", "instance": "instance",
                            "compute-resource": "resource", "storage-resource": "resource",
                            "credential": "credential"}
ROLES = ("project", "actor", "correlation", "experiment", "flow-run")

# A correlation id as requests may carry it (X-Correlation-ID): ours are 16 hex digits.
CORRELATION_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
# Detail names that could only hold a secret: refused, whatever the value.
_SECRET_NAME = re.compile(r"secret|token|passw|private|api_?key|credential_value", re.I)
MAX_TEXT = 500  # a detail's text is cut to this many characters

Scalar = str | int | float | bool | None


def is_correlation_id(value: str) -> bool:
    return bool(CORRELATION_ID.match(value))


def resource_id(kind: str, *parts: str) -> str:
    """`airavata.<kind>.<part>...`, the Prefect resource id of one of ours."""
    return ".".join((NAMESPACE, kind, *parts))


def experiment_resource(experiment_id: str) -> str:
    return resource_id("experiment", experiment_id)


def instance_resource(experiment_id: str, instance_id: str) -> str:
    return resource_id("instance", experiment_id, instance_id)


def project_resource(project: str) -> str:
    return resource_id("project", project)


def user_resource(user: str) -> str:
    return resource_id("user", user)


def correlation_resource(correlation_id: str) -> str:
    return resource_id("correlation", correlation_id)


def flow_run_resource(flow_run_id: str) -> str:
    return f"prefect.flow-run.{flow_run_id}"


@dataclass(frozen=True)
class Subject:
    """What an event is about: a kind of SUBJECTS and its id (and a display name)."""

    kind: str
    id: str
    name: str | None = None

    @property
    def resource_id(self) -> str:
        return resource_id(self.kind, self.id)


def instance_subject(experiment_id: str, instance_id: str) -> Subject:
    return Subject("instance", f"{experiment_id}.{instance_id}", instance_id)


@dataclass(frozen=True)
class LifecycleEvent:
    """One event of ours: `type` is `<family>.<kind>` (EVENT_TYPES), e.g. experiment.failed."""

    type: str
    subject: Subject
    correlation_id: str
    actor: str | None  # who acts: the requester, or the owner an experiment's run acts for
    project_id: str | None = None
    experiment_id: str | None = None
    flow_run_id: str | None = None
    detail: Mapping[str, Scalar] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)  # more labels on the resource
    occurred: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __post_init__(self) -> None:
        family, _, kind = self.type.partition(".")
        if kind not in EVENT_TYPES.get(family, ()):
            raise ValueError(f"unknown event type {self.type!r}")
        if SUBJECTS.get(self.subject.kind) != family:
            raise ValueError(f"a {self.type} event cannot be about a {self.subject.kind}")
        if not self.subject.id:
            raise ValueError(f"a {self.type} event needs its subject's id")
        for name, value in self.detail.items():
            if name in _BASE or _SECRET_NAME.search(name):
                raise ValueError(f"event detail {name!r} is not allowed")
            if not isinstance(value, Scalar):
                raise ValueError(f"event detail {name!r}: a scalar, not {type(value).__name__}")
        for name in self.labels:
            if not name.startswith(f"{NAMESPACE}.") or _SECRET_NAME.search(name):
                raise ValueError(f"event label {name!r} is not allowed")

    @property
    def family(self) -> str:
        return self.type.partition(".")[0]

    @property
    def kind(self) -> str:
        return self.type.partition(".")[2]

    @property
    def name(self) -> str:
        """The Prefect event name, e.g. airavata.experiment.submitted."""
        return f"{NAMESPACE}.{self.type}"

    def resource(self) -> dict[str, str]:
        labels = {"prefect.resource.id": self.subject.resource_id,
                  "airavata.correlation-id": self.correlation_id}
        if self.subject.name:
            labels["prefect.resource.name"] = self.subject.name
        for label, value in (("airavata.project", self.project_id),
                             ("airavata.experiment", self.experiment_id),
                             ("airavata.actor", self.actor)):
            if value:
                labels[label] = value
        return {**labels, **{k: v for k, v in self.labels.items() if k not in labels}}

    def related(self) -> list[dict[str, str]]:
        out: list[tuple[str, str]] = []
        if self.project_id:
            out.append(("project", project_resource(self.project_id)))
        if self.experiment_id and self.subject.kind != "experiment":
            out.append(("experiment", experiment_resource(self.experiment_id)))
        if self.actor:
            out.append(("actor", user_resource(self.actor)))
        out.append(("correlation", correlation_resource(self.correlation_id)))
        if self.flow_run_id:
            out.append(("flow-run", flow_run_resource(self.flow_run_id)))
        return [{"prefect.resource.id": rid, "prefect.resource.role": role}
                for role, rid in out]

    def payload(self) -> dict[str, Scalar]:
        base: dict[str, Scalar] = {"correlation_id": self.correlation_id,
                                   "project_id": self.project_id,
                                   "experiment_id": self.experiment_id, "actor": self.actor}
        return {**base, **{k: _cut(v) for k, v in self.detail.items()}}


_BASE = frozenset({"correlation_id", "project_id", "experiment_id", "actor"})


def _cut(value: Scalar) -> Scalar:
    return value[:MAX_TEXT] if isinstance(value, str) else value


# -- instances: which state changes are events --------------------------------------------------


def instance_event_kind(from_state: TaskState, to_state: TaskState, attempt: int,
                        retries: int) -> str | None:
    """The instance event a state change is, or None. Only ends of attempts that ran: a
    completion; a failure, `attempt-failed` while the step has retries left, else `failed`;
    a cancel of an instance that had started. Never RUNNING (the experiment's `running` says a
    run started; an instance's start is live in the store and /metrics, and would double the
    volume), nor what never ran (UPSTREAM_FAILED, or canceled while waiting: the experiment's
    own ending counts them)."""
    if to_state == TaskState.COMPLETED:
        return "completed"
    if to_state == TaskState.FAILED:
        return "attempt-failed" if attempt < retries else "failed"
    if to_state == TaskState.CANCELED and from_state != TaskState.CREATED:
        return "canceled"
    return None


# -- read back -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeenEvent:
    """An event as the Prefect API returns it (ours, or any related to what was asked)."""

    id: str
    occurred: datetime
    name: str  # the Prefect event name
    resource_id: str
    resource_name: str | None
    related: tuple[tuple[str, str], ...]  # (role, resource id)
    payload: Mapping[str, Any]

    @property
    def ours(self) -> bool:
        return self.name.startswith(f"{NAMESPACE}.")

    @property
    def type(self) -> str:
        """`experiment.submitted` for ours, the full name for any other."""
        return self.name.removeprefix(f"{NAMESPACE}.") if self.ours else self.name

    @property
    def actor(self) -> str | None:
        value = self.payload.get("actor")
        if isinstance(value, str):
            return value
        prefix = user_resource("")
        return next((rid.removeprefix(prefix) for role, rid in self.related
                     if role == "actor" and rid.startswith(prefix)), None)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> SeenEvent:
        """From the JSON of a Prefect event (POST /events/filter)."""
        resource = dict(doc.get("resource") or {})
        related = tuple((str(r.get("prefect.resource.role", "")),
                         str(r.get("prefect.resource.id", "")))
                        for r in doc.get("related") or [])
        occurred = doc["occurred"]
        if isinstance(occurred, str):
            occurred = datetime.fromisoformat(occurred.replace("Z", "+00:00"))
        if occurred.tzinfo is None:
            occurred = occurred.replace(tzinfo=UTC)
        return cls(id=str(doc.get("id", "")), occurred=occurred, name=str(doc["event"]),
                   resource_id=str(resource.get("prefect.resource.id", "")),
                   resource_name=resource.get("prefect.resource.name"), related=related,
                   payload=dict(doc.get("payload") or {}))


__all__ = ["CORRELATION_ID", "EVENT_TYPES", "NAMESPACE", "ROLES", "SUBJECTS", "LifecycleEvent",
           "SeenEvent", "Subject", "correlation_resource", "experiment_resource",
           "flow_run_resource", "instance_event_kind", "instance_resource", "instance_subject",
           "is_correlation_id", "project_resource", "resource_id", "user_resource"]
