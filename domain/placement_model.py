"""The mixed-integer program behind placement, on plain numbers (formulation: flows/placement.py).

Kept apart from the domain types so the model can be built, relaxed and re-solved cheaply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pulp

Pair = tuple[int, int]  # (class index, resource index)


@dataclass
class ModelInput:
    n: list[int]                     # instances per class
    t: list[float]                   # runtime per instance (s)
    level: list[int]                 # DAG level per class
    q: list[float]                   # queue wait per resource (s)
    pairs: list[Pair]                # eligible (class, resource)
    cost: dict[Pair, float]          # per instance
    slots: dict[Pair, int]           # instances at once
    core_load: dict[Pair, float]     # seconds of the whole resource's cores per instance
    gpu_load: dict[Pair, float] = field(default_factory=dict)
    preferred: set[int] = field(default_factory=set)


@dataclass
class Solution:
    status: str  # optimal | feasible | infeasible
    x: dict[Pair, float]
    cost: float
    makespan: float
    finish: dict[tuple[int, int], float]  # (resource, level) -> finish within the level
    objective: float

    @classmethod
    def of(cls, inp: ModelInput, status: str, x: dict[Pair, float], objective: float
           ) -> Solution:
        cost, finish = evaluate(inp, x)
        return cls(status, x, cost, sum(level_times(finish).values()), finish, objective)


def evaluate(inp: ModelInput, x: dict[Pair, float]) -> tuple[float, dict[tuple[int, int], float]]:
    """(cost, {(resource, level): finish within the level}) of a placement, by the model's own
    formulas. Used instead of the solver's M_l, which is not tight when cost is minimised."""
    cost = sum(inp.cost[p] * v for p, v in x.items())
    finish: dict[tuple[int, int], float] = {}
    loads: dict[tuple[int, int], list[float]] = {}
    for (k, r), v in x.items():
        if v <= 0:
            continue
        key = (r, inp.level[k])
        acc = loads.setdefault(key, [0.0, 0.0, 0.0])
        acc[0] += inp.core_load[(k, r)] * v
        acc[1] += inp.gpu_load.get((k, r), 0.0) * v
        acc[2] = max(acc[2], inp.t[k] * math.ceil(v / inp.slots[(k, r)] - 1e-9))
    for (r, lv), (cores, gpus, waves) in loads.items():
        finish[(r, lv)] = inp.q[r] + max(cores, gpus, waves)
    return cost, finish


def level_times(finish: dict[tuple[int, int], float]) -> dict[int, float]:
    out: dict[int, float] = {}
    for (_, lv), f in finish.items():
        out[lv] = max(out.get(lv, 0.0), f)
    return out


def goal(objective: str, cost: Any, makespan: Any, refs: tuple[float, float]) -> Any:
    """The objective, the one owner of its formula: of numbers (a plan's value) or of PuLP
    expressions (a model's objective). `balanced` normalises both by their lower bounds."""
    if objective == "cost":
        return cost
    if objective == "time":
        return makespan
    return cost * (1 / max(refs[0], 1e-9)) + makespan * (1 / max(refs[1], 1e-9))


def _placed(prob: pulp.LpProblem, inp: ModelInput, x: dict[Pair, Any]) -> dict[int, list[Pair]]:
    """Every instance of every class placed exactly once: sum_r x_kr = n_k."""
    by_class: dict[int, list[Pair]] = {}
    for p in x:
        by_class.setdefault(p[0], []).append(p)
    for k, ps in by_class.items():
        prob += pulp.lpSum(x[p] for p in ps) == inp.n[k], f"place_{k}"
    return by_class


def _loads(prob: pulp.LpProblem, inp: ModelInput, m: dict[int, Any], x: dict[Pair, Any],
           r: int, lv: int, wait: Any, here: list[Pair]) -> None:
    """A level lasts at least its resource's queue wait plus its core (and GPU) load."""
    prob += m[lv] >= wait + pulp.lpSum(inp.core_load[p] * x[p] for p in here), f"cores_{r}_{lv}"
    gpu = [p for p in here if inp.gpu_load.get(p)]
    if gpu:
        prob += (m[lv] >= wait + pulp.lpSum(inp.gpu_load[p] * x[p] for p in gpu),
                 f"gpus_{r}_{lv}")


