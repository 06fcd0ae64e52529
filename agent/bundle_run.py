"""One bundle on one resource, start to end: stage, launch, follow, collect, report.

Shared by every worker type; what differs is the `Launcher` (a SLURM job array, a detached
process group over SSH). Progress goes to the store as bundle events, in the order the
experiment's flow turns into task states: DATA_STAGING (staging) -> ENV_SETUP (submitted) ->
RUNNING (its script started) -> OUTPUT_STAGING (outputs coming home) -> COMPLETED, or FAILED /
CANCELED from any of them.

Outputs and logs come home to the experiment's directory (`<workdir>/<step>/<index>/`) when an
instance ends, so later steps on other resources, the CLI and `logs` find them there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from airavata_prefect.adapters.bundle_store import BundleEvent, BundleStatus
from airavata_prefect.adapters.db import Store
from airavata_prefect.adapters.hosts import Host, HostError, download, upload
from airavata_prefect.adapters.slurm import Ending
from airavata_prefect.agent.bundle import (
    EXECUTABLE,
    Link,
    Marker,
    Member,
    bundle_dir,
    bundle_files,
    read_markers,
)
from airavata_prefect.flows.dag import TaskGraph
from airavata_prefect.flows.states import TaskState

Verdict = tuple[Ending, int | None, str | None]  # (ending, exit code, reason)
REQUEUE_LIMIT = 3
SCHEDULER_EVERY_SECONDS = 15.0
KILLED_GRACE_SECONDS = 30.0  # how long a killed script waits for its scheduler's verdict


class Launcher(Protocol):
    """How a bundle's instances start inside one allocation, and what its scheduler says."""

    name: str
    requeues: bool  # its scheduler may put a killed task back in the queue (SLURM)

    def files(self, bdir: str, count: int) -> dict[str, str]: ...
    def submit(self, bdir: str, count: int) -> list[str]: ...
    def unmarked(self, ids: list[str], positions: Collection[int]) -> dict[int, Verdict]: ...
    def cancel(self, ids: list[str]) -> None: ...
    def resubmit(self, bdir: str, positions: list[int]) -> list[str]: ...


@dataclass
class Staged:
    """What goes up with the bundle besides its own files: inputs from elsewhere and mounts."""

    files: dict[str, bytes | str | Path] = field(default_factory=dict)  # under the exp root
    links: list[Link] = field(default_factory=list)


@dataclass
class BundleJob:
    store: Store
    bundle: dict
    experiment: dict
    remote: TaskGraph  # compiled with the experiment's directory on the resource as root
    home: TaskGraph  # compiled with the experiment's directory here as root
    members: list[Member]
    host: Host
    launcher: Launcher
    staged: Staged = field(default_factory=Staged)
    walltime: int | None = None  # enforced by run_one.sh (bare metal); SLURM enforces its own
    log: logging.Logger | logging.LoggerAdapter = field(
        default_factory=lambda: logging.getLogger("airavata.bundle"))

    @property
    def id(self) -> str:
        return str(self.bundle["id"])

    @property
    def bdir(self) -> str:
        return bundle_dir(self.remote.root, self.id)


@dataclass
class Progress:
    state: dict[int, TaskState] = field(default_factory=dict)
    requeues: dict[int, int] = field(default_factory=dict)

    def open(self) -> list[int]:
        return [k for k, s in self.state.items() if s not in _ENDED]


