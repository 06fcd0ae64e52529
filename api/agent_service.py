"""The scheduler service pilot agents talk to (gRPC over TLS, grpc.aio): proto/agent.proto's
calls, translated to and from usecases/pilots.py, where every rule lives.

`python -m airavata_prefect.api.agent_service` serves it; `airavata server start` starts it
beside the REST API. Its state is the store's: killed and restarted, it carries on where it
was (agents reconnect and renew their leases; expiry waits one lease period after a start, so
a restart alone never puts work back in the queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc

from airavata_prefect.domain.pilot import Claim, LeaseRef, StatusUpdate, Usage
from airavata_prefect.domain.states import TaskState
from airavata_prefect.proto import agent_pb2 as pb
from airavata_prefect.proto import agent_pb2_grpc as pb_grpc
from airavata_prefect.usecases import pilots
from airavata_prefect.usecases.context import open_store
from airavata_prefect.usecases.errors import BadInput, Unauthenticated, describe
from airavata_prefect.usecases.pilots import Agent, PilotService
from airavata_prefect.usecases.settings import Settings, get_settings

log = logging.getLogger("airavata.agent_service")
T = TypeVar("T")
IDLE_POLL = 0.1  # how often a stream with credit and nothing claimable asks the queue again
CHECK_EVERY = 1.0  # how often a stream looks for cancels and for its experiments' end
AGENT_CACHE_SECONDS = 2.0  # a verified agent is not looked up again for this long


def _lease(ref: LeaseRef) -> pb.Lease:
    return pb.Lease(item_id=ref.item_id, epoch=ref.epoch)


def _ref(lease: pb.Lease) -> LeaseRef:
    return LeaseRef(lease.item_id, lease.epoch)


def _task(c: Claim) -> pb.TaskSpec:
    p = c.payload
    return pb.TaskSpec(item_id=c.lease.item_id, epoch=c.lease.epoch,
                       experiment_id=c.experiment_id, instance_id=c.instance_id,
                       attempt=c.attempt, script=p.script, script_sha256=p.script_sha256,
                       workdir=p.workdir, env=p.env, walltime_seconds=p.walltime_seconds or 0,
                       ram_gb=p.ram_gb,
                       outputs=list(p.outputs))


def _update(s: pb.TaskStatus) -> StatusUpdate:
    try:
        state = TaskState(s.state)
    except ValueError:
        raise BadInput(f"unknown task state {s.state[:40]!r}") from None
    usage = (Usage(s.usage.wall_seconds, s.usage.cpu_seconds, s.usage.max_rss_bytes)
             if s.HasField("usage") else None)
    at = datetime.fromtimestamp(s.at, UTC) if s.at > 0 else datetime.now(UTC)
    return StatusUpdate(_ref(s.lease), state, at,
                        exit_code=s.exit_code if s.HasField("exit_code") else None,
                        message=s.message[:4000] or None, usage=usage)


class AgentServicer(pb_grpc.AgentServiceServicer):
    def __init__(self, service: PilotService) -> None:
        self.service = service
        self._agents: dict[tuple[str, str], tuple[Agent, float]] = {}

    # -- who calls ---------------------------------------------------------------------------

    @staticmethod
    def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
        return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}

    @staticmethod
    def _token(md: dict[str, str]) -> str | None:
        value = md.get("authorization", "")
        return value[7:].strip() if value.lower().startswith("bearer ") else None

    async def _call(self, context: grpc.aio.ServicerContext, fn: Callable[..., T],
                    *args: Any) -> T:
        """Run a use case in a thread; its refusals become gRPC statuses, never a traceback."""
        try:
            return await asyncio.to_thread(fn, *args)
        except Unauthenticated as exc:
            log.warning("refused an agent: %s (from %s)", exc, context.peer())
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except BadInput as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:  # the store unreachable: the agent retries
            log.error("agent call failed: %s", describe(exc))
            await context.abort(grpc.StatusCode.UNAVAILABLE, describe(exc))
        raise AssertionError("unreachable")  # context.abort raises

    async def _agent(self, context: grpc.aio.ServicerContext) -> Agent:
        md = self._metadata(context)
        token, agent_id = self._token(md), md.get("x-agent-id")
        key = (token or "", agent_id or "")
        cached = self._agents.get(key)
        if cached and time.monotonic() - cached[1] < AGENT_CACHE_SECONDS:
            return cached[0]
        agent = await self._call(context, self.service.agent_of, token, agent_id)
        self._agents[key] = (agent, time.monotonic())
        return agent

    # -- calls -------------------------------------------------------------------------------

    async def RegisterWorker(self, request: pb.RegisterRequest,
                             context: grpc.aio.ServicerContext) -> pb.RegisterReply:
        token = self._token(self._metadata(context))
        scope = await self._call(context, self.service.scope_of, token)

        def register() -> pilots.Registration:
            return self.service.register(
                scope, hostname=request.hostname, slots=request.slots, cores=request.cores,
                memory_bytes=request.memory_bytes, gpus=request.gpus,
                allocation_id=request.allocation_id, agent_id=request.agent_id)

        reg = await self._call(context, register)
        return pb.RegisterReply(agent_id=reg.agent.id, lease_seconds=reg.lease_seconds,
                                heartbeat_seconds=reg.heartbeat_seconds,
                                idle_seconds=reg.idle_seconds)

    async def PollForTask(self, request_iterator: AsyncIterator[pb.AgentMessage],
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ServerMessage]:
        agent = await self._agent(context)
        credit = [0]
        wake = asyncio.Event()
        closed = asyncio.Event()  # the agent ended its side of the stream
        goodbye = [""]  # why it is stopping, said before it closed: not cut off

        async def read() -> None:
            async for msg in request_iterator:
                if msg.HasField("credit"):
                    credit[0] = max(0, credit[0] + msg.credit.n)
                elif msg.HasField("hand_back"):
                    reason = msg.hand_back.reason[:500]
                    if leases := [_ref(x) for x in msg.hand_back.leases]:
                        await self._call(context, self.service.hand_back, agent, leases,
                                         reason)
                    else:  # no leases: its goodbye, the last thing it sends
                        goodbye[0] = reason or "it said it is stopping"
                wake.set()
            closed.set()
            wake.set()

        reader = asyncio.ensure_future(read())
        told: set[LeaseRef] = set()
        checked, shut = 0.0, False
        try:
            while not closed.is_set() and not reader.done():
                wake.clear()  # before looking: credit that comes while we look wakes the wait
                if credit[0] > 0:
                    claims = await self._call(context, self.service.claim, agent, credit[0])
                    if claims:
                        credit[0] -= len(claims)
                        yield pb.ServerMessage(assignment=pb.Assignment(
                            tasks=[_task(c) for c in claims]))
                        continue
                if time.monotonic() - checked > CHECK_EVERY:
                    checked = time.monotonic()
                    cancels = [r for r in await self._call(context, self.service.cancels, agent)
                               if r not in told]
                    if cancels:
                        told.update(cancels)
                        yield pb.ServerMessage(cancel=pb.Cancel(
                            leases=[_lease(r) for r in cancels], reason="canceled"))
                    if not shut and await self._call(context, self.service.finished, agent):
                        shut = True
                        yield pb.ServerMessage(shutdown=pb.Shutdown(
                            reason="its experiments have ended"))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), IDLE_POLL)
            if closed.is_set() and goodbye[0]:
                # Ended by the agent itself after saying why (drained, preempted, idle): it is
                # GONE now, and what it still holds goes back now. A stream that just ends (a
                # killed agent, a broken connection) waits for its leases to expire instead:
                # the agent may be alive behind it and come back, its instances still running.
                await asyncio.to_thread(self.service.stopped, agent, goodbye[0])
        finally:
            reader.cancel()

    async def ReportTaskStatus(self, request: pb.StatusBatch,
                               context: grpc.aio.ServicerContext) -> pb.StatusReply:
        agent = await self._agent(context)
        try:
            updates = [_update(s) for s in request.updates]
        except BadInput as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        rejected = await self._call(context, self.service.report, agent, updates)
        return pb.StatusReply(rejected=[_lease(r) for r in rejected])

    async def SendHeartbeat(self, request: pb.Heartbeat,
                            context: grpc.aio.ServicerContext) -> pb.HeartbeatReply:
        agent = await self._agent(context)
        lost, stop = await self._call(context, self.service.heartbeat, agent,
                                      [_ref(x) for x in request.held])
        return pb.HeartbeatReply(lost=[_lease(r) for r in lost], shutdown=stop)

    async def RequestDataStaging(self, request: pb.StagingRequest,
                                 context: grpc.aio.ServicerContext) -> pb.StagingReply:
        await self._agent(context)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "staging through the scheduler service is not offered yet: "
                            "pilots run where the experiment's directory is")
        raise AssertionError("unreachable")

    async def SendLogs(self, request_iterator: AsyncIterator[pb.LogChunk],
                       context: grpc.aio.ServicerContext) -> pb.LogAck:
        await self._agent(context)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "log streaming is not offered yet: logs are written in the "
                            "instance's directory")
        raise AssertionError("unreachable")


async def _expire_loop(service: PilotService, settings: Settings, stop: asyncio.Event) -> None:
    # After a (re)start, agents get one lease period to reconnect and renew before anything
    # of theirs is taken back.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), settings.agent_lease_seconds)
    while not stop.is_set():
        try:
            await asyncio.to_thread(service.expire)
        except Exception as exc:  # the store is away for a moment: next round
            log.error("lease expiry: %s", describe(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.5, settings.agent_lease_seconds / 4))


async def serve(settings: Settings, *, ready: Callable[[int], None] | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (or SIGTERM/SIGINT when run as a program)."""
    stop = stop or asyncio.Event()
    store = open_store(settings)
    service = PilotService(store, settings)
    tls = pilots.service_tls(settings)
    server = grpc.aio.server(options=[("grpc.keepalive_time_ms", 20_000),
                                      ("grpc.keepalive_permit_without_calls", 1),
                                      ("grpc.http2.min_ping_interval_without_data_ms", 10_000)])
    pb_grpc.add_AgentServiceServicer_to_server(AgentServicer(service), server)
    creds = grpc.ssl_server_credentials([(tls.key.read_bytes(), tls.cert.read_bytes())])
    address = f"{settings.agent_host}:{settings.agent_port}"
    try:
        port = server.add_secure_port(address, creds)
    except RuntimeError:  # grpc's word for a port another process holds
        port = 0
    if port == 0:
        store.close()
        raise OSError(f"cannot listen on {address} (in use? set AIRAVATA_AGENT_PORT)")
    await server.start()
    log.info("agent service on %s:%d (TLS, CA %s)", settings.agent_host, port, tls.ca)
    if ready is not None:
        ready(port)
    expiry = asyncio.ensure_future(_expire_loop(service, settings, stop))
    try:
        await stop.wait()
    finally:
        await server.stop(grace=2)
        expiry.cancel()
        store.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = get_settings()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop=stop,
                    ready=lambda port: print(f"agent service listening on port {port}",
                                             flush=True))

    try:
        asyncio.run(run())
    except (OSError, BadInput, ValueError) as exc:  # a port, a TLS file, a setting
        sys.exit(f"airavata agent service: {exc}")


if __name__ == "__main__":
    main()
