"""`airavata auth ...` (sign in to a server) and `airavata config ...` (which server)."""

from __future__ import annotations

import getpass
import json
import sys

import typer
from rich.console import Console

from airavata_prefect.api import client as api_client
from airavata_prefect.usecases.settings import get_settings

auth_app = typer.Typer(no_args_is_help=True, help="Sign in to an Airavata server.")
config_app = typer.Typer(no_args_is_help=True, help="The CLI's own settings.")
out = Console(soft_wrap=True)
KEYS = ("server",)


def _remote() -> api_client.ApiClient:
    c = api_client.client(get_settings())
    if c is None:
        raise api_client.RemoteError(400, "bad_request", "no server configured: `airavata config "
                                     "set server URL` (or AIRAVATA_API_URL) first")
    return c


@auth_app.command("login")
def login_cmd(
    username: str | None = typer.Option(None, "--username", "-u",
                                        help="Default: your OS login name"),
    password_stdin: bool = typer.Option(False, "--password-stdin",
                                        help="Read the password from standard input"),
) -> None:
    """Sign in (the password is asked for, or read from stdin; never an argument)."""
    c = _remote()
    name = username or getpass.getuser()
    password = sys.stdin.readline().rstrip("\n") if password_stdin else \
        getpass.getpass(f"password for {name} at {c.api}: ")
    body = c.call("POST", "/auth/login", anonymous=True,
                  json={"username": name, "password": password})
    c.save_tokens(name, body)
    out.print(f"signed in to {c.api} as {name}")


@auth_app.command("logout")
def logout_cmd() -> None:
    """Revoke this CLI's refresh token on the server and forget its tokens."""
    c = _remote()
    saved = c.tokens()
    if saved.get("refresh_token"):
        try:
            c.call("POST", "/auth/logout", anonymous=True,
                   json={"refresh_token": saved["refresh_token"]})
        except api_client.RemoteError as exc:
            if exc.status != 401:  # already revoked or expired: forgetting is all that is left
                raise
    c.forget()
    out.print(f"signed out of {c.api}")


@auth_app.command("status")
def status_cmd(as_json: bool = typer.Option(False, "--json")) -> None:
    """Who you are signed in as (exit 4 when not signed in)."""
    c = _remote()
    me = c.call("GET", "/auth/whoami")
    if as_json:
        print(json.dumps({"server": c.api, **me}, indent=2))
    else:
        out.print(f"signed in to {c.api} as {me['name']} ({me['kind']}, via {me['via']})")


@config_app.command("set")
def set_cmd(key: str = typer.Argument(..., metavar="KEY", help="server"),
            value: str = typer.Argument(..., metavar="VALUE")) -> None:
    """Set KEY: `server URL` switches the CLI to server mode."""
    if key not in KEYS:
        raise api_client.RemoteError(400, "bad_request", f"unknown key {key!r} (keys: "
                                     f"{', '.join(KEYS)})")
    if key == "server" and not value.startswith(("http://", "https://")):
        raise api_client.RemoteError(400, "bad_request",
                                     f"server: an http(s) URL, not {value!r}")
    api_client.set_config(get_settings(), key, value.rstrip("/"))
    out.print(f"{key} = {value}")


@config_app.command("unset")
def unset_cmd(key: str = typer.Argument(..., metavar="KEY")) -> None:
    """Remove KEY (`unset server`: back to local mode)."""
    api_client.set_config(get_settings(), key, None)
    out.print(f"{key} unset")


@config_app.command("get")
def get_cmd(key: str = typer.Argument(..., metavar="KEY")) -> None:
    settings = get_settings()
    value = api_client.server_url(settings) if key == "server" else \
        api_client.config(settings).get(key)
    if value is None:
        raise typer.Exit(1)
    print(value)


@config_app.command("show")
def show_cmd(as_json: bool = typer.Option(False, "--json")) -> None:
    """The CLI's settings and which mode it is in."""
    settings = get_settings()
    server = api_client.server_url(settings)
    data = {"mode": "server" if server else "local", "server": server,
            "home": str(settings.home), **({} if server else {"user": settings.user})}
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        for k, v in data.items():
            out.print(f"{k}: {v}")
