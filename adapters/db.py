"""The store: experiments, tasks and task events (SQLAlchemy 2 Core, migrated by Alembic).

SQLite by default, PostgreSQL (psycopg 3) in production. Task states change only through
`apply_transitions`, which checks each transition against `flows.states` and writes it as a
compare-and-set on the previous state, so a racing or illegal change fails instead of overwriting.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from airavata_prefect.adapters.bundle_store import BundleStore
from airavata_prefect.adapters.schema import (
    UtcDateTime,
    audit_events,
    credentials,
    experiments,
    relationships,
    task_events,
    tasks,
)
from airavata_prefect.flows.states import (
    EXPERIMENT_TERMINAL,
    TERMINAL,
    ExperimentStatus,
    IllegalTransition,
    TaskState,
    Transition,
    check_transition,
)

_MIGRATIONS = Path(__file__).parent / "migrations"
_INSERT_CHUNK = 20_000


def utcnow() -> datetime:
    return datetime.now(UTC)


class NotFound(LookupError):
    pass


class Conflict(RuntimeError):
    """A compare-and-set lost: the stored state is not the one the writer expected."""


@dataclass(frozen=True)
class NewTask:
    instance_id: str
    step: str
    idx: int
    workdir: str
    resource: str = "local"


def _alembic_config(connection: sa.Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def migrate(engine: sa.Engine) -> None:
    """Upgrade the schema to the newest revision (a no-op when it is current)."""
    head = ScriptDirectory(str(_MIGRATIONS)).get_current_head()
    with engine.begin() as conn:
        if MigrationContext.configure(conn).get_current_revision() == head:
            return
        command.upgrade(_alembic_config(conn), "head")


def _make_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL: the CLI reads while the runner writes; foreign keys for cascades.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return sa.create_engine(url, pool_pre_ping=True)


class Store:
    def __init__(self, url: str) -> None:
        self.engine = _make_engine(url)
        migrate(self.engine)
        self.bundles = BundleStore(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- experiments ---------------------------------------------------------------------------

    def create_experiment(self, *, name: str, source: str, spec_text: str, params: dict,
                          workdir_root: Path, tasks_iter: Iterable[NewTask], total: int,
                          experiment_id: str | None = None, plan: dict | None = None,
                          owner: str | None = None, project: str | None = None) -> str:
        """Store an experiment and all its task rows in one transaction."""
        exp_id = experiment_id or str(uuid.uuid4())
        with self.engine.begin() as conn:
            conn.execute(experiments.insert().values(
                id=exp_id, name=name, source=source, spec_text=spec_text, params=params,
                status=ExperimentStatus.CREATED, workdir=str(workdir_root / exp_id),
                total_tasks=total, created_at=utcnow(), plan=plan, owner=owner,
                project=project))
            chunk: list[dict] = []
            for t in tasks_iter:
                chunk.append({"experiment_id": exp_id, "instance_id": t.instance_id,
                              "step": t.step, "idx": t.idx, "state": TaskState.CREATED,
                              "attempt": 0, "workdir": t.workdir, "resource": t.resource})
                if len(chunk) >= _INSERT_CHUNK:
                    conn.execute(tasks.insert(), chunk)
                    chunk = []
            if chunk:
                conn.execute(tasks.insert(), chunk)
        return exp_id

    def get_experiment(self, ref: str) -> dict:
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
        return dict(found)

    def list_experiments(self, limit: int = 50) -> list[dict]:
        with self.engine.connect() as conn:
            q = experiments.select().order_by(experiments.c.created_at.desc()).limit(limit)
            return [dict(r) for r in conn.execute(q).mappings()]

    def update_experiment(self, exp_id: str, *, expect: Sequence[ExperimentStatus] | None = None,
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
        return self.update_experiment(
            exp_id, cancel_requested=True,
            expect=[ExperimentStatus.CREATED, ExperimentStatus.RUNNING,
                    ExperimentStatus.CANCELING])

    def cancel_requested(self, exp_id: str) -> bool:
        with self.engine.connect() as conn:
            return bool(conn.execute(sa.select(experiments.c.cancel_requested).where(
                experiments.c.id == exp_id)).scalar())

    # -- tasks ---------------------------------------------------------------------------------

    def apply_transitions(self, exp_id: str, batch: Sequence[Transition]) -> None:
        """Write state changes atomically: all of the batch, or none of it."""
        if not batch:
            return
        for t in batch:
            check_transition(t.instance_id, t.from_state, t.to_state)
        # Several changes of one task in a batch collapse into one compare-and-set row update.
        first: dict[str, Transition] = {}
        last: dict[str, Transition] = {}
        for t in batch:
            first.setdefault(t.instance_id, t)
            if t.instance_id in last and last[t.instance_id].to_state != t.from_state:
                raise IllegalTransition(t.instance_id, last[t.instance_id].to_state, t.to_state)
            last[t.instance_id] = t
        started = {t.instance_id: t.at for t in batch if t.to_state == TaskState.RUNNING}
        rows = []
        for iid, t in last.items():
            finished = t.at if t.to_state in TERMINAL else None
            rows.append({"e": exp_id, "i": iid, "from_": str(first[iid].from_state),
                         "to": str(t.to_state), "attempt": t.attempt, "exit_code": t.exit_code,
                         "reason": t.message if t.to_state != TaskState.COMPLETED else None,
                         "started": started.get(iid), "finished": finished})
        upd = (tasks.update()
               .where(tasks.c.experiment_id == sa.bindparam("e"),
                      tasks.c.instance_id == sa.bindparam("i"),
                      tasks.c.state == sa.bindparam("from_"))
               .values(state=sa.bindparam("to"), attempt=sa.bindparam("attempt"),
                       exit_code=sa.bindparam("exit_code"), reason=sa.bindparam("reason"),
                       started_at=sa.func.coalesce(sa.bindparam("started", UtcDateTime),
                                                   tasks.c.started_at),
                       finished_at=sa.bindparam("finished", UtcDateTime)))
        events = [{"experiment_id": exp_id, "instance_id": t.instance_id,
                   "from_state": str(t.from_state), "to_state": str(t.to_state),
                   "attempt": t.attempt, "at": t.at, "message": t.message} for t in batch]
        with self.engine.begin() as conn:
            changed = conn.execute(upd, rows).rowcount
            if changed != len(rows):
                raise Conflict(f"{len(rows) - changed} of {len(rows)} task state changes lost a "
                               "race (stored state differs); nothing was written")
            conn.execute(task_events.insert(), events)

    def transition(self, exp_id: str, instance_id: str, to_state: TaskState, *,
                   message: str | None = None) -> None:
        """One state change from whatever the task's state is now (checked, compare-and-set)."""
        current = self.task(exp_id, instance_id)
        self.apply_transitions(exp_id, [Transition(
            instance_id, TaskState(current["state"]), to_state, utcnow(), current["attempt"],
            message, current["exit_code"])])

    def task(self, exp_id: str, instance_id: str) -> dict:
        with self.engine.connect() as conn:
            row = conn.execute(tasks.select().where(
                tasks.c.experiment_id == exp_id, tasks.c.instance_id == instance_id)).mappings()
            found = row.first()
        if found is None:
            raise NotFound(f"no task {instance_id!r} in experiment {exp_id}")
        return dict(found)

    def tasks(self, exp_id: str, *, states: Sequence[str] | None = None,
              step: str | None = None, limit: int | None = None) -> list[dict]:
        q = tasks.select().where(tasks.c.experiment_id == exp_id)
        if states:
            q = q.where(tasks.c.state.in_(list(states)))
        if step:
            q = q.where(tasks.c.step == step)
        q = q.order_by(tasks.c.step, tasks.c.idx).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def task_resources(self, exp_id: str, instance_ids: Iterable[str]) -> dict[str, str]:
        """Where each of these instances was placed."""
        ids = list(instance_ids)
        out: dict[str, str] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(ids), 1000):
                q = sa.select(tasks.c.instance_id, tasks.c.resource).where(
                    tasks.c.experiment_id == exp_id, tasks.c.instance_id.in_(ids[i:i + 1000]))
                out.update({iid: res for iid, res in conn.execute(q)})
        return out

    def state_counts(self, exp_id: str) -> dict[str, dict[str, int]]:
        """{step: {state: count}} in one grouped query."""
        q = (sa.select(tasks.c.step, tasks.c.state, sa.func.count())
             .where(tasks.c.experiment_id == exp_id).group_by(tasks.c.step, tasks.c.state))
        out: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for step, state, n in conn.execute(q):
                out.setdefault(step, {})[state] = n
        return out

    # -- relationships (journal of the permission graph) -------------------------------------

    def save_relationship(self, row: tuple[str, str, str, str, str, str], *,
                          present: bool) -> None:
        keys = ("object_type", "object_id", "relation", "subject_type", "subject_id",
                "subject_relation")
        values = dict(zip(keys, row, strict=True))
        with self.engine.begin() as conn:
            where = [relationships.c[k] == v for k, v in values.items()]
            conn.execute(relationships.delete().where(*where))
            if present:
                conn.execute(relationships.insert().values(**values))

    def load_relationships(self) -> list[tuple[str, str, str, str, str, str]]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(relationships.select())]  # type: ignore[misc]

    # -- credential references -----------------------------------------------------------------

    def add_credential(self, credential_id: str, *, owner: str, mount: str, path: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(credentials.insert().values(id=credential_id, owner=owner, mount=mount,
                                                     path=path, created_at=utcnow()))

    def credential_at(self, mount: str, path: str) -> str | None:
        """The id of the credential stored at mount/path, if we know it."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(credentials.c.id).where(
                credentials.c.mount == mount, credentials.c.path == path)).scalar()

    def credential(self, credential_id: str) -> dict:
        with self.engine.connect() as conn:
            row = conn.execute(credentials.select().where(
                credentials.c.id == credential_id)).mappings().first()
        if row is None:
            raise NotFound(f"no credential {credential_id!r}")
        return dict(row)

    # -- audit -------------------------------------------------------------------------------

    def audit(self, *, actor: str, action: str, obj: str, correlation_id: str, outcome: str,
              detail: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(audit_events.insert().values(
                at=utcnow(), actor=actor, action=action, object=obj,
                correlation_id=correlation_id, outcome=outcome, detail=detail))

    def submit_correlation(self, exp_id: str) -> str | None:
        """The correlation id the experiment was submitted under (its runs and bundles carry
        it on, so one id finds the submit, the credential grants and the logs of a run)."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(audit_events.c.correlation_id).where(
                audit_events.c.action == "scheduler.queue.submit",
                audit_events.c.object == f"experiment:{exp_id}",
                audit_events.c.outcome == "ok").limit(1)).scalar()

    def audit_trail(self, *, correlation_id: str | None = None, actor: str | None = None,
                    limit: int = 1000) -> list[dict]:
        q = audit_events.select()
        if correlation_id:
            q = q.where(audit_events.c.correlation_id == correlation_id)
        if actor:
            q = q.where(audit_events.c.actor == actor)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q.order_by(audit_events.c.id).limit(limit))
                    .mappings()]

    def events(self, exp_id: str, instance_id: str | None = None) -> list[dict]:
        q = task_events.select().where(task_events.c.experiment_id == exp_id)
        if instance_id:
            q = q.where(task_events.c.instance_id == instance_id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q.order_by(task_events.c.id)).mappings()]
