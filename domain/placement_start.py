"""The makespan objective's own solve: a list-scheduling start, then one tightened MIP per level.

With objective `time` and no budget the DAG levels do not interact: the makespan is Σ_l M_l and a
class loads only its own level, so each level is a problem of its own. Solving them one by one
keeps CBC from splitting its search over several independent gaps (a deadline is checked on the
sum). Each level starts from the best of a list-scheduling plan (longest runtime first, every class
water-filled over its resources), the rounded LP plan and a local search from either; its finish
U_l then tightens the MIP (formulation: domain/placement.py):

- waves w_kr for every pair, so a resource's queue wait plus a class's runtime bind only where
  that class runs (as in the combined model);
- only pairs that fit the level at all: q_r + t_k <= U_l;
- x_kr <= cap_kr w_kr with cap_kr = min(n_k, instances of k that r finishes within U_l), and
  w_kr <= waves_kr y_r: far smaller big-Ms than n_k, so the relaxation sees queue waits;
- a resource's load bounded by its share of the level: Σ_k load_kr x_kr <= (U_l - q_r) y_r;
- M_l between the longest single instance (min_r q_r + t_k) and U_l;
- y_r <= Σ_k w_kr (no idle resource counted as used), and identical resources used, and
  loaded, in index order (no symmetric twins to branch over).

CBC is warm-started from the start, and a level's plan is never worse than its start.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable
from typing import Any

import pulp

from airavata_prefect.domain.placement_model import (
    ModelInput,
    Pair,
    Solution,
    solve,
)

EPS = 1e-9
# CBC stops a level within 0.01% or 1 s of its bound (CPLEX's and Gurobi's default relative
# gap; CBC's is 0, and it can spend minutes closing the last second of a 15,000 s level).
GAP_REL, GAP_ABS_S = 1e-4, 1.0
CBC_START_S = 0.05  # writing the model, starting CBC and reading its answer, outside its limit


def _by_level(inp: ModelInput) -> dict[int, list[Pair]]:
    out: dict[int, list[Pair]] = {}
    for p in inp.pairs:
        out.setdefault(inp.level[p[0]], []).append(p)
    return out


def _finish(inp: ModelInput, x: dict[Pair, float], pairs: Iterable[Pair]) -> dict[int, float]:
    """{resource: finish} of one level's pairs under placement x (evaluate's formulas)."""
    acc: dict[int, list[float]] = {}
    for p in pairs:
        v = x.get(p, 0.0)
        if v <= 0:
            continue
        a = acc.setdefault(p[1], [0.0, 0.0, 0.0])
        a[0] += inp.core_load[p] * v
        a[1] += inp.gpu_load.get(p, 0.0) * v
        a[2] = max(a[2], inp.t[p[0]] * math.ceil(v / inp.slots[p] - EPS))
    return {r: inp.q[r] + max(a) for r, a in acc.items()}


def _fits(inp: ModelInput, p: Pair, end: float, state: list[float] | None = None) -> int:
    """How many instances of p's class its resource takes, on top of `state` (cores, GPUs,
    waves already there), and still finishes by `end`."""
    k, r = p
    c, g, w = state or (0.0, 0.0, 0.0)
    avail = end - inp.q[r]
    if avail < inp.t[k] - 1e-6 or avail < max(c, g, w) - 1e-6:
        return 0
    n = min(inp.n[k], inp.slots[p] * math.floor(avail / inp.t[k] + 1e-9))
    if inp.core_load[p] > 0:
        n = min(n, math.floor((avail - c) / inp.core_load[p] + 1e-9))
    if inp.gpu_load.get(p):
        n = min(n, math.floor((avail - g) / inp.gpu_load[p] + 1e-9))
    return max(0, n)


def _take(inp: ModelInput, ps: list[Pair], end: float, state: dict[int, list[float]]
          ) -> dict[Pair, int]:
    return {p: _fits(inp, p, end, state.get(p[1])) for p in ps}


def list_schedule(inp: ModelInput) -> dict[Pair, float]:
    """Longest runtime first, each class water-filled: the earliest end by which its resources
    (loaded with the classes before it) take all its instances, surplus given back by the
    resources that would finish last."""
    x: dict[Pair, float] = {}
    for pairs in _by_level(inp).values():
        state: dict[int, list[float]] = {}
        mine: dict[int, list[Pair]] = {}
        for p in pairs:
            mine.setdefault(p[0], []).append(p)
        for k in sorted(mine, key=lambda k: (-inp.t[k], -inp.n[k] * inp.t[k], k)):
            ps = mine[k]
            lo = min(inp.q[r] + inp.t[k] for _, r in ps) - 1.0
            hi = max(lo, 1.0) * 2
            while sum(_take(inp, ps, hi, state).values()) < inp.n[k]:
                hi *= 2
            for _ in range(60):  # bisection to a second's precision
                if hi - lo < 0.5:
                    break
                mid = (lo + hi) / 2
                enough = sum(_take(inp, ps, mid, state).values()) >= inp.n[k]
                lo, hi = (lo, mid) if enough else (mid, hi)
            take = _take(inp, ps, hi, state)
            surplus = sum(take.values()) - inp.n[k]
            for p in sorted(ps, key=lambda p: -(inp.q[p[1]] + inp.t[k] * math.ceil(
                    take[p] / inp.slots[p]))):
                back = min(surplus, take[p])
                take[p] -= back
                surplus -= back
            for p, v in take.items():
                if v > 0:
                    x[p] = float(v)
                    s = state.setdefault(p[1], [0.0, 0.0, 0.0])
                    s[0] += inp.core_load[p] * v
                    s[1] += inp.gpu_load.get(p, 0.0) * v
                    s[2] = max(s[2], inp.t[k] * math.ceil(v / inp.slots[p] - EPS))
    return x


def improve(inp: ModelInput, x: dict[Pair, float], pairs: list[Pair], stop: float
            ) -> dict[Pair, float]:
    """Local search on one level: move instances off the resource that finishes last, to where
    they finish sooner, as many as balances the two (bisection); until no move shortens the last
    finish, or the clock passes `stop`. Each move lowers the sorted finishes lexicographically."""
    x = {p: v for p, v in x.items() if v > 0}
    by_class: dict[int, list[Pair]] = {}
    by_res: dict[int, list[Pair]] = {}
    for p in pairs:
        by_class.setdefault(p[0], []).append(p)
        by_res.setdefault(p[1], []).append(p)

    def group(r: int, y: dict[Pair, float]) -> float:
        return _finish(inp, y, by_res[r]).get(r, 0.0)

    moved = True
    while moved and time.perf_counter() < stop:
        moved = False
        finish = _finish(inp, x, pairs)
        for r in sorted(finish, key=lambda r: -finish[r]):
            worst = finish[r]
            for p in sorted((p for p in by_res[r] if x.get(p, 0) > 0),
                            key=lambda p: -inp.t[p[0]]):
                for q in by_class[p[0]]:
                    if time.perf_counter() >= stop:
                        return x
                    if q == p or inp.q[q[1]] + inp.t[q[0]] >= worst - 1e-6:
                        continue
                    lo, hi = 0, int(x[p])  # largest move that keeps q's resource under worst
                    while lo < hi:
                        mid = (lo + hi + 1) // 2
                        y = {**x, p: x[p] - mid, q: x.get(q, 0.0) + mid}
                        lo, hi = (mid, hi) if group(q[1], y) < worst - 1e-6 else (lo, mid - 1)
                    if lo == 0:
                        continue
                    best, best_f = 0, worst
                    for d in {lo, max(1, lo // 2), *(_tails(inp, p, x[p], lo))}:
                        y = {**x, p: x[p] - d, q: x.get(q, 0.0) + d}
                        f = max(group(r, y), group(q[1], y))
                        if f < best_f - 1e-6:
                            best, best_f = d, f
                    if best:
                        x = {**x, p: x[p] - best, q: x.get(q, 0.0) + best}
                        x = {p: v for p, v in x.items() if v > 0}
                        moved = True
                        break
                if moved:
                    break
            if moved or time.perf_counter() >= stop:
                break
    return x


def _tails(inp: ModelInput, p: Pair, v: float, most: int) -> list[int]:
    """Moves that empty p's last (partial) wave, or its last whole wave."""
    s = inp.slots[p]
    tail = int(v - (math.ceil(v / s - EPS) - 1) * s)
    return [d for d in (tail, tail + s) if 0 < d <= most]


