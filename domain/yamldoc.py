"""YAML documents validated by pydantic, with every problem located at its FILE:LINE:COL.

PyYAML's node tree gives each value's position; pydantic's error paths are mapped onto it.
Duplicate keys (which PyYAML silently collapses) are problems too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from airavata_prefect.domain.problems import Path, Problem, SpecError

M = TypeVar("M", bound=BaseModel)


@dataclass
class Located:
    """Where each node of one YAML document sits, for messages."""

    source: str
    marks: dict[Path, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def problem(self, path: Path, message: str, *, at_key: bool = False) -> Problem:
        # The nearest located ancestor: a missing key is reported at its parent mapping.
        table = self.key_marks if at_key and path in self.key_marks else self.marks
        probe = path
        while probe and probe not in table:
            probe = probe[:-1]
            table = self.marks
        line, col = table.get(probe, (1, 1))
        return Problem(message=message, path=path, source=self.source, line=line, col=col)


def _walk(node: yaml.Node, path: Path, located: Located, dupes: list[Problem]) -> None:
    located.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            child = (*path, key)
            located.key_marks[child] = (key_node.start_mark.line + 1,
                                        key_node.start_mark.column + 1)
            if key in seen:
                dupes.append(located.problem(child, f"duplicate key {key!r}", at_key=True))
            seen.add(key)
            _walk(value_node, child, located, dupes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), located, dupes)


def _pydantic_problem(err: Any, data: Any) -> tuple[Path, str, bool]:
    # Drop loc parts that are not in the document (pydantic adds union member tags).
    path: list[str | int] = []
    node = data
    for part in err["loc"]:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if in_dict or in_list:
            node = node[part]
        elif not (err["type"] in ("extra_forbidden", "missing") and part == err["loc"][-1]):
            continue
        path.append(part)
    kind = err["type"]
    if kind == "extra_forbidden":
        return tuple(path), f"unknown key {path[-1]!r}", True
    if kind == "missing":
        return tuple(path[:-1]), f"missing required key {path[-1]!r}", False
    msg = err["msg"].removeprefix("Value error, ")
    msg = msg[0].lower() + msg[1:]
    if "input" in err and not isinstance(err["input"], dict | list) and kind != "value_error":
        msg += f" (got {err['input']!r})"
    return tuple(path), msg, False


def parse_located(text: str, source: str, model: type[M]) -> tuple[M, Located]:
    """Parse `text` as one YAML mapping validated by `model`; SpecError lists every problem."""
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
    located = Located(source)
    problems: list[Problem] = []
    _walk(node, (), located, problems)
    try:
        data = yaml.SafeLoader(text).get_single_data()
    except yaml.YAMLError as exc:  # e.g. a bad tag: composes, but does not construct
        raise SpecError([Problem(f"malformed YAML: {exc}", (), source, 1, 1)]) from None
    if not isinstance(data, dict):
        raise SpecError([Problem("the document must be a mapping", (), source, 1, 1)])
    try:
        value = model.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            path, msg, at_key = _pydantic_problem(err, data)
            problems.append(located.problem(path, msg, at_key=at_key))
        raise SpecError(problems) from None
    if problems:
        raise SpecError(problems)
    return value, located


def read_source(path: str | FsPath) -> str:
    try:
        return FsPath(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([Problem("no such file", (), str(path))]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([Problem(f"cannot read: {exc}", (), str(path))]) from None
