"""How an attempt ended, and the one mapping from that to a task state.

Every resource sees the end of an instance's process its own way: asyncio's return code on
`local`, the exit marker run_one.sh leaves in a bundle, SLURM's job state when no marker came.
Each reports the facts as an `Exit`; `judge` alone turns facts into the state, exit code and
reason that are stored, so the same script ends the same way wherever it ran:

- exit 0: COMPLETED (FAILED when a declared output is missing);
- exit N: FAILED, exit code N (255 is an exit status, not a signal);
- killed by signal S: FAILED, exit code -S, "killed by signal S (SIGNAME)";
- over its walltime: FAILED, "timeout: ...", exit code -S of the signal that stopped it if known;
- canceled by someone (a user, or its scheduler preempting it): CANCELED. Nothing else is
  CANCELED: a signal from elsewhere (the OOM killer, a script's own `kill -9 $$`) is a failure.

Exit codes are stored the way Python reports a child's: N for an exit, -S for a signal.
"""

from __future__ import annotations

import signal as _signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from airavata_prefect.domain.spec import format_duration
from airavata_prefect.domain.states import TaskState
from airavata_prefect.domain.usage import Usage


class Outcome(NamedTuple):
    """An attempt's result as the scheduler records it."""

    state: TaskState  # COMPLETED, FAILED or CANCELED
    exit_code: int | None = None
    reason: str | None = None
    usage: Usage | None = None  # what the attempt used, where it was measured


@dataclass(frozen=True)
class Exit:
    """What is known of how an attempt's process ended."""

    code: int | None = None  # its exit status, when it exited
    signal: int | None = None  # the signal that ended it
    timed_out: bool = False  # stopped at its walltime
    canceled: str | None = None  # why someone canceled it (a user, a preemption)
    failure: str | None = None  # what went wrong where no exit status says it (out of memory)

    @classmethod
    def of_returncode(cls, returncode: int | None) -> Exit:
        """From a Python return code: N for an exit, -S for a signal."""
        if returncode is None:
            return cls()
        if returncode < 0:
            return cls(signal=-returncode)
        return cls(code=returncode)


@dataclass(frozen=True)
class Requeue:
    """The task did nothing wrong (its node failed, it was preempted): it may run again."""

    reason: str
    preempted: bool = False


def signal_name(number: int) -> str:
    try:
        return _signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def judge(end: Exit, *, missing: Sequence[str] = (), cancel_requested: bool = False,
          walltime: int | None = None) -> Outcome:
    """The stored outcome of an attempt. `cancel_requested`: we stopped it because its
    experiment or bundle was canceled (an attempt that completed anyway stays completed)."""
    code = -end.signal if end.signal is not None else end.code
    clean = end.code == 0 and end.signal is None and not end.timed_out and not end.failure
    if end.canceled or (cancel_requested and not clean):
        return Outcome(TaskState.CANCELED, code, end.canceled or "canceled")
    if end.timed_out:
        limit = f"walltime {format_duration(walltime)}" if walltime else "its walltime"
        return Outcome(TaskState.FAILED, code, f"timeout: exceeded {limit}")
    if end.failure:
        return Outcome(TaskState.FAILED, code, end.failure)
    if end.signal is not None:
        return Outcome(TaskState.FAILED, code,
                       f"killed by signal {end.signal} ({signal_name(end.signal)})")
    if end.code is None:
        return Outcome(TaskState.FAILED, None, "ended without an exit status")
    if end.code != 0:
        return Outcome(TaskState.FAILED, end.code, f"exit code {end.code}")
    if missing:
        return Outcome(TaskState.FAILED, 0,
                       "declared outputs not produced: " + ", ".join(missing))
    return Outcome(TaskState.COMPLETED, 0, None)


__all__ = ["Exit", "Outcome", "Requeue", "judge", "signal_name"]
