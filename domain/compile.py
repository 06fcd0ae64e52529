"""Compile an experiment spec into its task graph: validate cross-references, parameters and
ranges (every problem located in the YAML), then expand it (domain/dag.py holds the graph)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from airavata_prefect.domain.dag import StepPlan, TaskGraph, Template, _LazyStr
from airavata_prefect.domain.params import coerce, render, resolve_parameters
from airavata_prefect.domain.problems import Path, Problem, SpecError
from airavata_prefect.domain.spec import ENV_NAME, STEP_NAME, LoadedSpec, TaskSpec

DEFAULT_MAX_INSTANCES = 1_000_000
_REF = re.compile(r"\$\$|\$\{([^}]*)\}")
_RANGE_START = re.compile(r"^\s*-?\d+\s*\.\.")
_RANGE = re.compile(r"^\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*(?:\.\.\s*(-?\d+)\s*)?$")

def _parse_template(value: str, loaded: LoadedSpec, path: Path, params: Mapping[str, str],
                    problems: list[Problem]) -> Template | str:
    parts: list[str | tuple[str, str]] = []
    pos = 0
    for m in _REF.finditer(value):
        parts.append(value[pos:m.start()])
        pos = m.end()
        if m.group(0) == "$$":
            parts.append("$")
            continue
        ref = m.group(1).strip()
        if "." in ref:
            step, _, out = ref.partition(".")
            parts.append((step, out))
        elif ref in params:
            parts.append(params[ref])
        else:
            problems.append(loaded.problem(path, f"undefined reference ${{{ref}}}: no parameter "
                                                 f"{ref!r} (a task output is ${{task.OUTPUT}})"))
    parts.append(value[pos:])
    merged: list[str | tuple[str, str]] = []
    for p in parts:
        if isinstance(p, str) and merged and isinstance(merged[-1], str):
            merged[-1] += p
        elif p != "":
            merged.append(p)
    if all(isinstance(p, str) for p in merged):
        return "".join(merged)  # type: ignore[arg-type]
    return tuple(merged)


def _expand_value(raw: Any, loaded: LoadedSpec, path: Path, ptype: str | None,
                  problems: list[Problem]) -> list[Any] | None:
    """A task input -> its list of values (a sweep) or None when it is a single scalar."""
    if isinstance(raw, list):
        if not raw:
            problems.append(loaded.problem(path, "an input list must not be empty"))
            return []
        return [_typed(v, loaded, (*path, i), ptype, problems) for i, v in enumerate(raw)]
    if isinstance(raw, str) and _RANGE_START.match(raw):
        m = _RANGE.match(raw)
        if not m:
            problems.append(loaded.problem(path, f"bad range {raw!r}: expected a..b or a..b..step"
                                                 " with integers"))
            return []
        a, b, step = int(m[1]), int(m[2]), int(m[3] or 1)
        if step <= 0 or b < a:
            problems.append(loaded.problem(path, f"bad range {raw!r}: needs a <= b and step > 0"))
            return []
        if ptype not in (None, "int", "float", "string"):
            problems.append(loaded.problem(path, f"a range gives integers, parameter is {ptype}"))
        return range(a, b + 1, step)  # type: ignore[return-value]  # lazy: ranges can be huge
    return None


def _typed(value: Any, loaded: LoadedSpec, path: Path, ptype: str | None,
           problems: list[Problem]) -> Any:
    if ptype is None:
        return value
    try:
        return coerce(ptype, value)
    except ValueError as exc:
        problems.append(loaded.problem(path, str(exc)))
        return value


def _check_names(names: Mapping[str, Any], loaded: LoadedSpec, path: Path, what: str,
                 problems: list[Problem]) -> None:
    for key in names:
        if not ENV_NAME.match(key):
            problems.append(loaded.problem((*path, key), f"{what} name {key!r} is not a valid "
                                           "environment variable name", at_key=True))


def _find_cycle(edges: Mapping[str, tuple[str, ...]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in edges.get(n, ()):
            if state.get(m) == 1:
                return [*stack[stack.index(m):], m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in edges:
        if n not in state and (found := visit(n)):
            return found
    return None


def _toposort(edges: Mapping[str, tuple[str, ...]]) -> list[str]:
    order: list[str] = []
    done: set[str] = set()

    def visit(n: str) -> None:
        if n in done:
            return
        done.add(n)
        for m in edges[n]:
            visit(m)
        order.append(n)

    for n in edges:  # declaration order, parents first
        visit(n)
    return order


def _plan_step(name: str, task: TaskSpec, loaded: LoadedSpec, params: dict[str, str],
               ptypes: dict[str, str], problems: list[Problem]) -> StepPlan:
    spec = loaded.spec
    base: Path = ("tasks", name)
    if not STEP_NAME.match(name):
        problems.append(loaded.problem(base, f"task name {name!r} must start with a letter and "
                                             "hold letters, digits, '_' or '-'", at_key=True))
    if (task.script is None) == (task.command is None):
        problems.append(loaded.problem(base, "give exactly one of 'script' or 'command'"))
    elif task.script is not None and task.script not in spec.scripts:
        known = ", ".join(sorted(spec.scripts)) or "none defined"
        problems.append(loaded.problem((*base, "script"),
                                       f"unknown script {task.script!r} (scripts: {known})"))
    script = task.command if task.command is not None else spec.scripts.get(task.script or "", "")
    for field_name in ("foreach", "depends_on"):
        listed = getattr(task, field_name)
        for i, ref in enumerate(listed):
            where = (*base, field_name, i)
            if ref == name:
                problems.append(loaded.problem(where, f"task {name!r} cannot depend on itself"))
            elif ref not in spec.tasks:
                problems.append(loaded.problem(where, f"unknown task {ref!r}"))
            elif listed.index(ref) != i:
                problems.append(loaded.problem(where, f"task {ref!r} is listed twice"))
    _check_names(task.task_inputs, loaded, (*base, "task_inputs"), "input", problems)
    _check_names(task.task_outputs, loaded, (*base, "task_outputs"), "output", problems)
    for key in task.task_inputs.keys() & task.task_outputs.keys():
        problems.append(loaded.problem((*base, "task_outputs", key),
                                       f"{key!r} is both an input and an output", at_key=True))

    plan = StepPlan(name=name, script=script, foreach=tuple(task.foreach),
                    barriers=tuple(d for d in task.depends_on if d not in task.foreach),
                    zip=task.sweep == "zip", outputs=dict(task.task_outputs),
                    resources=spec.resources.merged(task.resources),
                    retries=task.retries or spec.retries)
    plan.const_env = dict(params)
    refs: set[str] = set()
    for key, raw in task.task_inputs.items():
        path = (*base, "task_inputs", key)
        ptype = ptypes.get(key)
        values = _expand_value(raw, loaded, path, ptype, problems)
        if values is None:
            tpl = _parse_template(render(_typed(raw, loaded, path, ptype, problems)), loaded,
                                  path, params, problems)
            if isinstance(tpl, str):
                plan.const_env[key] = tpl
            else:
                plan.templated[key] = tpl
                refs.update(p[0] for p in tpl if isinstance(p, tuple))
            continue
        plan.const_env.pop(key, None)
        if isinstance(values, range):
            plan.axes.append((key, values))  # rendered lazily below (a range, not a list)
            continue
        tpls = [_parse_template(render(v), loaded, (*path, i), params, problems)
                for i, v in enumerate(values)]
        for t in tpls:
            if not isinstance(t, str):
                refs.update(p[0] for p in t if isinstance(p, tuple))
        plan.axes.append((key, tpls))
    if plan.zip and len({len(v) for _, v in plan.axes}) > 1:
        lengths = ", ".join(f"{k}={len(v)}" for k, v in plan.axes)
        problems.append(loaded.problem((*base, "sweep"),
                                       f"sweep: zip needs equally long inputs ({lengths})"))
    plan.single_refs = tuple(sorted(refs - set(task.foreach)))
    _check_refs(plan, task, loaded, problems)
    return plan


def _check_refs(plan: StepPlan, task: TaskSpec, loaded: LoadedSpec,
                problems: list[Problem]) -> None:
    spec = loaded.spec
    tpls: list[tuple[Path, Template]] = [
        (("tasks", plan.name, "task_inputs", k), t) for k, t in plan.templated.items()]
    for k, vals in plan.axes:
        tpls += [(("tasks", plan.name, "task_inputs", k, i), t) for i, t in enumerate(vals)
                 if isinstance(t, tuple)]
    for path, tpl in tpls:
        for part in tpl:
            if isinstance(part, str):
                continue
            step, out = part
            if step not in spec.tasks:
                problems.append(loaded.problem(path, f"undefined reference ${{{step}.{out}}}: "
                                                     f"no task {step!r}"))
            elif out not in spec.tasks[step].task_outputs:
                have = ", ".join(spec.tasks[step].task_outputs) or "none"
                problems.append(loaded.problem(path, f"undefined reference ${{{step}.{out}}}: "
                                                     f"task {step!r} has no output {out!r} "
                                                     f"(outputs: {have})"))
            elif step == plan.name:
                problems.append(loaded.problem(path, f"${{{step}.{out}}} refers to its own task"))


def compile_graph(loaded: LoadedSpec, overrides: Mapping[str, str] | None = None, *,
                  root: str = ".", max_instances: int = DEFAULT_MAX_INSTANCES) -> TaskGraph:
    """Validate cross-references and expand the spec; raises SpecError with every problem."""
    problems: list[Problem] = []
    spec = loaded.spec
    params, ptypes = resolve_parameters(loaded, overrides or {}, problems)
    plans = {name: _plan_step(name, task, loaded, params, ptypes, problems)
             for name, task in spec.tasks.items()}
    edges = {n: tuple(u for u in p.upstream_steps if u in plans and u != n)
             for n, p in plans.items()}
    cycle = _find_cycle(edges)
    if cycle:
        problems.append(loaded.problem(("tasks", cycle[0]),
                                       "dependency cycle: " + " -> ".join(cycle)))
    if problems:
        raise SpecError(problems)

    order = _toposort(edges)
    total = 0
    for name in order:
        plan = plans[name]
        plan.foreach_counts = tuple(plans[f].count for f in plan.foreach)
        for ref in plan.single_refs:
            if plans[ref].count != 1:
                problems.append(loaded.problem(("tasks", name, "foreach"), (
                    f"${{{ref}...}} is used but {ref!r} has {plans[ref].count} instances: "
                    f"add {ref!r} to foreach")))
        plan.count = math.prod(plan.foreach_counts) * plan.sweep_count
        total += plan.count
        if plan.count > max_instances or total > max_instances:
            problems.append(loaded.problem(("tasks", name), (
                f"expands to {plan.count:,} instances ({total:,} so far), over the limit of "
                f"{max_instances:,} (AIRAVATA_MAX_INSTANCES or --max-instances)")))
            break
    if problems:
        raise SpecError(problems)
    for plan in plans.values():  # ranges stay lazy: render on access
        plan.axes = [(k, _LazyStr(v) if isinstance(v, range) else v) for k, v in plan.axes]
    return TaskGraph(loaded.name, [plans[n] for n in order], root)



__all__ = ["DEFAULT_MAX_INSTANCES", "compile_graph"]
