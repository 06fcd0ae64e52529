"""The `airavata` command line (typer + rich): its command groups, and one line and an exit
status for every failure.

Exit status: 0 success; 1 an experiment that did not complete, or a failure outside the user's
input; 2 bad input (spec, parameters, arguments, unknown ids), one line per problem; 3 no
placement; 4 permission denied.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from airavata_prefect.api import (  # noqa: F401  register their commands
    cli_dispatch,
    cli_outputs,
    cli_usage,
)
from airavata_prefect.api.cli_auth import auth_app, config_app
from airavata_prefect.api.cli_credentials import credential_app
from airavata_prefect.api.cli_data import data_app
from airavata_prefect.api.cli_door import either
from airavata_prefect.api.cli_experiments import experiment_app
from airavata_prefect.api.cli_people import project_app, user_app
from airavata_prefect.api.cli_resources import resource_app
from airavata_prefect.api.cli_server import deployment_app, server_app
from airavata_prefect.api.cli_trace import trace_cmd
from airavata_prefect.api.client import RemoteError, server_url
from airavata_prefect.domain.errors import NotFound
from airavata_prefect.domain.problems import SpecError
from airavata_prefect.usecases import context, queries
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.credentials import CredentialError
from airavata_prefect.usecases.errors import (
    BadInput,
    Forbidden,
    NoPlacement,
    Unavailable,
    describe,
)

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="Airavata experiment orchestration on Prefect.")
app.add_typer(auth_app, name="auth")
app.add_typer(config_app, name="config")
app.add_typer(experiment_app, name="experiment")
app.add_typer(project_app, name="project")
app.add_typer(user_app, name="user")
app.add_typer(credential_app, name="credential")
app.add_typer(resource_app, name="resource")
app.add_typer(server_app, name="server")
app.add_typer(deployment_app, name="deployment")
app.add_typer(data_app, name="data")
app.command("trace")(trace_cmd)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@app.command("audit")
def audit_cmd(
    correlation_id: str | None = typer.Option(None, "--correlation-id", "-c",
                                              help="Only the rows of this correlation id"),
    limit: int = typer.Option(50, min=1, help="At most this many rows, oldest first"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Your own privileged actions and refusals, with their correlation ids."""
    def local(ctx: Context) -> list[dict[str, Any]]:
        return [{"at": r.at.isoformat(), "action": r.action, "object": r.object,
                 "outcome": r.outcome, "correlation_id": r.correlation_id,
                 "detail": r.detail} for r in queries.my_audit(ctx, correlation_id, limit)]

    rows = either(lambda api: list(api.call("GET", "/users/me/audit", params={
        "limit": limit, **({"correlation_id": correlation_id} if correlation_id else {})})),
                  local)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="your audit trail")
    for col in ("at", "action", "object", "outcome", "correlation id", "detail"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["at"][:19].replace("T", " "), r["action"], r["object"], r["outcome"],
                      r["correlation_id"], r["detail"] or "")
    out.print(table)


def _fail(message: str, status: int) -> None:
    err.print(message, markup=False, highlight=False)
    sys.exit(status)


def main() -> None:
    from airavata_prefect.usecases.settings import get_settings
    try:
        server = server_url(get_settings())
    except ValidationError:
        server = None  # reported below, by the command that reads the settings
    if server and sys.argv[1:2] != ["server"]:
        # Server mode: only the API is spoken to; a command without a route refuses (the
        # operator's `airavata server ...` on the server's own machine stays local).
        context.forbid_local(f"this command has no server mode yet; the CLI talks to {server} "
                             "only (`airavata config unset server` for local mode)")
    elif not os.environ.get("PREFECT_API_URL"):  # this home's embedded stack, when it runs
        from airavata_prefect.usecases.server import recorded_api_url
        try:
            url = recorded_api_url(get_settings())
        except ValidationError:
            url = None  # reported below, by the command that reads the settings
        if url:
            os.environ["PREFECT_API_URL"] = url
    try:
        app(standalone_mode=True)
    except RemoteError as exc:
        _fail(f"error: {exc}", exc.exit_code)
    except SpecError as exc:
        for p in exc.problems:
            err.print(p.render(), markup=False, highlight=False)
        sys.exit(2)
    except (NotFound, BadInput) as exc:
        _fail(f"error: {exc}", 2)
    except NoPlacement as exc:
        _fail(f"error: no placement: {exc}", 3)
    except Forbidden as exc:
        _fail(f"error: {exc}", 4)
    except Unavailable as exc:
        _fail(f"error: {exc}", 1)
    except CredentialError as exc:
        _fail(f"error: {exc}", 4 if exc.denied else 1)
    except ValidationError as exc:  # settings from AIRAVATA_* variables
        for e in exc.errors():
            name = "AIRAVATA_" + "_".join(str(p) for p in e["loc"]).upper()
            err.print(f"error: {name}={e.get('input')!r}: {e['msg']}", markup=False,
                      highlight=False)
        sys.exit(2)
    except Exception as exc:
        if os.environ.get("AIRAVATA_DEBUG"):
            raise
        _fail(f"error: {describe(exc)}", 1)
