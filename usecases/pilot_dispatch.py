"""Dispatch in pilot mode: ready instances go into the store's queue as work items, agents on
the resource pull them through the scheduler service, and what the agents report (pilot events
in the store) becomes the instances' states.

The experiment's flow also keeps the agents it needs alive: as many as its queue can use (one
per `slots` waiting instances, up to the resource's limit), started again when some die, with a
token scoped to this experiment and resource that expires with them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from airavata_prefect.adapters.store import Store
from airavata_prefect.domain.bundle_layout import Environments, environment_prelude
from airavata_prefect.domain.dag import TaskGraph, TaskInstance
from airavata_prefect.domain.endings import Outcome
from airavata_prefect.domain.environments import resource_cache
from airavata_prefect.domain.instance import instance_environment, render_script
from airavata_prefect.domain.pilot import (
    PROGRESS,
    ActiveItem,
    AgentStatus,
    PilotEvent,
    TaskPayload,
    WorkItem,
)
from airavata_prefect.domain.scheduler import Report
from airavata_prefect.domain.states import TERMINAL, TaskState
from airavata_prefect.usecases.local_mounts import LocalMounts, MountError

log = logging.getLogger("airavata.pilots")
CANCEL_CONFIRM_SECONDS = 60.0  # after which a cancel no agent confirmed is assumed
_CHAIN = (TaskState.QUEUED, *PROGRESS)
RESTART_WINDOW = 120.0  # more starts than a resource's agents could need in this: give up


class AgentStarter(Protocol):
    """Starts agents on one resource (a local process, a SLURM job, an SSH process)."""

    slots: int  # instances one agent runs at once
    max_agents: int
    startup_seconds: float  # how long a started agent may take to register (a queue wait)

    async def start(self, count: int, *, experiment_id: str, root: Path) -> list[str]:
        """Start `count` agents for the experiment (`root`: where workdirs are relative to,
        when the agents run on this machine); a description of each (for logs)."""
        ...

    def failed(self) -> str | None:
        """Why its agents could not be started at all (nothing to wait for), if so."""
        ...

    def pending(self) -> int:
        """Agents started that cannot have registered yet, however long it takes (no worker
        has taken their start yet): never started again meanwhile."""
        ...

    def close(self) -> None:
        """The run is over: remove what only starting agents needed (their token files)."""
        ...


@dataclass
class _Waiter:
    inst: TaskInstance
    attempt: int
    report: Report
    future: asyncio.Future[Outcome]
    resource: str
    state: TaskState = TaskState.QUEUED
    item_id: int | None = None


@dataclass
class _Pool:
    """The agents the experiment keeps on one resource."""

    starter: AgentStarter
    started: int = 0
    last_start: float = 0.0
    handles: list[str] = field(default_factory=list)
    recent: list[float] = field(default_factory=list)  # when agents were started lately


class PilotExecutor:
    """The scheduler's executor for instances placed on resources that run pilots."""

    def __init__(self, store: Store, experiment_id: str, graph: TaskGraph,
                 resource_of: Callable[[str, int], str],
                 starter_for: Callable[[str], AgentStarter], *, window: float = 0.02,
                 poll: float = 0.1, supervise_every: float = 2.0,
                 cancel_confirm: float = CANCEL_CONFIRM_SECONDS,
                 mounts: LocalMounts | None = None) -> None:
        self.store = store
        self.mounts = mounts
        self.experiment_id = experiment_id
        self.graph = graph
        self.resource_of = resource_of
        self.starter_for = starter_for
        self.window = window
        self.poll = poll
        self.supervise_every = supervise_every
        self.cancel_confirm = cancel_confirm
        self.root = Path(graph.root).parent  # agents' root: workdirs are relative to it
        self._scripts: dict[str, tuple[str, str]] = {}
        self._pending: list[_Waiter] = []
        self._flusher: asyncio.Task[None] | None = None
        self._by_item: dict[int, _Waiter] = {}
        self._adopted: set[int] = set()  # items an earlier run of this experiment enqueued
        self._early: dict[int, list[PilotEvent]] = {}  # their events, before anyone waits
        self._states: dict[str, TaskState] = {}  # adopted instances' stored states
        self._pools: dict[str, _Pool] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._follower: asyncio.Task[None] | None = None
        self._cursor = 0
        self._canceled = False
        self._watched: asyncio.Event | None = None

    # -- payloads ------------------------------------------------------------------------

    def _script(self, step: str) -> tuple[str, str]:
        found = self._scripts.get(step)
        if found is None:
            plan = self.graph.by_name[step]
            envs = Environments(resource_cache(self.graph.root), plan.resources.conda,
                                plan.resources.pip)
            text = (environment_prelude(envs)
                    + render_script(plan.script, plan.resources.environment))
            found = self._scripts[step] = (text, hashlib.sha256(text.encode()).hexdigest())
        return found

    def payload(self, inst: TaskInstance, attempt: int) -> TaskPayload:
        plan = self.graph.by_name[inst.step]
        script, sha = self._script(inst.step)
        workdir = self.graph.workdir(inst.step, inst.index)
        env = instance_environment(inst, experiment_id=self.experiment_id, attempt=attempt,
                                   workdir=workdir)
        walltime = plan.resources.compute.walltime_seconds if plan.resources.compute else None
        return TaskPayload(script=script, script_sha256=sha,
                           workdir=os.path.relpath(workdir, self.root), env=env,
                           walltime_seconds=walltime,
                           ram_gb=plan.resources.compute.ram_gb if plan.resources.compute else 0.0,
                           outputs=tuple(os.path.relpath(v, workdir)
                                         for v in inst.outputs.values()))

    # -- the executor --------------------------------------------------------------------

    def adopt(self, active: list[ActiveItem], states: dict[str, TaskState]) -> set[str]:
        """A resumed run follows the work items an earlier run enqueued (never twice);
        `states`: where the store says each instance is."""
        self._adopted.update(i.item_id for i in active)
        self._states.update(states)
        if active and (self._follower is None or self._follower.done()):
            self._follower = self._spawn(self._follow())
        return {i.instance_id for i in active}

    async def __call__(self, inst: TaskInstance, attempt: int, report: Report,
                       cancel: asyncio.Event) -> Outcome:
        if cancel.is_set() or self._canceled:
            return Outcome(TaskState.CANCELED, None, "canceled before it was dispatched")
        resource = self.resource_of(inst.step, inst.index)
        state = self._states.pop(inst.id, TaskState.QUEUED)
        if self.graph.by_name[inst.step].resources.storage and self.mounts is not None:
            try:
                await self._mount(inst, report)
            except (OSError, MountError) as exc:
                return Outcome(TaskState.FAILED, None, f"staging: {exc}")
            state = max(state, TaskState.DATA_STAGING, key=_CHAIN.index)
        waiter = _Waiter(inst, attempt, report, asyncio.get_running_loop().create_future(),
                         resource, state)
        self._pending.append(waiter)
        if self._flusher is None or self._flusher.done():
            self._flusher = self._spawn(self._flush_later())
        if self._follower is None or self._follower.done():
            self._follower = self._spawn(self._follow())
        if self._watched is not cancel:  # one watcher for the run, not a task per instance
            self._watched = cancel
            self._spawn(self._watch_cancel(cancel))
        # Shielded: the scheduler giving up on this call must not cancel the shared future.
        return await asyncio.shield(waiter.future)

    async def _watch_cancel(self, cancel: asyncio.Event) -> None:
        """When the experiment is canceled: cancel everything queued or running, and wait a
        while for the agents to confirm each instance ended."""
        await cancel.wait()
        await self._cancel_all()
        running = [w.future for w in self._by_item.values() if not w.future.done()]
        if running:
            await asyncio.wait(running, timeout=self.cancel_confirm)
        for future in running:
            if not future.done():
                future.set_result(Outcome(TaskState.CANCELED, None,
                                          "canceled (its agent did not confirm)"))

    async def _mount(self, inst: TaskInstance, report: Report) -> None:
        """Storage mounts, fetched here once per run and linked into the instance's directory:
        pilot mode shares that directory with the agents, so they find the links, and agents
        never hold a storage credential (or a URL standing for one)."""
        assert self.mounts is not None
        workdir = Path(self.graph.workdir(inst.step, inst.index))
        await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
        note = await self.mounts.link(inst.step, workdir)
        count = len(self.graph.by_name[inst.step].resources.storage)
        report(TaskState.DATA_STAGING, f"{count} storage mount(s)" + (f"; {note}" if note
                                                                       else ""))

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _flush_later(self) -> None:
        # Until nothing is pending: instances that arrive while this one enqueues or starts
        # agents (a flow run to create, a queue to ask) go out in its next round.
        while await self._flush_once():
            pass

    async def _flush_once(self) -> bool:
        await asyncio.sleep(self.window)
        waiters, self._pending = self._pending, []
        if not waiters:
            return False
        if self._canceled:
            for w in waiters:
                w.future.set_result(Outcome(TaskState.CANCELED, None, "canceled"))
            return True
        items = [WorkItem(self.experiment_id, w.inst.id, w.attempt, w.resource,
                          self.payload(w.inst, w.attempt)) for w in waiters]
        try:
            ids = await asyncio.to_thread(self.store.pilot.enqueue, items)
        except Exception as exc:  # the store is away: these attempts fail (and may retry)
            reason = f"cannot queue for agents: {type(exc).__name__}: {exc}"
            log.error("%s", reason)
            for w in waiters:
                w.future.set_result(Outcome(TaskState.FAILED, None, reason))
            return True
        for w, item in zip(waiters, items, strict=True):
            w.item_id = ids[_key(item)]
            self._by_item[w.item_id] = w
            for e in self._early.pop(w.item_id, []):
                self._apply(e)
        if self._canceled:  # canceled while these were being queued: they end too
            await asyncio.to_thread(self.store.pilot.cancel, self.experiment_id,
                                    [w.inst.id for w in waiters])
            return True
        log.debug("queued %d instance(s) for agents", len(waiters))
        for resource in {w.resource for w in waiters}:
            await self._supervise(resource)
        return True

    # -- following -----------------------------------------------------------------------

    async def _follow(self) -> None:
        checked = time.monotonic()
        while True:  # for the whole run (close() ends it): adopted items report any time
            await asyncio.sleep(self.poll)
            try:
                events = await asyncio.to_thread(self.store.pilot.events_after,
                                                 self.experiment_id, self._cursor)
            except Exception as exc:  # the store is away for a moment: read again later
                log.warning("cannot read agents' reports: %s: %s", type(exc).__name__, exc)
                continue
            for e in events:
                self._cursor = e.id
                self._apply(e)
            if time.monotonic() - checked > self.supervise_every:
                checked = time.monotonic()
                for resource in {w.resource for w in self._by_item.values()
                                 if not w.future.done()}:
                    await self._supervise(resource)

    def _apply(self, e: PilotEvent) -> None:
        w = self._by_item.get(e.item_id)
        if w is None and e.item_id in self._adopted:
            self._early.setdefault(e.item_id, []).append(e)
            return
        if w is None or w.future.done():
            return
        if e.state is None:  # back in the queue: a lost agent, a hand-back
            log.warning("%s: %s; it runs again", w.inst.id, e.message)
            return
        if e.state in TERMINAL:
            if e.state == TaskState.COMPLETED:
                self._advance(w, TaskState.OUTPUT_STAGING)
            w.future.set_result(Outcome(e.state, e.exit_code, e.message, e.usage))
        else:
            self._advance(w, e.state, e.message)

    @staticmethod
    def _advance(w: _Waiter, to: TaskState, message: str | None = None) -> None:
        """Report the states between where the instance is and `to`, forward only."""
        here, there = _CHAIN.index(w.state), _CHAIN.index(to)
        for state in _CHAIN[here + 1:there + 1]:
            w.report(state, message if state == to else None)
        w.state = max(w.state, to, key=_CHAIN.index)

    # -- agents --------------------------------------------------------------------------

    async def _supervise(self, resource: str) -> None:
        """Start agents while the queue has more work than the live agents can take."""
        pool = self._pools.get(resource)
        if pool is None:
            pool = self._pools[resource] = _Pool(self.starter_for(resource))
        waiting = sum(1 for w in self._by_item.values()
                      if w.resource == resource and not w.future.done())
        if not waiting or self._canceled:
            return
        failed = await asyncio.to_thread(pool.starter.failed)
        if failed:
            await self._fail_waiting(resource, failed)
            return
        known = await asyncio.to_thread(self.store.pilot.agents, resource, self.experiment_id,
                                        False)
        live = [a for a in known if a.status == AgentStatus.ACTIVE]
        wanted = min(pool.starter.max_agents, math.ceil(waiting / pool.starter.slots))
        # Agents started but never registered count as live for a while (a queue wait), and
        # for as long as their start waits for a worker.
        starting = (pool.started - len(known)
                    if time.monotonic() - pool.last_start < pool.starter.startup_seconds else 0)
        starting = max(starting, await asyncio.to_thread(pool.starter.pending))
        missing = wanted - len(live) - max(0, starting)
        if missing <= 0:
            return
        now = time.monotonic()
        pool.recent = [t for t in pool.recent if now - t < RESTART_WINDOW]
        if len(pool.recent) >= 3 * pool.starter.max_agents + 3:
            await self._fail_waiting(resource, f"agents on {resource} keep stopping "
                                     f"({len(pool.recent)} started in {RESTART_WINDOW:.0f} s; "
                                     "see their log)")
            return
        pool.started += missing
        pool.recent += [now] * missing
        pool.last_start = now
        try:
            pool.handles += await pool.starter.start(missing, experiment_id=self.experiment_id,
                                                     root=self.root)
        except Exception as exc:
            await self._fail_waiting(resource, f"cannot start agents on {resource}: "
                                     f"{type(exc).__name__}: {exc}")
            return
        log.info("started %d agent(s) on %s for %d waiting instance(s)", missing, resource,
                 waiting)

    async def _fail_waiting(self, resource: str, reason: str) -> None:
        """No agent can run them: the instances still queued for `resource` fail (a retry
        queues them again), and leave the queue, so no agent that comes later runs them."""
        log.error("%s", reason)
        waiting = [w for w in self._by_item.values()
                   if w.resource == resource and not w.future.done() and w.state in (
                       TaskState.QUEUED,)]
        await asyncio.to_thread(self.store.pilot.cancel, self.experiment_id,
                                [w.inst.id for w in waiting])
        for w in waiting:
            if not w.future.done():
                w.future.set_result(Outcome(TaskState.FAILED, None, reason))

    async def _cancel_all(self) -> None:
        if self._canceled:
            return
        self._canceled = True
        for w in self._pending:
            if not w.future.done():
                w.future.set_result(Outcome(TaskState.CANCELED, None, "canceled"))
        self._pending = []
        await asyncio.to_thread(self.store.pilot.cancel, self.experiment_id, None)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pool in self._pools.values():
            pool.starter.close()


def _key(item: WorkItem) -> str:
    return f"{item.instance_id}@{item.attempt}"


__all__ = ["AgentStarter", "PilotExecutor"]
