"""The pilot agent's conversation with the scheduler service (proto/agent.proto), apart from the
process around it (agent/pilot.py) and from the node's side (agent/pilot_work.py runs what it
holds, agent/pilot_exec.py one attempt).

One session: register, then one PollForTask stream on which the agent grants credit (how many
more instances it can take) and the service pushes assignments, cancels and shutdown. States
go back in batches (agent/pilot_status.py), a heartbeat renews the leases, and the agent stops
the ways the service expects:

- drain (Shutdown, a heartbeat's `shutdown`, the allocation's end near): queued leases handed
  back, running ones finish and are reported, then the stream is closed (the service takes back
  whatever an agent still holds when it closes its stream);
- preempt (SIGTERM/SIGINT, the allocation's end): running instances killed at once, every held
  lease handed back (no attempt used), reports of those that ended flushed, stream closed;
- idle: nothing to do for `idle_seconds`: a drain with nothing to wait for.

A lost connection keeps the instances running; the agent re-registers under the same id with
back-off, re-sends what was not acknowledged and opens a new stream with credit for what it
can take. A call refused once registered (the service counted the agent gone) is answered the
same way: only a refused registration means a refused token, which ends the agent (code 3). A
service gone for 5 minutes ends it too (code 1, its instances killed: their leases are gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

import grpc

from airavata_prefect.agent.pilot_exec import AttemptRunner
from airavata_prefect.agent.pilot_status import (
    REFUSED,
    TRANSIENT,
    AgentExit,
    AgentIdFilter,
    Key,
    Reporter,
    Stub,
    cancel_and_wait,
    check,
    key_of,
    lease,
)
from airavata_prefect.agent.pilot_work import Slots
from airavata_prefect.proto import agent_pb2 as pb

log = logging.getLogger("airavata.agent")


@dataclass(frozen=True)
class AgentConfig:
    slots: int
    hostname: str = ""
    cores: int = 0
    memory_bytes: int = 0
    gpus: int = 0
    allocation_id: str = ""
    allocation_ends_at: float = 0.0  # unix seconds; 0: unknown
    idle_seconds: float | None = None  # None: the service's
    version: str = ""
    give_up_seconds: float = 300.0  # without the service for this long: kill and exit 1
    stop_grace: float = 2.0  # SIGTERM .. SIGKILL of instances when the agent must stop
    queue_seconds: float = 0.02  # work kept queued beyond the slots, for short instances


class Session:
    def __init__(self, stub: Stub, token: str, config: AgentConfig,
                 runner: AttemptRunner) -> None:
        self.stub, self.config, self.runner = stub, config, runner
        self._token = token
        self.agent_id = ""
        self.heartbeat_seconds, self.idle_seconds = 5.0, config.idle_seconds or 30.0
        self.lease_seconds = 30.0
        self.connected = asyncio.Event()
        self._registering = asyncio.Lock()
        self.reporter = Reporter(
            lambda batch: stub.ReportTaskStatus(batch, metadata=self._metadata(), timeout=30),
            on_rejected=lambda keys: self._lose(keys, "their reports were refused"),
            on_error=self._report_error, ready=self.connected)
        self.work = Slots(runner, self.reporter, config.slots, on_freed=self._top_up,
                          queue_seconds=config.queue_seconds)
        self._outbox: asyncio.Queue[pb.AgentMessage | None] | None = None
        self._outstanding = 0  # credit granted on this stream, not yet used
        # Recent hand-backs: a broken stream may have lost them, the next one sends them again
        # (a repeat is harmless: the service checks the lease).
        self._sent_back: deque[pb.HandBack] = deque(maxlen=64)
        self.mode: Literal["drain", "preempt"] | None = None
        self._closing = False
        self._stop_reason = ""  # why it drains or is preempted: its goodbye to the service
        self._lost_since: float | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stream_task: asyncio.Task[Any] | None = None
        self._closer: asyncio.Task[Any] | None = None
        self._done: asyncio.Future[int] | None = None

    # -- the whole life ---------------------------------------------------------------------

    async def run(self) -> int:
        """Register, work, stop; the process's exit code."""
        self._done = asyncio.get_running_loop().create_future()
        connecting: asyncio.Future[Any] = asyncio.ensure_future(self._connect())
        await asyncio.wait([connecting, self._done], return_when=asyncio.FIRST_COMPLETED)
        if self._done.done():  # stopped (SIGTERM) before it could register
            await cancel_and_wait(connecting)
            return self._done.result()
        try:
            connecting.result()
        except AgentExit as exc:
            log.error("%s", exc)
            return exc.code
        self._stream_task = self._start(self._stream_forever())
        for coro in (self.reporter.run(), self._heartbeat(), self._watch(),
                     *(self.work.worker() for _ in range(self.config.slots))):
            self._start(coro)
        try:
            return await self._done
        finally:
            self.runner.kill_all()
            for task in self._tasks:
                await cancel_and_wait(task)

    def _start(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(self._task_ended)
        self._tasks.append(task)
        return task

    def _task_ended(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or (exc := task.exception()) is None:
            return
        if isinstance(exc, AgentExit):
            log.error("%s", exc)
            self._finish(exc.code)
        else:
            log.error("internal error", exc_info=exc)
            self._finish(1)

    def _finish(self, code: int) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(code)

    # -- connection -------------------------------------------------------------------------

    def _metadata(self) -> list[tuple[str, str]]:
        md = [("authorization", f"Bearer {self._token}")]
        return [*md, ("x-agent-id", self.agent_id)] if self.agent_id else md

    async def _connect(self) -> None:
        """Register (again, under the same id), retrying with back-off."""
        delay, tries, c = 0.2, 0, self.config
        self._lost_since = self._lost_since or time.monotonic()
        while True:
            req = pb.RegisterRequest(
                hostname=c.hostname, cores=c.cores, memory_bytes=c.memory_bytes, gpus=c.gpus,
                slots=c.slots, allocation_id=c.allocation_id,
                allocation_ends_at=c.allocation_ends_at, pid=os.getpid(), version=c.version,
                agent_id=self.agent_id)
            try:
                reply = await self.stub.RegisterWorker(req, metadata=self._metadata(),
                                                       timeout=10)
                break
            except grpc.aio.AioRpcError as exc:
                check(exc)
                waited = time.monotonic() - self._lost_since
                if waited > c.give_up_seconds:
                    raise AgentExit(1, f"no scheduler for {waited:.0f} s, giving up "
                                    f"({exc.details()})") from None
                if tries % 10 == 0:
                    log.warning("scheduler unreachable (%s); retrying", exc.details())
                tries += 1
                await asyncio.sleep(delay)
                # Never wait so long that the leases could expire in between: a restarted
                # service gives its agents one lease period to come back.
                delay = min(delay * 2, 5.0, max(0.2, self.lease_seconds / 4))
        again = bool(self.agent_id)
        self.agent_id = AgentIdFilter.agent_id = reply.agent_id
        self.heartbeat_seconds = reply.heartbeat_seconds or 5.0
        self.lease_seconds = reply.lease_seconds or 30.0
        self.idle_seconds = c.idle_seconds or reply.idle_seconds or 30.0
        self._lost_since = None
        if not again:
            self.work.busy_at = time.monotonic()  # idle time counts from here
        self.connected.set()
        log.info("%s: %d slots, heartbeat %g s, lease %g s, idle %g s",
                 "re-registered" if again else "registered", c.slots, self.heartbeat_seconds,
                 self.lease_seconds, self.idle_seconds)

    async def _register_again(self, why: str) -> None:
        """After a lost connection, or a call refused once registered (the service may have
        declared this agent gone): register under the same id, once for all who ask. Only a
        refused registration means a refused token."""
        self.connected.clear()
        async with self._registering:
            if self.connected.is_set() or self._closing:
                return
            log.warning("%s; %d running; registering again", why, len(self.work.running))
            await self._connect()

    def _refused(self, exc: grpc.aio.AioRpcError) -> bool:
        """A call after registering refused: register again, in the background."""
        if exc.code() not in REFUSED:
            return False
        # Once its stream is closed the service counts the agent gone: no coming back then.
        if self.connected.is_set() and not self._closing:
            self._start(self._register_again(f"the scheduler refused a call ({exc.details()})"))
        return True

    async def _stream_forever(self) -> None:
        while not self._closing:
            try:
                await self._stream()
                if self._closing:
                    return
                why = "the scheduler ended the stream"
            except grpc.aio.AioRpcError as exc:
                if self._closing:
                    return
                if exc.code() not in REFUSED:
                    check(exc)
                why = f"lost the scheduler ({exc.code().name}: {exc.details()})"
            await self._register_again(why)

    async def _stream(self) -> None:
        outbox: asyncio.Queue[pb.AgentMessage | None] = asyncio.Queue()
        for msg in self._sent_back:
            outbox.put_nowait(pb.AgentMessage(hand_back=msg))
        self._outbox, self._outstanding = outbox, 0
        call = self.stub.PollForTask(_requests(outbox), metadata=self._metadata())
        self._top_up(force=True)
        try:
            async for msg in call:
                kind = msg.WhichOneof("kind")
                if kind == "assignment":
                    self._assigned(msg.assignment.tasks)
                elif kind == "cancel":
                    keys = [key_of(x) for x in msg.cancel.leases]
                    n = self.work.cancel(keys, msg.cancel.reason or "canceled")
                    log.info("canceled %d instance(s): %s", n, msg.cancel.reason)
                    self._top_up()
                elif kind == "shutdown":
                    self.drain(msg.shutdown.reason or "the scheduler asked it to stop")
        finally:
            self._outbox = None

    def _send(self, msg: pb.AgentMessage) -> bool:
        if self._outbox is None or self._closing:
            return False
        self._outbox.put_nowait(msg)
        return True

    # -- work -------------------------------------------------------------------------------

    def _top_up(self, force: bool = False) -> None:
        """Grant credit for what the agent can take now; in batches, unless it runs dry."""
        if self.mode is not None:
            return
        capacity = self.work.capacity()
        want = capacity - len(self.work) - self._outstanding
        batch = max(1, (capacity - self.config.slots) // 2)
        if (want > 0 and (force or want >= batch or not self.work.queued)
                and self._send(pb.AgentMessage(credit=pb.Credit(n=want)))):
            self._outstanding += want

    def _assigned(self, tasks: Any) -> None:
        back: list[Key] = []
        no_room: list[Key] = []
        ends_at = self.config.allocation_ends_at
        for spec in tasks:
            self._outstanding = max(0, self._outstanding - 1)
            key = (spec.item_id, spec.epoch)
            if self.mode is not None:
                back.append(key)
            elif ends_at and spec.walltime_seconds and (
                    time.time() + spec.walltime_seconds > ends_at):
                no_room.append(key)
            else:
                self.work.add(key, spec)
        if back:
            self._hand_back(back, f"the agent is stopping ({self.mode})")
        if no_room:
            self._hand_back(no_room, "its walltime does not fit in the allocation's rest")
        self._top_up()

    def _hand_back(self, keys: list[Key], reason: str) -> None:
        # The reason is what the service records for each lease's return.
        msg = pb.HandBack(leases=[lease(k) for k in keys], reason=f"handed back: {reason}")
        if self._send(pb.AgentMessage(hand_back=msg)):
            self._sent_back.append(msg)
        log.info("handed back %d instance(s): %s", len(keys), reason)

    def _lose(self, keys: list[Key], why: str) -> None:
        if n := self.work.lose(keys):
            log.warning("dropped %d instance(s): %s", n, why)
            self._top_up()

    # -- reports and heartbeats -------------------------------------------------------------

    def _report_error(self, exc: grpc.aio.AioRpcError) -> bool:
        return self._refused(exc) or exc.code() in TRANSIENT

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            await self.connected.wait()
            beat = pb.Heartbeat(running=len(self.work.running), load=os.getloadavg()[0],
                                held=[lease(k) for k in self.work.held()])
            try:
                reply = await self.stub.SendHeartbeat(beat, metadata=self._metadata(),
                                                      timeout=max(5.0, self.heartbeat_seconds))
            except grpc.aio.AioRpcError as exc:
                if not self._refused(exc):
                    check(exc)
                continue  # the stream notices a lost connection
            if reply.lost:
                self._lose([key_of(x) for x in reply.lost], "their leases expired")
            if reply.shutdown:
                self.drain("the scheduler asked it to stop")

    async def _watch(self) -> None:
        """Idle time and the allocation's end."""
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            if len(self.work):
                self.work.busy_at = now
            elif self.mode is None and now - self.work.busy_at >= self.idle_seconds:
                self.drain(f"idle for {self.idle_seconds:g} s")
            ends_at = self.config.allocation_ends_at
            if ends_at and self.mode != "preempt":
                left = ends_at - time.time()
                if left <= self.config.stop_grace + 3:
                    self.preempt("its allocation ends")
                elif self.mode is None and left <= (self.work.max_walltime or 60):
                    self.drain(f"its allocation ends in {left:.0f} s")

    # -- stopping ---------------------------------------------------------------------------

    def drain(self, reason: str) -> None:
        """No more work: hand back what waits, let what runs finish, then close."""
        if self.mode is not None:
            return
        self.mode = "drain"
        self._stop_reason = reason
        log.info("stopping: %s (%d running)", reason, len(self.work.running))
        if back := self.work.take_queued():
            self._hand_back(back, reason)
        self._closer = self._start(self._close_after_drain())

    async def _close_after_drain(self) -> None:
        await self.work.none_running.wait()
        # Reports wait out an outage (the agent gives up on the service after a while anyway).
        await self.reporter.flush(timeout=self.config.give_up_seconds + 30)
        await self._close(0)

    def preempt(self, reason: str) -> None:
        """Stop now: kill what runs, hand back everything held, close."""
        if self.mode == "preempt":
            self.runner.kill_all()  # asked twice: no more grace
            return
        self.mode = "preempt"
        self._stop_reason = reason
        if self._closer is not None:
            self._closer.cancel()  # a drain under way: this one closes
        self.runner.kill_grace = min(self.runner.kill_grace, self.config.stop_grace)
        held = self.work.stop_all()
        log.warning("stopping now: %s; handing back %d instance(s)", reason, len(held))
        self._closer = self._start(self._close_after_preempt(held, reason))

    async def _close_after_preempt(self, held: list[Key], reason: str) -> None:
        try:
            await asyncio.wait_for(self.work.none_running.wait(), self.config.stop_grace + 0.5)
        except TimeoutError:
            self.runner.kill_all()
        if self.connected.is_set():
            await self.reporter.flush(timeout=1.5)  # ends reported before the hand-back
            if held:
                self._hand_back(held, reason)
        await self._close(0, timeout=1.5)

    async def _close(self, code: int, timeout: float = 5.0) -> None:
        """End the stream (the service then takes back whatever is still leased) and exit."""
        self._closing = True
        if self._outbox is not None and self._stream_task is not None:
            if self._stop_reason:  # a goodbye: the service marks it gone now, with the reason
                self._outbox.put_nowait(pb.AgentMessage(hand_back=pb.HandBack(
                    reason=f"stopped: {self._stop_reason}")))
            self._outbox.put_nowait(None)
            with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError, AgentExit):
                await asyncio.wait_for(asyncio.shield(self._stream_task), timeout)
        log.info("stopped after %d instance(s)", self.work.ended)
        self._finish(code)


async def _requests(outbox: asyncio.Queue[pb.AgentMessage | None]
                    ) -> AsyncIterator[pb.AgentMessage]:
    """The stream's requests: what the agent puts in `outbox`, until None (a half-close)."""
    while (msg := await outbox.get()) is not None:
        yield msg


__all__ = ["AgentConfig", "AgentExit", "Session"]
