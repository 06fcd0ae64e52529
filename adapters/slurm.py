"""SLURM: batch scripts, submission, task states and cancel, through the command line on a Host
(the local `sbatch`, or a login node over SSH). slurmrestd speaks the same interface from
adapters/slurm_rest.py.

States come from `scontrol -o show job` (no accounting database needed) and `classify` reports
what they say as facts (domain/endings.py turns those into task states): exit N; killed by a
signal; canceled (scancel); over its time limit; out of memory; node failure, preemption or a
boot failure: re-queued, because the task itself did nothing wrong.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from airavata_prefect.adapters.hosts import Host, HostError, check
from airavata_prefect.domain.endings import Exit, Requeue

DEFAULT_MAX_ARRAY_SIZE = 1001


class SlurmError(RuntimeError):
    """SLURM refused or could not be reached; the message says what and where."""


@dataclass(frozen=True)
class JobRequest:
    """One batch job (an array when `array` is set). Sizes are per array task."""

    name: str
    workdir: str
    command: str
    output: str = "slurm-%A_%a.out"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    cpus_per_task: int = 1
    mem_mb: int | None = None  # per node
    gpus: int = 0
    gres: str | None = None  # e.g. "gpu:a100:1"; wins over `gpus`
    time_seconds: int | None = None
    array: str | None = None  # "0-999%50"
    requeue: bool = True  # node failure or preemption puts the task back in the queue
    extra: tuple[str, ...] = ()  # further sbatch options, e.g. "--constraint=haswell"
    setup: tuple[str, ...] = ()  # lines before the command: module load, conda activate ...
    environment: Mapping[str, str] = field(default_factory=dict)  # exported in the script


def format_time(seconds: int) -> str:
    """sbatch's [D-]HH:MM:SS."""
    days, rest = divmod(max(0, int(seconds)), 86400)
    hms = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{hms}" if days else hms


def _quote(value: str) -> str:
    return shlex.quote(value)


def header(req: JobRequest) -> list[str]:
    """The #SBATCH lines, in a fixed order (tests assert them line by line)."""
    lines = [f"--job-name={req.name}", f"--chdir={req.workdir}", f"--output={req.output}"]
    if req.partition:
        lines.append(f"--partition={req.partition}")
    if req.account:
        lines.append(f"--account={req.account}")
    if req.qos:
        lines.append(f"--qos={req.qos}")
    lines += [f"--nodes={req.nodes}", "--ntasks=1", f"--cpus-per-task={req.cpus_per_task}"]
    if req.mem_mb:
        lines.append(f"--mem={req.mem_mb}M")
    if req.gres:
        lines.append(f"--gres={req.gres}")
    elif req.gpus:
        lines.append(f"--gpus={req.gpus}")
    if req.time_seconds:
        lines.append(f"--time={format_time(req.time_seconds)}")
    if req.array:
        lines.append(f"--array={req.array}")
    lines.append("--requeue" if req.requeue else "--no-requeue")
    lines += [e if e.startswith("-") else f"--{e}" for e in req.extra]
    return [f"#SBATCH {line}" for line in lines]


def job_script(req: JobRequest) -> str:
    exports = [f"export {k}={_quote(v)}" for k, v in req.environment.items()]
    return "\n".join(["#!/bin/bash", *header(req), *exports, *req.setup,
                      req.command, ""])


def array_chunks(count: int, max_array_size: int) -> list[tuple[int, int]]:
    """Split `count` tasks into arrays SLURM accepts: [(offset, size)], indices 0..size-1 each
    (MaxArraySize bounds the index, so an array holds at most MaxArraySize tasks)."""
    if count <= 0:
        return []
    size = max(1, max_array_size)
    return [(off, min(size, count - off)) for off in range(0, count, size)]


def array_spec(size: int, throttle: int | None) -> str:
    spec = f"0-{size - 1}" if size > 1 else "0"
    return f"{spec}%{throttle}" if throttle else spec


# -- states ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlurmTask:
    job_id: str  # the array's job id
    task_id: int | None  # index within the array (None: not an array job)
    state: str  # SLURM's JobState, e.g. COMPLETED, FAILED, TIMEOUT
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    queue_seconds: float | None = None  # start - submit, once it started (SLURM's record)


_REQUEUE = {"NODE_FAIL": "node failure", "BOOT_FAIL": "node boot failure",
            "PREEMPTED": "preempted"}
_FAILED = {"OUT_OF_MEMORY": "out of memory", "DEADLINE": "missed its deadline"}


def classify(task: SlurmTask) -> Exit | Requeue | None:
    """What SLURM's state says of a task: how it ended, that it may run again, or None while
    it is still pending or running. The task state itself is domain/endings.py's to decide."""
    state = task.state.split()[0].rstrip("+")  # "CANCELLED by 0" -> CANCELLED
    # An exit status, unless a signal ended it; 0 on a task that did not complete says nothing.
    code = task.exit_code if not task.signal and task.exit_code else None
    if state == "COMPLETED":
        return Exit(code=0)
    if state == "CANCELLED":
        return Exit(code=code, signal=task.signal, canceled="canceled (scancel)")
    if state in _REQUEUE:
        return Requeue(f"{_REQUEUE[state]}: re-queued", preempted=state == "PREEMPTED")
    if state == "TIMEOUT":
        return Exit(code=code, signal=task.signal, timed_out=True)
    if state in _FAILED:
        return Exit(code=code, signal=task.signal, failure=_FAILED[state])
    if state == "FAILED":
        return Exit(code=code, signal=task.signal)
    return None