def _level_model(inp: ModelInput, pairs: list[Pair], start: dict[Pair, float], upper: float,
                 lower: float) -> tuple[pulp.LpProblem, dict[Pair, Any], Any] | None:
    """One level's tightened model, its plans ending by `upper`, warm-started from `start`:
    (problem without an objective, x, M), or None if some class cannot end by `upper`."""
    cap = {p: c for p in pairs if (c := _fits(inp, p, upper + 1e-6)) > 0}
    prob = pulp.LpProblem("placement_level", pulp.LpMinimize)
    m = pulp.LpVariable("m", lower, upper)
    x = {p: pulp.LpVariable(f"x_{p[0]}_{p[1]}", 0, c, cat=pulp.LpInteger) for p, c in cap.items()}
    w = {p: pulp.LpVariable(f"w_{p[0]}_{p[1]}", 0, math.ceil(c / inp.slots[p]),
                            cat=pulp.LpInteger) for p, c in cap.items()}
    res = sorted({r for _, r in cap})
    y = {r: pulp.LpVariable(f"y_{r}", cat=pulp.LpBinary) for r in res}
    for k in sorted({k for k, _ in pairs}):
        ps = [p for p in cap if p[0] == k]
        if sum(cap[p] for p in ps) < inp.n[k]:
            return None
        prob += pulp.lpSum(x[p] for p in ps) == inp.n[k], f"place_{k}"
    load: dict[int, Any] = {}
    for r in res:
        here = [p for p in cap if p[1] == r]
        room = upper - inp.q[r]
        for p in here:
            prob += x[p] <= min(inp.slots[p], cap[p]) * w[p], f"waves_{p[0]}_{r}"
            prob += w[p] <= math.ceil(cap[p] / inp.slots[p]) * y[r], f"use_{p[0]}_{r}"
            prob += m >= inp.q[r] * y[r] + inp.t[p[0]] * w[p], f"wave_{p[0]}_{r}"
        prob += y[r] <= pulp.lpSum(w[p] for p in here), f"idle_{r}"
        load[r] = pulp.lpSum(inp.core_load[p] * x[p] for p in here)
        prob += m >= inp.q[r] * y[r] + load[r], f"cores_{r}"
        prob += load[r] <= room * y[r], f"room_{r}"
        gpu = [p for p in here if inp.gpu_load.get(p)]
        if gpu:
            gl = pulp.lpSum(inp.gpu_load[p] * x[p] for p in gpu)
            prob += m >= inp.q[r] * y[r] + gl, f"gpus_{r}"
            prob += gl <= room * y[r], f"groom_{r}"
    for a, b in _twins(inp, cap, res):
        prob += y[a] >= y[b], f"twin_use_{a}_{b}"
        prob += load[a] >= load[b], f"twin_load_{a}_{b}"
    for p, var in x.items():
        v = start.get(p, 0.0)
        var.setInitialValue(v)
        w[p].setInitialValue(math.ceil(v / inp.slots[p] - EPS))
    for r, var in y.items():
        var.setInitialValue(1 if any(start.get(p, 0) > 0 for p in cap if p[1] == r) else 0)
    m.setInitialValue(min(upper, max(lower, max(_finish(inp, start, pairs).values(),
                                                default=0.0))))
    return prob, x, m