def _limits_and_goal(prob: pulp.LpProblem, inp: ModelInput, x: dict[Pair, Any],
                     m: dict[int, Any], objective: str, deadline: float | None,
                     max_cost: float | None, refs: tuple[float, float]) -> Any:
    """Floor cuts, the hard deadline and budget, and the objective's expression."""
    _floor_cuts(prob, inp, m, list(x))
    cost = pulp.lpSum(inp.cost[p] * x[p] for p in x)
    makespan = pulp.lpSum(m.values())
    if deadline is not None:
        prob += makespan <= deadline, "deadline"
    if max_cost is not None:
        prob += cost <= max_cost, "max_cost"
    return goal(objective, cost, makespan, refs)


def _build(inp: ModelInput, objective: str, deadline: float | None, max_cost: float | None,
           refs: tuple[float, float], start: dict[Pair, float] | None = None
           ) -> tuple[pulp.LpProblem, dict[Pair, Any]]:
    """The exact mixed-integer model (its relaxation is `_lp`).

    Every pair has its waves w_kr: x_kr <= min(slots_kr, n_k) w_kr, and M_l >= q_r y_rl +
    t_k w_kr, so a class's runtime counts only on the resources that run it. For a class one
    wave holds, w_kr is binary, the indicator of x_kr > 0 (big-M n_k). (Charging t_k y_rl
    instead, to every class eligible on a resource the level uses, overstated M_l: bench
    scenario 4's `time` optimum, 14,460 s, read 15,060 s.) M_l is then `evaluate`'s finish.
    `start`, a plan, sets every variable's initial value (for CBC's warm start)."""
    cat = pulp.LpInteger
    prob = pulp.LpProblem("placement", pulp.LpMinimize)
    x = {p: pulp.LpVariable(f"x_{p[0]}_{p[1]}", 0, inp.n[p[0]], cat=cat) for p in inp.pairs}
    used = {(r, lv) for (k, r) in inp.pairs for lv in [inp.level[k]]}
    y = {u: pulp.LpVariable(f"y_{u[0]}_{u[1]}", 0, 1, cat=pulp.LpBinary) for u in used}
    m = {lv: pulp.LpVariable(f"m_{lv}", 0) for lv in sorted(set(inp.level))}
    _placed(prob, inp, x)
    for (k, r), var in x.items():
        lv = inp.level[k]
        prob += var <= inp.n[k] * y[(r, lv)], f"use_{k}_{r}"
        most = math.ceil(inp.n[k] / inp.slots[(k, r)])
        waves = pulp.LpVariable(f"w_{k}_{r}", 0, most,
                                cat=pulp.LpBinary if most == 1 else cat)
        prob += min(inp.slots[(k, r)], inp.n[k]) * waves >= var, f"waves_{k}_{r}"
        prob += waves <= most * y[(r, lv)], f"wuse_{k}_{r}"  # valid; speeds up CBC
        prob += m[lv] >= inp.q[r] * y[(r, lv)] + inp.t[k] * waves, f"wave_{k}_{r}"
        if start is not None:
            var.setInitialValue(start.get((k, r), 0.0))
            waves.setInitialValue(math.ceil(start.get((k, r), 0.0) / inp.slots[(k, r)] - 1e-9))
    for (r, lv) in used:
        here = [p for p in inp.pairs if p[1] == r and inp.level[p[0]] == lv]
        _loads(prob, inp, m, x, r, lv, inp.q[r] * y[(r, lv)], here)
    prob += _limits_and_goal(prob, inp, x, m, objective, deadline, max_cost, refs)
    if start is not None:
        finish = evaluate(inp, start)[1]
        levels = level_times(finish)
        for u, var in y.items():
            var.setInitialValue(1 if u in finish else 0)
        for lv, var in m.items():
            var.setInitialValue(levels.get(lv, 0.0))
    return prob, x


