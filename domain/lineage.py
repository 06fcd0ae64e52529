"""Lineage of outputs: what each declared output of a completed instance came from. Its
instance and attempt, the upstream outputs (`${t.OUT}`) and storage-mount files it read with
their sha256, the sha256 of the script that made it, its parameters and the resource it ran on.

Pure: the records, the output ids, and what an instance consumed (dag.py knows which upstream
outputs its inputs name)."""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass
from datetime import datetime

from airavata_prefect.domain.dag import StepPlan, TaskInstance
from airavata_prefect.domain.instance import render_script

OUTPUT_ID = re.compile(r"[0-9a-f]{16}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def output_id(experiment_id: str, path: str) -> str:
    """An output's id: 16 hex digits of sha256(experiment id, path in its directory). Stable,
    so a downstream record names its input before (or without) looking it up, and a path
    always finds its record; 64 bits leave collisions to the unique (experiment, path)."""
    return hashlib.sha256(f"{experiment_id}\0{path}".encode()).hexdigest()[:16]


def output_path(step: str, index: int, declared: str) -> str:
    """Where an output lies in its experiment's directory, normalised (`./x` and `x` are one
    file; spec.py has refused `..` and absolute paths)."""
    return posixpath.normpath(f"{step}/{index}/{declared}")


def script_sha256(step: StepPlan) -> str:
    """The sha256 of the script every instance of the step runs: the step's script with its
    resource `environment` exported (what the local resource, bundles and agents all run)."""
    return hashlib.sha256(render_script(step.script, step.resources.environment)
                          .encode()).hexdigest()


def parameters(inst: TaskInstance) -> dict[str, str]:
    """The instance's inputs: the experiment's parameters and its task_inputs as rendered
    (its own output paths left out: those are the outputs)."""
    return {k: v for k, v in inst.env.items() if k not in inst.outputs}


def experiments_in_path(path: str) -> list[str]:
    """The experiment ids an absolute path may lie under (its directory is `<runs>/<id>`),
    nearest the file first."""
    return [part for part in reversed(path.split("/")) if _UUID.fullmatch(part)]


@dataclass(frozen=True, slots=True)
class UpstreamInput:
    """An upstream output the instance read, as it was when read."""

    output_id: str
    instance_id: str
    name: str
    path: str  # in the experiment's directory
    sha256: str | None  # None: it was not there when the consumer completed


@dataclass(frozen=True, slots=True)
class MountInput:
    """A file of one of the step's storage mounts, as staged."""

    mount: str  # the spec's "storage:/remote:./local"
    path: str  # under the mount's target
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class OutputLineage:
    """One output of one completed instance and what it came from."""

    output_id: str
    experiment_id: str
    instance_id: str
    attempt: int
    name: str  # task_outputs: {NAME: path}
    path: str  # `<step>/<index>/<declared path>`, in the experiment's directory
    sha256: str
    size: int
    script_sha256: str
    parameters: dict[str, str]
    resource: str
    recorded_at: datetime
    upstream: tuple[UpstreamInput, ...] = ()
    mounts: tuple[MountInput, ...] = ()


__all__ = ["OUTPUT_ID", "MountInput", "OutputLineage", "UpstreamInput", "experiments_in_path",
           "output_id", "output_path", "parameters", "script_sha256"]
