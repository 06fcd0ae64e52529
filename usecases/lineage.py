"""Lineage of outputs (issue 14): recorded as instances complete, read by `airavata data
lineage` and the REST API.

Recording wraps the run's executor (usecases/run.py): the one place where the experiment's
process learns how each attempt ended, whatever ran it. By the time an attempt is COMPLETED its
declared outputs are in `<experiment>/<step>/<index>/` in every mode: this machine writes them
there, a bundle's worker brings them home before it reports COMPLETED (bundles/runner.py), and
pilot agents write the experiment's directory itself (a filesystem shared with the nodes,
checked before agents start). They are hashed there, off the event loop, and recorded before
the scheduler records COMPLETED, so a downstream instance finds its inputs' records. A run
whose steps declare no outputs is not wrapped at all, and costs nothing more.

Reading checks that the caller may read the experiment (scheduler.queue.read, refusals
audited) and walks upstream from the output asked about, breadth first, within bounds."""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from airavata_prefect.adapters.store import Store, utcnow
from airavata_prefect.domain.dag import TaskGraph, TaskInstance
from airavata_prefect.domain.endings import Outcome
from airavata_prefect.domain.errors import NotFound
from airavata_prefect.domain.lineage import (
    OUTPUT_ID,
    MountInput,
    OutputLineage,
    UpstreamInput,
    experiments_in_path,
    output_id,
    output_path,
    parameters,
    script_sha256,
)
from airavata_prefect.domain.records import Experiment
from airavata_prefect.domain.scheduler import Executor, Report
from airavata_prefect.domain.states import TaskState
from airavata_prefect.usecases import queries
from airavata_prefect.usecases.authorization import allowed
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.errors import BadInput
from airavata_prefect.usecases.outputs import digest_inside

log = logging.getLogger("airavata.lineage")
MAX_DEPTH = 50  # hops upstream one answer follows at most
MAX_OUTPUTS = 1000  # records one answer holds at most
_EXPERIMENT_REF = re.compile(r"[0-9a-fA-F-]{4,36}")
FORMS = ("an output id (16 hex digits), EXPERIMENT:PATH (a path in the experiment's "
         "directory, e.g. 1a2b3c4d:step/0/out.txt) or the absolute path of a file in an "
         "experiment's directory")


# -- recording -------------------------------------------------------------------------------