def _start(inp: ModelInput, x: dict[Pair, float] | None, deadline: float | None,
           max_cost: float | None) -> dict[Pair, float] | None:
    """`x` (the caller's start, e.g. placement_start.list_schedule) when it meets the limits:
    a plan to warm-start CBC from. Without one CBC can end a short time limit with no plan at
    all, even for a deadline the fastest plan meets with room to spare (bench scenarios 6, 8
    and 9 at 2 s, deadline 1.5 x the fastest makespan)."""
    if x is None:
        return None
    cost, finish = evaluate(inp, x)
    if (deadline is not None and sum(level_times(finish).values()) > deadline + 1e-6) or \
            (max_cost is not None and cost > max_cost + 1e-6):
        return None
    return x


def solve(inp: ModelInput, objective: str, *, deadline: float | None = None,
          max_cost: float | None = None, time_limit: float = 10.0,
          refs: tuple[float, float] = (1.0, 1.0),
          start: dict[Pair, float] | None = None) -> Solution:
    start = _start(inp, start, deadline, max_cost)
    prob, x = _build(inp, objective, deadline, max_cost, refs, start)
    prob.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, warmStart=start is not None))
    # "Not Solved" after a time limit means CBC found no integer solution: its values are the
    # LP relaxation's, not a plan.
    if pulp.LpStatus[prob.status] != "Optimal" or any(v.value() is None for v in x.values()):
        return Solution("infeasible", {}, math.inf, math.inf, {}, math.inf)
    sol = {p: float(round(max(0.0, v.value() or 0.0))) for p, v in x.items()}
    # CBC reports "Optimal" after a time limit when it holds an incumbent: treat a solve that
    # used the whole limit as merely feasible.
    timed_out = prob.solutionTime >= time_limit * 0.98
    return Solution.of(inp, "feasible" if timed_out else "optimal", sol,
                       pulp.value(prob.objective) or 0.0)


def prefer(inp: ModelInput, base: Solution, objective: str, *, deadline: float | None,
           max_cost: float | None, time_limit: float, refs: tuple[float, float]) -> Solution:
    """Second, lexicographic solve: most instances on preferred resources, objective held."""
    if not inp.preferred:
        return base
    prob, x = _build(inp, objective, deadline, max_cost, refs)
    slack = abs(base.objective) * 1e-6 + 1e-6
    prob += prob.objective <= base.objective + slack, "hold_objective"
    prob.setObjective(-pulp.lpSum(v for (k, r), v in x.items() if r in inp.preferred))
    prob.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit))
    if pulp.LpStatus[prob.status] != "Optimal":
        return base
    sol = {p: float(round(max(0.0, v.value() or 0.0))) for p, v in x.items()}
    return Solution.of(inp, base.status, sol, base.objective)


def _floor_cuts(prob: pulp.LpProblem, inp: ModelInput, m: dict[int, Any],
                pairs: list[Pair]) -> None:
    """Valid cuts that keep relaxations honest: some resource runs at least one wave of every
    class, paying its queue wait, so M_l >= min_r (q_r + t_k). Without them a fractional y
    nearly erases queue waits and the LP bound says little."""
    floor: dict[int, float] = {}
    for (k, r) in pairs:
        floor[k] = min(floor.get(k, math.inf), inp.q[r] + inp.t[k])
    for k, f in floor.items():
        prob += m[inp.level[k]] >= f, f"floor_{k}"


