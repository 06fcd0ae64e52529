"""The pilot agent's state reports, batched: one ReportTaskStatus call carries many updates.

An agent running short instances ends hundreds a second; a call per update would make the
scheduler's store the bottleneck. Updates wait here ~30 ms (or until 256 are pending) and go
together. An update is kept until a reply acknowledges it, so a lost connection loses nothing:
the batch in flight goes back in front of the queue and is sent again after reconnecting (the
service takes a report for a lease once; a repeat of an accepted end is refused, and harmless).
A terminal update that finds its lease's RUNNING still unsent replaces it: the service fills in
the states between.

Here too, the rule every call of the agent shares: which refusals are worth a retry
(`TRANSIENT`: the service restarting, a network blip) and which end the agent (`check`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc

from airavata_prefect.domain.endings import Outcome
from airavata_prefect.domain.pilot import Usage
from airavata_prefect.domain.states import TaskState
from airavata_prefect.proto import agent_pb2 as pb

Key = tuple[int, int]  # a lease: (item_id, epoch)
Update = tuple[TaskState, Outcome | None, Usage | None, float]  # state, end, usage, at
log = logging.getLogger("airavata.agent")

REPORT_DELAY = 0.03  # seconds an update may wait for others
REPORT_MAX = 256  # updates per call
RETRY_MAX = 5.0  # seconds between retries of a failed call, at most
S = grpc.StatusCode
REFUSED = frozenset({S.UNAUTHENTICATED, S.PERMISSION_DENIED})
TRANSIENT = frozenset({S.UNAVAILABLE, S.DEADLINE_EXCEEDED, S.CANCELLED, S.ABORTED, S.INTERNAL,
                       S.UNKNOWN, S.RESOURCE_EXHAUSTED})


class Stub(Protocol):
    """grpc.aio's AgentServiceStub, or a fake with the same four calls."""

    RegisterWorker: Any
    PollForTask: Any
    ReportTaskStatus: Any
    SendHeartbeat: Any


class AgentExit(Exception):
    """The agent must end with `code` (3: its token was refused; 1: it cannot go on)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def check(exc: grpc.aio.AioRpcError) -> None:
    """Return if the call is worth retrying; else raise AgentExit."""
    code = exc.code()
    if code in REFUSED:
        raise AgentExit(3, f"the scheduler refused this agent's token: {exc.details()}")
    if code not in TRANSIENT:
        raise AgentExit(1, f"the scheduler answered {code.name}: {exc.details()}")


def key_of(lease: pb.Lease) -> Key:
    return (lease.item_id, lease.epoch)


def lease(key: Key) -> pb.Lease:
    return pb.Lease(item_id=key[0], epoch=key[1])


def status(key: Key, state: TaskState, outcome: Outcome | None = None,
           usage: Usage | None = None, at: float | None = None) -> pb.TaskStatus:
    """A state of a lease (at `at`, default now); how it ended and what it used, for an end."""
    s = pb.TaskStatus(lease=lease(key), state=str(state), at=time.time() if at is None else at)
    if outcome is not None:
        if outcome.exit_code is not None:
            s.exit_code = outcome.exit_code
        s.message = outcome.reason or ""
    if usage is not None:
        s.usage.wall_seconds = usage.wall_seconds
        s.usage.cpu_seconds = usage.cpu_seconds
        s.usage.max_rss_bytes = usage.max_rss_bytes
    return s


class AgentIdFilter(logging.Filter):
    """Puts the agent's id (once registered) on every log record, as `%(agent)s`."""

    agent_id = "-"

    def filter(self, record: logging.LogRecord) -> bool:
        record.agent = AgentIdFilter.agent_id
        return True


class Reporter:
    """Collects updates and sends them in batches through `send`; `on_rejected` gets the
    leases a reply says the agent no longer holds; `on_error` classifies a failed call
    (True: keep the batch and retry once `ready` is set; False: drop it)."""

    def __init__(self, send: Callable[[pb.StatusBatch], Awaitable[Any]], *,
                 on_rejected: Callable[[list[Key]], None],
                 on_error: Callable[[grpc.aio.AioRpcError], bool],
                 ready: asyncio.Event, delay: float = REPORT_DELAY,
                 max_batch: int = REPORT_MAX) -> None:
        self._send = send
        self._on_rejected = on_rejected
        self._on_error = on_error
        self._ready = ready
        self.delay = delay
        self.max_batch = max_batch
        # Kept as plain tuples, made messages only when sent: most RUNNINGs are superseded.
        self._pending: dict[Key, Update] = {}
        self._inflight: dict[Key, Update] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._pending) + len(self._inflight)

    def add(self, key: Key, state: TaskState, outcome: Outcome | None = None,
            usage: Usage | None = None) -> None:
        # An unsent RUNNING of this lease is superseded by its end (dict order is kept).
        self._pending[key] = (state, outcome, usage, time.time())
        self._idle.clear()
        self._wake.set()

    def forget(self, keys: list[Key]) -> None:
        """Drop what is unsent for these leases (the service no longer takes it)."""
        for key in keys:
            self._pending.pop(key, None)
        self._check_idle()

    def unacknowledged(self) -> list[Key]:
        return [*self._inflight, *self._pending]

    async def flush(self, timeout: float) -> bool:
        """Wait until every update is acknowledged; False when `timeout` passed first."""
        self._wake.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def _check_idle(self) -> None:
        if not self._pending and not self._inflight:
            self._idle.set()

    async def run(self) -> None:
        """The sending loop (one task per agent)."""
        backoff = 0.2
        while True:
            await self._wake.wait()
            if len(self._pending) < self.max_batch:
                await asyncio.sleep(self.delay)  # let others join the batch
            await self._ready.wait()
            self._wake.clear()
            if not self._pending:
                self._check_idle()
                continue
            keys = list(self._pending)[: self.max_batch]
            self._inflight = {k: self._pending.pop(k) for k in keys}
            started = time.monotonic()
            try:
                reply = await self._send(pb.StatusBatch(
                    updates=[status(k, *u) for k, u in self._inflight.items()]))
            except grpc.aio.AioRpcError as exc:
                if self._on_error(exc):
                    self._requeue()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, RETRY_MAX)
                else:
                    log.error("dropped %d status update(s) the scheduler refused: %s",
                              len(self._inflight), exc.details())
                    self._inflight = {}
                self._wake.set()
                self._check_idle()
                continue
            except asyncio.CancelledError:
                self._requeue()
                raise
            backoff = 0.2
            self._inflight = {}
            if self._pending:
                self._wake.set()
            rejected = [key_of(lease) for lease in reply.rejected]
            if rejected:
                self.forget(rejected)
                self._on_rejected(rejected)
            self._check_idle()
            log.debug("reported %d update(s) in %.0f ms", len(keys),
                      (time.monotonic() - started) * 1000)

    def _requeue(self) -> None:
        """The batch in flight goes back in front; an end that came meanwhile wins."""
        back = {k: v for k, v in self._inflight.items() if k not in self._pending}
        self._pending = {**back, **self._pending}
        self._inflight = {}


async def cancel_and_wait(task: asyncio.Future[Any] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


__all__ = ["REFUSED", "REPORT_DELAY", "REPORT_MAX", "TRANSIENT", "AgentExit", "AgentIdFilter",
           "Key", "Reporter", "Stub", "cancel_and_wait", "check", "key_of", "lease", "status"]
