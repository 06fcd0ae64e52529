"""Compiling an experiment file and placing it: shared by `compile`, `plan` and submit.
Loads neither Prefect nor the store, so validating a file stays fast."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from airavata_prefect.domain import placement
from airavata_prefect.domain.compile import compile_graph
from airavata_prefect.domain.dag import TaskGraph
from airavata_prefect.domain.lineage import script_sha256
from airavata_prefect.domain.params import parse_overrides
from airavata_prefect.domain.plan import Plan
from airavata_prefect.domain.problems import SpecError
from airavata_prefect.domain.resources import ComputeResource
from airavata_prefect.domain.spec import LoadedSpec, format_duration, load_spec
from airavata_prefect.domain.usage import percentile


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


# Earlier runs of a script that placement needs before it trusts their runtimes over `time`.
MIN_RUNS = 3
MIN_RUNTIME_S = 0.01


@dataclass(frozen=True)
class Learned:
    """What earlier runs of a step's script took: their p90 (seconds), how many, where."""

    p90: float
    runs: int
    resources: tuple[str, ...]

    def note(self) -> str:
        return (f"p90 of {self.runs} earlier runs of its script on "
                f"{', '.join(self.resources)}: {format_duration(round(self.p90))} "
                f"({self.p90:.2f} s)")


def learned_runtimes(runtimes: Callable[[list[str]], dict[tuple[str, str], list[float]]],
                     graph: TaskGraph) -> dict[str, Learned]:
    """For each step without an `estimate`, what completed instances of the same script
    (the same bytes, whatever experiment ran it) took, read through `runtimes` (the store's
    `tasks.runtimes`); steps with fewer than MIN_RUNS such runs are left out."""
    hashes = {s.name: script_sha256(s) for s in graph.steps
              if not (s.resources.compute and s.resources.compute.estimate)}
    if not hashes:
        return {}
    found = runtimes(sorted(set(hashes.values())))
    out: dict[str, Learned] = {}
    for step, digest in hashes.items():
        walls = [w for (h, _), ws in found.items() if h == digest for w in ws]
        if len(walls) >= MIN_RUNS:
            out[step] = Learned(max(MIN_RUNTIME_S, percentile(walls, 90) or 0.0), len(walls),
                                tuple(sorted(r for h, r in found if h == digest)))
    return out


def plan_experiment(loaded: LoadedSpec, graph: TaskGraph, resources: list[ComputeResource],
                    *, user: str, time_limit: float = placement.TIME_LIMIT_S,
                    learned: Mapping[str, Learned] | None = None) -> Plan:
    """Place the experiment's instances on `resources`; unknown resource names in its
    constraints are input errors, located in the spec. `learned`: runtimes of earlier runs,
    used for steps that give no `estimate` (the plan says so)."""
    names = {r.name for r in resources}
    problems = [loaded.problem(("constraints", key, i),
                               f"unknown resource {name!r} (resources: {', '.join(sorted(names))})")
                for key in ("preferred", "excluded")
                for i, name in enumerate(getattr(loaded.spec.constraints, key))
                if name not in names]
    if problems:
        raise SpecError(problems)
    learned = learned or {}
    plan = placement.plan(placement.task_classes(graph, {k: v.p90 for k, v in learned.items()}),
                          resources, loaded.spec.constraints,
                          usable=lambda r: r.users is None or user in r.users, user=user,
                          time_limit=time_limit)
    plan.estimates = {step: v.note() for step, v in learned.items()}
    return plan


__all__ = ["Learned", "compile_file", "learned_runtimes", "plan_experiment"]
