"""Task and experiment states (Airavata's), and the transitions allowed between them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from airavata_prefect.domain.usage import Usage


class TaskState(StrEnum):
    CREATED = "CREATED"
    QUEUED = "QUEUED"
    DATA_STAGING = "DATA_STAGING"
    ENV_SETUP = "ENV_SETUP"
    RUNNING = "RUNNING"
    OUTPUT_STAGING = "OUTPUT_STAGING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    UPSTREAM_FAILED = "UPSTREAM_FAILED"  # never ran: an instance it depends on did not complete


ACTIVE = (TaskState.QUEUED, TaskState.DATA_STAGING, TaskState.ENV_SETUP, TaskState.RUNNING,
          TaskState.OUTPUT_STAGING)
TERMINAL = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELED,
                      TaskState.UPSTREAM_FAILED})

TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.CREATED: frozenset({TaskState.QUEUED, TaskState.CANCELED,
                                  TaskState.UPSTREAM_FAILED}),
    TaskState.QUEUED: frozenset({TaskState.DATA_STAGING, TaskState.FAILED, TaskState.CANCELED}),
    TaskState.DATA_STAGING: frozenset({TaskState.ENV_SETUP, TaskState.FAILED,
                                       TaskState.CANCELED}),
    TaskState.ENV_SETUP: frozenset({TaskState.RUNNING, TaskState.FAILED, TaskState.CANCELED}),
    TaskState.RUNNING: frozenset({TaskState.OUTPUT_STAGING, TaskState.FAILED,
                                  TaskState.CANCELED}),
    TaskState.OUTPUT_STAGING: frozenset({TaskState.COMPLETED, TaskState.FAILED,
                                         TaskState.CANCELED}),
    TaskState.FAILED: frozenset({TaskState.QUEUED}),  # the retry edge
    TaskState.COMPLETED: frozenset(),
    TaskState.CANCELED: frozenset(),
    TaskState.UPSTREAM_FAILED: frozenset(),
}


class IllegalTransition(ValueError):
    def __init__(self, task: str, current: TaskState, target: TaskState) -> None:
        super().__init__(f"task {task}: illegal state transition {current} -> {target}")
        self.task, self.current, self.target = task, current, target


def check_transition(task: str, current: TaskState, target: TaskState) -> None:
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(task, current, target)


class ExperimentStatus(StrEnum):
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    CANCELING = "CANCELING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


EXPERIMENT_TERMINAL = frozenset({ExperimentStatus.COMPLETED, ExperimentStatus.FAILED,
                                 ExperimentStatus.CANCELED})


class BundleStatus(StrEnum):
    CREATED = "CREATED"  # stored; its flow run is waiting for a worker
    STAGING = "STAGING"  # a worker took it: uploading scripts and inputs
    SUBMITTED = "SUBMITTED"  # running on the resource (queued or executing)
    COMPLETED = "COMPLETED"  # every instance ended, each with its own state
    FAILED = "FAILED"  # the bundle itself failed (staging, submission, a lost worker)
    CANCELED = "CANCELED"


BUNDLE_ENDED = frozenset({BundleStatus.COMPLETED, BundleStatus.FAILED, BundleStatus.CANCELED})


def summarize(counts: dict[str, int]) -> str:
    """`{"COMPLETED": 3, "FAILED": 1}` -> "3 completed, 1 failed" (sorted by state)."""
    return ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items()))


@dataclass(frozen=True)
class Transition:
    """One task state change, as the scheduler records it and the store writes it."""

    instance_id: str
    from_state: TaskState
    to_state: TaskState
    at: datetime
    attempt: int = 0
    message: str | None = None
    exit_code: int | None = None
    usage: Usage | None = None  # what the attempt used, with its terminal state
