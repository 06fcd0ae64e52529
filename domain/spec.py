"""The experiment spec: the Airavata YAML format plus our extensions (see DESIGN.md).

`load_spec` parses and validates structure (pydantic); every problem carries the file, line and
column of the offending YAML node. Cross-references, ranges and the expansion itself are checked by
`flows.dag.compile_graph`, which reports through the same locator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from pathlib import PurePosixPath
from typing import Annotated, Literal

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from airavata_prefect.domain.problems import Path, Problem
from airavata_prefect.domain.yamldoc import Located, parse_located, read_source

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
STEP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
# A conda package spec: [CHANNEL::]NAME[ VERSION[ BUILD]], NAME=VERSION[=BUILD], NAME>=1,<2,
# NAME[version='>=1'], matched whole. Never an option (`--file x`, `-c chan`), a path or a URL.
CONDA_SPEC = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9_.-]*::)?[A-Za-z0-9_][A-Za-z0-9_.-]*"
                        r"[ =<>!~,|*.+A-Za-z0-9_\[\]'\"-]*")
_DURATION = re.compile(r"^(?:(\d+)-)?(\d+):([0-5]?\d):([0-5]?\d)$")
ParamType = Literal["string", "int", "float", "bool", "path"]
Scalar = str | int | float | bool


def parse_duration(text: str) -> int:
    """`[D-]H:MM:SS` -> seconds (the SLURM walltime form Airavata uses)."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"expected a duration [D-]HH:MM:SS, got {text!r}")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _check_duration(value: str) -> str:
    parse_duration(value)
    return value


# A `[D-]H:MM:SS` string, validated where it is read (spec, constraints, resources).
Duration = Annotated[str, AfterValidator(_check_duration)]


def format_duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Parameter(_Strict):
    type: ParamType = "string"
    default: Scalar | None = None
    description: str = ""


class Compute(_Strict):
    node: int = Field(1, ge=1)
    cpu: int = Field(1, ge=1)
    gpu: int = Field(0, ge=0)
    ram_gb: float = Field(0, ge=0)
    disk_gb: float = Field(0, ge=0)
    vram_gb: float = Field(0, ge=0)
    time: Duration | None = None
    estimate: Duration | None = None  # expected runtime, for placement; defaults to `time`
    input_gb: float = Field(0, ge=0)  # data staged in per task, for placement's egress cost

    @property
    def walltime_seconds(self) -> int | None:
        return parse_duration(self.time) if self.time else None

    @property
    def estimate_seconds(self) -> int | None:
        return parse_duration(self.estimate) if self.estimate else self.walltime_seconds


class StorageMount(_Strict):
    storage: str
    remote: str
    local: str


def inside_workdir(value: str, what: str) -> str:
    """`value` names a place inside the task's own directory: relative, never leaving it.
    Outputs and mount targets are written there on every resource; a path that could land
    anywhere else (an absolute one, `~`, `..`) is refused before anything runs."""
    if not value or value.startswith(("/", "~")):
        raise ValueError(f"{what} {value!r} must be a relative path inside the task's "
                         "directory")
    if ".." in PurePosixPath(value).parts:
        raise ValueError(f"{what} {value!r} must not leave the task's directory ('..')")
    if any(c in value for c in "\0\n\r"):
        raise ValueError(f"{what} {value!r}: no NUL or line breaks in a path")
    return value


def parse_mount(text: str) -> StorageMount:
    parts = text.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"expected 'storage-resource:/remote/path:./local/path', got {text!r}")
    return StorageMount(storage=parts[0], remote=parts[1],
                        local=inside_workdir(parts[2], "mount target"))


