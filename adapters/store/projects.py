"""Projects' own rows: name, description, who made it and when. Who belongs to a project is
SpiceDB's (relationships), not this table's."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from airavata_prefect.adapters.store.engine import utcnow
from airavata_prefect.adapters.store.schema import projects


@dataclass(frozen=True)
class ProjectRow:
    name: str
    description: str | None
    created_by: str
    created_at: datetime


class ProjectRepo:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def add(self, name: str, *, created_by: str, description: str | None = None) -> bool:
        """Record a new project; False when one of that name exists (nothing changes)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(projects.insert().values(
                    name=name, description=description, created_by=created_by,
                    created_at=utcnow()))
            return True
        except sa.exc.IntegrityError:
            return False

    def get(self, name: str) -> ProjectRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(projects.select().where(projects.c.name == name)).first()
        return None if row is None else ProjectRow(row.name, row.description, row.created_by,
                                                   row.created_at)

    def names(self) -> builtins.list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(projects.c.name).order_by(projects.c.name))
                        .scalars())

    def set_description(self, name: str, description: str | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(projects.update().where(projects.c.name == name)
                         .values(description=description))

    def delete(self, name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(projects.delete().where(projects.c.name == name))


__all__ = ["ProjectRepo", "ProjectRow"]
