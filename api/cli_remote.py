"""The experiment, project and user commands in server mode: the same commands, answered by
the REST API (api/client.py) instead of the local store."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from airavata_prefect.api.client import ApiClient, RemoteError, client
from airavata_prefect.api.views import usage_cells
from airavata_prefect.domain.plan import Plan
from airavata_prefect.usecases.settings import get_settings

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
TERMINAL = {"COMPLETED", "FAILED", "CANCELED"}
ACTIVE = {"QUEUED", "DATA_STAGING", "RUNNING", "OUTPUT_STAGING", "STAGED"}


def remote() -> ApiClient | None:
    return client(get_settings())


def _counts_table(exp: dict[str, Any], steps: dict[str, dict[str, int]]) -> Table:
    table = Table(title=f"{exp.get('name', '')} ({str(exp.get('id', ''))[:8]}) "
                        f"{exp.get('status', '')}")
    table.add_column("step", no_wrap=True)
    for col in ("total", "waiting", "active", "done", "failed", "upstream", "canceled"):
        table.add_column(col, justify="right")
    for step, c in steps.items():
        table.add_row(step, str(sum(c.values())), str(c.get("CREATED", 0)),
                      str(sum(v for k, v in c.items() if k in ACTIVE)),
                      str(c.get("COMPLETED", 0)), str(c.get("FAILED", 0)),
                      str(c.get("UPSTREAM_FAILED", 0)), str(c.get("CANCELED", 0)))
    return table


def _outcome(c: ApiClient, exp_id: str) -> int:
    exp = c.call("GET", f"/experiments/{exp_id}")
    out.print(f"experiment {exp['id']} {exp['status']}: {exp.get('message') or ''}")
    for t in c.call("GET", f"/experiments/{exp_id}/tasks", params={"state": "FAILED",
                                                                   "limit": 10}):
        out.print(f"  {t['instance_id']} failed: {t.get('reason') or ''}")
    return 0 if exp["status"] == "COMPLETED" else 1


def watch(c: ApiClient, exp_id: str) -> int:
    """Follow the experiment's live stream (SSE) until it ends."""
    exp = c.call("GET", f"/experiments/{exp_id}")
    steps: dict[str, dict[str, int]] = exp.get("steps") or {}
    try:
        with Live(_counts_table(exp, steps), console=out, auto_refresh=False) as live:
            for event, data in c.stream(f"/experiments/{exp['id']}/watch"):
                if event == "status":
                    exp["status"], steps = data["status"], data["steps"]
                    live.update(_counts_table(exp, steps), refresh=True)
                elif event == "end":
                    exp["status"] = data["status"]
                    live.update(_counts_table(exp, steps), refresh=True)
                    break
    except KeyboardInterrupt:
        err.print(f"stopped watching; the experiment keeps running. "
                  f"airavata experiment cancel {exp['id'][:8]} stops it.")
        return 130
    out.print()
    return _outcome(c, exp["id"])


def _started(c: ApiClient, body: dict[str, Any], what: str, do_watch: bool) -> None:
    out.print(f"experiment [bold]{body['experiment_id']}[/] {what}: {body['total_tasks']:,} "
              f"tasks, flow run {body['flow_run_id']}")
    if do_watch:
        raise typer.Exit(watch(c, body["experiment_id"]))
    out.print(f"follow it with: airavata experiment watch {body['experiment_id'][:8]}")


def run(c: ApiClient, file: Path, params: list[str], *, project: str | None,
        deployment: str, compute: str | None, do_watch: bool) -> None:
    body = c.call("POST", "/experiments", headers={"Idempotency-Key": str(uuid.uuid4())},
                  json={"spec": _read(file), "params": _overrides(params), "project": project,
                        "deployment": deployment, "compute": compute,
                        "name": None})
    _started(c, body, "submitted", do_watch)


