"""Which service account each deployment of the experiment flow acts as, and in which project."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from airavata_prefect.adapters.store.engine import utcnow
from airavata_prefect.adapters.store.schema import service_accounts


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    deployment_id: str
    deployment: str  # flow/name
    account: str  # the identity its runs act as (a SpiceDB user)
    project: str


class ServiceAccountRepo:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def put(self, sa_: ServiceAccount, *, created_by: str) -> None:
        """Bind a deployment to its account (a re-registered deployment keeps its binding)."""
        with self.engine.begin() as conn:
            conn.execute(service_accounts.delete().where(
                (service_accounts.c.deployment_id == sa_.deployment_id)
                | (service_accounts.c.account == sa_.account)))
            conn.execute(service_accounts.insert().values(
                deployment_id=sa_.deployment_id, deployment=sa_.deployment, account=sa_.account,
                project=sa_.project, created_by=created_by, created_at=utcnow()))

    def of(self, deployment_id: str) -> ServiceAccount | None:
        with self.engine.connect() as conn:
            row = conn.execute(service_accounts.select().where(
                service_accounts.c.deployment_id == deployment_id)).mappings().first()
        return None if row is None else ServiceAccount(
            row["deployment_id"], row["deployment"], row["account"], row["project"])

    def list(self) -> list[ServiceAccount]:
        with self.engine.connect() as conn:
            rows = conn.execute(service_accounts.select().order_by(
                service_accounts.c.deployment)).mappings().all()
        return [ServiceAccount(r["deployment_id"], r["deployment"], r["account"], r["project"])
                for r in rows]


__all__ = ["ServiceAccount", "ServiceAccountRepo"]
