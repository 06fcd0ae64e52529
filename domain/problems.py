"""Problems found in a user's input, reported all at once as `FILE:LINE:COL: error: PATH: msg`.

Kept apart from the spec models so the compiler, the CLI and the API share one error shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PathPart = str | int
Path = tuple[PathPart, ...]


def format_path(path: Sequence[PathPart]) -> str:
    """`("tasks", "task2", "foreach", 0)` -> `tasks.task2.foreach[0]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<document>"


@dataclass(frozen=True)
class Problem:
    message: str
    path: Path = ()
    source: str = "<input>"
    line: int | None = None
    col: int | None = None

    def render(self) -> str:
        where = self.source
        if self.line is not None:
            where += f":{self.line}:{self.col or 1}"
        return f"{where}: error: {format_path(self.path)}: {self.message}"


class SpecError(Exception):
    """One or more problems in an experiment spec or its run-time parameters."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = sorted(
            problems, key=lambda p: (p.source, p.line or 0, p.col or 0, p.message)
        )
        super().__init__("\n".join(p.render() for p in self.problems))
