"""Which OpenBao path each credential id names; the secret itself never enters the database."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from airavata_prefect.adapters.store.engine import utcnow
from airavata_prefect.adapters.store.schema import credentials
from airavata_prefect.domain.errors import NotFound


@dataclass(frozen=True, slots=True)
class CredentialRow:
    id: str
    owner: str
    mount: str
    path: str


class CredentialRepo:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def add(self, credential_id: str, *, owner: str, mount: str, path: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(credentials.insert().values(id=credential_id, owner=owner, mount=mount,
                                                     path=path, created_at=utcnow()))

    def at(self, mount: str, path: str) -> str | None:
        """The id of the credential stored at mount/path, if we know it."""
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(credentials.c.id).where(
                credentials.c.mount == mount, credentials.c.path == path)).scalar()
        return str(value) if value is not None else None

    def get(self, credential_id: str) -> CredentialRow:
        with self.engine.connect() as conn:
            row = conn.execute(credentials.select().where(
                credentials.c.id == credential_id)).mappings().first()
        if row is None:
            raise NotFound(f"no credential {credential_id!r}")
        return CredentialRow(row["id"], row["owner"], row["mount"], row["path"])

    def all(self) -> list[CredentialRow]:
        """Every credential we know, by id."""
        with self.engine.connect() as conn:
            return [CredentialRow(r.id, r.owner, r.mount, r.path) for r in conn.execute(
                sa.select(credentials.c.id, credentials.c.owner, credentials.c.mount,
                          credentials.c.path).order_by(credentials.c.id))]

    def delete(self, credential_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(credentials.delete().where(credentials.c.id == credential_id))


__all__ = ["CredentialRepo", "CredentialRow"]
