"""Task instances in the store: state changes are checked against the domain's transitions and
written as compare-and-set on the previous state, in batches written whole or not at all; every
change is kept as a task event."""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from airavata_prefect.adapters.store import durations
from airavata_prefect.adapters.store.engine import utcnow
from airavata_prefect.adapters.store.schema import UtcDateTime, experiments, task_events, tasks
from airavata_prefect.domain.errors import Conflict, NotFound
from airavata_prefect.domain.records import Task, TaskEvent
from airavata_prefect.domain.states import (
    EXPERIMENT_TERMINAL,
    TERMINAL,
    ExperimentStatus,
    IllegalTransition,
    TaskState,
    Transition,
    check_transition,
)
from airavata_prefect.domain.usage import Usage


class TaskRepo:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

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
            u = t.usage if t.to_state in TERMINAL else None
            rows.append({"e": exp_id, "i": iid, "from_": str(first[iid].from_state),
                         "to": str(t.to_state), "attempt": t.attempt, "exit_code": t.exit_code,
                         "reason": t.message if t.to_state != TaskState.COMPLETED else None,
                         "started": started.get(iid), "finished": finished,
                         "wall": u and u.wall_seconds, "cpu": u and u.cpu_seconds,
                         "rss": u and u.max_rss_bytes, "queue": u and u.queue_seconds})
        upd = (tasks.update()
               .where(tasks.c.experiment_id == sa.bindparam("e"),
                      tasks.c.instance_id == sa.bindparam("i"),
                      tasks.c.state == sa.bindparam("from_"))
               .values(state=sa.bindparam("to"), attempt=sa.bindparam("attempt"),
                       exit_code=sa.bindparam("exit_code"), reason=sa.bindparam("reason"),
                       started_at=sa.func.coalesce(sa.bindparam("started", UtcDateTime),
                                                   tasks.c.started_at),
                       finished_at=sa.bindparam("finished", UtcDateTime),
                       # A new attempt clears the last one's figures; an end without any
                       # measurement (canceled before it started) stores none.
                       wall_seconds=sa.bindparam("wall", sa.Float),
                       cpu_seconds=sa.bindparam("cpu", sa.Float),
                       max_rss_bytes=sa.bindparam("rss", sa.BigInteger),
                       queue_seconds=sa.bindparam("queue", sa.Float)))
        events = [{"experiment_id": exp_id, "instance_id": t.instance_id,
                   "from_state": str(t.from_state), "to_state": str(t.to_state),
                   "attempt": t.attempt, "at": t.at, "message": t.message} for t in batch]
        with self.engine.begin() as conn:
            changed = conn.execute(upd, rows).rowcount
            if changed != len(rows):
                raise Conflict(f"{len(rows) - changed} of {len(rows)} task state changes lost a "
                               "race (stored state differs); nothing was written")
            conn.execute(task_events.insert(), events)
            ended = {t.instance_id: t.usage.wall_seconds for t in last.values()
                     if t.usage is not None and t.to_state in TERMINAL}
            if ended:
                durations.count(conn, exp_id, ended)

    def transition(self, exp_id: str, instance_id: str, to_state: TaskState, *,
                   message: str | None = None) -> None:
        """One state change from whatever the task's state is now (checked, compare-and-set)."""
        current = self.get(exp_id, instance_id)
        self.apply_transitions(exp_id, [Transition(
            instance_id, current.state, to_state, utcnow(), current.attempt, message,
            current.exit_code)])

    def reset(self, exp_id: str, instance_ids: Sequence[str], *, message: str,
              fresh: bool = False) -> int:
        """Put instances back to CREATED outside the transition graph: an orchestrator crash
        (their attempt is kept: a crash does not use up retries) or a retry of an ended
        experiment (`fresh`: attempts from 0). Each reset is kept as a task event."""
        if not instance_ids:
            return 0
        now = utcnow()
        with self.engine.begin() as conn:
            rows = conn.execute(sa.select(tasks.c.instance_id, tasks.c.state, tasks.c.attempt)
                                .where(tasks.c.experiment_id == exp_id,
                                       tasks.c.instance_id.in_(list(instance_ids)))).all()
            values: dict[str, Any] = {"state": TaskState.CREATED, "exit_code": None,
                                      "reason": message, "finished_at": None}
            if fresh:
                values |= {"attempt": 0, "started_at": None}
            conn.execute(tasks.update().where(tasks.c.experiment_id == exp_id,
                                              tasks.c.instance_id.in_([r[0] for r in rows]))
                         .values(**values))
            if rows:
                conn.execute(task_events.insert(), [
                    {"experiment_id": exp_id, "instance_id": iid, "from_state": state,
                     "to_state": TaskState.CREATED, "attempt": 0 if fresh else attempt,
                     "at": now, "message": message} for iid, state, attempt in rows])
        return len(rows)

    def get(self, exp_id: str, instance_id: str) -> Task:
        with self.engine.connect() as conn:
            found = conn.execute(tasks.select().where(
                tasks.c.experiment_id == exp_id, tasks.c.instance_id == instance_id)
            ).mappings().first()
        if found is None:
            raise NotFound(f"no task {instance_id!r} in experiment {exp_id}")
        return Task.from_row(found)

    def list(self, exp_id: str, *, states: Sequence[str] | None = None,
             step: str | None = None, limit: int | None = None) -> list[Task]:
        q = tasks.select().where(tasks.c.experiment_id == exp_id)
        if states:
            q = q.where(tasks.c.state.in_(list(states)))
        if step:
            q = q.where(tasks.c.step == step)
        q = q.order_by(tasks.c.step, tasks.c.idx).limit(limit)
        with self.engine.connect() as conn:
            return [Task.from_row(r) for r in conn.execute(q).mappings()]

    def resources_of(self, exp_id: str, instance_ids: Iterable[str]) -> dict[str, str]:
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

    def active_by_resource(self) -> dict[str, dict[str, int]]:
        """{resource: {state: count}} of the unfinished, placed instances of every experiment
        (a resource's queue, as `resource status` shows it)."""
        live = [s.value for s in TaskState if s not in TERMINAL and s != TaskState.CREATED]
        q = (sa.select(tasks.c.resource, tasks.c.state, sa.func.count())
             .where(tasks.c.state.in_(live), tasks.c.resource.is_not(None))
             .group_by(tasks.c.resource, tasks.c.state))
        out: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for resource, state, n in conn.execute(q):
                out.setdefault(resource, {})[state] = n
        return out

    def live_state_counts(self) -> dict[str, int]:
        """{state: instances} of every experiment not yet ended: the live experiments from the
        status index, then each one's rows from the (experiment, step, state) index alone."""
        live = [str(s) for s in ExperimentStatus if s not in EXPERIMENT_TERMINAL]
        q = (sa.select(tasks.c.state, sa.func.count())
             .where(tasks.c.experiment_id.in_(
                 sa.select(experiments.c.id).where(experiments.c.status.in_(live))))
             .group_by(tasks.c.state))
        with self.engine.connect() as conn:
            return {state: int(n) for state, n in conn.execute(q)}

    def live_usage(self, exp_id: str, usages: Mapping[str, Usage]) -> None:
        """What running instances used so far, on their rows (only while they still run:
        their end stores the exact figures)."""
        if not usages:
            return
        upd = (tasks.update()
               .where(tasks.c.experiment_id == exp_id,
                      tasks.c.instance_id == sa.bindparam("i"),
                      tasks.c.state == str(TaskState.RUNNING))
               .values(wall_seconds=sa.bindparam("wall"), cpu_seconds=sa.bindparam("cpu"),
                       max_rss_bytes=sa.bindparam("rss")))
        with self.engine.begin() as conn:
            conn.execute(upd, [{"i": iid, "wall": u.wall_seconds, "cpu": u.cpu_seconds,
                                "rss": u.max_rss_bytes} for iid, u in usages.items()])

    def usage_by_step(self, exp_id: str) -> dict[str, builtins.list[Usage]]:
        """{step: the usage of each instance that ended with one}."""
        ended = [str(s) for s in TERMINAL]
        q = (sa.select(tasks.c.step, tasks.c.wall_seconds, tasks.c.cpu_seconds,
                       tasks.c.max_rss_bytes, tasks.c.queue_seconds)
             .where(tasks.c.experiment_id == exp_id, tasks.c.wall_seconds.is_not(None),
                    tasks.c.state.in_(ended)))
        out: dict[str, builtins.list[Usage]] = {}
        with self.engine.connect() as conn:
            for step, wall, cpu, rss, queue in conn.execute(q):
                out.setdefault(step, []).append(Usage(wall, cpu or 0.0, rss or 0, queue or 0.0))
        return out

    def durations(self) -> builtins.list[durations.Histogram]:
        """The instance-duration histogram of every resource (kept as instances end)."""
        return durations.histograms(self.engine)

    def runtimes(self, script_hashes: Iterable[str], *, per_key: int = 200
                 ) -> dict[tuple[str, str], builtins.list[float]]:
        """Wall seconds of the latest completed instances (at most `per_key` per script) of
        these scripts, per (script hash, resource): what placement estimates a step's runtime
        from when it gives none."""
        out: dict[tuple[str, str], builtins.list[float]] = {}
        with self.engine.connect() as conn:
            for script_hash in sorted(set(script_hashes)):  # a few steps: one indexed read each
                q = (sa.select(tasks.c.resource, tasks.c.wall_seconds)
                     .where(tasks.c.script_hash == script_hash,
                            tasks.c.state == str(TaskState.COMPLETED),
                            tasks.c.wall_seconds.is_not(None))
                     .order_by(tasks.c.finished_at.desc()).limit(per_key))
                for resource, wall in conn.execute(q):
                    out.setdefault((script_hash, resource or "local"), []).append(float(wall))
        return out

    def running(self, limit: int = 1000) -> builtins.list[tuple[Task, str | None]]:
        """Instances running now in experiments not yet ended, with their experiment's owner
        (bounded: the per-instance gauges of /metrics read these)."""
        live = [str(s) for s in ExperimentStatus if s not in EXPERIMENT_TERMINAL]
        q = (sa.select(tasks, experiments.c.owner)
             .join(experiments, experiments.c.id == tasks.c.experiment_id)
             .where(experiments.c.status.in_(live), tasks.c.state == str(TaskState.RUNNING))
             .limit(limit))
        with self.engine.connect() as conn:
            return [(Task.from_row(r), r["owner"]) for r in conn.execute(q).mappings()]

    def events(self, exp_id: str, instance_id: str | None = None, *,
               limit: int | None = None) -> builtins.list[TaskEvent]:
        """State changes in the order they happened (of one instance, or all)."""
        q = task_events.select().where(task_events.c.experiment_id == exp_id)
        if instance_id:
            q = q.where(task_events.c.instance_id == instance_id)
        with self.engine.connect() as conn:
            return [TaskEvent.from_row(r) for r in conn.execute(
                q.order_by(task_events.c.id).limit(limit)).mappings()]

    def events_after(self, exp_id: str, after: int, limit: int = 500
                     ) -> builtins.list[TaskEvent]:
        """The experiment's state changes recorded after event `after` (a watcher's cursor)."""
        q = task_events.select().where(task_events.c.experiment_id == exp_id,
                                       task_events.c.id > after)
        with self.engine.connect() as conn:
            return [TaskEvent.from_row(r) for r in conn.execute(
                q.order_by(task_events.c.id).limit(limit)).mappings()]


__all__ = ["TaskRepo"]
