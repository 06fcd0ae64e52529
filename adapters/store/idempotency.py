"""Idempotency-Key of API requests that create experiments: a retried request finds the
experiment its first attempt created instead of creating a second."""

from __future__ import annotations

import sqlalchemy as sa

from airavata_prefect.adapters.store.engine import utcnow
from airavata_prefect.adapters.store.schema import idempotency_keys


class IdempotencyKeys:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def _where(self, actor: str, key: str) -> sa.ColumnElement[bool]:
        return (idempotency_keys.c.actor == actor) & (idempotency_keys.c.key == key)

    def reserve(self, actor: str, key: str) -> tuple[bool, str | None]:
        """(True, None) when this request holds the key now; else (False, the experiment the
        first request created, or None while it is still in flight)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(idempotency_keys.insert().values(
                    actor=actor, key=key, experiment_id=None, created_at=utcnow()))
            return True, None
        except sa.exc.IntegrityError:
            with self.engine.connect() as conn:
                value = conn.execute(sa.select(idempotency_keys.c.experiment_id).where(
                    self._where(actor, key))).scalar()
            return False, value

    def settle(self, actor: str, key: str, experiment_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(idempotency_keys.update().where(self._where(actor, key))
                         .values(experiment_id=experiment_id))

    def release(self, actor: str, key: str) -> None:
        """The request failed: a retry with the same key may try again."""
        with self.engine.begin() as conn:
            conn.execute(idempotency_keys.delete().where(self._where(actor, key),
                                                         idempotency_keys.c.experiment_id
                                                         .is_(None)))


__all__ = ["IdempotencyKeys"]
