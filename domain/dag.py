"""Expand an experiment spec into a task graph.

The graph is implicit: each step keeps its swept axes and foreach parents, and instances are
materialised on demand (`instance(step, i)`, `iter_instances()`), so a million-instance sweep costs
O(steps) memory until someone iterates it.

Semantics (DESIGN.md): swept inputs combine as a cartesian product in declaration order, row-major
(the last swept key varies fastest), or pairwise with `sweep: zip`. `foreach: [a, b]` makes one
instance per element of a x b (row-major), outermost, then the step's own sweep. `${t.OUT}` is the
upstream instance's output OUT; `depends_on: [t]` waits for every instance of t.
Compilation (validation and expansion of a spec into this graph) is domain/compile.py.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, cast

from airavata_prefect.domain.spec import Resources

# A template is a tuple of parts: a literal string, or (step, output) for `${step.output}`.
Template = tuple[str | tuple[str, str], ...]


class TaskInstance(NamedTuple):  # a NamedTuple: ~3x cheaper to build than a frozen dataclass
    id: str
    step: str
    index: int  # type: ignore[assignment]  # shadows tuple.index, which nothing here calls
    env: dict[str, str]
    depends_on: tuple[str, ...]
    outputs: dict[str, str]


@dataclass
class StepPlan:
    name: str
    script: str
    offset: int = 0
    count: int = 1
    foreach: tuple[str, ...] = ()
    foreach_counts: tuple[int, ...] = ()
    barriers: tuple[str, ...] = ()
    axes: list[tuple[str, list[Template | str]]] = field(default_factory=list)
    zip: bool = False
    const_env: dict[str, str] = field(default_factory=dict)
    templated: dict[str, Template] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    retries: int = 0
    single_refs: tuple[str, ...] = ()  # steps referenced by ${t.X} that have one instance

    @property
    def sweep_count(self) -> int:
        if not self.axes:
            return 1
        lengths = [len(values) for _, values in self.axes]
        return lengths[0] if self.zip else math.prod(lengths)

    @property
    def upstream_steps(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.foreach, *self.single_refs, *self.barriers)))


class TaskGraph:
    def __init__(self, name: str, steps: list[StepPlan], root: str) -> None:
        self.name = name
        self.steps = steps  # topological order
        self.by_name = {s.name: s for s in steps}
        self.root = root.rstrip("/") or "/"
        offset = 0
        for s in steps:
            s.offset = offset
            offset += s.count
        self.total = offset
        self._resources_json: dict[str, str] = {}

    def workdir(self, step: str, index: int) -> str:
        return f"{self.root}/{step}/{index}"

    def output_path(self, step: str, index: int, name: str) -> str:
        return f"{self.root}/{step}/{index}/{self.by_name[step].outputs[name]}"

    def upstream_indices(self, step: StepPlan, index: int) -> tuple[int, ...]:
        """Local indices of the foreach parents' instances this instance belongs to."""
        rest = index // step.sweep_count
        out = []
        for n in reversed(step.foreach_counts):
            rest, r = divmod(rest, n)
            out.append(r)
        return tuple(reversed(out))

    def _sweep_values(self, step: StepPlan, index: int) -> list[tuple[str, Template | str]]:
        i = index % step.sweep_count
        if step.zip:
            return [(k, vals[i]) for k, vals in step.axes]
        picked = []
        for k, vals in reversed(step.axes):
            i, r = divmod(i, len(vals))
            picked.append((k, vals[r]))
        return list(reversed(picked))

    def _render(self, tpl: Template | str, ups: Mapping[str, int]) -> str:
        if isinstance(tpl, str):
            return tpl
        return "".join(
            p if isinstance(p, str) else self.output_path(p[0], ups[p[0]], p[1]) for p in tpl
        )

    def parse_id(self, instance_id: str) -> tuple[StepPlan, int]:
        """`step[3]` -> (its step, 3)."""
        name, _, rest = instance_id.rpartition("[")
        return self.by_name[name], int(rest.rstrip("]"))

    def instance(self, step_name: str, index: int) -> TaskInstance:
        step = self.by_name[step_name]
        if not 0 <= index < step.count:
            raise IndexError(f"{step_name}[{index}] does not exist (count {step.count})")
        ups = dict(zip(step.foreach, self.upstream_indices(step, index), strict=True))
        ups.update({s: 0 for s in step.single_refs if s not in ups})
        env = dict(step.const_env)
        for key, tpl in step.templated.items():
            env[key] = self._render(tpl, ups)
        for key, value in self._sweep_values(step, index):
            env[key] = self._render(value, ups)
        outputs = {k: self.output_path(step.name, index, k) for k in step.outputs}
        env.update(outputs)
        deps = tuple(f"{s}[{i}]" for s, i in ups.items()) + tuple(f"{b}[*]" for b in step.barriers)
        return TaskInstance(f"{step.name}[{index}]", step.name, index, env, deps, outputs)

    def consumed_outputs(self, step_name: str, index: int) -> list[tuple[str, int, str]]:
        """The upstream outputs this instance's inputs name (`${t.OUT}`), each once, in the
        order its inputs name them: (step, index, output)."""
        step = self.by_name[step_name]
        tpls = [*step.templated.values(), *(v for _, v in self._sweep_values(step, index))]
        refs = [p for tpl in tpls if not isinstance(tpl, str) for p in tpl
                if isinstance(p, tuple)]
        if not refs:
            return []
        ups = dict(zip(step.foreach, self.upstream_indices(step, index), strict=True))
        return list(dict.fromkeys((s, ups.get(s, 0), out) for s, out in refs))

    def iter_instances(self) -> Iterator[TaskInstance]:
        """Every instance in order; the same values as `instance()`, ~5x faster."""
        for step in self.steps:
            yield from self._iter_step(step)

    def _compile_tpl(self, tpl: Template | str) -> Callable[[Mapping[str, int]], str] | str:
        """A template -> a function of the upstream indices (output paths precomputed)."""
        if isinstance(tpl, str):
            return tpl
        parts: list[str | tuple[str, str, str]] = []
        for p in tpl:
            if isinstance(p, str):
                parts.append(p)
                continue
            parts.append((f"{self.root}/{p[0]}/", f"/{self.by_name[p[0]].outputs[p[1]]}", p[0]))
        return lambda ups: "".join(x if isinstance(x, str) else x[0] + str(ups[x[2]]) + x[1]
                                   for x in parts)

    def _iter_step(self, step: StepPlan) -> Iterator[TaskInstance]:
        # The hot loop of a million-instance compile: everything per step is hoisted out of it.
        keys = [k for k, _ in step.axes]
        value_lists = [v if isinstance(v, _LazyStr) else [self._compile_tpl(x) for x in v]
                       for _, v in step.axes]
        has_tpl = any(callable(x) for v in value_lists if isinstance(v, list) for x in v)
        templated = [(k, self._compile_tpl(t)) for k, t in step.templated.items()]
        rel = [(k, "/" + v) for k, v in step.outputs.items()]  # inside the workdir (spec.py)
        one_output = rel[0] if len(rel) == 1 else None  # the common case
        prefix = f"{self.root}/{step.name}/"
        up_names = (*step.foreach, *(s for s in step.single_refs if s not in step.foreach))
        n_single = len(up_names) - len(step.foreach)
        barrier_deps = tuple(f"{b}[*]" for b in step.barriers)
        name, index = step.name, 0
        new = tuple.__new__  # skips NamedTuple's Python-level __new__
        for ups in itertools.product(*(range(n) for n in step.foreach_counts)):
            up_map = dict(zip(up_names, (*ups, *([0] * n_single)), strict=True))
            deps = tuple(f"{s}[{i}]" for s, i in up_map.items()) + barrier_deps
            base = dict(step.const_env)
            for key, fill in templated:
                base[key] = fill(up_map)  # type: ignore[operator]
            combos = zip(*value_lists, strict=True) if step.zip else itertools.product(*value_lists)
            for combo in combos:
                env = base.copy()
                # keys and combo have equal lengths by construction: no strict check per instance
                if has_tpl:
                    env.update((k, v(up_map) if callable(v) else v)
                               for k, v in zip(keys, combo, strict=False))
                elif keys:  # no templates in this step: every value is a string
                    env.update(zip(keys, cast("tuple[str, ...]", combo), strict=False))
                wd = prefix + str(index)
                if one_output:
                    outputs = {one_output[0]: wd + one_output[1]}
                else:
                    outputs = {k: wd + v for k, v in rel}
                env.update(outputs)
                yield new(TaskInstance, (f"{name}[{index}]", name, index, env, deps, outputs))
                index += 1

    def instance_json(self, inst: TaskInstance) -> str:
        # Resources are per step: serialise them once, not once per instance.
        res = self._resources_json.get(inst.step)
        if res is None:
            res = json.dumps(self.by_name[inst.step].resources.model_dump(exclude_none=True))
            self._resources_json[inst.step] = res
        head = json.dumps({"id": inst.id, "step": inst.step, "env": inst.env,
                           "depends_on": list(inst.depends_on), "outputs": inst.outputs})
        return f'{head[:-1]}, "resources": {res}}}'

    def at(self, root: str) -> TaskGraph:
        """The same graph with its working directories under another root (a resource's)."""
        return TaskGraph(self.name, self.steps, root)


class _LazyStr:
    """A range of ints that indexes as strings, so `1..1000000` never becomes a list."""

    __slots__ = ("_r",)

    def __init__(self, r: range) -> None:
        self._r = r

    def __len__(self) -> int:
        return len(self._r)

    def __getitem__(self, i: int) -> str:
        return str(self._r[i])

    def __iter__(self) -> Iterator[str]:
        return map(str, self._r)


__all__ = ["StepPlan", "TaskGraph", "TaskInstance", "Template"]