def _lp(inp: ModelInput, objective: str, deadline: float | None, max_cost: float | None,
        refs: tuple[float, float], fixed: set[tuple[int, int]] | None,
        hold: float | None = None) -> tuple[float, dict[Pair, float]] | None:
    """The linear relaxation of `_build`: waves fractional (w = x/slots) and, when `fixed` is
    None, one aggregated usage row per (resource, level); both only loosen the MIP, so its
    optimum is a lower bound. With `fixed`, exactly those (resource, level) groups are used
    (y = 1). With `hold`, the objective is held under it and most instances go to preferred
    resources (the lexicographic second pass)."""
    prob = pulp.LpProblem("placement_lp", pulp.LpMinimize)
    pairs = [p for p in inp.pairs if fixed is None or (p[1], inp.level[p[0]]) in fixed]
    x = {p: pulp.LpVariable(f"x_{p[0]}_{p[1]}", 0, inp.n[p[0]]) for p in pairs}
    groups: dict[tuple[int, int], list[Pair]] = {}
    for p in pairs:
        groups.setdefault((p[1], inp.level[p[0]]), []).append(p)
    y = {g: 1.0 if fixed is not None else pulp.LpVariable(f"y_{g[0]}_{g[1]}", 0, 1)
         for g in groups}
    m = {lv: pulp.LpVariable(f"m_{lv}", 0) for lv in set(inp.level)}
    if len(_placed(prob, inp, x)) < len(inp.n):
        return None  # a class lost every resource it could use
    for (r, lv), ps in groups.items():
        if fixed is None:
            prob += (pulp.lpSum(x[p] * (1.0 / inp.n[p[0]]) for p in ps) <= len(ps) * y[(r, lv)],
                     f"use_{r}_{lv}")
        wait = inp.q[r] * y[(r, lv)]
        for p in ps:
            prob += m[lv] >= wait + (inp.t[p[0]] / inp.slots[p]) * x[p], f"wave_{p[0]}_{r}"
        _loads(prob, inp, m, x, r, lv, wait, ps)
    objective_expr = _limits_and_goal(prob, inp, x, m, objective, deadline, max_cost, refs)
    if hold is None:
        prob += objective_expr
    else:
        prob += objective_expr <= hold, "hold_objective"
        prob += -pulp.lpSum(v for (k, r), v in x.items() if r in inp.preferred)
    prob.solve(pulp.PULP_CBC_CMD(msg=False))
    if pulp.LpStatus[prob.status] != "Optimal":
        return None
    return pulp.value(prob.objective) or 0.0, {p: v.value() or 0.0 for p, v in x.items()}


def _round(inp: ModelInput, x: dict[Pair, float]) -> dict[Pair, float]:
    """Largest remainder per class: integers that still sum to n_k (ties by resource order)."""
    by_class: dict[int, list[Pair]] = {}
    for p in x:
        by_class.setdefault(p[0], []).append(p)
    out: dict[Pair, float] = {}
    for k, ps in by_class.items():
        # The LP's values sit within ~1e-6 of integers either way: round near-integers first.
        base = {p: max(0, math.floor(x[p] + 1e-6)) for p in ps}
        left = inp.n[k] - sum(base.values())
        frac = sorted(ps, key=lambda p: (-(x[p] - base[p]), p[1]))
        while left > 0:  # largest remainders get the missing instances
            for p in frac[:left]:
                base[p] += 1
            left = inp.n[k] - sum(base.values())
        for p in reversed(frac):  # smallest remainders give back any surplus
            if left == 0:
                break
            take = min(base[p], -left)
            base[p] -= take
            left += take
        out.update({p: float(v) for p, v in base.items()})
    return out


def solve_relaxed_and_round(inp: ModelInput, objective: str, *, deadline: float | None,
                            max_cost: float | None, refs: tuple[float, float]
                            ) -> tuple[Solution | None, float | None]:
    """(rounded plan or None, LP lower bound or None). Fast on large sweeps, where rounding a
    handful of instances moves the objective by a tiny fraction."""
    first = _lp(inp, objective, deadline, max_cost, refs, None)
    if first is None:
        return None, None
    bound, x1 = first
    if inp.preferred:  # choose resource groups with the preference already applied
        held = _lp(inp, objective, deadline, max_cost, refs, None,
                   hold=bound + abs(bound) * 1e-7 + 1e-9)
        if held is not None:
            x1 = held[1]
    load: dict[tuple[int, int], float] = {}
    for p, v in x1.items():
        load[(p[1], inp.level[p[0]])] = load.get((p[1], inp.level[p[0]]), 0.0) + v
    fixed = {g for g, v in load.items() if v >= 0.5}
    for k in range(len(inp.n)):  # every class keeps at least its largest LP share
        mine = [p for p in x1 if p[0] == k]
        if not any((p[1], inp.level[k]) in fixed for p in mine):
            best = max(mine, key=lambda p: x1[p])
            fixed.add((best[1], inp.level[k]))
    second = _lp(inp, objective, deadline, max_cost, refs, fixed)
    if second is None:
        return None, bound
    if inp.preferred:
        hold = second[0] + abs(second[0]) * 1e-7 + 1e-9
        preferred = _lp(inp, objective, deadline, max_cost, refs, fixed, hold=hold)
        if preferred is not None:
            second = (second[0], preferred[1])
    rounded = _round(inp, second[1])
    if objective == "time":  # (cost and balanced could lose by trading cost for time)
        rounded = repair_waves(inp, rounded, max_cost=max_cost)
    sol = Solution.of(inp, "feasible", rounded, 0.0)
    if (deadline is not None and sol.makespan > deadline + 1e-6) or \
            (max_cost is not None and sol.cost > max_cost + 1e-6):
        return None, bound
    sol.objective = goal(objective, sol.cost, sol.makespan, refs)
    return sol, bound


