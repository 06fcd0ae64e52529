"""How agents start on each kind of resource. An agent gets, on its command line, only where
the service is, the CA to trust and a file holding its token (0600, never in an environment a
task could read, never in a job script); its environment is the few host variables every
instance keeps (domain/instance.py), so nothing of the flow's own (a database URL, an OpenBao
token) reaches it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from airavata_prefect.adapters.store import Store
from airavata_prefect.blocks import ComputeBlock
from airavata_prefect.domain.instance import host_environment
from airavata_prefect.domain.pilot import AGENTS_STEP
from airavata_prefect.domain.resources import LOCAL
from airavata_prefect.domain.spec import parse_duration
from airavata_prefect.domain.states import BundleStatus
from airavata_prefect.usecases import agent_tokens, pilots
from airavata_prefect.usecases.dispatch import Launch
from airavata_prefect.usecases.settings import Settings

LOCAL_TOKEN_SECONDS = 24 * 3600  # a local agent has no allocation to expire with


def token_file(settings: Settings, token: str) -> Path:
    """Write a spawn's token where only this user reads it."""
    directory = settings.home / "agents"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{uuid.uuid4().hex}.token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return path


def agent_arguments(settings: Settings, *, ca: str, token_path: str, root: str, slots: int,
                    resource: str) -> list[str]:
    """An agent's arguments, wherever it starts: where the service is and what to trust."""
    return ["--server", settings.agent_target, "--ca", ca, "--token-file", token_path,
            "--root", root, "--slots", str(slots), "--resource", resource]


def agent_command(settings: Settings, *, token_path: Path, root: Path, slots: int,
                  resource: str, python: str = sys.executable) -> list[str]:
    ca = pilots.service_tls(settings).ca
    return [python, "-m", "airavata_prefect.agent.pilot",
            *agent_arguments(settings, ca=str(ca), token_path=str(token_path), root=str(root),
                             slots=slots, resource=resource)]


class LocalAgents:
    """Agents as processes on this machine (the `local` resource in pilot mode)."""

    startup_seconds = 30.0  # a process registers within this, or it died

    def __init__(self, settings: Settings, *, slots: int | None = None,
                 max_agents: int = 1) -> None:
        self.settings = settings
        self.slots = slots or settings.agent_slots
        self.max_agents = max_agents
        self.procs: list[subprocess.Popen[bytes]] = []
        self.token_files: list[Path] = []

    async def start(self, count: int, *, experiment_id: str, root: Path) -> list[str]:
        return await asyncio.to_thread(self._start, count, experiment_id, root)

    def _start(self, count: int, experiment_id: str, root: Path) -> list[str]:
        self.procs = [p for p in self.procs if p.poll() is None]  # reap the ended ones
        root.mkdir(parents=True, exist_ok=True)
        token = agent_tokens.mint(self.settings, resource=LOCAL, experiments=[experiment_id],
                                  seconds=LOCAL_TOKEN_SECONDS)
        path = token_file(self.settings, token)
        self.token_files.append(path)
        logs = self.settings.home / "agents"
        out = []
        for _ in range(count):
            cmd = agent_command(self.settings, token_path=path, root=root, slots=self.slots,
                                resource=LOCAL)
            log = open(logs / f"{experiment_id}.log", "ab")  # noqa: SIM115  the child keeps it
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        env=host_environment(os.environ), cwd=root)
            finally:
                log.close()
            self.procs.append(proc)
            out.append(f"local agent pid {proc.pid}")
        return out

    def failed(self) -> str | None:
        return None  # a process that dies at once is restarted, up to the executor's limit

    def pending(self) -> int:
        return 0  # a process starts at once

    def close(self) -> None:
        """The run is over: its agents read their tokens long ago; none stays on disk."""
        for path in self.token_files:
            path.unlink(missing_ok=True)
        self.token_files.clear()


class PoolAgents:
    """Agents on a registered resource in pilot mode, started through its work pool: each
    start is an agents bundle, one flow run in the pool (shown under the experiment's in the
    Prefect UI) whose worker submits them as one job array or detached processes, and mints
    and stages their token (usecases/bundles/agents.py): nothing of it passes through here or
    Prefect. One agent per node, one instance per core."""

    def __init__(self, store: Store, launch: Launch, resource: str,
                 block: ComputeBlock) -> None:
        self.store, self.launch, self.resource, self.block = store, launch, resource, block
        self.bundles: list[str] = []
        self._submitted: dict[str, float] = {}  # bundle -> when first seen SUBMITTED
        self.experiment_id = ""
        self.slots = block.cores_per_node
        self.max_agents = block.nodes
        # A batch job may wait in its queue before it registers.
        self.startup_seconds = 120.0 + parse_duration(block.queue_wait)

    async def start(self, count: int, *, experiment_id: str, root: Path) -> list[str]:
        self.experiment_id = experiment_id
        # Where the flow run's own infrastructure is the node (a Kubernetes pod runs the
        # bundle in place), each agent is a flow run of its own; else one for all of them.
        sizes = [1] * count if self.block.worker_base is not None else [count]
        return [await self._start(n, experiment_id) for n in sizes]

    async def _start(self, count: int, experiment_id: str) -> str:
        bundle_id = await asyncio.to_thread(self.store.bundles.create, experiment_id,
                                            self.resource, AGENTS_STEP,
                                            [(k, 0) for k in range(count)])
        flow_run = await self.launch.create(self.resource, bundle_id, "agents",
                                            self.block.agent_job_variables())
        await asyncio.to_thread(self.store.bundles.update, bundle_id, flow_run_id=flow_run)
        self.bundles.append(bundle_id)
        return f"{count} agent(s) on {self.resource}: bundle {bundle_id}, flow run {flow_run}"

    def failed(self) -> str | None:
        """The worker could not start the latest agents (the resource unreachable, no shared
        filesystem, sbatch refused) and none of this experiment's ever registered."""
        if not self.bundles:
            return None
        latest = self.store.bundles.get(self.bundles[-1])
        if latest.status != BundleStatus.FAILED or latest.infrastructure:
            return None
        ever = self.store.pilot.agents(self.resource, latest.experiment_id, active_only=False)
        return None if ever else latest.message or f"agents on {self.resource} did not start"

    def pending(self) -> int:
        """Agents that cannot have registered yet: those of starts no worker has taken (its
        pool has no worker, or a busy one), and those submitted less than `startup_seconds`
        ago (a batch queue's wait counts from the submission, not from the start) that no
        registration since accounts for. Another start would only wait behind them."""
        now = time.monotonic()
        waiting, submitted, since = 0, 0, None
        if not self.bundles:
            return 0
        mine = set(self.bundles)
        live = self.store.bundles.of_experiment(self.experiment_id, active_only=True)
        for b in (b for b in live if b.id in mine):
            if b.status in (BundleStatus.CREATED, BundleStatus.STAGING):
                waiting += len(b.instances)
            elif b.status == BundleStatus.SUBMITTED:
                seen = self._submitted.setdefault(b.id, now)
                if now - seen < self.startup_seconds:
                    submitted += len(b.instances)
                    since = min(since or b.created_at, b.created_at)
        if submitted and since is not None:
            came = sum(1 for a in self.store.pilot.agents(self.resource, self.experiment_id,
                                                          active_only=False)
                       if a.registered_at and a.registered_at >= since)
            submitted = max(0, submitted - came)
        return waiting + submitted

    def close(self) -> None:
        """Nothing to remove here: the worker removes the token when its agents end, and stops
        agents still queued once the experiment is over."""


__all__ = ["LocalAgents", "PoolAgents", "agent_arguments", "agent_command", "token_file"]