def _run(prob: pulp.LpProblem, x: dict[Pair, Any], time_limit: float, **gaps: float
         ) -> tuple[dict[Pair, float], bool] | None:
    """Solve warm-started: (plan, proven within the gaps) or None when CBC returned no plan."""
    prob.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=max(0.1, time_limit), warmStart=True,
                                 **gaps))
    if pulp.LpStatus[prob.status] != "Optimal" or any(v.value() is None for v in x.values()):
        return None
    sol = {p: float(round(max(0.0, v.value() or 0.0))) for p, v in x.items()}
    return {p: v for p, v in sol.items() if v > 0}, prob.solutionTime < time_limit * 0.98


def _level_mip(inp: ModelInput, pairs: list[Pair], start: dict[Pair, float], upper: float,
               lower: float, time_limit: float) -> tuple[dict[Pair, float], bool] | None:
    """One level's shortest finish, no later than `upper` (its start's): (plan, proven)."""
    built = _level_model(inp, pairs, start, upper, lower)
    if built is None:
        return None
    prob, x, m = built
    prob += m
    return _run(prob, x, time_limit, gapRel=GAP_REL, gapAbs=GAP_ABS_S)


def _twins(inp: ModelInput, cap: dict[Pair, int], res: list[int]) -> list[tuple[int, int]]:
    """Consecutive resources that are interchangeable on this level (same queue wait, both
    preferred or neither, and the same capacity, loads and slots for every class): an order on
    them loses no plan."""
    sig: dict[tuple[Any, ...], list[int]] = {}
    for r in res:
        mine = sorted((p[0], cap[p], inp.slots[p], inp.core_load[p], inp.gpu_load.get(p, 0.0))
                      for p in cap if p[1] == r)
        sig.setdefault((inp.q[r], r in inp.preferred, tuple(mine)), []).append(r)
    return [(a, b) for rs in sig.values() for a, b in itertools.pairwise(rs)]


