"""The audit trail: every privileged action and every refusal, with its correlation id."""

from __future__ import annotations

import sqlalchemy as sa

from airavata_prefect.adapters.store.engine import utcnow
from airavata_prefect.adapters.store.schema import audit_events
from airavata_prefect.domain.records import AuditEntry


class AuditLog:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def record(self, *, actor: str, action: str, obj: str, correlation_id: str, outcome: str,
               detail: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(audit_events.insert().values(
                at=utcnow(), actor=actor, action=action, object=obj,
                correlation_id=correlation_id, outcome=outcome, detail=detail))

    def submit_correlation(self, exp_id: str) -> str | None:
        """The correlation id the experiment was submitted under (its runs and bundles carry
        it on, so one id finds the submit, the credential grants and the logs of a run)."""
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(audit_events.c.correlation_id).where(
                audit_events.c.action == "scheduler.queue.submit",
                audit_events.c.object == f"experiment:{exp_id}",
                audit_events.c.outcome == "ok").limit(1)).scalar()
        return str(value) if value is not None else None

    def trail(self, *, correlation_id: str | None = None, actor: str | None = None,
              limit: int = 1000) -> list[AuditEntry]:
        q = audit_events.select()
        if correlation_id:
            q = q.where(audit_events.c.correlation_id == correlation_id)
        if actor:
            q = q.where(audit_events.c.actor == actor)
        with self.engine.connect() as conn:
            return [AuditEntry.from_row(r) for r in conn.execute(
                q.order_by(audit_events.c.id).limit(limit)).mappings()]


__all__ = ["AuditLog"]
