"""Dispatch to registered resources: ready instances placed on one are batched into bundles, each
one flow run in the resource's work pool; what its worker reports (bundle events in the store)
becomes the instances' states.

Instances of the same step and resource that become ready within `window` seconds of each other
share a bundle, so a sweep goes out as one job array, not one job per instance. The flow run's
parameters are the experiment and bundle ids only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from airavata_prefect.adapters.store import Store
from airavata_prefect.blocks import COMPUTE_KINDS
from airavata_prefect.domain.dag import StepPlan, TaskGraph, TaskInstance
from airavata_prefect.domain.endings import Outcome
from airavata_prefect.domain.records import Bundle
from airavata_prefect.domain.resources import LOCAL
from airavata_prefect.domain.scheduler import Executor, Report
from airavata_prefect.domain.states import (
    ACTIVE,
    BUNDLE_ENDED,
    TERMINAL,
    BundleStatus,
    TaskState,
)

# Every bundle is a flow run of the deployment `execute_bundle/<resource>` in its pool.
BUNDLE_FLOW = "execute_bundle"
BUNDLE_ENTRYPOINT = "airavata_prefect.flows.bundle_flow.execute_bundle"  # a module path

log = logging.getLogger("airavata.dispatch")
CANCEL_CONFIRM_SECONDS = 120.0  # after which a cancel the worker never confirmed is assumed


class Launch(Protocol):
    """Where bundles become flow runs (Prefect in production)."""

    async def create(self, resource: str, bundle_id: str, step: str,
                     job_variables: dict[str, Any]) -> str: ...
    async def cancel(self, flow_run_ids: list[str]) -> None: ...
    async def ended(self, flow_run_id: str) -> str | None:
        """None while the flow run may still report; else why it ended."""
        ...
    async def pool_type(self, resource: str) -> str: ...


@dataclass
class _Waiter:
    inst: TaskInstance
    attempt: int
    report: Report
    future: asyncio.Future[Outcome]
    state: TaskState = TaskState.QUEUED


@dataclass
class _Bundle:
    id: str
    resource: str
    waiters: list[_Waiter]
    flow_run_id: str | None = None

    def open(self) -> bool:
        return any(not w.future.done() for w in self.waiters)


_RANK = {s: n for n, s in enumerate(ACTIVE, 1)}  # a bundle's instance only moves forward


def job_variables(step: StepPlan, pool_type: str) -> dict[str, Any]:
    """What the step asks of each task, in the job variables of the kind that pool type runs."""
    for kind in COMPUTE_KINDS.values():
        if kind.worker_type == pool_type:
            return kind.job_variables(step)
    return {}


class RemoteExecutor:
    """The scheduler's executor for instances placed on registered resources."""

    def __init__(self, store: Store, experiment_id: str, graph: TaskGraph, launch: Launch,
                 resource_of: Callable[[str, int], str], *, window: float = 0.25,
                 poll: float = 0.5, max_bundle: int = 10_000,
                 stale_after: float = 300.0, liveness_every: float | None = None,
                 cancel_confirm: float = CANCEL_CONFIRM_SECONDS) -> None:
        """Ready instances of one (resource, step) within `window` seconds share a bundle (at
        most `max_bundle`); worker events are read every `poll` seconds; every
        `liveness_every` seconds (default max(5, 10 polls)) bundles whose flow run ended
        silently, or whose worker stopped its heartbeat for `stale_after`, fail; a cancel the
        worker does not confirm within `cancel_confirm` seconds is assumed."""
        self.store = store
        self.experiment_id = experiment_id
        self.graph = graph
        self.launch = launch
        self.resource_of = resource_of
        self.window = window
        self.poll = poll
        self.max_bundle = max_bundle
        self.stale_after = stale_after
        self.liveness_every = liveness_every or max(5.0, 10 * poll)
        self.cancel_confirm = cancel_confirm
        self._pending: dict[tuple[str, str], list[_Waiter]] = {}
        self._timers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._bundles: dict[str, _Bundle] = {}
        self._pool_types: dict[str, str] = {}
        self._follower: asyncio.Task[None] | None = None
        self._last_event = 0
        self._canceled = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._adopted: dict[str, _Waiter] = {}

    def adopt(self, bundles: list[Bundle], states: dict[str, TaskState]) -> set[str]:
        """A resumed run follows the bundles an earlier run sent out and that have not ended:
        never sent twice. Their instances (returned) are followed when the scheduler asks for
        them; `states` is where the store says each one is."""
        adopted: set[str] = set()
        loop = asyncio.get_running_loop()
        for b in bundles:
            if b.status in BUNDLE_ENDED or not b.flow_run_id:
                continue
            waiters = []
            for index, attempt in b.instances:
                inst = self.graph.instance(b.step, index)
                waiters.append(_Waiter(inst, attempt, lambda *_: None, loop.create_future(),
                                       states.get(inst.id, TaskState.QUEUED)))
                adopted.add(inst.id)
            self._bundles[b.id] = _Bundle(b.id, b.resource, waiters, b.flow_run_id)
            self._adopted.update({w.inst.id: w for w in waiters})
        if self._bundles and (self._follower is None or self._follower.done()):
            self._follower = self._spawn(self._follow())
        return adopted

    async def __call__(self, inst: TaskInstance, attempt: int, report: Report,
                       cancel: asyncio.Event) -> Outcome:
        if cancel.is_set():
            return Outcome(TaskState.CANCELED, None, "canceled before it was dispatched")
        waiter = self._adopted.pop(inst.id, None)
        if waiter is not None:  # sent out by an earlier run: followed, not sent again
            waiter.report = report
        else:
            waiter = _Waiter(inst, attempt, report, asyncio.get_running_loop().create_future())
            key = (self.resource_of(inst.step, inst.index), inst.step)
            self._pending.setdefault(key, []).append(waiter)
            if len(self._pending[key]) >= self.max_bundle:
                self._spawn(self._flush(key))
            elif key not in self._timers:
                self._timers[key] = self._spawn(self._flush_later(key))
        canceller = asyncio.ensure_future(cancel.wait())
        either: set[asyncio.Future[Any]] = {waiter.future, canceller}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.future.done():  # the experiment is being canceled
                await self._cancel_all()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(waiter.future), self.cancel_confirm)
                if not waiter.future.done():
                    waiter.future.set_result(Outcome(
                        TaskState.CANCELED, None, "canceled (the worker did not confirm)"))
        finally:
            canceller.cancel()
        return waiter.future.result()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    def _end(waiters: list[_Waiter], state: TaskState, reason: str) -> None:
        for w in waiters:
            if not w.future.done():
                w.future.set_result(Outcome(state, None, reason))

    async def _flush_later(self, key: tuple[str, str]) -> None:
        await asyncio.sleep(self.window)
        await self._flush(key)

    async def _flush(self, key: tuple[str, str]) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        waiters = self._pending.pop(key, [])
        if not waiters:
            return
        if len(waiters) > self.max_bundle:  # arrived together: the rest go in bundles of their own
            self._pending[key] = waiters[self.max_bundle:]
            waiters = waiters[:self.max_bundle]
            self._spawn(self._flush(key))
        resource, step = key
        if self._canceled:
            self._end(waiters, TaskState.CANCELED, "canceled")
            return
        bundle_id = await asyncio.to_thread(
            self.store.bundles.create, self.experiment_id, resource, step,
            [(w.inst.index, w.attempt) for w in waiters])
        if self._canceled:  # canceled while it was being stored: it never goes out
            await asyncio.to_thread(self.store.bundles.update, bundle_id,
                                    status=BundleStatus.CANCELED, message="canceled")
            self._end(waiters, TaskState.CANCELED, "canceled")
            return
        bundle = self._bundles[bundle_id] = _Bundle(bundle_id, resource, waiters)
        try:
            if resource not in self._pool_types:
                self._pool_types[resource] = await self.launch.pool_type(resource)
            variables = job_variables(self.graph.by_name[step], self._pool_types[resource])
            bundle.flow_run_id = await self.launch.create(resource, bundle_id, step, variables)
        except Exception as exc:  # Prefect unreachable, the deployment deleted ...
            reason = f"cannot dispatch to {resource}: {type(exc).__name__}: {exc}"
            log.error("bundle %s: %s", bundle_id, reason)
            await asyncio.to_thread(self.store.bundles.update, bundle_id,
                                    status=BundleStatus.FAILED, message=reason)
            self._end(waiters, TaskState.FAILED, reason)
            return
        await asyncio.to_thread(self.store.bundles.update, bundle_id,
                                flow_run_id=bundle.flow_run_id)
        if self._canceled:  # canceled while its flow run was being created: the store flag
            with contextlib.suppress(Exception):  # reaches the worker; Prefect hears it too
                await self.launch.cancel([bundle.flow_run_id])
        log.info("bundle %s: %d instance(s) of %s to %s (flow run %s)", bundle_id, len(waiters),
                 step, resource, bundle.flow_run_id)
        if self._follower is None or self._follower.done():
            self._follower = self._spawn(self._follow())

    # -- following ---------------------------------------------------------------------

    async def _follow(self) -> None:
        checked = time.monotonic()
        while any(b.open() for b in self._bundles.values()) or self._pending:
            await asyncio.sleep(self.poll)
            await self._read_events()
            if time.monotonic() - checked > self.liveness_every:
                checked = time.monotonic()
                await self._check_liveness()

    async def _read_events(self) -> None:
        events = await asyncio.to_thread(self.store.bundles.events_after, self.experiment_id,
                                         self._last_event)
        for e in events:
            self._last_event = e.id
            bundle = self._bundles.get(e.bundle_id)
            if bundle is None or not 0 <= e.position < len(bundle.waiters):
                continue
            w = bundle.waiters[e.position]
            if w.future.done():
                continue
            if e.state in TERMINAL:  # with what it used, where its worker measured it
                w.future.set_result(Outcome(e.state, e.exit_code, e.message, e.usage))
            elif _RANK.get(e.state, 0) > _RANK.get(w.state, 0):  # (seen by an earlier run)
                w.state = e.state
                w.report(e.state, e.message)

    async def _check_liveness(self) -> None:
        """Bundles whose worker is gone, or whose flow run ended without reporting them."""
        for bundle in [b for b in self._bundles.values() if b.open() and b.flow_run_id]:
            row = await asyncio.to_thread(self.store.bundles.get, bundle.id)
            reason = None
            if row.status in BUNDLE_ENDED:
                await self._read_events()  # its last events may have just landed
                if bundle.open():
                    reason = row.message or f"bundle ended {row.status}"
            else:
                ended = await self.launch.ended(bundle.flow_run_id or "")
                if ended:
                    await self._read_events()
                    reason = ended if bundle.open() else None
                elif row.heartbeat_at is not None and row.status == BundleStatus.SUBMITTED:
                    age = time.time() - row.heartbeat_at.timestamp()
                    if age > self.stale_after:
                        reason = f"its worker stopped reporting {age:.0f} s ago"
            if reason:
                log.error("bundle %s on %s: %s", bundle.id, bundle.resource, reason)
                for w in bundle.waiters:
                    if not w.future.done():
                        w.future.set_result(Outcome(TaskState.FAILED, None, reason))

    async def _cancel_all(self) -> None:
        if self._canceled:
            return
        self._canceled = True
        for key in list(self._pending):
            self._end(self._pending.pop(key), TaskState.CANCELED, "canceled")
        active = [b for b in self._bundles.values() if b.open()]
        await asyncio.to_thread(self.store.bundles.request_cancel, [b.id for b in active])
        with contextlib.suppress(Exception):  # the store flag alone reaches the worker
            await self.launch.cancel([b.flow_run_id for b in active if b.flow_run_id])

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class Routing:
    """Each instance to the executor of the resource it was placed on: this machine's, the
    pilot executor for resources in pilot mode, bundles for the rest."""

    def __init__(self, local: Executor, remote: Executor, placed: dict[str, list[str]], *,
                 pilot: Executor | None = None, pilots: frozenset[str] = frozenset()) -> None:
        self.local, self.remote, self.placed = local, remote, placed
        self.pilot, self.pilots = pilot, pilots

    async def __call__(self, inst: TaskInstance, attempt: int, report: Report,
                       cancel: asyncio.Event) -> Outcome:
        resource = self.placed[inst.step][inst.index]
        executor = (self.local if resource == LOCAL
                    else self.pilot if self.pilot is not None and resource in self.pilots
                    else self.remote)
        return await executor(inst, attempt, report, cancel)


__all__ = ["BUNDLE_ENTRYPOINT", "BUNDLE_FLOW", "Launch", "RemoteExecutor", "Routing",
           "job_variables"]
