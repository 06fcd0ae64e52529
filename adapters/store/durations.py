"""The instance-duration histogram, kept in the store as instances end: per resource, one row
per bucket (domain/usage.py's bounds) with its count and summed seconds. Counted in the same
transaction as the state change that ended the instance, so a scrape never recounts tasks and a
count is never lost or doubled by a retried batch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from airavata_prefect.adapters.store.schema import instance_durations, tasks
from airavata_prefect.domain.usage import DURATION_BUCKETS, duration_bucket


@dataclass(frozen=True)
class Histogram:
    """One resource's durations: counts per bucket (not cumulative; the last is +Inf)."""

    resource: str
    counts: tuple[int, ...]
    seconds: float

    @property
    def total(self) -> int:
        return sum(self.counts)


def count(conn: sa.Connection, exp_id: str, walls: Mapping[str, float]) -> None:
    """Add the ended instances (`instance id -> wall seconds`) to their resources' buckets."""
    ids = list(walls)
    where: dict[str, str] = {}
    for i in range(0, len(ids), 1000):
        q = sa.select(tasks.c.instance_id, tasks.c.resource).where(
            tasks.c.experiment_id == exp_id, tasks.c.instance_id.in_(ids[i:i + 1000]))
        where.update({iid: res or "local" for iid, res in conn.execute(q)})
    adds: dict[tuple[str, int], tuple[int, float]] = {}
    for iid, wall in walls.items():
        key = (where.get(iid, "local"), duration_bucket(wall))
        n, total = adds.get(key, (0, 0.0))
        adds[key] = (n + 1, total + wall)
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    for (resource, bucket), (n, total) in sorted(adds.items()):
        stmt = dialect.insert(instance_durations).values(resource=resource, bucket=bucket,
                                                        count=n, seconds=total)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["resource", "bucket"],
            set_={"count": instance_durations.c.count + stmt.excluded.count,
                  "seconds": instance_durations.c.seconds + stmt.excluded.seconds}))


def histograms(engine: sa.Engine) -> list[Histogram]:
    """Every resource's histogram, by name."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    with engine.connect() as conn:
        for resource, bucket, n, seconds in conn.execute(sa.select(
                instance_durations.c.resource, instance_durations.c.bucket,
                instance_durations.c.count, instance_durations.c.seconds)):
            counts, total = out.setdefault(resource, ([0] * (len(DURATION_BUCKETS) + 1), [0.0]))
            if 0 <= bucket < len(counts):
                counts[bucket] += int(n)
                total[0] += float(seconds)
    return [Histogram(r, tuple(c), s[0]) for r, (c, s) in sorted(out.items())]


__all__ = ["Histogram", "count", "histograms"]
