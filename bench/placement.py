"""Placement benchmarks: solve time at scale; quality against greedy and round-robin baselines.

Baselines are scored by the model's own evaluator (same cost and makespan formulas):
- greedy: every instance on its class's cheapest eligible resource;
- airavata: instances dealt round-robin over the eligible resources (Airavata's scheduler
  spreads work by fixed weights, not by an optimisation).
"""

from __future__ import annotations

import random
import statistics
import time

from airavata_prefect.domain.placement import (
    TaskClass,
    _model_input,
    ineligible,
    plan,
    unit_cost,
)
from airavata_prefect.domain.placement_model import evaluate, level_times
from airavata_prefect.domain.resources import ComputeResource
from airavata_prefect.domain.spec import Constraints
from bench.placement_scenarios import classes, resources


def solve_time(repeat: int = 3) -> tuple[float, float, str]:
    """Median seconds for 1,000,000 instances / 200 classes / 20 resources, its gap, status."""
    runs = []
    for seed in range(repeat):
        rng = random.Random(seed)
        pool, ks = resources(rng, 20), classes(rng, 200, 1_000_000)
        start = time.perf_counter()
        p = plan(ks, pool, Constraints(objective="time"))
        runs.append((time.perf_counter() - start, p.gap or 0.0, p.status))
    runs.sort()
    return runs[len(runs) // 2]


def _score(ks: list[TaskClass], pool: list[ComputeResource],
           counts: dict[tuple[int, int], float]) -> tuple[float, float]:
    inp = _model_input(ks, pool, list(counts), set())
    cost, finish = evaluate(inp, counts)
    return cost, sum(level_times(finish).values())


def _eligible(ks: list[TaskClass], pool: list[ComputeResource]) -> list[list[int]]:
    cons = Constraints()
    return [[ri for ri, r in enumerate(pool) if ineligible(k, r, cons, lambda r: True, "") is None]
            for k in ks]


def greedy(ks: list[TaskClass], pool: list[ComputeResource]) -> dict[tuple[int, int], float]:
    elig = _eligible(ks, pool)
    return {(ki, min(elig[ki], key=lambda ri: unit_cost(k, pool[ri]))): float(k.count)
            for ki, k in enumerate(ks)}


def round_robin(ks: list[TaskClass], pool: list[ComputeResource]
                ) -> dict[tuple[int, int], float]:
    out: dict[tuple[int, int], float] = {}
    for ki, k in enumerate(ks):
        rs = _eligible(ks, pool)[ki]
        for i, ri in enumerate(rs):
            share = k.count // len(rs) + (1 if i < k.count % len(rs) else 0)
            if share:
                out[(ki, ri)] = float(share)
    return out


def quality(n_scenarios: int = 12, time_limit: float = 2.0) -> dict[str, dict[str, float]]:
    """Geometric-mean ratios ours/baseline for cost (objective cost) and makespan (time)."""
    ratios: dict[str, list[float]] = {k: [] for k in
                                      ("cost_vs_greedy", "cost_vs_airavata",
                                       "time_vs_greedy", "time_vs_airavata", "gap")}
    for seed in range(n_scenarios):
        rng = random.Random(1000 + seed)
        pool = resources(rng, rng.randint(3, 10))
        ks = classes(rng, rng.randint(3, 30), rng.randint(100, 50_000))
        if any(not e for e in _eligible(ks, pool)):
            continue  # a class no baseline could place either
        g_cost, g_time = _score(ks, pool, greedy(ks, pool))
        a_cost, a_time = _score(ks, pool, round_robin(ks, pool))
        by_cost = plan(ks, pool, Constraints(objective="cost"), time_limit=time_limit)
        by_time = plan(ks, pool, Constraints(objective="time"), time_limit=time_limit)
        ratios["cost_vs_greedy"].append(by_cost.total_cost / g_cost)
        ratios["cost_vs_airavata"].append(by_cost.total_cost / a_cost)
        ratios["time_vs_greedy"].append(by_time.makespan_seconds / g_time)
        ratios["time_vs_airavata"].append(by_time.makespan_seconds / a_time)
        ratios["gap"].extend([by_cost.gap or 0.0, by_time.gap or 0.0])
    return {k: {"geomean": statistics.geometric_mean(v) if k != "gap" else statistics.mean(v),
                "max": max(v), "n": len(v)} for k, v in ratios.items()}
