"""The permission graph as written through adapters.spicedb: the journal an embedded SpiceDB
(memory only) is rebuilt from in each process. A SpiceDB server keeps its own."""

from __future__ import annotations

import sqlalchemy as sa

from airavata_prefect.adapters.store.schema import relationship_generation, relationships

Row = tuple[str, str, str, str, str, str]  # object type, id, relation, subject type, id, relation
_KEYS = ("object_type", "object_id", "relation", "subject_type", "subject_id",
         "subject_relation")


class RelationshipJournal:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def save_relationship(self, row: Row, *, present: bool) -> int:
        """Write one relationship; returns the journal's generation after this write (a
        long-lived reader compares it with its own, to see whether others wrote too)."""
        values = dict(zip(_KEYS, row, strict=True))
        with self.engine.begin() as conn:
            conn.execute(relationships.delete().where(
                *[relationships.c[k] == v for k, v in values.items()]))
            if present:
                conn.execute(relationships.insert().values(**values))
            conn.execute(relationship_generation.update().where(
                relationship_generation.c.id == 1).values(
                value=relationship_generation.c.value + 1))
            return int(conn.execute(sa.select(relationship_generation.c.value)).scalar() or 0)

    def generation(self) -> int:
        """How many writes the journal has seen (one cheap read)."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(relationship_generation.c.value)).scalar() or 0)

    def objects(self, object_type: str) -> list[str]:
        """Ids of every object of a type anything relates to (e.g. every project)."""
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(
                sa.select(relationships.c.object_id).where(
                    relationships.c.object_type == object_type).distinct()
                .order_by(relationships.c.object_id))]

    def of_object(self, object_type: str, object_id: str) -> list[Row]:
        """The relationships of one object (its members, roles, parents)."""
        with self.engine.connect() as conn:
            return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in conn.execute(
                relationships.select().where(relationships.c.object_type == object_type,
                                             relationships.c.object_id == object_id))]

    def of_subject(self, subject_type: str, subject_id: str) -> list[Row]:
        """Where a subject appears directly (the groups a user is in, the projects...)."""
        with self.engine.connect() as conn:
            return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in conn.execute(
                relationships.select().where(relationships.c.subject_type == subject_type,
                                             relationships.c.subject_id == subject_id))]

    def remove_object(self, object_type: str, object_id: str) -> list[Row]:
        """Every relationship of an object, removed here (the caller removes them from a
        SpiceDB server too); returns them."""
        rows = self.of_object(object_type, object_id)
        for row in rows:
            self.save_relationship(row, present=False)
        return rows

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