_FIELD = re.compile(
    r"\b(JobId|ArrayJobId|ArrayTaskId|JobState|Reason|ExitCode|SubmitTime|StartTime)=(\S*)")
WAITING_STATES = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD")


def queue_wait(state: str, submitted: str | None, started: str | None) -> float | None:
    """Seconds between submit and start by scontrol's times (the controller's local time, both
    alike); None while it has not started or where a time is Unknown."""
    if not (submitted and started) or state.split()[0].rstrip("+") in WAITING_STATES:
        return None
    try:
        wait = (datetime.strptime(started, "%Y-%m-%dT%H:%M:%S")
                - datetime.strptime(submitted, "%Y-%m-%dT%H:%M:%S")).total_seconds()
    except ValueError:
        return None
    return max(0.0, wait)


def expand_task_ids(spec: str) -> list[int]:
    """'5-9%2' or '1,3,7-8' -> the indices (a throttle suffix is ignored)."""
    out: list[int] = []
    for part in spec.split("%")[0].split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def parse_scontrol(text: str) -> list[SlurmTask]:
    """`scontrol -o show job` lines -> tasks (a pending array remainder expands to each id)."""
    tasks: list[SlurmTask] = []
    for line in text.splitlines():
        fields = dict(_FIELD.findall(line))
        if "JobId" not in fields or "JobState" not in fields:
            continue
        code, sig = (int(x) for x in fields.get("ExitCode", "0:0").split(":"))
        job = fields.get("ArrayJobId") or fields["JobId"]
        ids: list[int | None] = (list(expand_task_ids(fields["ArrayTaskId"]))
                                 if fields.get("ArrayTaskId") else [None])
        queue = queue_wait(fields["JobState"], fields.get("SubmitTime"),
                           fields.get("StartTime"))
        for tid in ids:
            tasks.append(SlurmTask(job, tid, fields["JobState"], code, sig or None,
                                   fields.get("Reason"), queue))
    return tasks


# -- clients -----------------------------------------------------------------------------------


class SlurmClient(Protocol):
    name: str

    def submit(self, req: JobRequest, script_path: str) -> str: ...
    def tasks(self, job_ids: Iterable[str]) -> list[SlurmTask]: ...
    def cancel(self, job_ids: Iterable[str]) -> None: ...
    def max_array_size(self) -> int: ...


_JOB_ID = re.compile(r"^(\d+)(?:;\S+)?\s*$")
_JOB_REF = re.compile(r"^\d+(?:_\d+)?$")  # a job, or one task of an array: 123_4


def job_refs(job_ids: Iterable[str]) -> list[str]:
    """Only well-formed ids reach a shell command or a URL."""
    return [j for j in job_ids if _JOB_REF.match(j)]


class SlurmCli:
    """`sbatch`, `scontrol` and `scancel` on a Host. `env` is exported before each command
    (e.g. SLURM_CONF on a login node whose login shell does not set it)."""

    def __init__(self, host: Host, env: Mapping[str, str] | None = None) -> None:
        self.host = host
        self.name = f"SLURM via {host.name}"
        self._prefix = "".join(f"export {k}={_quote(v)}; " for k, v in (env or {}).items())
        self._max_array: int | None = None

    def _run(self, command: str, what: str) -> str:
        try:
            return check(self.host, self._prefix + command, what=what).text
        except HostError as exc:
            raise SlurmError(str(exc)) from None

    def submit(self, req: JobRequest, script_path: str) -> str:
        """The script must already be on the host (it travels with the bundle)."""
        out = self._run(f"cd {_quote(req.workdir)} && sbatch --parsable {_quote(script_path)}",
                        "sbatch")
        m = _JOB_ID.match(out.strip().splitlines()[-1] if out.strip() else "")
        if not m:
            raise SlurmError(f"sbatch on {self.host.name} gave no job id: {out.strip()[:200]!r}")
        return m.group(1)

    def tasks(self, job_ids: Iterable[str]) -> list[SlurmTask]:
        ids = job_refs(job_ids)
        if not ids:
            return []
        # A job that left the controller (MinJobAge) answers "Invalid job id": not an error.
        cmd = " ".join(f"scontrol -o show job {j} 2>/dev/null;" for j in ids) + " true"
        return parse_scontrol(self._run(cmd, "scontrol show job"))

    def cancel(self, job_ids: Iterable[str]) -> None:
        ids = job_refs(job_ids)
        if ids:
            self._run("scancel " + " ".join(ids), "scancel")

    def max_array_size(self) -> int:
        if self._max_array is None:
            out = self._run("scontrol show config | grep -i '^MaxArraySize' || true",
                            "scontrol show config")
            m = re.search(r"=\s*(\d+)", out)
            self._max_array = int(m.group(1)) if m else DEFAULT_MAX_ARRAY_SIZE
        return self._max_array


__all__ = ["WAITING_STATES", "JobRequest", "SlurmCli", "SlurmClient", "SlurmError", "SlurmTask",
           "array_chunks", "array_spec", "classify", "format_time", "header", "job_script",
           "parse_scontrol", "queue_wait"]
