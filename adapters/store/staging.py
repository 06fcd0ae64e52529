"""What data staging did: per-resource cache totals (hits, misses, bytes moved and saved,
retries after a checksum mismatch) and the files each step's storage mounts held when staged,
with their sha256 (lineage reads them as an instance's inputs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from airavata_prefect.adapters.store.engine import utcnow
from airavata_prefect.adapters.store.schema import staged_files, staging_totals


@dataclass(frozen=True)
class CacheTotals:
    resource: str
    hits: int = 0
    misses: int = 0
    bytes_moved: int = 0
    bytes_saved: int = 0
    retries: int = 0


    def __add__(self, other: CacheTotals) -> CacheTotals:
        return CacheTotals(self.resource, self.hits + other.hits, self.misses + other.misses,
                           self.bytes_moved + other.bytes_moved,
                           self.bytes_saved + other.bytes_saved, self.retries + other.retries)


@dataclass(frozen=True)
class StagedFile:
    """One file of a storage mount as staged for a step: `path` under the mount's target."""

    mount: str
    path: str
    sha256: str
    size: int


class StagingRepo:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def add_totals(self, delta: CacheTotals) -> None:
        """Add one staging's counts to its resource's totals (one atomic upsert)."""
        values = {"resource": delta.resource, "hits": delta.hits, "misses": delta.misses,
                  "bytes_moved": delta.bytes_moved, "bytes_saved": delta.bytes_saved,
                  "retries": delta.retries, "updated_at": utcnow()}
        counters = ("hits", "misses", "bytes_moved", "bytes_saved", "retries")
        with self.engine.begin() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            stmt = dialect.insert(staging_totals).values(**values)
            conn.execute(stmt.on_conflict_do_update(
                index_elements=["resource"],
                set_={**{c: staging_totals.c[c] + stmt.excluded[c] for c in counters},
                      "updated_at": stmt.excluded.updated_at}))

    def totals(self, resource: str | None = None) -> list[CacheTotals]:
        """Each resource's totals (or this one's), by name."""
        query = staging_totals.select().order_by(staging_totals.c.resource)
        if resource is not None:
            query = query.where(staging_totals.c.resource == resource)
        with self.engine.connect() as conn:
            rows = conn.execute(query)
            return [CacheTotals(r.resource, r.hits, r.misses, r.bytes_moved, r.bytes_saved,
                                r.retries) for r in rows]

    def record_inputs(self, experiment_id: str, step: str, files: Sequence[StagedFile]) -> None:
        """The files a step's mounts held when staged (a later staging of the same step, e.g.
        another bundle or a resumed run, replaces what it staged again)."""
        if not files:
            return
        now = utcnow()
        rows = [{"experiment_id": experiment_id, "step": step, "mount": f.mount,
                 "path": f.path, "sha256": f.sha256, "size": f.size, "staged_at": now}
                for f in files]
        with self.engine.begin() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            stmt = dialect.insert(staged_files)
            conn.execute(stmt.on_conflict_do_update(
                index_elements=["experiment_id", "step", "mount", "path"],
                set_={"sha256": stmt.excluded.sha256, "size": stmt.excluded.size,
                      "staged_at": stmt.excluded.staged_at}), rows)

    def inputs(self, experiment_id: str, step: str) -> list[StagedFile]:
        """What the step's mounts held, by mount and path."""
        q = (staged_files.select()
             .where(staged_files.c.experiment_id == experiment_id, staged_files.c.step == step)
             .order_by(staged_files.c.mount, staged_files.c.path))
        with self.engine.connect() as conn:
            return [StagedFile(r.mount, r.path, r.sha256, r.size) for r in conn.execute(q)]


__all__ = ["CacheTotals", "StagedFile", "StagingRepo"]