def _group_finish(inp: ModelInput, x: dict[Pair, float], members: list[Pair], r: int) -> float:
    cores = gpus = waves = 0.0
    used = False
    for p in members:
        v = x.get(p, 0.0)
        if v <= 0:
            continue
        used = True
        cores += inp.core_load[p] * v
        gpus += inp.gpu_load.get(p, 0.0) * v
        waves = max(waves, inp.t[p[0]] * math.ceil(v / inp.slots[p] - 1e-9))
    return inp.q[r] + max(cores, gpus, waves) if used else 0.0


def repair_waves(inp: ModelInput, x: dict[Pair, float], *, max_cost: float | None,
                 budget_s: float = 0.15) -> dict[Pair, float]:
    """Rounding charges whole waves: when a level's slowest resource is held up by the last,
    partly filled wave of one class, move those instances where they finish sooner. Greedy,
    first improvement, within a time budget. Every move shortens its level and touches no
    other, so the makespan only falls (a deadline stays met); cost is held under max_cost."""
    import time as _time

    stop = _time.perf_counter() + budget_s
    x = dict(x)
    groups: dict[tuple[int, int], list[Pair]] = {}
    for p in inp.pairs:
        groups.setdefault((p[1], inp.level[p[0]]), []).append(p)
    finish = {g: _group_finish(inp, x, ps, g[0]) for g, ps in groups.items()}
    cost = sum(inp.cost[p] * v for p, v in x.items())
    improved = True
    while improved and _time.perf_counter() < stop:
        improved = False
        for lv in sorted(set(inp.level)):
            level = {g: f for g, f in finish.items() if g[1] == lv}
            worst_g = max(level, key=lambda g: level[g])
            worst = level[worst_g]
            r = worst_g[0]
            for p in sorted((p for p in groups[worst_g] if x.get(p, 0) > 0),
                            key=lambda p: -inp.t[p[0]]):
                k, v = p[0], x[p]
                tail = v - (math.ceil(v / inp.slots[p] - 1e-9) - 1) * inp.slots[p]
                if tail <= 0:
                    continue
                for q in (q for q in inp.pairs if q[0] == k and q[1] != r):
                    g2 = (q[1], lv)
                    extra_cost = tail * (inp.cost[q] - inp.cost[p])
                    if max_cost is not None and cost + extra_cost > max_cost + 1e-9:
                        continue
                    trial = {**x, p: v - tail, q: x.get(q, 0.0) + tail}
                    f1 = _group_finish(inp, trial, groups[worst_g], r)
                    f2 = _group_finish(inp, trial, groups[g2], q[1])
                    new_level = max(f1, f2, *(f for g, f in level.items()
                                              if g not in (worst_g, g2)), 0.0)
                    if new_level < worst - 1e-6:
                        x, cost = trial, cost + extra_cost
                        finish[worst_g], finish[g2] = f1, f2
                        improved = True
                        break
                if improved:
                    break
            if improved:
                break
    return {p: v for p, v in x.items() if v > 0}
