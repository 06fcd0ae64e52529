"""A placement plan as stored with an experiment, and what it says of each instance.

Apart from the solver (domain/placement.py) so that reading a plan never loads PuLP.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from airavata_prefect.domain.dag import TaskGraph
from airavata_prefect.domain.resources import LOCAL


@dataclass
class Assignment:
    step: str
    resource: str
    count: int
    cost: float
    finish_seconds: float


@dataclass
class Plan:
    status: str  # optimal | feasible | infeasible
    objective: str
    total_cost: float | None = None
    makespan_seconds: float | None = None
    gap: float | None = None
    solve_seconds: float = 0.0
    assignments: list[Assignment] = field(default_factory=list)
    reason: str | None = None
    # Where each step's runtime came from, when not its own `estimate`: e.g.
    # "p90 of 40 earlier runs of its script: 12.3 s" (placement learns from history).
    estimates: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for a in self.assignments:
            out.setdefault(a.step, {})[a.resource] = a.count
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        fields = {k: v for k, v in data.items() if k != "assignments"}
        return cls(**fields, assignments=[Assignment(**a) for a in data.get("assignments", [])])


def expand(graph: TaskGraph, counts: dict[str, dict[str, int]]) -> dict[str, list[str]]:
    """The resource of every instance, deterministically. A foreach child takes its parent
    instance's resource while that resource has room for it (no data moves between sites)."""
    out: dict[str, list[str]] = {}
    for s in graph.steps:
        quota = dict(counts[s.name])
        names: list[str | None] = [None] * s.count
        if s.foreach and s.foreach[0] in out and len(quota) > 1:
            parent = out[s.foreach[0]]
            inner = s.sweep_count * math.prod(s.foreach_counts[1:])
            for i in range(s.count):
                r = parent[i // inner]
                if quota.get(r, 0) > 0:
                    names[i] = r
                    quota[r] -= 1
        rest = (r for r, c in quota.items() for _ in range(c))
        out[s.name] = [n if n is not None else next(rest) for n in names]
    return out


def placed_resources(plan: Plan | None, graph: TaskGraph) -> dict[str, list[str]] | None:
    """Every instance's resource, from the plan stored at submit; None when all are local."""
    if plan is None or all(a.resource == LOCAL for a in plan.assignments):
        return None
    return expand(graph, plan.counts())


__all__ = ["Assignment", "Plan", "expand", "placed_resources"]