def _read(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RemoteError(400, "bad_request", f"{file}: cannot read: {exc}") from None


def _overrides(params: list[str]) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for p in params:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise RemoteError(400, "bad_request", f"--param {p!r}: expected KEY=VALUE")
        overrides[key] = value
    return overrides


def plan(c: ApiClient, file: Path, params: list[str], *, user: str | None,
         time_limit: float) -> Plan:
    """The server's plan for this file, on the resources the signed-in identity may use."""
    if user is not None:
        raise RemoteError(400, "bad_request", "--user: in server mode the plan is for who "
                          "signed in (airavata auth status)")
    body = c.call("POST", "/plans", json={"spec": _read(file), "params": _overrides(params),
                                          "time_limit": min(time_limit, 30.0)})
    return Plan.from_json(body)


def status(c: ApiClient, ref: str, *, do_watch: bool, as_json: bool) -> None:
    exp = c.call("GET", f"/experiments/{ref}")
    if do_watch:
        raise typer.Exit(watch(c, exp["id"]))
    if as_json:
        print(json.dumps(exp, indent=2))
        return
    out.print(_counts_table(exp, exp.get("steps") or {}))
    if exp["status"] in TERMINAL:
        _outcome(c, exp["id"])


def experiments(c: ApiClient, limit: int, as_json: bool) -> None:
    rows = c.call("GET", "/experiments", params={"limit": limit})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table()
    for col in ("id", "name", "status", "tasks", "created", "message"):
        table.add_column(col)
    for e in rows:
        table.add_row(e["id"][:8], e["name"], e["status"], f"{e['total_tasks']:,}",
                      e["created_at"][:19].replace("T", " "), e.get("message") or "")
    out.print(table)


def tasks(c: ApiClient, ref: str, *, step: str | None, states: list[str], limit: int,
          as_json: bool) -> None:
    rows = c.call("GET", f"/experiments/{ref}/tasks",
                  params={"step": step, "state": states, "limit": limit} if step else
                  {"state": states, "limit": limit})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{ref}: {len(rows)} task(s)")
    for col in ("task", "state", "attempt", "exit", "wall", "cpu", "memory", "reason",
                "resource"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["instance_id"], r["state"], str(r["attempt"]),
                      "" if r["exit_code"] is None else str(r["exit_code"]),
                      *usage_cells(r.get("usage")), r.get("reason") or "",
                      r.get("resource") or "")
    out.print(table)


def task(c: ApiClient, ref: str, instance_id: str) -> None:
    print(json.dumps(c.call("GET", f"/experiments/{ref}/tasks/{instance_id}"), indent=2))


def logs(c: ApiClient, ref: str, instance_id: str, stderr: bool) -> None:
    sys.stdout.write(c.call("GET", f"/experiments/{ref}/tasks/{instance_id}/logs",
                            params={"stream": "stderr" if stderr else "stdout"}))


def action(c: ApiClient, ref: str, verb: str) -> None:
    """cancel | pause | resume."""
    out.print(c.call("POST", f"/experiments/{ref}/{verb}")["message"])


def restart(c: ApiClient, ref: str, verb: str, deployment: str, do_watch: bool) -> None:
    """retry | resubmit."""
    body = c.call("POST", f"/experiments/{ref}/{verb}", json={"deployment": deployment})
    _started(c, body, "retrying" if verb == "retry" else "submitted", do_watch)


def events(c: ApiClient, ref: str, limit: int, instance_id: str | None = None) -> None:
    table = Table()
    for col in ("at", "task", "attempt", "from", "to", "message"):
        table.add_column(col, overflow="fold")
    path = (f"/experiments/{ref}/events" if instance_id is None
            else f"/experiments/{ref}/tasks/{instance_id}/events")
    for e in c.call("GET", path, params={"limit": limit}):
        table.add_row(e["at"][11:23], e["instance_id"], str(e["attempt"]),
                      e.get("from_state") or "", e["to_state"], e.get("message") or "")
    out.print(table)


__all__ = ["action", "events", "experiments", "logs", "plan", "remote", "restart", "run", "status",
           "task", "tasks", "watch"]
