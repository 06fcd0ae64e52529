"""Typed experiment parameters: defaults from the spec, overrides from `--param KEY=VALUE`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airavata_prefect.domain.problems import Problem

if TYPE_CHECKING:
    from airavata_prefect.domain.spec import LoadedSpec

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def coerce(ptype: str, value: Any) -> Any:
    """Convert a YAML or command-line value to the parameter's type, or raise ValueError."""
    if isinstance(value, list | dict) or value is None:
        raise ValueError(f"expected a single {ptype} value, got {value!r}")
    if ptype == "int":
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected an int, got {value!r}")
        try:
            return int(value) if not isinstance(value, str) else int(value.strip(), 10)
        except ValueError:
            raise ValueError(f"expected an int, got {value!r}") from None
    if ptype == "float":
        if isinstance(value, bool):
            raise ValueError(f"expected a float, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"expected a float, got {value!r}") from None
    if ptype == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise ValueError(f"expected a bool (true/false), got {value!r}")
    if ptype == "path" and str(value).strip() == "":
        raise ValueError("expected a path, got an empty string")
    return value if isinstance(value, str) else render(value)


def render(value: Any) -> str:
    """The environment-variable form of a value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_overrides(items: list[str]) -> tuple[dict[str, str], list[Problem]]:
    """`["K=V", ...]` from the command line -> dict; malformed items become problems."""
    out: dict[str, str] = {}
    problems = []
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            problems.append(Problem("expected KEY=VALUE", source=f"--param {item}"))
        else:
            out[key.strip()] = value
    return out, problems


def resolve_parameters(loaded: LoadedSpec, overrides: Mapping[str, str],
                       problems: list[Problem]) -> tuple[dict[str, str], dict[str, str]]:
    """-> ({name: rendered value}, {name: type}); unknown overrides and bad values are problems."""
    params = loaded.spec.parameters
    values: dict[str, str] = {}
    for name, param in params.items():
        path = ("parameters", name)
        if name in overrides:
            try:
                values[name] = render(coerce(param.type, overrides[name]))
            except ValueError as exc:
                problems.append(Problem(f"{name}: {exc}", source=f"--param {name}"))
            continue
        if param.default is None:
            problems.append(loaded.problem(path, f"parameter {name!r} has no default: pass "
                                                 f"--param {name}=VALUE"))
            continue
        try:
            values[name] = render(coerce(param.type, param.default))
        except ValueError as exc:
            problems.append(loaded.problem((*path, "default"), str(exc)))
    for name in overrides:
        if name not in params:
            known = ", ".join(params) or "none declared"
            problems.append(Problem(f"unknown parameter {name!r} (parameters: {known})",
                                    source=f"--param {name}"))
    return values, {n: p.type for n, p in params.items()}