class LineageRecorder:
    """The run's executor, recording the outputs of every attempt that completes."""

    def __init__(self, inner: Executor, store: Store, experiment_id: str, graph: TaskGraph,
                 resource_of: Callable[[str, int], str]) -> None:
        self.inner = inner
        self.store = store
        self.experiment_id = experiment_id
        self.graph = graph
        self.resource_of = resource_of
        self.root = os.path.realpath(graph.root)
        self._scripts: dict[str, str] = {}
        self._mounts: dict[str, tuple[MountInput, ...]] = {}

    async def __call__(self, inst: TaskInstance, attempt: int, report: Report,
                       cancel: asyncio.Event) -> Outcome:
        outcome = await self.inner(inst, attempt, report, cancel)
        if outcome.state == TaskState.COMPLETED and inst.outputs:
            try:
                await asyncio.to_thread(self.record, inst, attempt)
            except Exception as exc:  # a record of the run: never a reason to fail it
                log.warning("experiment %s: lineage of %s not recorded: %s",
                            self.experiment_id, inst.id, exc)
        return outcome

    def record(self, inst: TaskInstance, attempt: int) -> list[OutputLineage]:
        """Hash the instance's outputs in the experiment's directory and store their records;
        an output that is not there (or not a regular file inside it) gets none."""
        step = self.graph.by_name[inst.step]
        made = []
        for name, declared in step.outputs.items():
            path = output_path(inst.step, inst.index, declared)
            found = digest_inside(self.root, path)
            if found is not None:
                made.append((name, path, *found))
        if not made:
            return []
        script = self._scripts.get(step.name)
        if script is None:
            script = self._scripts[step.name] = script_sha256(step)
        upstream = self._upstream(inst)
        mounts = self._mounts.get(step.name)
        if mounts is None:  # staged before any of the step's instances ran: read once a step
            mounts = self._mounts[step.name] = tuple(
                MountInput(f.mount, f.path, f.sha256, f.size)
                for f in self.store.staging.inputs(self.experiment_id, inst.step))
        params = parameters(inst)
        resource = self.resource_of(inst.step, inst.index)
        now = utcnow()
        records = [OutputLineage(output_id(self.experiment_id, path), self.experiment_id,
                                 inst.id, attempt, name, path, sha, size, script, params,
                                 resource, now, upstream, mounts)
                   for name, path, size, sha in made]
        self.store.lineage.record(records)
        return records

    def _upstream(self, inst: TaskInstance) -> tuple[UpstreamInput, ...]:
        """The upstream outputs its inputs name, with their checksums as recorded when their
        own instance completed (hashed now should that record be missing)."""
        refs = [(s, i, name, output_path(s, i, self.graph.by_name[s].outputs[name]))
                for s, i, name in self.graph.consumed_outputs(inst.step, inst.index)]
        if not refs:
            return ()
        ids = [output_id(self.experiment_id, path) for *_, path in refs]
        known = self.store.lineage.get_many(ids)
        out = []
        for (s, i, name, path), oid in zip(refs, ids, strict=True):
            rec = known.get(oid)
            found = digest_inside(self.root, path) if rec is None else None
            sha = rec.sha256 if rec is not None else found[1] if found else None
            out.append(UpstreamInput(oid, f"{s}[{i}]", name, path, sha))
        return tuple(out)


def recording(executor: Executor, store: Store, experiment_id: str, graph: TaskGraph,
              resource_of: Callable[[str, int], str]) -> Executor:
    """`executor`, recording lineage when any step declares outputs (else itself, unwrapped)."""
    if not any(s.outputs for s in graph.steps):
        return executor
    return LineageRecorder(executor, store, experiment_id, graph, resource_of)


# -- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lineage:
    """An output's record and those of what it came from."""

    output_id: str  # the one asked about
    experiment_id: str
    outputs: list[OutputLineage]  # it first, then upstream, nearest first, each once
    truncated: bool  # some upstream outputs were not followed (the depth or size bound)


@dataclass(frozen=True, slots=True)
class OutputRef:
    """What `airavata data lineage` was given: an output id, or a path with its experiment
    (None for an absolute path: the experiment is found from it)."""

    output_id: str | None = None
    experiment: str | None = None  # an id or a unique prefix
    path: str | None = None


def parse_ref(ref: str) -> OutputRef:
    """One of FORMS, or BadInput naming them."""
    text = ref.strip()
    if OUTPUT_ID.fullmatch(text):
        return OutputRef(output_id=text)
    if text.startswith("/"):
        return OutputRef(path=text)
    exp_ref, colon, path = text.partition(":")
    if colon and path and _EXPERIMENT_REF.fullmatch(exp_ref):
        return OutputRef(experiment=exp_ref, path=path)
    raise BadInput(f"{ref!r}: expected {FORMS}")


def lineage(ctx: Context, ref: str, *, depth: int = MAX_DEPTH) -> Lineage:
    """Where an output came from: `ref` is one of FORMS."""
    _check_depth(depth)
    parsed = parse_ref(ref)
    if parsed.output_id is not None:
        rec = ctx.store.lineage.get(parsed.output_id)
        if rec is None:
            raise NotFound(f"no output {parsed.output_id!r} has lineage recorded (lineage is "
                           "recorded for the declared outputs of instances that completed)")
        queries.experiment(ctx, rec.experiment_id)  # may the caller read it?
        return _walk(ctx, rec, depth)
    path = parsed.path or ""
    return lineage_at(ctx, parsed.experiment or _experiment_of(ctx, path), path, depth=depth)


