"""`airavata trace CORRELATION-ID`: the timeline of one request, from everything that carries
its correlation id (usecases/correlation.py):

- audit rows (the store): every privileged action and refusal made under it;
- events (the Prefect API): every lifecycle event of ours related to
  `airavata.correlation.<id>` (domain/events.py), whatever process emitted it; an
  experiment's run carries its submit's id on, so its events follow the submit's;
- log lines: the logs of the flow runs of what it touched (the experiments its audit rows and
  events name, their bundles' runs, the runs its events name) that name it (an experiment's
  run logs its id as it starts), and lines of this home's service logs
  (`AIRAVATA_HOME/server/*.log` but the Prefect server's own: the REST API writes the id in
  every line, as `[id]`).

In local mode it reads this machine's store for whoever operates it: everything. Through the
REST API (`actor`) it is the caller's own: audit rows and events whose actor is the caller, and
no log lines (a correlation id is chosen by whoever sends a request, so sharing one must not
show another's lines)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airavata_prefect.adapters import prefect_events
from airavata_prefect.domain.errors import NotFound
from airavata_prefect.domain.events import NAMESPACE, SeenEvent, is_correlation_id
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.errors import BadInput
from airavata_prefect.usecases.server import state_dir

MAX_LINES = 1000  # of each source
MAX_EXPERIMENTS = 20  # whose flow runs' logs are searched
FLOW_RUN_PREFIX = "prefect.flow-run."
# The Prefect server's own log echoes the queries made of it (a trace's own search among
# them): not a log of what the request did.
NOT_SCANNED = frozenset({"prefect.log"})
MAX_LOG_BYTES = 32 << 20  # of each service log file, its end
# Payload fields a trace line shows elsewhere (its subject, what, actor), left out of its detail.
_SHOWN = frozenset({"correlation_id", "project_id", "experiment_id", "actor", "instance_id",
                    "step", "index", "state", "status"})
# The start of a line in usecases/correlation.LOG_FORMAT (local time, as logging writes it),
# its level and id: "2025-01-31 12:00:00,123 INFO [0123456789abcdef] ".
_ASCTIME = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}),(\d{3}) "
                      r"(?:(DEBUG|INFO|WARNING|ERROR|CRITICAL) )?(?:\[[^\]\s]*\] )?")
_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


@dataclass(frozen=True)
class TraceLine:
    at: datetime | None  # UTC; None for a log line without a date
    source: str  # audit | event | log
    what: str  # the audit row's action, the event's type, the log line's level
    subject: str  # kind:id, or where a log line comes from
    actor: str | None
    outcome: str | None  # an audit row's
    detail: str


@dataclass(frozen=True)
class Trace:
    correlation_id: str
    lines: list[TraceLine]
    notes: list[str] = field(default_factory=list)  # sources that could not be read

    def count(self, source: str) -> int:
        return sum(line.source == source for line in self.lines)


def check_correlation_id(value: str) -> str:
    value = value.strip()
    if not is_correlation_id(value):
        raise BadInput(f"{value!r} is not a correlation id (8 to 64 letters, digits, '.', '_' "
                       "or '-'; audit rows, API errors and X-Correlation-ID headers carry them)")
    return value


def _subject(resource_id: str) -> str:
    """airavata.experiment.<id> -> experiment:<id> (as audit rows name objects)."""
    if resource_id.startswith(f"{NAMESPACE}."):
        kind, _, rest = resource_id.removeprefix(f"{NAMESPACE}.").partition(".")
        return f"{kind}:{rest}"
    return resource_id


def _scalar(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def event_line(e: SeenEvent) -> TraceLine:
    detail = ", ".join(f"{k}={_scalar(v)}" for k, v in e.payload.items()
                       if k not in _SHOWN and v is not None)
    return TraceLine(e.occurred.astimezone(UTC), "event", e.type, _subject(e.resource_id),
                     e.actor, None, detail)


def _audit_lines(ctx: Context, cid: str, actor: str | None) -> list[TraceLine]:
    return [TraceLine(r.at.astimezone(UTC) if r.at.tzinfo else r.at.replace(tzinfo=UTC),
                      "audit", r.action, r.object, r.actor, r.outcome, r.detail or "")
            for r in ctx.store.audit.trail(correlation_id=cid, actor=actor, limit=MAX_LINES)]


def _flow_runs(ctx: Context, lines: list[TraceLine], events: list[SeenEvent]) -> set[str]:
    """The flow runs of what the request touched: those its events name, and the runs of the
    experiments its audit rows and events are about (their bundles' runs too)."""
    runs = {rid.removeprefix(FLOW_RUN_PREFIX) for e in events for role, rid in e.related
            if role == "flow-run" and rid.startswith(FLOW_RUN_PREFIX)}
    experiments = {line.subject.partition(":")[2] for line in lines
                   if line.subject.startswith("experiment:")}
    experiments |= {str(e.payload["experiment_id"]) for e in events
                    if e.payload.get("experiment_id")}
    for exp_id in sorted(experiments)[:MAX_EXPERIMENTS]:
        try:
            exp = ctx.store.experiments.get(exp_id)
        except NotFound:
            continue
        runs |= {r for r in (exp.flow_run_id, exp.origin_flow_run_id) if r}
        runs |= {b.flow_run_id for b in ctx.store.bundles.of_experiment(exp.id)
                 if b.flow_run_id}
    return runs


def _prefect_log_lines(cid: str, flow_runs: set[str]) -> list[TraceLine]:
    return [TraceLine(line.at.astimezone(UTC), "log", logging.getLevelName(line.level),
                      f"flow-run:{line.flow_run_id}" if line.flow_run_id else line.name, None,
                      None, line.message)
            for line in prefect_events.read_logs(cid, flow_runs, limit=MAX_LINES)]


def _tail_lines(path: Path) -> Iterator[str]:
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - MAX_LOG_BYTES))
        if size > MAX_LOG_BYTES:
            f.readline()  # a partial line
        for raw in f:
            yield raw.decode(errors="replace").rstrip("\r\n")


