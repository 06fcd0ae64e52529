"""The permission graph as written through adapters.spicedb: the journal an embedded SpiceDB
(memory only) is rebuilt from in each process. A SpiceDB server keeps its own."""

from __future__ import annotations

import sqlalchemy as sa

from airavata_prefect.adapters.store.schema import relationships

Row = tuple[str, str, str, str, str, str]  # object type, id, relation, subject type, id, relation
_KEYS = ("object_type", "object_id", "relation", "subject_type", "subject_id",
         "subject_relation")


class RelationshipJournal:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def save_relationship(self, row: Row, *, present: bool) -> None:
        values = dict(zip(_KEYS, row, strict=True))
        with self.engine.begin() as conn:
            conn.execute(relationships.delete().where(
                *[relationships.c[k] == v for k, v in values.items()]))
            if present:
                conn.execute(relationships.insert().values(**values))

    def load_relationships(self) -> list[Row]:
        with self.engine.connect() as conn:
            return [(r[0], r[1], r[2], r[3], r[4], r[5])
                    for r in conn.execute(relationships.select())]

    def has_object(self, object_type: str, object_id: str) -> bool:
        """Whether anything relates to this object (e.g. a project someone holds)."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(relationships.c.object_id).where(
                relationships.c.object_type == object_type,
                relationships.c.object_id == object_id).limit(1)).first() is not None


__all__ = ["RelationshipJournal", "Row"]
