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
import uuid
from pathlib import Path

from airavata_prefect.domain.instance import host_environment
from airavata_prefect.domain.resources import LOCAL
from airavata_prefect.usecases import agent_tokens, pilots
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


def agent_command(settings: Settings, *, token_path: Path, root: Path, slots: int,
                  resource: str, python: str = sys.executable) -> list[str]:
    ca = pilots.service_tls(settings).ca
    return [python, "-m", "airavata_prefect.agent.pilot", "--server", settings.agent_target,
            "--ca", str(ca), "--token-file", str(token_path), "--root", str(root),
            "--slots", str(slots), "--resource", resource]


class LocalAgents:
    """Agents as processes on this machine (the `local` resource in pilot mode)."""

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

    def close(self) -> None:
        """The run is over: its agents read their tokens long ago; none stays on disk."""
        for path in self.token_files:
            path.unlink(missing_ok=True)
        self.token_files.clear()


__all__ = ["LocalAgents", "agent_command", "token_file"]