def _prefer_level(inp: ModelInput, pairs: list[Pair], x: dict[Pair, float], finish: float,
                  time_limit: float) -> dict[Pair, float]:
    """Lexicographic second pass on a level: most instances on preferred resources, the level's
    finish held."""
    if not any(r in inp.preferred for _, r in pairs):
        return x
    built = _level_model(inp, pairs, x, finish, 0.0)
    if built is None:
        return x
    prob, xs, _ = built
    prob += -pulp.lpSum(v for p, v in xs.items() if p[1] in inp.preferred)
    found = _run(prob, xs, time_limit)
    if found is None or max(_finish(inp, found[0], pairs).values()) > finish + 1e-6:
        return x
    return found[0]


def solve_makespan(inp: ModelInput, *, deadline: float | None, time_limit: float,
                   starts: Iterable[dict[Pair, float]] = ()) -> Solution:
    """Minimum makespan, level by level, within `time_limit` seconds overall; `starts` are
    further plans to start from (e.g. the rounded LP). Never worse than any start."""
    begin = time.perf_counter()
    levels = _by_level(inp)
    candidates = [list_schedule(inp), *starts]
    best: dict[int, tuple[float, dict[Pair, float]]] = {}
    for lv, pairs in levels.items():  # each level starts from its best candidate, improved
        for cand in candidates:
            part = {p: cand[p] for p in pairs if cand.get(p, 0) > 0}
            f = max(_finish(inp, part, pairs).values(), default=0.0)
            if lv not in best or f < best[lv][0]:
                best[lv] = (f, part)
    search_end = begin + min(0.25, time_limit * 0.1)
    for lv, pairs in levels.items():
        part = improve(inp, best[lv][1], pairs, search_end)
        best[lv] = (max(_finish(inp, part, pairs).values(), default=0.0), part)
    soonest: dict[int, float] = {}  # a class's single instance, where it ends soonest
    for k, r in inp.pairs:
        soonest[k] = min(soonest.get(k, math.inf), inp.q[r] + inp.t[k])
    floor = {lv: max(soonest[k] for k, _ in ps) for lv, ps in levels.items()}
    unproven = [lv for lv in sorted(levels) if best[lv][0] > floor[lv] + 1e-6]
    for share in (0.5, 1.0):  # a first pass over every level, then the rest for the hard ones
        todo = list(unproven)
        for i, lv in enumerate(todo):
            left = time_limit - (time.perf_counter() - begin) - CBC_START_S * (len(todo) - i)
            budget = left * share / (len(todo) - i)
            if budget < 0.05:
                break
            upper, part = best[lv]
            found = _level_mip(inp, levels[lv], part, upper, floor[lv], budget)
            if found is None:
                continue
            x, done = found
            f = max(_finish(inp, x, levels[lv]).values(), default=0.0)
            if f <= upper + 1e-6:
                best[lv] = (f, x)
                if done:
                    unproven.remove(lv)
    proven = not unproven
    x = {p: v for _, part in best.values() for p, v in part.items()}
    if inp.preferred and proven:
        for i, (lv, pairs) in enumerate(sorted(levels.items())):
            left = (time_limit - (time.perf_counter() - begin)) / (len(levels) - i)
            best[lv] = (best[lv][0], _prefer_level(inp, pairs, best[lv][1], best[lv][0],
                                                   max(left, 0.5)))
        x = {p: v for _, part in best.values() for p, v in part.items()}
    sol = Solution.of(inp, "optimal" if proven else "feasible", x, 0.0)
    sol.objective = sol.makespan
    if deadline is not None and sol.makespan > deadline + 1e-6:
        if proven:
            return Solution("infeasible", {}, math.inf, math.inf, {}, math.inf)
        return solve(inp, "time", deadline=deadline, time_limit=time_limit,  # the coupled model
                     start=list_schedule(inp))
    return sol
