"""Experiments in the store: created with all their task rows at once, read as records, and
updated by compare-and-set on their status."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from airavata_prefect.adapters.store.engine import utcnow
from airavata_prefect.adapters.store.schema import experiments, tasks
from airavata_prefect.domain.errors import NotFound
from airavata_prefect.domain.records import Experiment, NewTask
from airavata_prefect.domain.states import EXPERIMENT_TERMINAL, ExperimentStatus, TaskState

_INSERT_CHUNK = 20_000


class ExperimentRepo:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def create(self, *, name: str, source: str, spec_text: str, params: dict[str, str],
               workdir_root: Path, tasks_iter: Iterable[NewTask], total: int,
               experiment_id: str | None = None, plan: dict[str, Any] | None = None,
               owner: str | None = None, project: str | None = None,
               origin_flow_run_id: str | None = None) -> str:
        """Store an experiment and all its task rows in one transaction."""
        exp_id = experiment_id or str(uuid.uuid4())
        with self.engine.begin() as conn:
            conn.execute(experiments.insert().values(
                id=exp_id, name=name, source=source, spec_text=spec_text, params=params,
                status=ExperimentStatus.CREATED, workdir=str(workdir_root / exp_id),
                total_tasks=total, created_at=utcnow(), plan=plan, owner=owner,
                project=project, origin_flow_run_id=origin_flow_run_id))
            chunk: list[dict[str, Any]] = []
            for t in tasks_iter:
                chunk.append({"experiment_id": exp_id, "instance_id": t.instance_id,
                              "step": t.step, "idx": t.idx, "state": TaskState.CREATED,
                              "attempt": 0, "workdir": t.workdir, "resource": t.resource,
                              "script_hash": t.script_hash})
                if len(chunk) >= _INSERT_CHUNK:
                    conn.execute(tasks.insert(), chunk)
                    chunk = []
            if chunk:
                conn.execute(tasks.insert(), chunk)
        return exp_id

    def get(self, ref: str) -> Experiment:
        """By full id, or by a unique id prefix (as the CLI prints short ids)."""
        with self.engine.connect() as conn:
            row = conn.execute(experiments.select().where(experiments.c.id == ref)).mappings()
            found = row.first()
            if found is None and len(ref) >= 4:
                rows = conn.execute(experiments.select().where(
                    experiments.c.id.startswith(ref, autoescape=True)).limit(2)).mappings().all()
                if len(rows) > 1:
                    raise NotFound(f"experiment id prefix {ref!r} is ambiguous")
                found = rows[0] if rows else None
        if found is None:
            raise NotFound(f"no experiment {ref!r}")
        return Experiment.from_row(found)

    def submitted_by(self, flow_run_id: str) -> Experiment | None:
        """The experiment a flow run submitted (from its `spec`), if any."""
        with self.engine.connect() as conn:
            row = conn.execute(experiments.select().where(
                experiments.c.origin_flow_run_id == flow_run_id)).mappings().first()
        return Experiment.from_row(row) if row else None

    def run_by(self, flow_run_id: str) -> Experiment | None:
        """The experiment this flow run claimed, if any."""
        with self.engine.connect() as conn:
            row = conn.execute(experiments.select().where(
                experiments.c.flow_run_id == flow_run_id)).mappings().first()
        return Experiment.from_row(row) if row else None

    def take_over(self, exp_id: str, old_flow_run_id: str, new_flow_run_id: str,
                  max_resumes: int) -> bool:
        """Move a running experiment from a dead flow run to this one, once (compare-and-set
        on the old flow run id) and at most `max_resumes` times."""
        q = (experiments.update()
             .where(experiments.c.id == exp_id,
                    experiments.c.flow_run_id == old_flow_run_id,
                    experiments.c.resumes < max_resumes,
                    experiments.c.status.in_([ExperimentStatus.RUNNING,
                                              ExperimentStatus.CANCELING]))
             .values(flow_run_id=new_flow_run_id, resumes=experiments.c.resumes + 1))
        with self.engine.begin() as conn:
            return conn.execute(q).rowcount == 1

    def list(self, limit: int = 50) -> list[Experiment]:
        """Newest first."""
        with self.engine.connect() as conn:
            q = experiments.select().order_by(experiments.c.created_at.desc()).limit(limit)
            return [Experiment.from_row(r) for r in conn.execute(q).mappings()]

    def status_counts(self) -> dict[str, int]:
        """{status: experiments}, every experiment's (read from the status index)."""
        q = sa.select(experiments.c.status, sa.func.count()).group_by(experiments.c.status)
        with self.engine.connect() as conn:
            return {status: int(n) for status, n in conn.execute(q)}

    def update(self, exp_id: str, *, expect: Sequence[ExperimentStatus] | None = None,
               **values: Any) -> bool:
        """Update fields; with `expect`, only if the status is one of those. True if updated."""
        q = experiments.update().where(experiments.c.id == exp_id)
        if expect is not None:
            q = q.where(experiments.c.status.in_([str(s) for s in expect]))
        if values.get("status") in EXPERIMENT_TERMINAL:
            values.setdefault("finished_at", utcnow())
        with self.engine.begin() as conn:
            return conn.execute(q.values(**values)).rowcount == 1

    def request_cancel(self, exp_id: str) -> bool:
        """Ask the runner to cancel; False when the experiment already ended."""
        return self.update(exp_id, cancel_requested=True,
                           expect=[s for s in ExperimentStatus if s not in EXPERIMENT_TERMINAL])

    def cancel_requested(self, exp_id: str) -> bool:
        with self.engine.connect() as conn:
            return bool(conn.execute(sa.select(experiments.c.cancel_requested).where(
                experiments.c.id == exp_id)).scalar())


__all__ = ["ExperimentRepo"]