def _parse_line(line: str) -> tuple[datetime | None, str, str]:
    """(when, level, message) of a service log line; a line not in LOG_FORMAT is all
    message (and its level, when a word of it names one)."""
    m = _ASCTIME.match(line)
    if m is None:
        level = next((lv for lv in _LEVELS if f" {lv} " in f" {line[:80]} "), "")
        return None, level, line
    try:  # naive: this machine's local time, as logging wrote it
        at: datetime | None = datetime.strptime(f"{m[1]}.{m[2]}000",
                                                "%Y-%m-%d %H:%M:%S.%f").astimezone(UTC)
    except ValueError:
        at = None
    return at, m[3] or "", line[m.end():]


def _service_log_lines(ctx: Context, cid: str, seen: list[str]) -> list[TraceLine]:
    """Lines of this home's service logs naming the id; one a Prefect run log line already
    shows (a worker echoes its flow runs' logs) is left out."""
    out: list[TraceLine] = []
    d = state_dir(ctx.settings)
    for path in sorted(d.glob("*.log")) if d.is_dir() else []:
        if path.name in NOT_SCANNED:
            continue
        try:
            for line in _tail_lines(path):
                if cid not in line or any(m in line for m in seen):
                    continue
                at, level, message = _parse_line(line)
                out.append(TraceLine(at, "log", level, path.name, None, None, message))
                if len(out) >= MAX_LINES:
                    return out
        except OSError:
            continue
    return out


def trace(ctx: Context, correlation_id: str, *, actor: str | None = None) -> Trace:
    """Every audit row, event and log line of the correlation id, oldest first (with `actor`:
    only that user's audit rows and events, no log lines). Raises BadInput for what cannot be
    one, NotFound when nothing carries it; a source that cannot be read (the Prefect API) is a
    note, and the others are still shown."""
    cid = check_correlation_id(correlation_id)
    notes: list[str] = []

    def capped(what: str, found: list[TraceLine]) -> list[TraceLine]:
        if len(found) >= MAX_LINES:
            notes.append(f"only the first {MAX_LINES} {what} are shown")
        return found

    lines = capped("audit rows", _audit_lines(ctx, cid, actor))
    prefect_logs: list[TraceLine] = []
    events: list[SeenEvent] | None = None
    try:
        events = [e for e in prefect_events.read_events(cid, limit=MAX_LINES)
                  if actor is None or e.actor == actor]
        lines += capped("events", [event_line(e) for e in events])
    except prefect_events.EventsUnavailable as exc:  # its logs would not be read either
        notes.append(f"events and run logs not read: {exc}")
    if events is not None and actor is None:  # (log lines name no actor)
        try:
            prefect_logs = capped("run log lines", _prefect_log_lines(
                cid, _flow_runs(ctx, lines, events)))
        except prefect_events.EventsUnavailable as exc:
            notes.append(f"run logs not read: {exc}")
    lines += prefect_logs
    if actor is None:
        lines += capped("service log lines", _service_log_lines(
            ctx, cid, [line.detail for line in prefect_logs if len(line.detail) >= 20]))
    if not lines:
        why = f"; {notes[-1]}" if notes else ""
        if actor is not None:
            raise NotFound(f"no audit row or event of yours carries correlation id {cid}{why}")
        raise NotFound(f"nothing carries correlation id {cid}: no audit row, event or log "
                       f"line{why}")
    order = {"audit": 0, "event": 1, "log": 2}
    lines.sort(key=lambda line: (line.at is None, line.at or datetime.min.replace(tzinfo=UTC),
                                 order.get(line.source, 3)))
    return Trace(cid, lines, notes)


__all__ = ["Trace", "TraceLine", "check_correlation_id", "event_line", "trace"]
