"""Placement: how many tasks of each class run on each compute resource (a PuLP/CBC model).

Sets: task classes k (one per step: a step's instances share one resource request), compute
resources r, DAG levels l (a step's level is its longest path from a root step).

Data: n_k instances; cpu_k, gpu_k, ram_k, node_k per instance; runtime t_k (the step's
`estimate`, else its walltime `time`, else one hour); r's nodes N_r, cores C_r, GPUs G_r and
memory per node, max walltime, expected queue wait q_r, prices; `slots_kr`, how many instances of
k fit on r at once (per node: limited by cores, GPUs and memory; multi-node instances take whole
nodes). A class is eligible on r only if one instance fits a node (cores, GPUs, memory), enough
nodes exist, its walltime fits, r is not excluded and the user holds a credential for r.

Variables: x_kr integer >= 0 (instances of k on r, eligible pairs only); w_kr integer >= 0,
the waves of k on r (x_kr ≤ min(slots_kr, n_k) · w_kr: for a class one wave holds, a 0/1
indicator that k runs on r at all; w_kr ≤ most waves · y_rl); y_rl ∈ {0,1}, r used at level l;
M_l ≥ 0, level l's duration.

Constraints: Σ_r x_kr = n_k (every instance placed once); x_kr ≤ n_k · y_rl;
  M_l ≥ q_r y_rl + Σ_k∈l x_kr cpu_k t_k / (N_r C_r)   (core-seconds over the resource's cores)
  M_l ≥ q_r y_rl + Σ_k∈l x_kr gpu_k t_k / (N_r G_r)   (likewise GPUs, when the level uses them)
  M_l ≥ q_r y_rl + t_k w_kr                            (never faster than its waves, and a
                                                        class's runtime only where it runs)
  makespan T = Σ_l M_l ≤ deadline;  cost = Σ x_kr c_kr ≤ max_cost, where
  c_kr = t_k/3600 · (cpu_k core_hour + gpu_k gpu_hour + node_k node_hour) + input_gb_k · egress.

Objectives: `cost` minimises cost, `time` minimises T, `balanced` minimises
cost/cost_ref + T/T_ref with the references the cheapest and the fastest lower bounds (each
instance on its cheapest, respectively fastest, eligible resource). Default: `cost` when a
deadline is given, else `time`. Deadline and budget are hard constraints whenever given.

Solving: the LP relaxation (fractional waves, aggregated usage rows) gives a lower bound and a
fractional plan; a second LP fixes which resources each level uses, so queue waits are exact,
and largest-remainder rounding makes it integral. That plan is taken when it is within 2% of
the bound, or when the model is too large for CBC to do better in time; otherwise the exact MIP
runs under the time limit. `gap` is 0 for a proven optimum, else the distance to the LP bound.
With objective `time` and no budget the levels are independent, and the exact MIP is one
tightened model per level, warm-started from a list-scheduling plan (domain/placement_start.py);
CBC proves a level optimal within 0.01% or 1 s.

Extensions to the agreed model, and why: `preferred` breaks ties lexicographically (a second
solve maximises preferred placements with the objective held at its optimum), not by a weight
that could distort the objective; queue wait is paid only at levels where a resource is used
(y_rl), so an idle resource does not slow the plan; the reported gap is measured against the
LP relaxation's bound when CBC stops at its time limit (0 when it proved optimality).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from airavata_prefect.domain.dag import TaskGraph
from airavata_prefect.domain.placement_model import (
    ModelInput,
    Pair,
    Solution,
    level_times,
    prefer,
    repair_waves,
    solve,
    solve_relaxed_and_round,
)
from airavata_prefect.domain.placement_start import list_schedule, solve_makespan
from airavata_prefect.domain.plan import Assignment, Plan
from airavata_prefect.domain.resources import ComputeResource
from airavata_prefect.domain.spec import Constraints, format_duration, parse_duration

DEFAULT_RUNTIME_S = 3600.0
TIME_LIMIT_S = 10.0
GAP_TOLERANCE = 0.02  # accept the rounded LP plan within 2% of the LP bound
# Above this many (class, resource) pairs CBC rarely improves on the rounded LP within its time
# limit (measured: 200 classes x 20 resources, no integer solution in 10 s), so it is skipped
# unless the rounded plan misses a hard constraint.
EXACT_MAX_PAIRS = 400


@dataclass(frozen=True)
class TaskClass:
    name: str
    count: int
    cpu: int = 1
    gpu: int = 0
    ram_gb: float = 0.0
    node: int = 1
    runtime_s: float = DEFAULT_RUNTIME_S
    walltime_s: int | None = None
    level: int = 0
    input_gb: float = 0.0
    storages: tuple[str, ...] = ()
    parent: str | None = None  # the foreach parent whose resource its instances prefer


def task_classes(graph: TaskGraph, learned: Mapping[str, float] | None = None
                 ) -> list[TaskClass]:
    """One class per step. Its runtime: the step's `estimate`; else what earlier runs of the
    same script took (`learned`, seconds by step); else its `time`; else an hour."""
    learned = learned or {}
    levels: dict[str, int] = {}
    out = []
    for s in graph.steps:  # topological order: parents' levels are known
        levels[s.name] = 1 + max((levels[u] for u in s.upstream_steps), default=-1)
        c = s.resources.compute
        storages = tuple(sorted({m.split(":", 1)[0] for m in s.resources.storage}))
        out.append(TaskClass(
            name=s.name, count=s.count, cpu=c.cpu if c else 1, gpu=c.gpu if c else 0,
            ram_gb=c.ram_gb if c else 0.0, node=c.node if c else 1,
            runtime_s=float((parse_duration(c.estimate) if c and c.estimate else None)
                            or learned.get(s.name)
                            or (c.walltime_seconds if c else None) or DEFAULT_RUNTIME_S),
            walltime_s=c.walltime_seconds if c else None, level=levels[s.name],
            input_gb=c.input_gb if c else 0.0, storages=storages,
            parent=s.foreach[0] if s.foreach else None))
    return out


def ineligible(k: TaskClass, r: ComputeResource, constraints: Constraints,
               usable: Callable[[ComputeResource], bool], user: str) -> str | None:
    """Why class k cannot run on r, or None when it can."""
    if r.name in constraints.excluded:
        return "excluded by the experiment's constraints"
    if not usable(r):
        return f"no credential for user {user}"
    if k.gpu > r.gpus_per_node:
        return "no GPUs" if not r.gpus_per_node else f"{r.gpus_per_node} GPUs per node"
    if not r.oversubscribe and k.cpu > r.cores_per_node:
        return f"{r.cores_per_node} cores per node"
    # Cores can be oversubscribed (a wide task gets all of them, and runs slower); memory
    # cannot: a task that needs more than a node has would only be killed.
    if r.mem_gb_per_node and k.ram_gb > r.mem_gb_per_node:
        return f"{r.mem_gb_per_node:g} GB memory per node"
    if k.node > r.nodes:
        return f"{r.nodes} nodes"
    if k.walltime_s and r.max_walltime_seconds and k.walltime_s > r.max_walltime_seconds:
        return f"max walltime {r.max_walltime}"
    return None


def slots(k: TaskClass, r: ComputeResource) -> int:
    """Instances of k that run at once on r."""
    if k.node > 1:
        return r.nodes // k.node
    limits = [r.cores_per_node // max(1, min(k.cpu, r.cores_per_node) if r.oversubscribe
                                      else k.cpu)]
    if k.gpu:
        limits.append(r.gpus_per_node // k.gpu)
    if k.ram_gb and r.mem_gb_per_node:
        limits.append(int(r.mem_gb_per_node // k.ram_gb))
    return max(1, min(limits)) * r.nodes


def unit_cost(k: TaskClass, r: ComputeResource) -> float:
    hours = k.runtime_s / 3600
    compute = hours * (k.cpu * r.cost.core_hour + k.gpu * r.cost.gpu_hour
                       + k.node * r.cost.node_hour)
    egress = (k.input_gb * sum(r.egress_gb.get(s, 0.0) for s in k.storages) / len(k.storages)
              if k.storages else 0.0)
    return compute + egress


def _cores(k: TaskClass, r: ComputeResource) -> int:
    return min(k.cpu, r.cores_per_node) if r.oversubscribe else k.cpu


def _demand(k: TaskClass) -> str:
    parts = [f"cpu={k.cpu}" if k.cpu > 1 else "", f"gpu={k.gpu}" if k.gpu else "",
             f"ram_gb={k.ram_gb:g}" if k.ram_gb else "", f"node={k.node}" if k.node > 1 else "",
             f"time={format_duration(k.walltime_s)}" if k.walltime_s else ""]
    return ", ".join(p for p in parts if p) or "cpu=1"


def _model_input(classes: Sequence[TaskClass], resources: Sequence[ComputeResource],
                 pairs: list[Pair], preferred: set[str]) -> ModelInput:
    inp = ModelInput(n=[k.count for k in classes], t=[k.runtime_s for k in classes],
                     level=[k.level for k in classes],
                     q=[float(r.queue_wait_seconds) for r in resources], pairs=pairs, cost={},
                     slots={}, core_load={},
                     preferred={i for i, r in enumerate(resources) if r.name in preferred})
    for (ki, ri) in pairs:
        k, r = classes[ki], resources[ri]
        inp.cost[(ki, ri)] = unit_cost(k, r)
        inp.slots[(ki, ri)] = slots(k, r)
        inp.core_load[(ki, ri)] = _cores(k, r) * k.runtime_s / (r.nodes * r.cores_per_node)
        if k.gpu:
            inp.gpu_load[(ki, ri)] = k.gpu * k.runtime_s / (r.nodes * r.gpus_per_node)
    return inp


def _references(inp: ModelInput) -> tuple[float, float]:
    """Lower bounds used to normalise `balanced`: everything on its cheapest resource; each
    level as fast as its longest class on its fastest resource."""
    cheapest: dict[int, float] = {}
    fastest: dict[int, float] = {}
    for (k, r) in inp.pairs:
        cheapest[k] = min(cheapest.get(k, math.inf), inp.cost[(k, r)] * inp.n[k])
        t = inp.q[r] + inp.t[k] * math.ceil(inp.n[k] / inp.slots[(k, r)])
        fastest[k] = min(fastest.get(k, math.inf), t)
    per_level: dict[int, float] = {}
    for k, t in fastest.items():
        per_level[inp.level[k]] = max(per_level.get(inp.level[k], 0.0), t)
    return sum(cheapest.values()), sum(per_level.values())


def _diagnose(inp: ModelInput, deadline: float | None, max_cost: float | None,
              time_limit: float) -> str:
    if deadline is not None:
        fastest = solve_makespan(inp, deadline=None, time_limit=time_limit)
        if fastest.makespan > deadline:
            return (f"deadline {format_duration(deadline)} cannot be met: the fastest placement "
                    f"needs {format_duration(fastest.makespan)}")
    if max_cost is not None:
        cheapest = solve(inp, "cost", time_limit=time_limit, start=list_schedule(inp))
        if cheapest.cost > max_cost:
            return (f"max_cost {max_cost:g} cannot be met: the cheapest placement costs "
                    f"{cheapest.cost:.2f}")
    if deadline is not None and max_cost is not None:
        in_time = solve(inp, "cost", deadline=deadline, time_limit=time_limit,
                        start=list_schedule(inp))
        return (f"deadline {format_duration(deadline)} and max_cost {max_cost:g} cannot both be "
                f"met: meeting the deadline costs at least {in_time.cost:.2f}")
    return "no placement satisfies the constraints"


def _gap(value: float, bound: float) -> float:
    return max(0.0, (value - bound) / abs(value)) if value else 0.0


def plan(classes: Sequence[TaskClass], resources: Sequence[ComputeResource],
         constraints: Constraints, *, usable: Callable[[ComputeResource], bool] = lambda r: True,
         user: str = "", time_limit: float = TIME_LIMIT_S,
         gap_tolerance: float = GAP_TOLERANCE) -> Plan:
    """Place every instance of every class; infeasible plans say which constraint binds."""
    start = time.perf_counter()
    objective = constraints.effective_objective
    classes = [k for k in classes if k.count > 0]  # nothing to place
    pairs: list[Pair] = []
    reasons = []
    for ki, k in enumerate(classes):
        why = {}
        for ri, r in enumerate(resources):
            reason = ineligible(k, r, constraints, usable, user)
            if reason is None:
                pairs.append((ki, ri))
            else:
                why[r.name] = reason
        if len(why) == len(resources):
            detail = "; ".join(f"{n}: {w}" for n, w in why.items()) or "no resources"
            reasons.append(f"step {k.name} needs {_demand(k)}: no eligible resource ({detail})")
    if reasons:
        return Plan("infeasible", objective, solve_seconds=time.perf_counter() - start,
                    reason="; ".join(reasons))
    inp = _model_input(classes, resources, pairs, set(constraints.preferred))
    refs = _references(inp)
    deadline, max_cost = constraints.deadline_seconds, constraints.max_cost
    # Large sweeps: an LP relaxation rounded to integers is within a hair of optimal and fast;
    # the exact MIP runs when that is not close enough (typically small experiments).
    fast, bound = solve_relaxed_and_round(inp, objective, deadline=deadline, max_cost=max_cost,
                                          refs=refs)
    exact_helps = len(pairs) <= EXACT_MAX_PAIRS  # CBC finds nothing better in time above it
    if fast is not None and bound is not None and (
            _gap(fast.objective, bound) <= gap_tolerance or not exact_helps):
        sol, gap = fast, _gap(fast.objective, bound)
        if gap <= 1e-9:  # an integer plan at the LP bound is optimal
            sol.status = "optimal"
    else:
        # Without a budget the makespan's levels are independent problems (placement_start).
        by_level = objective == "time" and max_cost is None
        if by_level:
            sol = solve_makespan(inp, deadline=deadline, time_limit=time_limit,
                                 starts=[fast.x] if fast is not None else [])
        else:
            sol = solve(inp, objective, deadline=deadline, max_cost=max_cost,
                        time_limit=time_limit, refs=refs, start=list_schedule(inp))
        if sol.status == "infeasible" and fast is None:
            return Plan("infeasible", objective, solve_seconds=time.perf_counter() - start,
                        reason=_diagnose(inp, deadline, max_cost, time_limit))
        if fast is not None and (sol.status == "infeasible" or fast.objective < sol.objective):
            sol = fast  # the MIP hit its time limit with something worse
        if by_level:
            pass  # preferences and local search are part of solve_makespan
        elif sol.status == "optimal":
            sol = prefer(inp, sol, objective, deadline=deadline, max_cost=max_cost,
                         time_limit=time_limit, refs=refs)
        elif objective == "time":  # stopped by the time limit: try shaving partial waves
            repaired = Solution.of(inp, "feasible",
                                   repair_waves(inp, sol.x, max_cost=max_cost), 0.0)
            if repaired.makespan < sol.makespan:
                repaired.objective = repaired.makespan
                sol = repaired
        # "optimal": CBC proved it (its default allowable gap is zero); else the LP bound.
        gap = 0.0 if sol.status == "optimal" else _gap(sol.objective, bound or 0.0)
    return Plan(sol.status, objective, total_cost=round(sol.cost, 6),
                makespan_seconds=round(sol.makespan, 3), gap=round(gap, 6),
                solve_seconds=round(time.perf_counter() - start, 3),
                assignments=_assignments(classes, resources, inp, sol))


def _assignments(classes: Sequence[TaskClass], resources: Sequence[ComputeResource],
                 inp: ModelInput, sol: Solution) -> list[Assignment]:
    levels = level_times(sol.finish)
    starts, acc = {}, 0.0
    for lv in sorted(levels):
        starts[lv] = acc
        acc += levels[lv]
    out = []
    for (ki, ri), v in sorted(sol.x.items()):
        if v > 0:
            lv = classes[ki].level
            out.append(Assignment(classes[ki].name, resources[ri].name, int(v),
                                  round(inp.cost[(ki, ri)] * v, 6),
                                  round(starts[lv] + sol.finish[(ri, lv)], 3)))
    return out
