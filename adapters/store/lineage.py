"""Lineage of outputs: one row per declared output of a completed instance (domain/lineage.py),
what it read kept with it as JSON, as it was when read."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from airavata_prefect.adapters.store.schema import output_lineage
from airavata_prefect.domain.lineage import MountInput, OutputLineage, UpstreamInput
from airavata_prefect.domain.records import utc

_CHUNK = 500  # ids per IN (...) query


def _row(rec: OutputLineage) -> dict[str, Any]:
    return {"output_id": rec.output_id, "experiment_id": rec.experiment_id,
            "instance_id": rec.instance_id, "attempt": rec.attempt, "name": rec.name,
            "path": rec.path, "sha256": rec.sha256, "size": rec.size,
            "script_sha256": rec.script_sha256, "parameters": rec.parameters,
            "resource": rec.resource, "recorded_at": rec.recorded_at,
            "upstream": [dataclasses.asdict(u) for u in rec.upstream],
            "mounts": [dataclasses.asdict(m) for m in rec.mounts]}


def _record(row: Mapping[Any, Any]) -> OutputLineage:
    return OutputLineage(
        output_id=row["output_id"], experiment_id=row["experiment_id"],
        instance_id=row["instance_id"], attempt=row["attempt"], name=row["name"],
        path=row["path"], sha256=row["sha256"], size=row["size"],
        script_sha256=row["script_sha256"], parameters=dict(row["parameters"]),
        resource=row["resource"], recorded_at=utc(row["recorded_at"]) or row["recorded_at"],
        upstream=tuple(UpstreamInput(**u) for u in row["upstream"]),
        mounts=tuple(MountInput(**m) for m in row["mounts"]))


class LineageRepo:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def record(self, records: Sequence[OutputLineage]) -> None:
        """Store records in one transaction. An output recorded again (an instance run again
        after its orchestrator crashed, or by a retry) is replaced: the newest is the file."""
        if not records:
            return
        with self.engine.begin() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            stmt = dialect.insert(output_lineage)
            kept = ("output_id", "experiment_id", "path")
            conn.execute(stmt.on_conflict_do_update(
                index_elements=["experiment_id", "path"],
                set_={c.name: stmt.excluded[c.name] for c in output_lineage.columns
                      if c.name not in kept}), [_row(r) for r in records])

    def get(self, output_id: str) -> OutputLineage | None:
        return self.get_many([output_id]).get(output_id)

    def get_many(self, output_ids: Iterable[str]) -> dict[str, OutputLineage]:
        """The records of those ids that exist, by id."""
        ids = list(dict.fromkeys(output_ids))
        out: dict[str, OutputLineage] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(ids), _CHUNK):
                q = output_lineage.select().where(
                    output_lineage.c.output_id.in_(ids[i:i + _CHUNK]))
                out.update((r["output_id"], _record(r)) for r in conn.execute(q).mappings())
        return out

    def of_experiment(self, experiment_id: str) -> list[OutputLineage]:
        """Every record of the experiment, by path."""
        q = (output_lineage.select().where(output_lineage.c.experiment_id == experiment_id)
             .order_by(output_lineage.c.path))
        with self.engine.connect() as conn:
            return [_record(r) for r in conn.execute(q).mappings()]


__all__ = ["LineageRepo"]
