"""The instances a pilot agent holds: some waiting for a slot, at most `slots` running.

Each slot is one long-lived task taking the next queued instance (no task per instance: an
agent may end a thousand a second). What the agent does with the scheduler (credit, reports of
cancels, hand-backs) is agent/pilot_session.py's; this is what happens on the node.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from airavata_prefect.agent.pilot_exec import Attempt, AttemptRunner
from airavata_prefect.agent.pilot_status import Key, Reporter
from airavata_prefect.domain.endings import Outcome
from airavata_prefect.domain.pilot import Usage
from airavata_prefect.domain.states import TaskState
from airavata_prefect.proto import agent_pb2 as pb

log = logging.getLogger("airavata.agent")


class Running:
    __slots__ = ("forget", "handle", "reason", "spec")

    def __init__(self, spec: pb.TaskSpec) -> None:
        self.spec = spec
        self.handle = Attempt()
        self.forget = False  # not this agent's any more: no report when it ends
        self.reason: str | None = None  # why someone canceled it


class Slots:
    def __init__(self, runner: AttemptRunner, reporter: Reporter, slots: int, *,
                 on_freed: Callable[[], None], queue_seconds: float = 0.02) -> None:
        self.runner, self.reporter, self.slots = runner, reporter, slots
        self.on_freed = on_freed  # an instance ended or was dropped: room for more
        self.queue_seconds = queue_seconds
        self.queued: OrderedDict[Key, pb.TaskSpec] = OrderedDict()
        self.running: dict[Key, Running] = {}
        self.none_running = asyncio.Event()
        self.none_running.set()
        self.stopped = False  # starting nothing more
        self.ended = 0  # reported ends
        self.busy_at = time.monotonic()  # when something last ran or waited here
        self.max_walltime = 0
        self._avg_wall: float | None = None
        self._has_work = asyncio.Event()

    def __len__(self) -> int:
        return len(self.running) + len(self.queued)

    def held(self) -> list[Key]:
        return [*self.running, *self.queued]

    def capacity(self) -> int:
        """How many instances the agent wants to hold: its slots and a few waiting, enough for
        `queue_seconds` of work when instances are short (a slot must not wait for the
        scheduler's round trip)."""
        waiting = max(2, self.slots)
        if self._avg_wall:
            waiting = max(waiting, min(256, math.ceil(self.slots * self.queue_seconds
                                                      / self._avg_wall)))
        return self.slots + waiting

    def add(self, key: Key, spec: pb.TaskSpec) -> bool:
        """Queue an assigned instance; False for one it holds already."""
        if key in self.queued or key in self.running:
            return False
        self.max_walltime = max(self.max_walltime, spec.walltime_seconds)
        self.queued[key] = spec
        self._has_work.set()
        return True

    def take_queued(self) -> list[Key]:
        """Empty the queue (to hand its leases back)."""
        keys = list(self.queued)
        self.queued.clear()
        return keys

    def cancel(self, keys: list[Key], reason: str) -> int:
        """Canceled by someone: queued ones end CANCELED now, running ones once killed."""
        hit = 0
        for key in keys:
            if self.queued.pop(key, None) is not None:
                self.reporter.add(key, TaskState.CANCELED,
                                  Outcome(TaskState.CANCELED, None, reason))
                hit += 1
            elif (run := self.running.get(key)) is not None:
                run.reason = reason
                run.handle.cancel()
                hit += 1
        return hit

    def lose(self, keys: list[Key]) -> int:
        """Not this agent's any more: stop and forget them, report nothing more."""
        hit = 0
        for key in keys:
            if self.queued.pop(key, None) is not None:
                hit += 1
            elif (run := self.running.get(key)) is not None:
                run.forget = True
                run.handle.cancel()
                hit += 1
        self.reporter.forget(keys)
        return hit

    def stop_all(self) -> list[Key]:
        """Start nothing more, kill what runs (unreported), empty the queue: what it held."""
        self.stopped = True
        held = self.held()
        self.queued.clear()
        for run in self.running.values():
            run.forget = True
            run.handle.cancel()
        self.reporter.forget(held)
        return held

    async def worker(self) -> None:
        """One slot: runs queued instances one after another."""
        while True:
            while not self.queued or self.stopped:
                self._has_work.clear()
                await self._has_work.wait()
            key, spec = self.queued.popitem(last=False)
            run = self.running[key] = Running(spec)
            self.none_running.clear()
            try:
                await self._execute(key, run)
            finally:
                del self.running[key]
                self.busy_at = time.monotonic()
                if not self.running:
                    self.none_running.set()
            self.on_freed()

    async def _execute(self, key: Key, run: Running) -> None:
        def on_running() -> None:
            if not run.forget:
                self.reporter.add(key, TaskState.RUNNING)

        try:
            outcome, usage = await self.runner.run(run.spec, run.handle, on_running=on_running)
        except Exception as exc:  # a bug of ours: the attempt still ends, and says so
            log.exception("instance %s: agent error", run.spec.instance_id)
            outcome, usage = Outcome(TaskState.FAILED, None, f"agent error: {exc!r}"), Usage()
        self._avg_wall = (usage.wall_seconds if self._avg_wall is None
                          else 0.8 * self._avg_wall + 0.2 * usage.wall_seconds)
        if run.forget:
            return
        self.ended += 1
        if outcome.state == TaskState.CANCELED and run.reason:
            outcome = outcome._replace(reason=run.reason)
        self.reporter.add(key, outcome.state, outcome, usage)


__all__ = ["Running", "Slots"]
