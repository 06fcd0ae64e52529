"""`airavata trace CORRELATION-ID`: one request's timeline across audit rows, Prefect events and
log lines (usecases/trace.py), as a table, or `--json`. A source that cannot be read is one
line on stderr; the others are still shown."""

from __future__ import annotations

import re
from datetime import datetime

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from airavata_prefect.api import cli_remote
from airavata_prefect.api.cli_door import plain, print_json
from airavata_prefect.usecases import trace as use
from airavata_prefect.usecases.context import open_context

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


_UUID = re.compile(r"\b([0-9a-f]{8})-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


def _short(subject: str) -> str:
    """Experiment and flow run ids by their first 8 characters, as the other tables show
    them (--json has them whole)."""
    return _UUID.sub(r"\1", subject)


def trace_cmd(
    correlation_id: str = typer.Argument(..., metavar="CORRELATION-ID",
                                         help="From an audit row, an API error or its "
                                              "X-Correlation-ID header"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The timeline of one request: its audit rows, events and log lines, oldest first."""
    cid = use.check_correlation_id(correlation_id)  # before the store is opened
    if (c := cli_remote.remote()) is not None:  # your own rows and events, from the server
        doc = c.call("GET", f"/users/me/trace/{cid}")
        found = use.Trace(doc["correlation_id"], [use.TraceLine(
            datetime.fromisoformat(x["at"]) if x["at"] else None, x["source"], x["what"],
            x["subject"], x["actor"], x["outcome"], x["detail"]) for x in doc["lines"]],
            doc["notes"])
    else:
        with open_context() as ctx:
            found = use.trace(ctx, cid)
    for note in found.notes:
        err.print(f"warning: {note}", markup=False, highlight=False)
    if as_json:
        print_json({"correlation_id": found.correlation_id, "notes": found.notes,
                    "lines": [{**plain(line), "at": line.at.isoformat() if line.at else None}
                              for line in found.lines]})
        return
    days = {line.at.date() for line in found.lines if line.at}
    stamp = "%Y-%m-%d %H:%M:%S.%f" if len(days) > 1 else "%H:%M:%S.%f"
    table = Table(title=f"correlation id {found.correlation_id}: {found.count('audit')} audit "
                        f"rows, {found.count('event')} events, {found.count('log')} log lines"
                        + (f" ({days.pop():%Y-%m-%d}, UTC)" if len(days) == 1 else " (UTC)"))
    for col in ("at", "source", "what", "subject", "actor"):
        table.add_column(col, overflow="fold", no_wrap=col in ("at", "source"))
    table.add_column("detail", overflow="fold", ratio=1)
    for line in found.lines:
        at = line.at.strftime(stamp)[:-3] if line.at else "-"
        what = f"{line.what} ({line.outcome})" if line.outcome else line.what
        table.add_row(*(Text(v) for v in (at, line.source, what, _short(line.subject),
                                          line.actor or "", line.detail)))
    out.print(table)


__all__ = ["trace_cmd"]
