"""Agents started through a resource's work pool (pilot mode), run by its worker.

An agents bundle (step `AGENTS_STEP`) holds no instances: its positions are agents. Each one
runs through run_one.sh exactly as an instance would (a SLURM array task, a detached process
on bare metal), so the launchers, their cancel and their verdicts are the bundles' own. The
worker mints the agents' token (scoped to this experiment and resource, expiring with the
allocation), stages it as a 0600 file beside the job script, never in it, and removes it when
every agent has ended.

Agents read and write the experiment's directory at the same path as here: pilot mode needs a
filesystem the compute nodes share with the scheduler, and the worker checks that before
anything is submitted (a file written here must read back there).
"""

from __future__ import annotations

import asyncio
import shlex
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from airavata_prefect.adapters.hosts import Host, HostError, upload
from airavata_prefect.adapters.launcher import Launcher, read_markers
from airavata_prefect.adapters.store import Store
from airavata_prefect.blocks import ComputeBlock
from airavata_prefect.domain.bundle_layout import (
    EXECUTABLE,
    bundle_dir,
    frame_files,
    position_file,
)
from airavata_prefect.domain.dag import TaskGraph
from airavata_prefect.domain.endings import Exit, Requeue, judge
from airavata_prefect.domain.records import Bundle, Experiment
from airavata_prefect.domain.spec import parse_duration
from airavata_prefect.domain.states import (
    EXPERIMENT_TERMINAL,
    BundleStatus,
    TaskState,
    summarize,
)
from airavata_prefect.usecases import agent_tokens, pilots
from airavata_prefect.usecases.agent_starters import agent_arguments
from airavata_prefect.usecases.bundles.opening import BundleResult, Opener, open_resource
from airavata_prefect.usecases.bundles.runner import LOST_CONTACT_POLLS, SCHEDULER_EVERY_SECONDS
from airavata_prefect.usecases.catalog import load_compute
from airavata_prefect.usecases.settings import Settings

NO_WALLTIME_SECONDS = 7 * 24 * 3600  # a resource with no walltime limit: its token's life
QUEUE_MARGIN_SECONDS = 24 * 3600  # the job may wait in the queue before its walltime starts
STOP_GRACE_SECONDS = 20.0  # agents still queued or running this long after their experiment
#                            ended are cancelled (the service already told running ones to stop)
TOKEN, CA, PROBE = "token", "ca.pem", "shared-probe"


def agent_files(settings: Settings, block: ComputeBlock, *, bdir: str, root: str, count: int,
                resource: str, ca: bytes) -> dict[str, str | bytes]:
    """The agents bundle's files: run_one.sh runs position k as `steps/agent.sh` in its own
    directory `agent-k/` (its stdout.log and stderr.log are the agent's log)."""
    args = agent_arguments(settings, ca=f"{bdir}/{CA}", token_path=f"{bdir}/{TOKEN}",
                           root=root, slots=block.cores_per_node, resource=resource)
    # `agent_command` is the resource admin's (a path, or `python -m ...`): not quoted.
    script = f"#!/bin/bash\nexec {block.agent_command} {shlex.join(args)}\n"
    files: dict[str, str | bytes] = {**frame_files(), "steps/agent.sh": script, CA: ca}
    for k in range(count):
        files[f"tasks/{k}.sh"] = position_file("agent", f"{bdir}/agent-{k}")
    return files


def check_shared(host: Host, directory: Path) -> None:
    """The resource sees `directory` as we do (the same files, not only the same path)."""
    nonce = uuid.uuid4().hex
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / PROBE
    probe.write_text(nonce)
    try:
        seen = host.run(f"cat {shlex.quote(str(probe))} 2>/dev/null; true").text.strip()
    finally:
        probe.unlink(missing_ok=True)
    if seen != nonce:
        raise HostError(f"{host.name} does not see {directory} as this machine does: pilot "
                        "mode needs the experiment's directory on a filesystem both share "
                        "(else use mode: bundle)")


