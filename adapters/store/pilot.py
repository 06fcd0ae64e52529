"""The pilot work queue in the store: work items (one attempt of one instance each) that the
experiment's flow enqueues and pilot agents claim, and the agents themselves.

An agent holds an item by a lease named `(item_id, epoch)`. Every change of an item is a
compare-and-set on its status, agent and epoch, made inside a write transaction that first
takes the rows (PostgreSQL: `FOR UPDATE`, and `SKIP LOCKED` to claim or expire; SQLite:
`BEGIN IMMEDIATE`, one writer at a time), so two agents never get the same item and a lease
that was handed back or expired (the item is back in the queue with a new epoch) can report
nothing more: each attempt ends exactly once. Every change the flow must know of is kept as a
pilot event; on PostgreSQL the events of one experiment are written under a transaction-level
advisory lock, so their ids are in commit order and a reader's cursor (`events_after`) never
skips one that commits late.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from airavata_prefect.adapters.store.engine import utcnow
from airavata_prefect.adapters.store.schema import (
    UtcDateTime,
    agent_experiments,
    pilot_events,
    work_items,
)
from airavata_prefect.adapters.store.schema import agents as agent_rows
from airavata_prefect.domain.errors import NotFound
from airavata_prefect.domain.pilot import (
    REPORTABLE,
    ActiveItem,
    AgentInfo,
    AgentStatus,
    Claim,
    ItemStatus,
    LeaseRef,
    PilotEvent,
    StatusUpdate,
    TaskPayload,
    Usage,
    WorkItem,
)
from airavata_prefect.domain.records import utc
from airavata_prefect.domain.states import TaskState

_CHUNK = 1000  # ids per IN (...) list
W = work_items.c
READY, LEASED, DONE = (str(s) for s in (ItemStatus.READY, ItemStatus.LEASED, ItemStatus.DONE))


def item_key(instance_id: str, attempt: int) -> str:
    """How `enqueue` names an item in what it returns."""
    return f"{instance_id}@{attempt}"


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _usage_json(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {"wall_seconds": usage.wall_seconds, "cpu_seconds": usage.cpu_seconds,
            "max_rss_bytes": usage.max_rss_bytes}


def _usage(data: Mapping[str, Any] | None) -> Usage | None:
    if not data:
        return None
    return Usage(wall_seconds=float(data.get("wall_seconds", 0.0)),
                 cpu_seconds=float(data.get("cpu_seconds", 0.0)),
                 max_rss_bytes=int(data.get("max_rss_bytes", 0)))


def _chunks(values: Sequence[Any]) -> Iterator[list[Any]]:
    for i in range(0, len(values), _CHUNK):
        yield list(values[i:i + _CHUNK])


def _event(row: Any, state: str | None, at: datetime, message: str | None,
           exit_code: int | None = None, usage: dict[str, Any] | None = None
           ) -> dict[str, Any]:
    return {"experiment_id": row.experiment_id, "item_id": row.id,
            "instance_id": row.instance_id, "attempt": row.attempt, "state": state,
            "exit_code": exit_code, "message": message, "usage": usage, "at": at}


# Compare-and-set updates, run with executemany: each changes its row only while the lease
# holds. The epoch names the holder (it grows with every claim and requeue); matching on the
# agent too would let PostgreSQL, before it has statistics of a fresh queue, scan the agent's
# index for every row.
_HELD = (W.id == sa.bindparam("b_id"), W.epoch == sa.bindparam("b_epoch"), W.status == LEASED)
_PROGRESS = work_items.update().where(*_HELD).values(state=sa.bindparam("b_state"))
_END = work_items.update().where(*_HELD).values(
    status=DONE, state=sa.bindparam("b_state"), exit_code=sa.bindparam("b_exit", sa.Integer),
    message=sa.bindparam("b_message", sa.Text), usage=sa.bindparam("b_usage", sa.JSON),
    finished_at=sa.bindparam("b_at", UtcDateTime), lease_expires_at=None)
_REQUEUE = work_items.update().where(*_HELD).values(
    status=READY, epoch=W.epoch + 1, agent_id=None, lease_expires_at=None, state=None)
_CANCEL_READY = work_items.update().where(W.id == sa.bindparam("b_id"), W.status == READY).values(
    status=DONE, state=str(TaskState.CANCELED), message=sa.bindparam("b_message", sa.Text),
    finished_at=sa.bindparam("b_at", UtcDateTime))
_ROW = (W.id, W.epoch, W.agent_id, W.status, W.cancel_requested, W.experiment_id,
        W.instance_id, W.attempt)


class PilotRepo:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """A write transaction; on SQLite it holds the database's write lock from its start."""
        with self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn

    @staticmethod
    def _add_events(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if conn.dialect.name == "postgresql":  # ids in commit order, per experiment
            for exp in sorted({r["experiment_id"] for r in rows}):
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('pilot_events'), "
                                     "hashtext(:e))"), {"e": exp})
        conn.execute(pilot_events.insert(), rows)

    @staticmethod
    def _locked(conn: sa.Connection, query: sa.Select[Any], ids: Sequence[int] | None = None,
                *, skip_locked: bool = False) -> list[Any]:
        """Rows of `query` (of those `ids`), taken for update in id order."""
        query = query.order_by(W.id).with_for_update(skip_locked=skip_locked)
        if ids is None:
            return list(conn.execute(query))
        return [r for chunk in _chunks(sorted(set(ids)))
                for r in conn.execute(query.where(W.id.in_(chunk)))]

    # -- the queue ----------------------------------------------------------------------------

    def enqueue(self, items: Sequence[WorkItem]) -> dict[str, int]:
        """Store READY items of one experiment; {item_key(instance, attempt): item id}. An
        attempt already enqueued (by an earlier run of the flow) keeps its item and id."""
        if not items:
            return {}
        exps = {i.experiment_id for i in items}
        if len(exps) != 1:
            raise ValueError(f"enqueue takes items of one experiment, not {len(exps)}")
        exp, now = exps.pop(), utcnow()
        rows = [{"experiment_id": exp, "instance_id": i.instance_id, "attempt": i.attempt,
                 "resource": i.resource, "payload": i.payload.to_json(), "status": READY,
                 "epoch": 0, "created_at": now} for i in items]
        wanted = {item_key(i.instance_id, i.attempt) for i in items}
        out: dict[str, int] = {}
        with self._write() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            conn.execute(dialect.insert(work_items).on_conflict_do_nothing(), rows)
            for chunk in _chunks(sorted({i.instance_id for i in items})):
                for iid, attempt, item_id in conn.execute(
                        sa.select(W.instance_id, W.attempt, W.id)
                        .where(W.experiment_id == exp, W.instance_id.in_(chunk))):
                    if (key := item_key(iid, attempt)) in wanted:
                        out[key] = item_id
        return out

    def claim(self, agent_id: str, resource: str, experiments: Sequence[str], limit: int,
              lease_seconds: float) -> list[Claim]:
        """Take up to `limit` READY items of `resource` in these experiments, oldest first."""
        if limit <= 0 or not experiments:
            return []
        query = (sa.select(*_ROW, W.payload)
                 .where(W.status == READY, W.resource == resource,
                        W.experiment_id.in_(list(experiments))).limit(limit))
        with self._write() as conn:
            rows = self._locked(conn, query, skip_locked=True)
            if rows:
                conn.execute(work_items.update().where(W.id.in_([r.id for r in rows])).values(
                    status=LEASED, agent_id=agent_id, epoch=W.epoch + 1, state=None,
                    lease_expires_at=utcnow() + timedelta(seconds=lease_seconds)))
        return [Claim(LeaseRef(r.id, r.epoch + 1), r.experiment_id, r.instance_id, r.attempt,
                      TaskPayload.from_json(r.payload)) for r in rows]

    def report(self, agent_id: str, updates: Sequence[StatusUpdate]) -> list[LeaseRef]:
        """Record progress and ends of leases the agent holds, in one transaction; returns the
        leases it no longer holds (their updates are dropped, the others still written). A
        state an agent may not report (`REPORTABLE`) is a ValueError, and nothing is written."""
        if bad := [u.state for u in updates if u.state not in REPORTABLE]:
            raise ValueError(f"an agent may not report {', '.join(map(str, bad))}")
        if not updates:
            return []
        rejected: dict[LeaseRef, None] = {}
        progress: dict[int, dict[str, Any]] = {}
        ends: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        with self._write() as conn:
            held = {r.id: r for r in self._locked(conn, sa.select(*_ROW), [
                u.lease.item_id for u in updates]) if r.status == LEASED and r.agent_id == agent_id}
            for u in updates:
                row = held.get(u.lease.item_id)
                if row is None or row.epoch != u.lease.epoch:
                    rejected[u.lease] = None
                    continue
                at, usage = _utc(u.at), _usage_json(u.usage)
                cas = {"b_id": row.id, "b_epoch": row.epoch, "b_state": str(u.state)}
                if u.terminal:
                    del held[row.id]  # anything after its end is refused
                    progress.pop(row.id, None)
                    ends.append(cas | {"b_exit": u.exit_code, "b_message": u.message,
                                       "b_usage": usage, "b_at": at})
                else:
                    progress[row.id] = cas
                events.append(_event(row, str(u.state), at, u.message, u.exit_code, usage))
            for stmt, params in ((_PROGRESS, list(progress.values())), (_END, ends)):
                if params and conn.execute(stmt, params).rowcount != len(params):
                    raise RuntimeError("a work item changed under its row lock")
            self._add_events(conn, events)
        return list(rejected)

    def renew(self, agent_id: str, held: Sequence[LeaseRef], lease_seconds: float
              ) -> list[LeaseRef]:
        """Extend every lease the agent holds; returns those of `held` it lost."""
        now = utcnow()
        with self._write() as conn:
            rows = self._locked(conn, sa.select(W.id, W.epoch).where(
                W.agent_id == agent_id, W.status == LEASED))
            if rows:
                conn.execute(work_items.update()
                             .where(W.agent_id == agent_id, W.status == LEASED)
                             .values(lease_expires_at=now + timedelta(seconds=lease_seconds)))
            conn.execute(agent_rows.update().where(agent_rows.c.id == agent_id)
                         .values(heartbeat_at=now))
        have = {LeaseRef(r.id, r.epoch) for r in rows}
        return [lease for lease in held if lease not in have]

    def _requeue(self, conn: sa.Connection, rows: Sequence[Any], reason: str) -> None:
        """Put leased items back in the queue with a new epoch (or end them as CANCELED, when
        a cancel was asked for while they were leased)."""
        now = utcnow()
        back = [r for r in rows if not r.cancel_requested]
        canceled = [r for r in rows if r.cancel_requested]
        for stmt, part in ((_REQUEUE, back), (_END, canceled)):
            if part:
                conn.execute(stmt, [{
                    "b_id": r.id, "b_epoch": r.epoch,
                    "b_state": str(TaskState.CANCELED), "b_exit": None,
                    "b_message": f"canceled ({reason})", "b_usage": None, "b_at": now}
                    for r in part])
        self._add_events(conn, [
            _event(r, str(TaskState.CANCELED) if r.cancel_requested else None, now,
                   f"canceled ({reason})" if r.cancel_requested else reason) for r in rows])

    def hand_back(self, agent_id: str, leases: Sequence[LeaseRef] | None, reason: str) -> int:
        """Put these leases of the agent (None: all it holds) back in the queue."""
        query = sa.select(*_ROW).where(W.agent_id == agent_id, W.status == LEASED)
        with self._write() as conn:
            rows = self._locked(conn, query, None if leases is None
                                else [lease.item_id for lease in leases])
            if leases is not None:
                wanted = set(leases)
                rows = [r for r in rows if LeaseRef(r.id, r.epoch) in wanted]
            self._requeue(conn, rows, reason)
        return len(rows)

    def expire(self, now: datetime | None = None, *, agent_timeout: float | None = None
               ) -> list[tuple[int, str]]:
        """Requeue every item whose lease expired; the agents that held them are GONE, and so
        is any active agent not heard of for `agent_timeout` seconds. (item id, agent id)."""
        now = _utc(now or utcnow())
        gone: list[tuple[str, str]] = []
        with self._write() as conn:
            rows = self._locked(conn, sa.select(*_ROW).where(
                W.status == LEASED, W.lease_expires_at < now), skip_locked=True)
            by_agent: dict[str, list[Any]] = {}
            for r in rows:
                by_agent.setdefault(r.agent_id, []).append(r)
            for agent, held in by_agent.items():
                self._requeue(conn, held, f"its agent {agent} stopped heartbeating")
                gone.append((agent, "stopped heartbeating: its leases expired"))
            if agent_timeout is not None:
                gone += [(a, f"stopped heartbeating: silent for over {agent_timeout:g} s")
                         for a in conn.execute(sa.select(agent_rows.c.id).where(
                             agent_rows.c.status == str(AgentStatus.ACTIVE),
                             sa.func.coalesce(agent_rows.c.heartbeat_at, agent_rows.c.registered_at)
                             < now - timedelta(seconds=agent_timeout))).scalars()]
            if gone:
                conn.execute(agent_rows.update().where(
                    agent_rows.c.id == sa.bindparam("b_id"),
                    agent_rows.c.status == str(AgentStatus.ACTIVE)).values(
                    status=str(AgentStatus.GONE), stopped_reason=sa.bindparam("b_reason")),
                    [{"b_id": a, "b_reason": why} for a, why in dict(reversed(gone)).items()])
        return [(r.id, r.agent_id) for r in rows]

    def cancel(self, experiment_id: str, instance_ids: Sequence[str] | None = None
               ) -> list[tuple[str, LeaseRef]]:
        """End the READY items of the experiment (of these instances) as CANCELED; mark the
        LEASED ones and return them with their agents, who must be told."""
        query = sa.select(*_ROW).where(W.experiment_id == experiment_id,
                                       W.status.in_([READY, LEASED]))
        now = utcnow()
        message = "canceled before an agent took it"
        with self._write() as conn:
            ids = None if instance_ids is None else [  # then locked in id order
                i for chunk in _chunks(sorted(set(instance_ids))) for i in conn.execute(
                    sa.select(W.id).where(W.experiment_id == experiment_id,
                                          W.instance_id.in_(chunk))).scalars()]
            rows = self._locked(conn, query, ids)
            ready = [r for r in rows if r.status == READY]
            leased = [r for r in rows if r.status == LEASED]
            if ready:
                conn.execute(_CANCEL_READY, [{"b_id": r.id, "b_message": message, "b_at": now}
                                             for r in ready])
                self._add_events(conn, [_event(r, str(TaskState.CANCELED), now, message)
                                        for r in ready])
            if leased:
                conn.execute(work_items.update().where(W.id == sa.bindparam("b_id"))
                             .values(cancel_requested=True), [{"b_id": r.id} for r in leased])
        return [(r.agent_id, LeaseRef(r.id, r.epoch)) for r in leased]

    def cancel_requests(self, agent_id: str) -> list[LeaseRef]:
        """The leases of the agent whose items were canceled: it must stop them."""
        with self.engine.connect() as conn:
            return [LeaseRef(i, e) for i, e in conn.execute(
                sa.select(W.id, W.epoch).where(W.agent_id == agent_id, W.status == LEASED,
                                               W.cancel_requested.is_(True)).order_by(W.id))]

    # -- reading ------------------------------------------------------------------------------

    def events_after(self, experiment_id: str, after: int, limit: int = 5000
                     ) -> list[PilotEvent]:
        """The experiment's pilot events recorded after event `after` (the flow's cursor)."""
        e = pilot_events.c
        query = (pilot_events.select().where(e.experiment_id == experiment_id, e.id > after)
                 .order_by(e.id).limit(limit))
        with self.engine.connect() as conn:
            return [PilotEvent(
                id=r.id, item_id=r.item_id, experiment_id=r.experiment_id,
                instance_id=r.instance_id, attempt=r.attempt,
                state=TaskState(r.state) if r.state else None, at=utc(r.at) or r.at,
                exit_code=r.exit_code, message=r.message, usage=_usage(r.usage))
                for r in conn.execute(query)]

    def pending(self, experiment_id: str) -> dict[str, int]:
        """The experiment's work items by status."""
        with self.engine.connect() as conn:
            return {s: n for s, n in conn.execute(
                sa.select(W.status, sa.func.count()).where(W.experiment_id == experiment_id)
                .group_by(W.status))}

    def ready_count(self, resource: str, experiments: Sequence[str]) -> int:
        if not experiments:
            return 0
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).where(
                W.status == READY, W.resource == resource,
                W.experiment_id.in_(list(experiments)))).scalar_one())

    def ready_by_resource(self) -> dict[str, int]:
        """{resource: READY items}, every experiment's: the queue agents pull from (read from
        the claim index alone)."""
        with self.engine.connect() as conn:
            return {r: int(n) for r, n in conn.execute(
                sa.select(W.resource, sa.func.count()).where(W.status == READY)
                .group_by(W.resource))}

    def active_items(self, experiment_id: str) -> list[ActiveItem]:
        """The experiment's items not DONE, oldest first."""
        with self.engine.connect() as conn:
            return [ActiveItem(i, a, n, r) for i, a, n, r in conn.execute(
                sa.select(W.instance_id, W.attempt, W.id, W.resource)
                .where(W.experiment_id == experiment_id, W.status != DONE).order_by(W.id))]

    # -- agents -------------------------------------------------------------------------------

    def register(self, info: AgentInfo) -> None:
        """Record an agent (or re-activate one with the same id) as ACTIVE, heard of now."""
        now = utcnow()
        values = {"resource": info.resource, "experiments": list(info.experiments),
                  "hostname": info.hostname, "slots": info.slots, "cores": info.cores,
                  "memory_bytes": info.memory_bytes, "gpus": info.gpus,
                  "allocation_id": info.allocation_id, "status": str(AgentStatus.ACTIVE),
                  "registered_at": now, "heartbeat_at": now, "stopped_reason": None}
        with self._write() as conn:
            if not conn.execute(agent_rows.update().where(agent_rows.c.id == info.id)
                                .values(**values)).rowcount:
                conn.execute(agent_rows.insert().values(id=info.id, **values))
            conn.execute(agent_experiments.delete().where(
                agent_experiments.c.agent_id == info.id))
            if info.experiments:
                conn.execute(agent_experiments.insert(), [
                    {"agent_id": info.id, "experiment_id": e}
                    for e in dict.fromkeys(info.experiments)])

    def get_agent(self, agent_id: str) -> AgentInfo:
        found = self._agents(agent_rows.c.id == agent_id)
        if not found:
            raise NotFound(f"no agent {agent_id!r}")
        return found[0]

    def agents(self, resource: str | None = None, experiment: str | None = None,
               active_only: bool = True) -> list[AgentInfo]:
        """Agents (of a resource; allowed to take an experiment's items), oldest first."""
        where: list[sa.ColumnElement[bool]] = []
        if resource is not None:
            where.append(agent_rows.c.resource == resource)
        if active_only:
            where.append(agent_rows.c.status == str(AgentStatus.ACTIVE))
        if experiment is not None:
            where.append(agent_rows.c.id.in_(sa.select(agent_experiments.c.agent_id).where(
                agent_experiments.c.experiment_id == experiment)))
        return self._agents(*where)

    def ended_by_agent(self, experiment_id: str) -> dict[str, int]:
        """How many of the experiment's attempts each agent brought to an end."""
        query = (sa.select(W.agent_id, sa.func.count()).where(
            W.experiment_id == experiment_id, W.status == DONE, W.agent_id.is_not(None))
            .group_by(W.agent_id))
        with self.engine.connect() as conn:
            return {agent: int(n) for agent, n in conn.execute(query)}

    def active_agents_by_resource(self) -> dict[str, tuple[int, int]]:
        """(active agents, their slots) per resource, every experiment's."""
        query = (sa.select(agent_rows.c.resource, sa.func.count(), sa.func.sum(agent_rows.c.slots))
                 .where(agent_rows.c.status == str(AgentStatus.ACTIVE))
                 .group_by(agent_rows.c.resource))
        with self.engine.connect() as conn:
            return {r: (int(n), int(slots or 0)) for r, n, slots in conn.execute(query)}

    def stop_agent(self, agent_id: str, reason: str) -> None:
        with self._write() as conn:
            if not conn.execute(agent_rows.update().where(agent_rows.c.id == agent_id).values(
                    status=str(AgentStatus.GONE), stopped_reason=reason)).rowcount:
                raise NotFound(f"no agent {agent_id!r}")

    def _agents(self, *where: sa.ColumnElement[bool]) -> list[AgentInfo]:
        query = (agent_rows.select().where(*where)
                 .order_by(agent_rows.c.registered_at, agent_rows.c.id))
        with self.engine.connect() as conn:
            return [AgentInfo(
                id=r.id, resource=r.resource, experiments=tuple(r.experiments or ()),
                hostname=r.hostname, slots=r.slots, cores=r.cores,
                memory_bytes=r.memory_bytes, gpus=r.gpus, allocation_id=r.allocation_id,
                status=AgentStatus(r.status), registered_at=utc(r.registered_at),
                heartbeat_at=utc(r.heartbeat_at), stopped_reason=r.stopped_reason or "")
                for r in conn.execute(query)]


__all__ = ["PilotRepo", "item_key"]