def lineage_at(ctx: Context, experiment: str, path: str, *, depth: int = MAX_DEPTH) -> Lineage:
    """Where the output at `path` (in the experiment's directory, or absolute) came from."""
    _check_depth(depth)
    exp = queries.experiment(ctx, experiment)
    rel = _relative(exp, path)
    rec = ctx.store.lineage.get(output_id(exp.id, rel))
    if rec is None or rec.experiment_id != exp.id:
        raise NotFound(f"no lineage of {rel} in experiment {exp.short_id} (lineage is recorded "
                       "for the declared outputs of instances that completed)")
    return _walk(ctx, rec, depth)


def _check_depth(depth: int) -> None:
    if not 0 <= depth <= MAX_DEPTH:
        raise BadInput(f"depth {depth}: between 0 and {MAX_DEPTH}")


def _relative(exp: Experiment, path: str) -> str:
    """`path` relative to the experiment's directory, normalised; BadInput if outside it."""
    if not path or any(c in path for c in "\0\n\r"):
        raise BadInput(f"{path!r}: not a path")
    if not path.startswith("/"):
        if ".." in PurePosixPath(path).parts:
            raise BadInput(f"{path!r}: a path in the experiment's directory has no '..'")
        return posixpath.normpath(path)
    root = os.path.realpath(exp.workdir)
    real = _named(path)
    if os.path.commonpath([root, real]) != root or real == root:
        raise BadInput(f"{path}: not in experiment {exp.short_id}'s directory ({root})")
    return os.path.relpath(real, root)


def _named(path: str) -> str:
    """The absolute path with its directories resolved but not the file itself: an output that
    is a link is the output, not where it leads."""
    head, leaf = os.path.split(os.path.normpath(path))
    return os.path.join(os.path.realpath(head), leaf)


def _experiment_of(ctx: Context, path: str) -> str:
    """The experiment whose directory holds the absolute `path`."""
    real = _named(path)
    for candidate in dict.fromkeys([*experiments_in_path(real), *experiments_in_path(path)]):
        try:
            exp = ctx.store.experiments.get(candidate)
        except NotFound:
            continue
        root = os.path.realpath(exp.workdir)
        if os.path.commonpath([root, real]) == root != real:
            return exp.id
    raise BadInput(f"{path}: not in any experiment's directory (expected {FORMS})")


def _walk(ctx: Context, first: OutputLineage, depth: int) -> Lineage:
    """`first` and its upstream records, breadth first, each once, within the bounds. Records
    of experiments the caller may not read are left out (today an instance only reads its own
    experiment's outputs)."""
    seen = {first.output_id: first}
    readable = {first.experiment_id: True}
    level = [first]
    truncated = False
    for hop in range(depth + 1):
        wanted = list(dict.fromkeys(u.output_id for r in level for u in r.upstream
                                    if u.output_id not in seen))
        if not wanted:
            break
        room = MAX_OUTPUTS - len(seen)
        if hop == depth or room <= 0:
            truncated = True
            break
        truncated = len(wanted) > room
        found = ctx.store.lineage.get_many(wanted[:room])
        level = []
        for oid in wanted[:room]:
            rec = found.get(oid)
            if rec is None:
                continue
            if rec.experiment_id not in readable:
                readable[rec.experiment_id] = allowed(ctx, queries.READ, rec.experiment_id)
            if readable[rec.experiment_id]:
                seen[oid] = rec
                level.append(rec)
        if truncated:
            break
    return Lineage(first.output_id, first.experiment_id, list(seen.values()), truncated)


__all__ = ["FORMS", "MAX_DEPTH", "MAX_OUTPUTS", "Lineage", "LineageRecorder", "OutputRef",
           "lineage", "lineage_at", "parse_ref", "recording"]
