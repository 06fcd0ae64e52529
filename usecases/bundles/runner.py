"""One bundle on one resource, start to end: stage, launch, follow, collect, report.

Shared by every compute kind; what differs is the `Launcher` (a SLURM job array, a detached
session over SSH). Progress goes to the store as bundle events, in the order the experiment's
flow turns into task states: DATA_STAGING (staging) -> ENV_SETUP (submitted) -> RUNNING (its
script started) -> OUTPUT_STAGING (outputs coming home) -> COMPLETED, or FAILED / CANCELED from
any of them. How each instance ended becomes its state through domain/endings.py.

Outputs and logs come home to the experiment's directory (`<workdir>/<step>/<index>/`) when an
instance ends, so later steps on other resources, the CLI and `logs` find them there.

What an instance used (run_one.sh's results/K.usage, and its queue wait where its scheduler
records one) travels with its ending event; a failure under a memory limit (`ram_gb`) whose
stderr or peak says memory ran out is stored with a reason naming memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from airavata_prefect.adapters.hosts import Host, HostError, download, upload
from airavata_prefect.adapters.launcher import Launcher, read_markers
from airavata_prefect.adapters.storage import StorageError, write_inside
from airavata_prefect.adapters.store import Store
from airavata_prefect.domain.bundle_layout import (
    EXECUTABLE,
    Link,
    Marker,
    Member,
    bundle_dir,
    bundle_files,
)
from airavata_prefect.domain.dag import TaskGraph
from airavata_prefect.domain.endings import Exit, Outcome, Requeue, judge
from airavata_prefect.domain.instance import LOGS, keep_earlier_logs, stderr_tail
from airavata_prefect.domain.records import Bundle, BundleEvent, Experiment
from airavata_prefect.domain.states import TERMINAL, BundleStatus, TaskState, summarize
from airavata_prefect.domain.usage import Usage, memory_failure

REQUEUE_LIMIT = 3
SCHEDULER_EVERY_SECONDS = 15.0
KILLED_GRACE_SECONDS = 30.0  # how long a killed script waits for its scheduler's verdict
LOST_CONTACT_POLLS = 30
STDERR_TAIL_BYTES = 4096  # of a failed instance's stderr.log, read for a memory error
_KILLED = (9, 15)  # SIGKILL, SIGTERM: maybe its node failing or its job preempted


@dataclass
class Staged:
    """What goes up with the bundle besides its own files: inputs from elsewhere and mounts."""

    files: dict[str, bytes | str | Path] = field(default_factory=dict)  # under the exp root
    links: list[Link] = field(default_factory=list)


@dataclass
class BundleJob:
    store: Store
    bundle: Bundle
    experiment: Experiment
    remote: TaskGraph  # rooted at the experiment's directory on the resource
    home: TaskGraph  # rooted at the experiment's directory here
    members: list[Member]
    host: Host
    launcher: Launcher
    staged: Staged = field(default_factory=Staged)
    walltime: int | None = None  # enforced by run_one.sh (bare metal); SLURM enforces its own
    log: logging.Logger | logging.LoggerAdapter[logging.Logger] = field(
        default_factory=lambda: logging.getLogger("airavata.bundle"))

    @property
    def id(self) -> str:
        return self.bundle.id

    @property
    def bdir(self) -> str:
        return bundle_dir(self.remote.root, self.id)


_CHAIN = [TaskState.DATA_STAGING, TaskState.ENV_SETUP, TaskState.RUNNING,
          TaskState.OUTPUT_STAGING]


class BundleRunner:
    """Runs one BundleJob; `cancelled()` is asked every poll (store flag or Prefect state)."""

    def __init__(self, job: BundleJob, *, poll_seconds: float = 2.0,
                 cancelled: Callable[[], Awaitable[bool]] | None = None,
                 on_submitted: Callable[[list[str]], None] | None = None) -> None:
        self.job = job
        self.poll = poll_seconds
        self.cancelled = cancelled
        self.on_submitted = on_submitted
        self.state: dict[int, TaskState] = {k: TaskState.QUEUED for k in range(len(job.members))}
        self.requeues: dict[int, int] = {}
        self.ids: list[str] = []
        self.cancel_sent = False
        self._asked = 0.0
        self._killed_at: dict[int, float] = {}

    def open(self) -> list[int]:
        return [k for k, s in self.state.items() if s not in TERMINAL]

    # -- events --------------------------------------------------------------------------

    def _emit(self, updates: Mapping[int, Outcome]) -> None:
        """Advance instances to new states, filling the chain's steps in between, as one write."""
        events: list[BundleEvent] = []
        for k, (target, code, message, usage) in updates.items():
            current = self.state[k]
            if current in TERMINAL:
                continue
            if target in (TaskState.COMPLETED, *_CHAIN):
                stop = _CHAIN.index(target) + 1 if target in _CHAIN else len(_CHAIN)
                start = _CHAIN.index(current) + 1 if current in _CHAIN else 0
                events += [BundleEvent(k, s) for s in _CHAIN[start:stop]]
            if target not in _CHAIN:
                events.append(BundleEvent(k, target, code, message, usage=usage))
            self.state[k] = target
        self.job.store.bundles.add_events(self.job.experiment.id, self.job.id, events)

    def _all(self, state: TaskState, message: str | None = None) -> None:
        self._emit({k: Outcome(state, None, message) for k in self.open()})

    def _judge(self, end: Exit, missing: list[str] | None = None) -> Outcome:
        compute = self.job.remote.by_name[self.job.bundle.step].resources.compute
        walltime = self.job.walltime or (compute.walltime_seconds if compute else None)
        return judge(end, missing=missing or [], cancel_requested=self.cancel_sent,
                     walltime=walltime)

    # -- the run -------------------------------------------------------------------------

    async def run(self) -> dict[str, int]:
        job = self.job
        bundles = job.store.bundles
        bundles.update(job.id, status=BundleStatus.STAGING)
        self._all(TaskState.DATA_STAGING)
        try:
            await asyncio.to_thread(self._stage)
            self.ids = await asyncio.to_thread(job.launcher.submit, job.bdir, len(job.members))
        except Exception as exc:  # staging or submission: the bundle fails as a whole
            reason = f"could not start on {job.launcher.name}: {exc}"
            job.log.error("bundle %s: %s", job.id, reason)
            self._all(TaskState.FAILED, reason)
            bundles.update(job.id, status=BundleStatus.FAILED, message=reason)
            return self.counts()
        bundles.update(job.id, status=BundleStatus.SUBMITTED, infrastructure=self.ids)
        if self.on_submitted:
            self.on_submitted(self.ids)
        self._all(TaskState.ENV_SETUP)
        job.log.info("bundle %s: %d instances of %s submitted to %s as %s", job.id,
                     len(job.members), job.bundle.step, job.launcher.name,
                     ", ".join(self.ids))
        await self._follow()
        status = BundleStatus.CANCELED if self.cancel_sent else BundleStatus.COMPLETED
        counts = self.counts()
        bundles.update(job.id, status=status, message=summarize(counts))
        return counts

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.state.values():
            out[str(s)] = out.get(str(s), 0) + 1
        return out

    def _stage(self) -> None:
        job = self.job
        files = bundle_files(job.remote, job.bundle.step, job.members,
                             experiment_id=job.experiment.id, walltime=job.walltime,
                             links=job.staged.links)
        files.update(job.launcher.files(job.bdir, len(job.members)))
        prefix = job.bdir.removeprefix(job.remote.root + "/")
        everything: dict[str, bytes | str | Path] = {f"{prefix}/{p}": c for p, c in files.items()}
        everything.update(job.staged.files)
        upload(job.host, job.remote.root, everything,
               executable=frozenset(f"{prefix}/{e}" for e in EXECUTABLE))

    async def _follow(self) -> None:
        job = self.job
        failures = 0
        while self.open():
            await asyncio.sleep(self.poll)
            job.store.bundles.heartbeat(job.id)
            try:
                if not self.cancel_sent and self.cancelled and await self.cancelled():
                    await asyncio.to_thread(job.launcher.cancel, self.ids)
                    self.cancel_sent = True
                    job.log.info("bundle %s: canceled on %s", job.id, job.launcher.name)
                await self._poll_once()
                failures = 0
            except (HostError, RuntimeError) as exc:  # a dropped connection: try again
                failures += 1
                job.log.warning("bundle %s: %s (attempt %d)", job.id, exc, failures)
                if failures >= LOST_CONTACT_POLLS:
                    self._all(TaskState.FAILED, f"lost contact with {job.launcher.name}: {exc}")
                    return

    async def _poll_once(self) -> None:
        job = self.job
        markers = await asyncio.to_thread(read_markers, job.host, job.bdir)
        started = {k: Outcome(TaskState.RUNNING) for k in self.open()
                   if markers.get(k) and markers[k].started
                   and self.state[k] != TaskState.RUNNING}
        if started:
            self._emit(started)
        ended = [k for k in self.open() if markers.get(k) and markers[k].ended]
        ended = await self._unless_requeued(ended, markers)
        if ended:
            self._emit({k: Outcome(TaskState.OUTPUT_STAGING) for k in ended})
            missing = await asyncio.to_thread(self._collect, ended)
            ends = {k: markers[k].end or Exit() for k in ended}
            self._emit(await self._account(
                {k: self._judge(ends[k], missing.get(k)) for k in ended}, ends,
                {k: markers[k].usage for k in ended}))
        rest = [k for k in self.open() if not (markers.get(k) and markers[k].ended)]
        # Instances end through their markers; the scheduler is asked about the rest (killed,
        # timed out, lost) only when markers stall, or now and then: a big array's `scontrol`
        # costs the controller more than it tells us while work flows.
        now = time.monotonic()
        if rest and (not (started or ended) or now - self._asked > SCHEDULER_EVERY_SECONDS
                     or self.cancel_sent):
            self._asked = now
            await self._ask_scheduler(rest)

    async def _unless_requeued(self, ended: list[int], markers: dict[int, Marker]) -> list[int]:
        """A script killed by SIGKILL or SIGTERM may be its node failing or its job preempted.
        Where the scheduler re-queues (SLURM), ask it before judging: a re-queued instance goes
        out again, and one the scheduler has not judged yet waits (a little) for it."""
        killed = [k for k in ended if (end := markers[k].end) and end.signal in _KILLED]
        if not killed or self.cancel_sent or not self.job.launcher.requeues:
            return ended
        said = await asyncio.to_thread(self.job.launcher.unmarked, self.ids, killed)
        now = time.monotonic()
        hold: set[int] = set()
        requeue: list[int] = []
        for k in killed:
            verdict = said.get(k)
            if verdict is None and now - self._killed_at.setdefault(k, now) < KILLED_GRACE_SECONDS:
                hold.add(k)
            elif isinstance(verdict, Requeue) and self.requeues.get(k, 0) < REQUEUE_LIMIT:
                hold.add(k)
                requeue.append(k)
        if requeue:
            await self._requeue(requeue, _reason(said[requeue[0]]))
        return [k for k in ended if k not in hold]

    async def _requeue(self, positions: list[int], why: str) -> None:
        job = self.job
        for k in positions:
            self.requeues[k] = self.requeues.get(k, 0) + 1
            self._killed_at.pop(k, None)
        job.log.warning("bundle %s: re-queueing %d instance(s) after %s", job.id,
                        len(positions), why)
        # Their markers belong to the run that died; the new run writes its own.
        names = " ".join(f"{k}.start {k}.usage {k}.exit" for k in positions)
        await asyncio.to_thread(job.host.run, f"cd {shlex.quote(job.bdir)}/results && "
                                              f"rm -f {names}")
        self.ids += await asyncio.to_thread(job.launcher.resubmit, job.bdir, positions)
        job.store.bundles.update(job.id, infrastructure=self.ids)

    async def _ask_scheduler(self, rest: list[int]) -> None:
        """Instances the scheduler ended without an exit marker: killed, timed out, lost."""
        job = self.job
        said = await asyncio.to_thread(job.launcher.unmarked, self.ids, rest)
        # An exit marker may have landed after we read them: read again before judging.
        markers: dict[int, Marker] = {}
        if said:
            markers = await asyncio.to_thread(read_markers, job.host, job.bdir)
            said = {k: v for k, v in said.items() if not (markers.get(k)
                                                          and markers[k].ended)}
        verdicts: dict[int, Outcome] = {}
        ends: dict[int, Exit] = {}
        requeue: list[int] = []
        for k, verdict in said.items():
            if isinstance(verdict, Requeue):
                if self.requeues.get(k, 0) < REQUEUE_LIMIT and not self.cancel_sent:
                    requeue.append(k)
                    continue
                # Re-queued as often as we allow: a preemption is a cancel, a failing node not.
                times = f"{verdict.reason} ({self.requeues.get(k, 0)} times)"
                verdict = Exit(canceled=times) if verdict.preempted else Exit(failure=times)
            elif verdict == Exit(code=0):
                # It ended cleanly by its scheduler's account yet wrote no marker: lost.
                verdict = Exit(failure="ended without an exit status")
            verdicts[k] = self._judge(verdict)
            ends[k] = verdict
        if verdicts:
            await asyncio.to_thread(self._collect, list(verdicts))  # keep whatever logs exist
            # Killed from outside, it may still have measured itself (its command ended first).
            self._emit(await self._account(verdicts, ends, {
                k: markers[k].usage if k in markers else None for k in verdicts}))
        if requeue:
            await self._requeue(requeue, _reason(said[requeue[0]]))

    async def _account(self, outcomes: dict[int, Outcome], ends: Mapping[int, Exit],
                       usages: Mapping[int, Usage | None]) -> dict[int, Outcome]:
        """What each ended instance used, with its queue wait where its scheduler records one;
        a failure under a memory limit whose stderr (its tail) or peak says memory ran out gets
        a reason naming memory. Neither is worth failing a poll for: a read that fails is
        logged and the outcomes stand."""
        job = self.job
        measured = {k: u for k, u in usages.items() if u is not None}
        waits: dict[int, float] = {}
        if measured:
            try:
                waits = await asyncio.to_thread(job.launcher.queued, self.ids, list(measured))
            except (HostError, RuntimeError) as exc:
                job.log.warning("bundle %s: no queue waits: %s", job.id, exc)
        for k, u in measured.items():
            outcomes[k] = outcomes[k]._replace(usage=u.queued(waits[k]) if k in waits else u)
        compute = job.remote.by_name[job.bundle.step].resources.compute
        ram_gb = compute.ram_gb if compute else None
        suspects = [k for k, o in outcomes.items()
                    if o.state == TaskState.FAILED and _own_failure(ends[k])]
        if not (ram_gb and suspects):
            return outcomes
        for k in suspects:  # (their logs came home with _collect, before this)
            inst = job.members[k].instance
            tail = stderr_tail(Path(job.home.workdir(inst.step, inst.index)) / LOGS[1],
                               STDERR_TAIL_BYTES)
            why = memory_failure(ram_gb, tail, outcomes[k].usage)
            if why:
                outcomes[k] = outcomes[k]._replace(reason=why)
        return outcomes

    def _collect(self, positions: list[int]) -> dict[int, list[str]]:
        """Bring logs and declared outputs home; returns the outputs each one lacks."""
        job = self.job
        if job.remote.root == job.home.root:  # ran in place (a pod or process sharing it)
            return {k: [f"{o}={p}" for o, p in job.members[k].instance.outputs.items()
                        if not os.path.exists(p)] for k in positions}
        wanted: dict[str, tuple[int, str, Path]] = {}
        for k in positions:
            inst = job.members[k].instance
            rel = f"{inst.step}/{inst.index}"
            home_dir = Path(job.home.workdir(inst.step, inst.index))
            keep_earlier_logs(home_dir, job.members[k].attempt)
            for name in LOGS:
                wanted[f"{rel}/{name}"] = (k, name, home_dir / name)
            for out, path in inst.outputs.items():
                if path.startswith(job.remote.root + "/"):
                    wanted[path.removeprefix(job.remote.root + "/")] = (
                        k, out, Path(job.home.output_path(inst.step, inst.index, out)))
        placed: set[str] = set()

        def place(rel: str, f: IO[bytes]) -> None:  # streamed home, never whole in memory
            try:
                write_inside(Path(job.home.root), str(wanted[rel][2].relative_to(job.home.root)),
                             iter(lambda: f.read(1 << 20), b""))
                placed.add(rel)
            except StorageError as exc:  # an earlier attempt here left a link out
                job.log.warning("bundle %s: %s", job.id, exc)

        download(job.host, job.remote.root, list(wanted), place)
        missing: dict[int, list[str]] = {}
        for rel, (k, name, _) in wanted.items():
            if rel in placed:
                continue
            if name not in LOGS:
                missing.setdefault(k, []).append(
                    f"{name}={job.members[k].instance.outputs[name]}")
        return missing


def _own_failure(end: Exit) -> bool:
    """It exited non-zero or a signal ended it: memory may be why (not a timeout, a cancel, or
    a failure its scheduler already named, like SLURM's OUT_OF_MEMORY)."""
    return (not (end.timed_out or end.canceled or end.failure)
            and (end.signal is not None or end.code not in (None, 0)))


def _reason(verdict: Exit | Requeue) -> str:
    return verdict.reason if isinstance(verdict, Requeue) else "re-queued"


__all__ = ["BundleJob", "BundleRunner", "Staged"]
