"""Run a task graph: dependency tracking, retries, upstream failure, cancellation, slots.

Pure domain: it drives an `Executor` (how one attempt runs: locally, later on remote resources)
and reports every state change to a `Recorder`, which batches them to a sink (the store).
Instance-level edges come from `foreach` and `${t.OUT}`; `depends_on` is a step-level barrier.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from airavata_prefect.domain.dag import StepPlan, TaskGraph, TaskInstance
from airavata_prefect.domain.endings import Outcome
from airavata_prefect.domain.resources import LOCAL
from airavata_prefect.domain.states import TERMINAL, TaskState, Transition, check_transition
from airavata_prefect.domain.usage import Usage

REMOTE_SLOTS = 1_000_000  # instances in flight per registered resource (its scheduler queues)


Report = Callable[[TaskState, str | None], None]


class Executor(Protocol):
    async def __call__(self, inst: TaskInstance, attempt: int, report: Report,
                       cancel: asyncio.Event) -> Outcome: ...


class Recorder:
    """Checks each transition in memory and hands them to `sink` in batches, in order."""

    def __init__(self, sink: Callable[[list[Transition]], None], interval: float = 0.25) -> None:
        self._sink = sink
        self._interval = interval
        self._pending: list[Transition] = []
        self._state: dict[str, TaskState] = {}
        self._attempt: dict[str, int] = {}

    def state(self, iid: str) -> TaskState:
        return self._state.get(iid, TaskState.CREATED)

    def seed(self, iid: str, state: TaskState, attempt: int) -> None:
        """Where an earlier run left this instance (a resumed run starts from the store)."""
        self._state[iid] = state
        self._attempt[iid] = attempt

    def record(self, iid: str, to: TaskState, message: str | None = None,
               exit_code: int | None = None, usage: Usage | None = None) -> None:
        current = self.state(iid)
        check_transition(iid, current, to)
        if current == TaskState.FAILED and to == TaskState.QUEUED:
            self._attempt[iid] = self._attempt.get(iid, 0) + 1
        self._state[iid] = to
        self._pending.append(Transition(iid, current, to, datetime.now(UTC),
                                    self._attempt.get(iid, 0), message, exit_code, usage))

    async def flush(self, attempts: int = 5) -> None:
        """Write what is pending. A failed write goes back to the front of the queue and is
        retried with back-off (a locked or restarting database); after `attempts` it raises,
        and the batch is still pending, never lost."""
        for attempt in range(attempts):
            batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                await asyncio.to_thread(self._sink, batch)
                return
            except Exception:
                self._pending = batch + self._pending
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.2 * 2 ** attempt)

    async def run_flusher(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self._interval)
            await self.flush()


class Hooks:
    """How a run shows itself (the Prefect flow overrides these); the defaults do nothing."""

    async def run(self, inst: TaskInstance, body: Callable[[], Awaitable[Outcome]]) -> Outcome:
        return await body()

    async def skipped(self, step: str, index: int, state: TaskState) -> None:
        return None

    def settled(self, step: str, state: TaskState) -> None:
        return None


@dataclass
class Resume:
    """Where an earlier run of the same experiment left its instances (from the store)."""

    settled: dict[str, TaskState] = field(default_factory=dict)  # ended: never run again
    # In flight on a registered resource (state, attempt): followed where they run, not started.
    active: dict[str, tuple[TaskState, int]] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)  # waiting ones: their next attempt


@dataclass
class Summary:
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    canceled: bool = False

    def totals(self) -> dict[str, int]:
        """Instances per final state, over all steps."""
        out: dict[str, int] = {}
        for per_step in self.counts.values():
            for state, n in per_step.items():
                out[state] = out.get(state, 0) + n
        return out

    @property
    def ok(self) -> bool:
        return not self.canceled and all(
            set(c) <= {TaskState.COMPLETED} for c in self.counts.values())


class Scheduler:
    def __init__(self, graph: TaskGraph, execute: Executor, recorder: Recorder, *,
                 concurrency: int, is_cancelled: Callable[[], bool] | None = None,
                 cancel_poll: float = 1.0, hooks: Hooks | None = None,
                 resource_of: Callable[[str, int], str] | None = None,
                 remote_slots: int = REMOTE_SLOTS, is_paused: Callable[[], bool] | None = None,
                 resume: Resume | None = None) -> None:
        """`concurrency` is the local resource's CPU slots; instances `resource_of` places
        elsewhere take one of that resource's `remote_slots` each (its scheduler queues them)."""
        self.graph = graph
        self.execute = execute
        self.recorder = recorder
        self.slots = concurrency
        self.resource_of = resource_of or (lambda step, index: LOCAL)
        self.remote_slots = remote_slots
        self.is_cancelled = is_cancelled
        self.is_paused = is_paused
        self.paused = False  # while set, no instance starts; running ones go on
        self.resume = resume or Resume()
        self.cancel_poll = cancel_poll
        self.hooks = hooks or Hooks()
        self.cancel = asyncio.Event()
        steps = graph.steps
        self._pending = {s.name: [len(self._inst_ups(s)) + len(s.barriers)] * s.count
                         for s in steps}
        self._left = {s.name: s.count for s in steps}  # instances not yet terminal
        self._failed_steps: set[str] = set()
        # parent step -> [(child step, position of the parent in the child's upstream list)]
        self._children: dict[str, list[tuple[StepPlan, int]]] = {s.name: [] for s in steps}
        self._barrier_children: dict[str, list[StepPlan]] = {s.name: [] for s in steps}
        for s in steps:
            for pos, p in enumerate(self._inst_ups(s)):
                self._children[p].append((s, pos))
            for b in s.barriers:
                self._barrier_children[b].append(s)
        self._ready: dict[str, deque[tuple[StepPlan, int]]] = {}
        self._running: set[asyncio.Future[Any]] = set()
        self._free: dict[str, int] = {LOCAL: concurrency}
        self._wake = asyncio.Event()
        self.summary = Summary({s.name: {} for s in steps})

    @staticmethod
    def _inst_ups(step: StepPlan) -> tuple[str, ...]:
        return (*step.foreach, *(r for r in step.single_refs if r not in step.foreach))

    def _weight(self, step: StepPlan, resource: str) -> int:
        if resource != LOCAL:
            return 1
        cpu = step.resources.compute.cpu if step.resources.compute else 1
        return max(1, min(cpu, self.slots))  # a task wider than the machine gets all of it

    def _enqueue(self, step: StepPlan, index: int) -> None:
        resource = self.resource_of(step.name, index)
        if resource not in self._ready:
            self._ready[resource] = deque()
            self._free.setdefault(resource, self.remote_slots)
        self._ready[resource].append((step, index))

    def _children_of(self, child: StepPlan, pos: int, j: int) -> range | list[int]:
        counts = [*child.foreach_counts, *[1] * (len(self._inst_ups(child)) - len(child.foreach))]
        n = child.sweep_count
        if len(counts) == 1:
            return range(j * n, (j + 1) * n)
        ranges = [range(j, j + 1) if k == pos else range(c) for k, c in enumerate(counts)]
        out: list[int] = []
        for combo in itertools.product(*ranges):
            fe = 0
            for c, v in zip(counts, combo, strict=True):
                fe = fe * c + v
            out.extend(range(fe * n, (fe + 1) * n))
        return out

    # -- state propagation ---------------------------------------------------------------------

    def _settle(self, step: StepPlan, index: int, state: TaskState) -> None:
        """An instance reached a terminal state: release or fail what waits on it."""
        work = [(step, index, state)]
        while work:
            s, i, st = work.pop()
            self.summary.counts[s.name][st] = self.summary.counts[s.name].get(st, 0) + 1
            self.hooks.settled(s.name, st)
            if st != TaskState.COMPLETED:
                self._failed_steps.add(s.name)
            for child, pos in self._children[s.name]:
                for ci in self._children_of(child, pos, i):
                    work.extend(self._release(child, ci, ok=st == TaskState.COMPLETED))
            self._left[s.name] -= 1
            if self._left[s.name] == 0:
                ok = s.name not in self._failed_steps
                for child in self._barrier_children[s.name]:
                    for ci in range(child.count):
                        work.extend(self._release(child, ci, ok=ok))

    def _release(self, child: StepPlan, ci: int, *, ok: bool) -> list:
        pending = self._pending[child.name]
        if pending[ci] < 0:  # already failed through another upstream
            return []
        if not ok or self.cancel.is_set():
            pending[ci] = -1
            target = TaskState.CANCELED if self.cancel.is_set() else TaskState.UPSTREAM_FAILED
            iid = f"{child.name}[{ci}]"
            self.recorder.record(iid, target, "an upstream task did not complete"
                                 if target == TaskState.UPSTREAM_FAILED else "canceled")
            self._schedule_hook(self.hooks.skipped(child.name, ci, target))
            return [(child, ci, target)]
        pending[ci] -= 1
        if pending[ci] == 0:
            self._enqueue(child, ci)
            self._wake.set()
        return []

    def _schedule_hook(self, coro: Awaitable[None]) -> None:
        self._track(asyncio.ensure_future(coro))

    def _track(self, task: asyncio.Future[Any]) -> None:
        self._running.add(task)
        task.add_done_callback(self._untrack)

    def _untrack(self, task: asyncio.Future[Any]) -> None:
        self._running.discard(task)
        self._wake.set()  # the main loop may be waiting for the last task to leave

    # -- running -------------------------------------------------------------------------------

    async def _attempts(self, step: StepPlan, inst: TaskInstance) -> Outcome:
        outcome = Outcome(TaskState.CANCELED, None, "canceled before it started")
        first = self.resume.active.get(inst.id, (None, self.resume.attempts.get(inst.id, 0)))[1]
        for attempt in range(first, step.retries + 1):
            if self.cancel.is_set():
                break
            if self.recorder.state(inst.id) in (TaskState.CREATED, TaskState.FAILED):
                self.recorder.record(inst.id, TaskState.QUEUED,
                                     f"retry {attempt} of {step.retries}" if attempt else None)

            def report(state: TaskState, message: str | None = None, _id: str = inst.id) -> None:
                self.recorder.record(_id, state, message)

            outcome = await self.execute(inst, attempt, report, self.cancel)
            self.recorder.record(inst.id, outcome.state, outcome.reason, outcome.exit_code,
                                 outcome.usage)
            if outcome.state != TaskState.FAILED:
                break
        if self.recorder.state(inst.id) not in TERMINAL:  # canceled between attempts
            self.recorder.record(inst.id, TaskState.CANCELED, "canceled")
        return outcome

    async def _run_one(self, step: StepPlan, index: int, weight: int, resource: str) -> None:
        inst = self.graph.instance(step.name, index)
        try:
            await self.hooks.run(inst, lambda: self._attempts(step, inst))
        except Exception as exc:  # a broken hook must fail this instance, not hang the run
            if self.recorder.state(inst.id) not in TERMINAL:
                if self.recorder.state(inst.id) == TaskState.CREATED:
                    self.recorder.record(inst.id, TaskState.QUEUED)
                self.recorder.record(inst.id, TaskState.FAILED, f"internal error: {exc}")
        finally:
            self._free[resource] += weight
        self._settle(step, index, self.recorder.state(inst.id))

    async def _watch_cancel(self, done: asyncio.Event) -> None:
        """Polls for a cancel and for pause/resume (both come from outside the run)."""
        while not done.is_set() and (self.is_cancelled or self.is_paused):
            if self.is_cancelled is not None and await asyncio.to_thread(self.is_cancelled):
                self.request_cancel()
                return
            if self.is_paused is not None:
                paused = await asyncio.to_thread(self.is_paused)
                if paused != self.paused:
                    self.paused = paused
                    self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), self.cancel_poll)

    def request_cancel(self) -> None:
        self.cancel.set()
        self.summary.canceled = True
        self._wake.set()

    def _cancel_waiting(self) -> None:
        """Cancel everything that has not started: ready or still waiting on upstreams."""
        for ready in self._ready.values():
            while ready:
                step, i = ready.popleft()
                self._pending[step.name][i] = -1
                self._cancel_instance(step, i)
        for step in self.graph.steps:
            pending = self._pending[step.name]
            for i, p in enumerate(pending):
                if p > 0:
                    pending[i] = -1
                    self._cancel_instance(step, i)

    def _cancel_instance(self, step: StepPlan, i: int) -> None:
        iid = f"{step.name}[{i}]"
        self.recorder.record(iid, TaskState.CANCELED, "canceled")
        self._schedule_hook(self.hooks.skipped(step.name, i, TaskState.CANCELED))
        self._settle(step, i, TaskState.CANCELED)

    def _restore(self) -> None:
        """A resumed run: what ended stays ended (its dependants are released or failed as
        then); instances in flight are seeded where they are."""
        settled = []
        for iid, state in self.resume.settled.items():
            step, index = self.graph.parse_id(iid)
            self._pending[step.name][index] = -1
            self.recorder.seed(iid, state, 0)
            settled.append((step, index, state))
        for iid, (state, attempt) in self.resume.active.items():
            self.recorder.seed(iid, state, attempt)
        for iid, attempt in self.resume.attempts.items():
            self.recorder.seed(iid, TaskState.CREATED, attempt)
        for step, index, state in settled:
            self._settle(step, index, state)

    async def run(self) -> Summary:
        done = asyncio.Event()
        flusher = asyncio.create_task(self.recorder.run_flusher(done))
        watcher = asyncio.create_task(self._watch_cancel(done))
        try:
            roots = [s for s in self.graph.steps if not self._inst_ups(s) and not s.barriers]
            self._restore()
            for step in roots:
                for i in range(step.count):
                    if self._pending[step.name][i] == 0:
                        self._enqueue(step, i)
            while True:
                if self.cancel.is_set():
                    self._cancel_waiting()
                for resource, ready in self._ready.items():
                    while ready and not self.cancel.is_set() and not self.paused:
                        step, i = ready[0]
                        weight = self._weight(step, resource)
                        if weight > self._free[resource]:
                            break
                        ready.popleft()
                        self._free[resource] -= weight
                        self._track(asyncio.create_task(self._run_one(step, i, weight,
                                                                      resource)))
                waiting = any(self._ready.values())
                if not self._running and (not waiting or self.cancel.is_set()) \
                        and not (waiting and self.paused):
                    break
                self._wake.clear()
                await self._wake.wait()
            if self._running:
                await asyncio.gather(*self._running)
        finally:
            done.set()
            await asyncio.gather(flusher, watcher, return_exceptions=True)
            await self.recorder.flush()  # raises if the store stays unwritable
        return self.summary


__all__ = ["Executor", "Hooks", "Outcome", "Recorder", "Resume", "Scheduler", "Summary"]
