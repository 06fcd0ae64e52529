"""Bundles in the store: written by the experiment's flow when it dispatches, followed by the
worker that runs them, which appends what it sees as bundle events for the flow to read."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from airavata_prefect.adapters.store.engine import utcnow
from airavata_prefect.adapters.store.schema import bundle_events, bundles
from airavata_prefect.domain.errors import NotFound
from airavata_prefect.domain.records import Bundle, BundleEvent
from airavata_prefect.domain.states import BUNDLE_ENDED, BundleStatus


class BundleRepo:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def create(self, experiment_id: str, resource: str, step: str,
               instances: Sequence[tuple[int, int]]) -> str:
        bundle_id = str(uuid.uuid4())
        with self.engine.begin() as conn:
            conn.execute(bundles.insert().values(
                id=bundle_id, experiment_id=experiment_id, resource=resource, step=step,
                instances=[list(i) for i in instances], status=BundleStatus.CREATED,
                created_at=utcnow()))
        return bundle_id

    def get(self, bundle_id: str) -> Bundle:
        with self.engine.connect() as conn:
            row = conn.execute(bundles.select().where(bundles.c.id == bundle_id)
                               ).mappings().first()
        if row is None:
            raise NotFound(f"no bundle {bundle_id!r}")
        return Bundle.from_row(row)

    def of_experiment(self, experiment_id: str, *, active_only: bool = False) -> list[Bundle]:
        q = bundles.select().where(bundles.c.experiment_id == experiment_id)
        if active_only:
            q = q.where(bundles.c.status.not_in([str(s) for s in BUNDLE_ENDED]))
        with self.engine.connect() as conn:
            return [Bundle.from_row(r)
                    for r in conn.execute(q.order_by(bundles.c.created_at)).mappings()]

    def active_by_resource(self) -> dict[str, dict[str, int]]:
        """{resource: {status: bundles}} of the bundles not ended, every experiment's (read
        from the (status, resource) index)."""
        active = [str(s) for s in BundleStatus if s not in BUNDLE_ENDED]
        q = (sa.select(bundles.c.resource, bundles.c.status, sa.func.count())
             .where(bundles.c.status.in_(active)).group_by(bundles.c.resource, bundles.c.status))
        out: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for resource, status, n in conn.execute(q):
                out.setdefault(resource, {})[status] = int(n)
        return out

    def update(self, bundle_id: str, *, expect: Sequence[BundleStatus] | None = None,
               **values: Any) -> bool:
        """Set fields; with `expect`, only while the status is one of those."""
        q = bundles.update().where(bundles.c.id == bundle_id)
        if expect is not None:
            q = q.where(bundles.c.status.in_([str(s) for s in expect]))
        if "infrastructure" in values:
            values["infrastructure"] = list(values["infrastructure"])
        if values.get("status") in BUNDLE_ENDED:
            values.setdefault("finished_at", utcnow())
        with self.engine.begin() as conn:
            return conn.execute(q.values(**values)).rowcount == 1

    def heartbeat(self, bundle_id: str) -> None:
        self.update(bundle_id, heartbeat_at=utcnow())

    def request_cancel(self, bundle_ids: Sequence[str]) -> None:
        if not bundle_ids:
            return
        with self.engine.begin() as conn:
            conn.execute(bundles.update().where(bundles.c.id.in_(list(bundle_ids)))
                         .values(cancel_requested=True))

    def cancel_requested(self, bundle_id: str) -> bool:
        with self.engine.connect() as conn:
            return bool(conn.execute(sa.select(bundles.c.cancel_requested).where(
                bundles.c.id == bundle_id)).scalar())

    def add_events(self, experiment_id: str, bundle_id: str,
                   events: Sequence[BundleEvent]) -> None:
        if not events:
            return
        at = utcnow()
        with self.engine.begin() as conn:
            conn.execute(bundle_events.insert(), [
                {"experiment_id": experiment_id, "bundle_id": bundle_id, "position": e.position,
                 "state": str(e.state), "exit_code": e.exit_code, "message": e.message,
                 "usage": e.usage.to_line() if e.usage else None, "at": at}
                for e in events])

    def events_after(self, experiment_id: str, last_id: int, *,
                     bundle_id: str | None = None, limit: int = 100_000) -> list[BundleEvent]:
        """Events of the experiment (or one of its bundles) after `last_id`, in order."""
        q = bundle_events.select().where(bundle_events.c.experiment_id == experiment_id,
                                         bundle_events.c.id > last_id)
        if bundle_id is not None:
            q = q.where(bundle_events.c.bundle_id == bundle_id)
        with self.engine.connect() as conn:
            return [BundleEvent.from_row(r) for r in conn.execute(
                q.order_by(bundle_events.c.id).limit(limit)).mappings()]


__all__ = ["BundleRepo"]
