"""How each compute resource stands now, for `airavata resource status` and
`GET /resources/status`: its work pool (ready, paused, not ready, missing), the workers polling
it, how many instances are queued and running there, and, in pilot mode, its live agents.

The counts are of every user's instances (numbers only, never an id or a name), as `squeue`
shows a cluster's queue to all its users; who may see a resource at all is `scheduler.node.read`.
"""

from __future__ import annotations

from dataclasses import dataclass

from airavata_prefect.adapters import prefect_api
from airavata_prefect.domain.resources import LOCAL
from airavata_prefect.domain.states import TaskState
from airavata_prefect.usecases import resources
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.deployments import DEFAULT_POOL
from airavata_prefect.usecases.errors import Unavailable


@dataclass(frozen=True)
class ResourceStatus:
    name: str
    kind: str
    work_pool: str | None
    pool_status: str | None  # READY | NOT_READY | PAUSED; None: the pool does not exist
    workers: list[str]  # polling the pool now
    queued: int
    running: int  # past the queue: staging, setting up, running, staging out
    mode: str  # bundle | pilot (`local`: process | pilot)
    agents: int  # pilot agents registered there and alive now, every experiment's
    agent_slots: int  # the instances they can run at once

    @property
    def ready(self) -> bool:
        """Whether work placed here would start: a ready pool with a worker polling it."""
        return self.pool_status == "READY" and bool(self.workers)


def _one(view: resources.ResourceView, counts: dict[str, dict[str, int]],
         agents: dict[str, tuple[int, int]], local_mode: str) -> ResourceStatus:
    # `local` runs inside the experiment's own flow run, so it stands as the default pool does.
    pool = DEFAULT_POOL if view.name == LOCAL else view.work_pool
    try:
        status, workers = prefect_api.pool_state(pool) if pool else (None, [])
    except prefect_api.PrefectUnavailable as exc:
        raise Unavailable(str(exc)) from None
    mine = counts.get(view.name, {})
    queued = mine.get(TaskState.QUEUED, 0)
    live, slots = agents.get(view.name, (0, 0))
    return ResourceStatus(name=view.name, kind=view.kind, work_pool=pool, pool_status=status,
                          workers=sorted(workers), queued=queued,
                          running=sum(mine.values()) - queued,
                          mode=local_mode if view.name == LOCAL
                          else str(view.fields.get("mode") or "bundle"),
                          agents=live, agent_slots=slots)


def status(ctx: Context, name: str | None = None) -> list[ResourceStatus]:
    """Every compute resource the acting user may read (`local` first), or the one named."""
    views = ([resources.get(ctx, "compute", name)] if name is not None
             else resources.list_resources(ctx, "compute"))
    counts = ctx.store.tasks.active_by_resource()
    agents = ctx.store.pilot.active_agents_by_resource()
    return [_one(v, counts, agents, ctx.settings.local_mode) for v in views]


__all__ = ["ResourceStatus", "status"]