_ENDED = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELED})
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
        self.progress = Progress({k: TaskState.QUEUED for k in range(len(job.members))})
        self.ids: list[str] = []
        self.cancel_sent = False
        self._asked = 0.0
        self._killed_at: dict[int, float] = {}

    # -- events --------------------------------------------------------------------------

    def _emit(self, updates: Mapping[int, tuple[TaskState, int | None, str | None]]) -> None:
        """Advance instances to new states, filling the chain's steps in between, as one write."""
        events: list[BundleEvent] = []
        for k, (target, code, message) in updates.items():
            current = self.progress.state[k]
            if current in _ENDED:
                continue
            if target in (TaskState.COMPLETED, *_CHAIN):
                stop = _CHAIN.index(target) + 1 if target in _CHAIN else len(_CHAIN)
                start = _CHAIN.index(current) + 1 if current in _CHAIN else 0
                events += [BundleEvent(k, str(s)) for s in _CHAIN[start:stop]]
            if target not in _CHAIN:
                events.append(BundleEvent(k, str(target), code, message))
            self.progress.state[k] = target
        self.job.store.bundles.add_events(self.job.experiment["id"], self.job.id, events)

    def _all(self, state: TaskState, message: str | None = None) -> None:
        self._emit({k: (state, None, message) for k in self.progress.open()})

    # -- the run -------------------------------------------------------------------------

    async def run(self) -> dict[str, int]:
        job = self.job
        bundles = job.store.bundles
        bundles.update(job.id, status=BundleStatus.STAGING)
        self._emit({k: (TaskState.DATA_STAGING, None, None) for k in self.progress.open()})
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
        self._emit({k: (TaskState.ENV_SETUP, None, None) for k in self.progress.open()})
        job.log.info("bundle %s: %d instances of %s submitted to %s as %s", job.id,
                     len(job.members), job.bundle["step"], job.launcher.name,
                     ", ".join(self.ids))
        await self._follow()
        status = BundleStatus.CANCELED if self.cancel_sent else BundleStatus.COMPLETED
        counts = self.counts()
        bundles.update(job.id, status=status, message=", ".join(
            f"{v} {k.lower()}" for k, v in sorted(counts.items())))
        return counts

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.progress.state.values():
            out[str(s)] = out.get(str(s), 0) + 1
        return out

    def _stage(self) -> None:
        job = self.job
        files = bundle_files(job.remote, job.bundle["step"], job.members,
                             experiment_id=job.experiment["id"], walltime=job.walltime,
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
        while self.progress.open():
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
                if failures >= 30:
                    self._all(TaskState.FAILED, f"lost contact with {job.launcher.name}: {exc}")
                    return

    async def _poll_once(self) -> None:
        job = self.job
        markers = await asyncio.to_thread(read_markers, job.host, job.bdir)
        started = {k: (TaskState.RUNNING, None, None) for k in self.progress.open()
                   if markers.get(k) and markers[k].started
                   and self.progress.state[k] != TaskState.RUNNING}
        if started:
            self._emit(started)
        ended = [k for k in self.progress.open() if markers.get(k) and markers[k].ended]
        ended = await self._unless_requeued(ended, markers)
        if ended:
            self._emit({k: (TaskState.OUTPUT_STAGING, None, None) for k in ended})
            missing = await asyncio.to_thread(self._collect, ended)
            verdicts = {k: verdict(markers[k], missing.get(k, []),
                                   canceled=self.cancel_sent) for k in ended}
            self._emit(verdicts)
        rest = [k for k in self.progress.open() if not (markers.get(k) and markers[k].ended)]
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
        killed = [k for k in ended if markers[k].exit_code in (128 + 9, 128 + 15)]
        if not killed or self.cancel_sent or not self.job.launcher.requeues:
            return ended
        said = await asyncio.to_thread(self.job.launcher.unmarked, self.ids, killed)
        now = time.monotonic()
        hold: set[int] = set()
        requeue: list[int] = []
        for k in killed:
            v = said.get(k)
            if v is None and now - self._killed_at.setdefault(k, now) < KILLED_GRACE_SECONDS:
                hold.add(k)
            elif v is not None and v[0] == Ending.REQUEUE \
                    and self.progress.requeues.get(k, 0) < REQUEUE_LIMIT:
                hold.add(k)
                requeue.append(k)
        if requeue:
            await self._requeue(requeue, said[requeue[0]][2] or "re-queued")
        return [k for k in ended if k not in hold]

    async def _requeue(self, positions: list[int], why: str) -> None:
        job = self.job
        for k in positions:
            self.progress.requeues[k] = self.progress.requeues.get(k, 0) + 1
            self._killed_at.pop(k, None)
        job.log.warning("bundle %s: re-queueing %d instance(s) after %s", job.id,
                        len(positions), why)
        # Their markers belong to the run that died; the new run writes its own.
        names = " ".join(f"{k}.start {k}.exit" for k in positions)
        await asyncio.to_thread(job.host.run, f"cd {shlex.quote(job.bdir)}/results && "
                                              f"rm -f {names}")
        self.ids += await asyncio.to_thread(job.launcher.resubmit, job.bdir, positions)
        job.store.bundles.update(job.id, infrastructure=self.ids)

    async def _ask_scheduler(self, rest: list[int]) -> None:
        """Instances the scheduler ended without an exit marker: killed, timed out, lost."""
        job = self.job
        said = await asyncio.to_thread(job.launcher.unmarked, self.ids, rest)
        # An exit marker may have landed after we read them: read again before judging.
        if said:
            markers = await asyncio.to_thread(read_markers, job.host, job.bdir)
            said = {k: v for k, v in said.items() if not (markers.get(k)
                                                          and markers[k].ended)}
        verdicts: dict[int, tuple[TaskState, int | None, str | None]] = {}
        requeue: list[int] = []
        for k, (ending, code, reason) in said.items():
            if ending == Ending.REQUEUE and self.progress.requeues.get(k, 0) < REQUEUE_LIMIT \
                    and not self.cancel_sent:
                requeue.append(k)
            elif ending in (Ending.CANCELED, Ending.REQUEUE) or self.cancel_sent:
                verdicts[k] = (TaskState.CANCELED, code, reason or "canceled")
            elif ending == Ending.FAILED:
                verdicts[k] = (TaskState.FAILED, code, reason)
            elif ending == Ending.COMPLETED:  # ended cleanly but wrote no marker: lost
                verdicts[k] = (TaskState.FAILED, code, "ended without an exit status")
        if verdicts:
            await asyncio.to_thread(self._collect, list(verdicts))  # keep whatever logs exist
            self._emit(verdicts)
        if requeue:
            await self._requeue(requeue, said[requeue[0]][2] or "re-queued")

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
            _rotate_home_logs(home_dir, job.members[k].attempt)
            for name in ("stdout.log", "stderr.log"):
                wanted[f"{rel}/{name}"] = (k, name, home_dir / name)
            for out, path in inst.outputs.items():
                if path.startswith(job.remote.root + "/"):
                    wanted[path.removeprefix(job.remote.root + "/")] = (
                        k, out, Path(job.home.output_path(inst.step, inst.index, out)))
        got = download(job.host, job.remote.root, list(wanted))
        missing: dict[int, list[str]] = {}
        for rel, (k, name, target) in wanted.items():
            if rel in got:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(got[rel])
            elif not name.endswith(".log"):
                missing.setdefault(k, []).append(
                    f"{name}={job.members[k].instance.outputs[name]}")
        return missing


def verdict(marker: Marker, missing: list[str], *, canceled: bool = False
            ) -> tuple[TaskState, int | None, str | None]:
    """An instance's end from its exit marker (and the outputs it did not produce)."""
    code = marker.exit_code
    signal = code - 128 if code is not None and code > 128 else 0
    if canceled and code != 0:
        return TaskState.CANCELED, code, "canceled"
    if signal in (9, 15):  # SIGKILL/SIGTERM from outside: canceled, as SLURM's own states say
        return TaskState.CANCELED, code, f"killed by signal {signal}"
    if code == 0:
        if missing:
            return TaskState.FAILED, 0, "declared outputs not produced: " + ", ".join(missing)
        return TaskState.COMPLETED, 0, None
    if marker.note == "timeout":
        return TaskState.FAILED, code, "timeout: exceeded its walltime"
    if signal:
        return TaskState.FAILED, code, f"killed by signal {signal}"
    return TaskState.FAILED, code, f"exit code {code}" + (f": {marker.note}" if marker.note
                                                           else "")


def _rotate_home_logs(home_dir: Path, attempt: int) -> None:
    if attempt <= 0:
        return
    for name in ("stdout", "stderr"):
        log = home_dir / f"{name}.log"
        if log.exists():
            os.replace(log, home_dir / f"{name}.attempt{attempt - 1}.log")


__all__ = ["BundleJob", "BundleRunner", "Launcher", "Staged", "Verdict", "verdict"]