async def run_agents(store: Store, settings: Settings, bundle: Bundle, exp: Experiment,
                     home: TaskGraph, opener: Opener, *, poll_seconds: float, logger: Any,
                     submitted: Callable[[list[str]], None] | None,
                     cancelled: Callable[[], Awaitable[bool]]) -> BundleResult:
    """Start the bundle's agents on its resource and follow them until every one has ended."""
    count = len(bundle.instances)
    with ExitStack() as stack:
        try:
            block = await load_compute(bundle.resource)
            walltime = parse_duration(block.max_walltime) if block.max_walltime else None
            session, _, _ = await open_resource(stack, store, settings, bundle, exp, home,
                                                opener, walltime=walltime, mounts=[])
            bdir = bundle_dir(home.root, bundle.id)
            await asyncio.to_thread(check_shared, session.host, Path(bdir))
            token = agent_tokens.mint(
                settings, resource=bundle.resource, experiments=[exp.id],
                seconds=(walltime or NO_WALLTIME_SECONDS) + QUEUE_MARGIN_SECONDS)
            files = agent_files(settings, block, bdir=bdir, root=str(Path(home.root).parent),
                                count=count, resource=bundle.resource,
                                ca=pilots.service_tls(settings).ca.read_bytes())
            files.update(session.launcher.files(bdir, count))
            await asyncio.to_thread(upload, session.host, bdir, {**files, TOKEN: token},
                                    executable=EXECUTABLE, private=frozenset({TOKEN}))
            store.bundles.update(bundle.id, status=BundleStatus.STAGING)
            ids = await asyncio.to_thread(session.launcher.submit, bdir, count)
        except Exception as exc:  # nothing started: the flow sees the agents never came
            reason = f"could not start agents on {bundle.resource}: {exc}"
            logger.error(reason)
            store.bundles.update(bundle.id, status=BundleStatus.FAILED, message=reason)
            return BundleResult({str(TaskState.FAILED): count}, reason)
        store.bundles.update(bundle.id, status=BundleStatus.SUBMITTED, infrastructure=ids)
        if submitted:
            submitted(ids)
        logger.info("%d agent(s) for experiment %s submitted to %s as %s", count, exp.id,
                    session.launcher.name, ", ".join(ids))
        follower = _Agents(store, bundle, session.host, session.launcher, bdir, ids, count,
                           logger)
        try:
            canceled = await follower.follow(poll_seconds, cancelled)
        finally:
            await asyncio.to_thread(session.host.run, f"rm -f {shlex.quote(bdir)}/{TOKEN}")
    counts = follower.counts()
    message = f"agents: {summarize(counts)}" + (f"; {follower.failures[0]}"
                                                 if follower.failures else "")
    store.bundles.update(bundle.id, status=BundleStatus.CANCELED if canceled
                         else BundleStatus.COMPLETED, message=message)
    return BundleResult(counts, message, canceled)


class _Agents:
    """Follows one bundle's agents through their markers and their scheduler."""

    def __init__(self, store: Store, bundle: Bundle, host: Host, launcher: Launcher,
                 bdir: str, ids: list[str], count: int, logger: Any) -> None:
        self.store, self.experiment_id, self.bundle_id = store, bundle.experiment_id, bundle.id
        self.host, self.launcher, self.bdir, self.ids = host, launcher, bdir, ids
        self.ended: dict[int, TaskState] = {}
        self.failures: list[str] = []
        self.count = count
        self.log = logger

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for state in self.ended.values():
            out[str(state)] = out.get(str(state), 0) + 1
        return out

    def _end(self, k: int, end: Exit, *, stopped: bool) -> None:
        outcome = judge(end, cancel_requested=stopped)
        if stopped and outcome.state == TaskState.CANCELED and not end.canceled:
            outcome = outcome._replace(state=TaskState.COMPLETED)  # not needed any more
        self.ended[k] = outcome.state
        if outcome.state == TaskState.FAILED:
            self.failures.append(f"agent {k}: {outcome.reason} (its log: "
                                 f"{self.bdir}/agent-{k}/stderr.log)")
            self.log.warning("%s", self.failures[-1])

    async def follow(self, poll: float, cancelled: Callable[[], Awaitable[bool]]) -> bool:
        """Until every agent ended; True when a user canceled them."""
        canceled = stopping = False
        over_since: float | None = None
        asked = 0.0
        lost = 0
        while len(self.ended) < self.count:
            await asyncio.sleep(poll)
            self.store.bundles.heartbeat(self.bundle_id)
            if not (canceled or stopping):
                if await cancelled():
                    canceled = True
                elif self.store.experiments.get(self.experiment_id).status in (
                        EXPERIMENT_TERMINAL):
                    over_since = over_since or time.monotonic()
                    stopping = time.monotonic() - over_since > STOP_GRACE_SECONDS
                if canceled or stopping:
                    await asyncio.to_thread(self.launcher.cancel, self.ids)
            try:
                markers = await asyncio.to_thread(read_markers, self.host, self.bdir)
                lost = 0
            except HostError as exc:
                lost += 1
                self.log.warning("agents: %s (attempt %d)", exc, lost)
                if lost >= LOST_CONTACT_POLLS:
                    for k in set(range(self.count)) - set(self.ended):
                        self._end(k, Exit(failure=f"lost contact: {exc}"), stopped=False)
                continue
            for k, m in markers.items():
                if m.ended and k not in self.ended and k < self.count:
                    self._end(k, m.end or Exit(), stopped=canceled or stopping)
            rest = [k for k in range(self.count) if k not in self.ended]
            now = time.monotonic()
            if rest and (now - asked > SCHEDULER_EVERY_SECONDS or canceled or stopping):
                asked = now
                said = await asyncio.to_thread(self.launcher.unmarked, self.ids, rest)
                for k, verdict in said.items():
                    end = (verdict if isinstance(verdict, Exit)
                           else Exit(failure=verdict.reason) if isinstance(verdict, Requeue)
                           else Exit())
                    self._end(k, end, stopped=canceled or stopping)
        return canceled


__all__ = ["agent_files", "check_shared", "run_agents"]
