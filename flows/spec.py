"""The experiment spec: the Airavata YAML format plus our extensions (see DESIGN.md).

`load_spec` parses and validates structure (pydantic); every problem carries the file, line and
column of the offending YAML node. Cross-references, ranges and the expansion itself are checked by
`flows.dag.compile_graph`, which reports through the same locator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flows.problems import Path, Problem, SpecError

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
STEP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
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
    time: str | None = None
    estimate: str | None = None  # expected runtime, for placement; defaults to `time`

    @field_validator("time", "estimate")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v

    @property
    def walltime_seconds(self) -> int | None:
        return parse_duration(self.time) if self.time else None


class StorageMount(_Strict):
    storage: str
    remote: str
    local: str


def parse_mount(text: str) -> StorageMount:
    parts = text.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"expected 'storage-resource:/remote/path:./local/path', got {text!r}")
    return StorageMount(storage=parts[0], remote=parts[1], local=parts[2])


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


class ExperimentSpec(_Strict):
    name: str | None = None
    description: str = ""
    parameters: dict[str, Parameter] = {}
    scripts: dict[str, str] = {}
    tasks: dict[str, TaskSpec] = Field(min_length=1)
    resources: Resources = Resources()
    retries: int = Field(0, ge=0, le=100)


@dataclass
class LoadedSpec:
    """A validated spec, its source text, and where each YAML node sits (for messages)."""

    spec: ExperimentSpec
    source: str
    text: str
    name: str
    marks: dict[Path, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def problem(self, path: Path, message: str, *, at_key: bool = False) -> Problem:
        return _problem(self.source, self.marks, self.key_marks, path, message, at_key)


def _problem(source: str, marks: dict, key_marks: dict, path: Path, message: str,
             at_key: bool = False) -> Problem:
    # Nearest located ancestor: a missing key is reported at its parent mapping.
    table = key_marks if at_key and path in key_marks else marks
    probe = path
    while probe and probe not in table:
        probe = probe[:-1]
        table = marks
    line, col = table.get(probe, (1, 1))
    return Problem(message=message, path=path, source=source, line=line, col=col)


def _walk(node: yaml.Node, path: Path, marks: dict, key_marks: dict, problems: list) -> None:
    marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            child = (*path, key)
            if key in seen:
                problems.append((child, f"duplicate key {key!r}", key_node))
            seen.add(key)
            key_marks[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            _walk(value_node, child, marks, key_marks, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), marks, key_marks, problems)


def _pydantic_problem(err: dict, data: Any) -> tuple[Path, str, bool]:
    # Drop loc parts that are not in the document (pydantic adds union member tags).
    path: list[str | int] = []
    node = data
    for part in err["loc"]:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if in_dict or in_list:
            node = node[part]
        elif err["type"] in ("extra_forbidden", "missing") and part == err["loc"][-1]:
            pass
        else:
            continue
        path.append(part)
    kind = err["type"]
    if kind == "extra_forbidden":
        return tuple(path), f"unknown key {path[-1]!r}", True
    if kind == "missing":
        return tuple(path[:-1]), f"missing required key {path[-1]!r}", False
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    msg = msg[0].lower() + msg[1:]
    if "input" in err and not isinstance(err["input"], dict | list) and kind != "value_error":
        msg += f" (got {err['input']!r})"
    return tuple(path), msg, False


def parse_spec_text(text: str, source: str = "<input>") -> LoadedSpec:
    """Parse and structurally validate an experiment; raises SpecError listing every problem."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        msg = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise SpecError([Problem(f"malformed YAML: {msg}", (), source, line, col)]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Problem(f"malformed YAML: {exc}", (), source, 1, 1)]) from None
    if node is None:
        raise SpecError([Problem("the document is empty", (), source, 1, 1)])

    marks: dict[Path, tuple[int, int]] = {}
    key_marks: dict[Path, tuple[int, int]] = {}
    dupes: list = []
    _walk(node, (), marks, key_marks, dupes)
    problems = [_problem(source, marks, key_marks, p, m, True) for p, m, _ in dupes]
    try:
        data = yaml.SafeLoader(text).get_single_data()
    except yaml.YAMLError as exc:  # e.g. a bad tag: composes, but does not construct
        raise SpecError([Problem(f"malformed YAML: {exc}", (), source, 1, 1)]) from None
    if not isinstance(data, dict):
        raise SpecError([Problem("the document must be a mapping", (), source, 1, 1)])

    try:
        spec = ExperimentSpec.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            path, msg, at_key = _pydantic_problem(err, data)
            problems.append(_problem(source, marks, key_marks, path, msg, at_key))
        raise SpecError(problems) from None
    if problems:
        raise SpecError(problems)
    name = spec.name or FsPath(source).stem
    return LoadedSpec(spec, source, text, name, marks, key_marks)


def load_spec(path: str | FsPath) -> LoadedSpec:
    p = FsPath(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([Problem("no such file", (), str(path))]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([Problem(f"cannot read: {exc}", (), str(path))]) from None
    return parse_spec_text(text, str(path))
