"""Placement learns from history: a step without an `estimate` is placed by what earlier runs of
the same script took (p90), and the plan says so. A real run on `local` makes the history."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from airavata_prefect.domain.compile import compile_graph
from airavata_prefect.domain.records import load_graph
from airavata_prefect.domain.resources import ComputeResource, Prices
from airavata_prefect.domain.spec import parse_spec_text
from airavata_prefect.usecases.errors import NoPlacement
from airavata_prefect.usecases.plan import Learned, learned_runtimes, plan_experiment
from tests.local_runs import run_local

# 12 instances whose `time` says an hour each; they take 0.2 s. The deadline is two hours.
SPEC = """
    name: history
    constraints: {objective: cost, deadline: "2:00:00"}
    tasks:
      sim:
        command: sleep 0.2
        task_inputs: {X: 1..12}
        resources: {compute: {time: "1:00:00"}}
      told:
        command: sleep 0.1
        resources: {compute: {time: "1:00:00", estimate: "0:30:00"}}
    """
# The same steps without a deadline: what runs first, and makes the history.
HISTORY = SPEC.replace('constraints: {objective: cost, deadline: "2:00:00"}', "")
# This machine (2 slots, free) and a paid cluster wide enough to meet the deadline.
POOL = [ComputeResource(name="local", type="local", cores_per_node=2, oversubscribe=True),
        ComputeResource(name="cluster", type="slurm", nodes=4, cores_per_node=16,
                        cost=Prices(core_hour=1.0))]


def test_a_second_run_is_placed_better_than_the_first(home: Path) -> None:
    # With no history, this machine alone cannot meet the deadline: submit refuses it.
    with pytest.raises(NoPlacement, match="deadline 02:00:00 cannot be met"):
        run_local(home, SPEC, "refused")
    store, exp_id, status = run_local(home, HISTORY, "history")
    assert status == "COMPLETED"
    loaded = parse_spec_text(textwrap.dedent(SPEC), "history.yml")
    graph = compile_graph(loaded, root=str(home / "x"))

    first = plan_experiment(loaded, graph, POOL, user="u", learned={})
    assert first.status in ("optimal", "feasible")
    # Believing `time`, 12 hours of work cannot finish in 2 on 2 slots: it pays the cluster.
    assert first.counts()["sim"].get("cluster", 0) > 0 and (first.total_cost or 0) > 0
    assert first.estimates == {}

    learned = learned_runtimes(store.tasks.runtimes, load_graph(store.experiments.get(exp_id)))
    assert set(learned) == {"sim"}  # `told` gives its own estimate: history is not used
    sim = learned["sim"]
    assert sim.runs == 12 and sim.resources == ("local",) and 0.2 <= sim.p90 < 2.0
    second = plan_experiment(loaded, graph, POOL, user="u", learned=learned)
    # Knowing they take 0.2 s, everything fits on this machine, for nothing.
    assert second.counts()["sim"] == {"local": 12} and second.total_cost == 0
    assert second.makespan_seconds is not None and first.makespan_seconds is not None
    assert second.makespan_seconds < first.makespan_seconds
    assert second.estimates["sim"].startswith("p90 of 12 earlier runs of its script on local")
    # Now the same submit is placed (here), and its stored plan says why.
    store2, exp2, status2 = run_local(home, SPEC, "history-again")
    assert status2 == "COMPLETED"
    plan = store2.experiments.get(exp2).plan
    assert plan is not None and "sim" in plan.estimates


def test_too_few_runs_or_another_script_teach_nothing(home: Path) -> None:
    graph = compile_graph(parse_spec_text(textwrap.dedent(SPEC), "h.yml"), root=str(home))
    seen: list[list[str]] = []

    def runtimes(hashes: list[str]) -> dict[tuple[str, str], list[float]]:
        seen.append(hashes)
        return {(hashes[0], "local"): [1.0, 2.0]}  # two runs: fewer than MIN_RUNS

    assert learned_runtimes(runtimes, graph) == {}
    assert len(seen) == 1 and len(seen[0]) == 1  # only `sim` asked (`told` has an estimate)
    assert Learned(90.0, 5, ("a", "b")).note() == (
        "p90 of 5 earlier runs of its script on a, b: 00:01:30 (90.00 s)")
