"""The store (SQLAlchemy 2 Core, migrated by Alembic): SQLite by default, PostgreSQL in
production. One engine, and one repository per concept:

- `experiments` — experiments, created with all their task rows at once;
- `tasks` — task instances, whose states change only by checked compare-and-set transitions;
- `bundles` — bundles dispatched to registered resources, and what their workers report;
- `credentials` — which OpenBao path each credential id names (never a secret);
- `audit` — privileged actions and refusals, with correlation ids;
- `relationships` — the journal of the permission graph (embedded SpiceDB keeps nothing);
- `service_accounts` — who each deployment of the experiment flow acts as, in which project;
- `accounts` — who may sign in to the REST API (people, API service accounts) and their tokens;
- `idempotency` — the experiment each API Idempotency-Key created;
- `pilot` — the pilot work queue: work items leased to pilot agents, their events, the agents;
- `staging` — per-resource cache totals and the files each step's storage mounts held;
- `lineage` — each completed instance's outputs and what they came from (its inputs, script,
  parameters, resource).
"""

from __future__ import annotations

from airavata_prefect.adapters.store.accounts import Account, AccountRepo, TokenRow
from airavata_prefect.adapters.store.audit import AuditLog
from airavata_prefect.adapters.store.bundles import BundleRepo
from airavata_prefect.adapters.store.credentials import CredentialRepo, CredentialRow
from airavata_prefect.adapters.store.engine import make_engine, migrate, utcnow
from airavata_prefect.adapters.store.experiments import ExperimentRepo
from airavata_prefect.adapters.store.idempotency import IdempotencyKeys
from airavata_prefect.adapters.store.lineage import LineageRepo
from airavata_prefect.adapters.store.pilot import PilotRepo
from airavata_prefect.adapters.store.projects import ProjectRepo
from airavata_prefect.adapters.store.relationships import RelationshipJournal
from airavata_prefect.adapters.store.service_accounts import ServiceAccount, ServiceAccountRepo
from airavata_prefect.adapters.store.staging import StagingRepo
from airavata_prefect.adapters.store.tasks import TaskRepo


class Store:
    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        migrate(self.engine)
        self.experiments = ExperimentRepo(self.engine)
        self.tasks = TaskRepo(self.engine)
        self.bundles = BundleRepo(self.engine)
        self.credentials = CredentialRepo(self.engine)
        self.audit = AuditLog(self.engine)
        self.relationships = RelationshipJournal(self.engine)
        self.service_accounts = ServiceAccountRepo(self.engine)
        self.accounts = AccountRepo(self.engine)
        self.idempotency = IdempotencyKeys(self.engine)
        self.projects = ProjectRepo(self.engine)
        self.pilot = PilotRepo(self.engine)
        self.staging = StagingRepo(self.engine)
        self.lineage = LineageRepo(self.engine)

    def owner(self, login: str) -> str:
        """The OS login that owns this store: the first to ask (`login`) claims it."""
        import sqlalchemy as sa

        from airavata_prefect.adapters.store.schema import store_info
        query = sa.select(store_info.c.value).where(store_info.c.key == "owner")
        with self.engine.connect() as conn:
            value = conn.execute(query).scalar()
        if value is None:
            try:
                with self.engine.begin() as conn:
                    conn.execute(store_info.insert().values(key="owner", value=login))
                return login
            except sa.exc.IntegrityError:  # another process claimed it first
                with self.engine.connect() as conn:
                    value = conn.execute(query).scalar()
        return str(value)

    def close(self) -> None:
        self.engine.dispose()


__all__ = ["Account", "CredentialRow", "ServiceAccount", "Store", "TokenRow", "utcnow"]
