"""Compiling an experiment file and placing it: shared by `compile`, `plan` and submit.
Loads neither Prefect nor the store, so validating a file stays fast."""

from __future__ import annotations

from pathlib import Path

from airavata_prefect.domain import placement
from airavata_prefect.domain.compile import compile_graph
from airavata_prefect.domain.dag import TaskGraph
from airavata_prefect.domain.params import parse_overrides
from airavata_prefect.domain.plan import Plan
from airavata_prefect.domain.problems import SpecError
from airavata_prefect.domain.resources import ComputeResource
from airavata_prefect.domain.spec import LoadedSpec, load_spec


def compile_file(path: str | Path | LoadedSpec, params: list[str], *, root: str,
                 max_instances: int) -> tuple[LoadedSpec, dict[str, str], TaskGraph]:
    """Load (unless already loaded), validate and expand; every problem (spec and --param) in
    one SpecError."""
    overrides, param_problems = parse_overrides(params)
    try:
        loaded = path if isinstance(path, LoadedSpec) else load_spec(path)
        graph = compile_graph(loaded, overrides, root=root, max_instances=max_instances)
    except SpecError as exc:
        raise SpecError([*param_problems, *exc.problems]) from None
    if param_problems:
        raise SpecError(param_problems)
    return loaded, overrides, graph


def plan_experiment(loaded: LoadedSpec, graph: TaskGraph, resources: list[ComputeResource],
                    *, user: str, time_limit: float = placement.TIME_LIMIT_S) -> Plan:
    """Place the experiment's instances on `resources`; unknown resource names in its
    constraints are input errors, located in the spec."""
    names = {r.name for r in resources}
    problems = [loaded.problem(("constraints", key, i),
                               f"unknown resource {name!r} (resources: {', '.join(sorted(names))})")
                for key in ("preferred", "excluded")
                for i, name in enumerate(getattr(loaded.spec.constraints, key))
                if name not in names]
    if problems:
        raise SpecError(problems)
    return placement.plan(placement.task_classes(graph), resources, loaded.spec.constraints,
                          usable=lambda r: r.users is None or user in r.users, user=user,
                          time_limit=time_limit)


__all__ = ["compile_file", "plan_experiment"]
