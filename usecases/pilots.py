"""The scheduler service's rules, apart from gRPC: who an agent is, what it may take, and what
its reports do. The gRPC door (api/agent_service.py) only translates messages.

- An agent is who its token says: minted when it was started, scoped to one resource and some
  experiments, expiring with its allocation (usecases/agent_tokens.py). A re-registering agent
  must hold a token of the same spawn.
- Claims come from the store's queue, atomically, in batches; only instances whose dependencies
  completed were ever enqueued (the experiment's flow enqueues them when they become ready).
- A report counts only for the lease the store holds now (exactly once); leases not renewed
  within `agent_lease_seconds` go back to the queue, and so do those an agent hands back.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace

from airavata_prefect.adapters import tls
from airavata_prefect.adapters.store import Store
from airavata_prefect.domain.errors import NotFound
from airavata_prefect.domain.pilot import (
    REPORTABLE,
    AgentInfo,
    AgentStatus,
    Claim,
    LeaseRef,
    StatusUpdate,
)
from airavata_prefect.domain.states import EXPERIMENT_TERMINAL
from airavata_prefect.usecases import agent_tokens
from airavata_prefect.usecases.agent_tokens import AgentScope
from airavata_prefect.usecases.errors import BadInput, Unauthenticated
from airavata_prefect.usecases.settings import Settings

log = logging.getLogger("airavata.pilots")
MAX_CLAIM = 256  # instances handed to one agent in one assignment


@dataclass(frozen=True)
class Registration:
    agent: AgentInfo
    lease_seconds: float
    heartbeat_seconds: float
    idle_seconds: float


@dataclass(frozen=True)
class Agent:
    """A verified caller: its id and what its token allows."""

    id: str
    scope: AgentScope
    info: AgentInfo


class PilotService:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    # -- identity --------------------------------------------------------------------------

    def scope_of(self, token: str | None) -> AgentScope:
        """What a token allows (RegisterWorker); refused with one clear reason."""
        if not token:
            raise Unauthenticated("no agent token (metadata 'authorization: Bearer ...')")
        return agent_tokens.verify(self.settings, token)

    def agent_of(self, token: str | None, agent_id: str | None) -> Agent:
        """The registered agent a call speaks for, if its token started it."""
        scope = self.scope_of(token)
        if not agent_id:
            raise Unauthenticated("no agent id (metadata 'x-agent-id'): register first")
        try:
            info = self.store.pilot.get_agent(agent_id)
        except NotFound:
            raise Unauthenticated(f"unknown agent {agent_id!r}: register first") from None
        if not agent_id.startswith(_prefix(scope)) or info.resource != scope.resource:
            raise Unauthenticated(f"agent {agent_id!r} was not started with this token")
        # An agent given up for silent (GONE) may still speak: its stale leases are refused
        # one by one (report, heartbeat), and its next heartbeat makes it active again.
        return Agent(agent_id, scope, info)

    def register(self, scope: AgentScope, *, hostname: str, slots: int, cores: int = 0,
                 memory_bytes: int = 0, gpus: int = 0, allocation_id: str = "",
                 agent_id: str = "") -> Registration:
        if slots < 1:
            raise BadInput(f"slots must be at least 1 (got {slots})")
        if agent_id:  # a reconnect: the same agent, if this token started it
            if not agent_id.startswith(_prefix(scope)):
                raise Unauthenticated(f"agent {agent_id!r} was not started with this token")
        else:
            agent_id = f"{_prefix(scope)}{uuid.uuid4().hex[:12]}"
        info = AgentInfo(id=agent_id, resource=scope.resource, experiments=scope.experiments,
                         hostname=hostname[:200] or "?", slots=slots, cores=max(cores, 0),
                         memory_bytes=max(memory_bytes, 0), gpus=max(gpus, 0),
                         allocation_id=allocation_id[:200])
        self.store.pilot.register(info)
        log.info("agent %s registered from %s: %d slots on %s for %s", agent_id, info.hostname,
                 slots, scope.resource, ", ".join(scope.experiments))
        s = self.settings
        return Registration(info, s.agent_lease_seconds, s.agent_heartbeat_seconds,
                            s.agent_idle_seconds)

    # -- work --------------------------------------------------------------------------------

    def claim(self, agent: Agent, n: int) -> list[Claim]:
        n = min(n, MAX_CLAIM)
        if n <= 0:
            return []
        return self.store.pilot.claim(agent.id, agent.scope.resource, agent.scope.experiments,
                                      n, self.settings.agent_lease_seconds)

    def report(self, agent: Agent, updates: Sequence[StatusUpdate]) -> list[LeaseRef]:
        for u in updates:
            if u.state not in REPORTABLE:
                raise BadInput(f"an agent cannot report state {u.state}")
        return self.store.pilot.report(agent.id, updates)

    def heartbeat(self, agent: Agent, held: Sequence[LeaseRef]) -> tuple[list[LeaseRef], bool]:
        """Renew the agent's leases: (those it lost, whether it should stop)."""
        lost = self.store.pilot.renew(agent.id, held, self.settings.agent_lease_seconds)
        if self.store.pilot.get_agent(agent.id).status == AgentStatus.GONE:
            self.store.pilot.register(replace(agent.info, status=AgentStatus.ACTIVE))
            log.info("agent %s is heard from again", agent.id)
        return lost, self.finished(agent)

    def hand_back(self, agent: Agent, leases: Sequence[LeaseRef] | None, reason: str) -> int:
        n = self.store.pilot.hand_back(agent.id, leases, reason or f"handed back by {agent.id}")
        if n:
            log.info("agent %s handed back %d instance(s): %s", agent.id, n, reason)
        return n

    def cancels(self, agent: Agent) -> list[LeaseRef]:
        return self.store.pilot.cancel_requests(agent.id)

    def finished(self, agent: Agent) -> bool:
        """Every experiment the agent may work for has ended: it should stop."""
        for exp_id in agent.scope.experiments:
            try:
                if self.store.experiments.get(exp_id).status not in EXPERIMENT_TERMINAL:
                    return False
            except NotFound:
                continue
        return True

    def stopped(self, agent: Agent, reason: str) -> None:
        """The agent closed its stream: whatever it still held goes back at once."""
        self.store.pilot.hand_back(agent.id, None, f"its agent {agent.id} stopped: {reason}")
        self.store.pilot.stop_agent(agent.id, reason)

    def expire(self) -> int:
        expired = self.store.pilot.expire(agent_timeout=self.settings.agent_lease_seconds)
        for item_id, agent_id in expired:
            log.warning("instance item %d: agent %s stopped heartbeating; back in the queue",
                        item_id, agent_id)
        return len(expired)


def _prefix(scope: AgentScope) -> str:
    """Agent ids start with their spawn's key: a token can only speak for its own agents."""
    return f"{scope.agent_key[:16]}-"


def default_hosts() -> list[str]:
    """Names the service's certificate covers by default."""
    return sorted({"localhost", "127.0.0.1", socket.gethostname()})


def service_tls(settings: Settings) -> tls.TlsFiles:
    """The site's certificate when configured, else one from our own CA (made on first use,
    kept in `home`/agent-tls; agents trust that CA)."""
    s = settings
    if s.agent_tls_cert or s.agent_tls_key:
        if not (s.agent_tls_cert and s.agent_tls_key):
            raise BadInput("AIRAVATA_AGENT_TLS_CERT and AIRAVATA_AGENT_TLS_KEY go together")
        return tls.site_tls(s.agent_tls_cert, s.agent_tls_key, s.agent_tls_ca)
    return tls.ensure_service_tls(s.home / "agent-tls", [*default_hosts(), s.agent_host])


__all__ = ["MAX_CLAIM", "Agent", "PilotService", "Registration", "default_hosts", "service_tls"]