class Resources(_Strict):
    compute: Compute | None = None
    storage: list[str] = []
    conda: list[str] = []
    pip: list[str] = []
    environment: list[str] = []

    @field_validator("storage")
    @classmethod
    def _mounts(cls, v: list[str]) -> list[str]:
        for item in v:
            parse_mount(item)
        return v

    @field_validator("pip")
    @classmethod
    def _requirements(cls, v: list[str]) -> list[str]:
        for item in v:
            # A requirement, never a pip option (`--index-url`, `-r file`, `-e path`).
            if item.strip().startswith("-"):
                raise ValueError(f"{item!r}: pip options are not allowed here, only "
                                 "requirements like 'numpy>=2' or 'tqdm'")
            try:
                Requirement(item)
            except InvalidRequirement as exc:
                raise ValueError(f"{item!r} is not a pip requirement: {exc}") from None
        return v

    @field_validator("conda")
    @classmethod
    def _conda_specs(cls, v: list[str]) -> list[str]:
        for item in v:
            # A package spec, never a conda option (`--file x`, `-c chan`, `--prefix p`).
            if item.strip().startswith("-"):
                raise ValueError(f"{item!r}: conda options are not allowed here, only package "
                                 "specs like 'python=3.12' or 'numpy'")
            if not CONDA_SPEC.fullmatch(item):
                raise ValueError(f"{item!r} is not a conda package spec (NAME, NAME=VERSION, "
                                 "NAME>=VERSION, CHANNEL::NAME)")
        return v

    @field_validator("environment")
    @classmethod
    def _env(cls, v: list[str]) -> list[str]:
        for item in v:
            name, eq, _ = item.partition("=")
            if not eq or not ENV_NAME.match(name):
                raise ValueError(f"expected NAME=VALUE, got {item!r}")
        return v

    def merged(self, override: Resources | None) -> Resources:
        """Per-task resources override the experiment's, key by key (compute field by field)."""
        if override is None:
            return self
        data = self.model_dump(exclude_unset=True)
        over = override.model_dump(exclude_unset=True)
        compute = {**data.get("compute", {}), **over.pop("compute", {})}
        data.update(over)
        if compute:
            data["compute"] = compute
        return Resources.model_validate(data)


class TaskSpec(_Strict):
    script: str | None = None
    command: str | None = None
    task_inputs: dict[str, Scalar | list[Scalar]] = {}
    task_outputs: dict[str, str] = {}
    foreach: list[str] = []
    depends_on: list[str] = []
    sweep: Literal["product", "zip"] = "product"
    resources: Resources | None = None
    retries: int = Field(0, ge=0, le=100)

    @field_validator("task_outputs")
    @classmethod
    def _outputs_inside(cls, v: dict[str, str]) -> dict[str, str]:
        for name, path in v.items():
            inside_workdir(path, f"output {name}")
        return v


class Constraints(_Strict):
    """What placement optimises and must respect (see flows/placement.py)."""

    objective: Literal["cost", "time", "balanced"] | None = None  # default: cost with a deadline
    deadline: Duration | None = None
    max_cost: float | None = Field(None, ge=0)
    preferred: list[str] = []
    excluded: list[str] = []

    @property
    def deadline_seconds(self) -> int | None:
        return parse_duration(self.deadline) if self.deadline else None

    @property
    def effective_objective(self) -> str:
        return self.objective or ("cost" if self.deadline else "time")


class ExperimentSpec(_Strict):
    name: str | None = None
    description: str = ""
    parameters: dict[str, Parameter] = {}
    scripts: dict[str, str] = {}
    tasks: dict[str, TaskSpec] = Field(min_length=1)
    resources: Resources = Resources()
    retries: int = Field(0, ge=0, le=100)
    constraints: Constraints = Constraints()


@dataclass
class LoadedSpec:
    """A validated spec, its source text, and where each YAML node sits (for messages)."""

    spec: ExperimentSpec
    source: str
    text: str
    name: str
    located: Located = field(default_factory=lambda: Located("<input>"))

    def problem(self, path: Path, message: str, *, at_key: bool = False) -> Problem:
        return self.located.problem(path, message, at_key=at_key)


def parse_spec_text(text: str, source: str = "<input>") -> LoadedSpec:
    """Parse and structurally validate an experiment; raises SpecError listing every problem."""
    spec, located = parse_located(text, source, ExperimentSpec)
    return LoadedSpec(spec, source, text, spec.name or FsPath(source).stem, located)


def load_spec(path: str | FsPath) -> LoadedSpec:
    return parse_spec_text(read_source(path), str(path))
