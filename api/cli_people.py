"""`airavata project ...` and `airavata user ...`: projects, members and your own account, in
local mode (the store, as your OS login) or server mode (the REST API, as who you signed in)."""

from __future__ import annotations

import getpass
import json
import sys
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from airavata_prefect.api.cli_remote import remote
from airavata_prefect.usecases import accounts, authorization
from airavata_prefect.usecases.context import open_context

project_app = typer.Typer(no_args_is_help=True, help="Projects and their members.")
user_app = typer.Typer(no_args_is_help=True, help="Your account; new accounts (admins).")
out = Console(soft_wrap=True)
JsonOpt = typer.Option(False, "--json", help="Print JSON")


def _project_json(v: accounts.ProjectView) -> dict[str, Any]:
    return {"name": v.name, "description": v.description, "can_manage": v.can_manage,
            "members": [{"role": r, "member": m} for r, m in v.members]}


def _print_project(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
        return
    title = f"project {data['name']}" + (f": {data['description']}"
                                         if data.get("description") else "")
    table = Table(title=title)
    table.add_column("member")
    table.add_column("role")
    for m in data["members"]:
        table.add_row(m["member"], m["role"])
    out.print(table)


DescriptionOpt = typer.Option(None, "--description", "-d", help="What the project is for")


@project_app.command("create")
def project_create(name: str = typer.Argument(..., metavar="PROJECT"),
                   description: str | None = DescriptionOpt,
                   as_json: bool = JsonOpt) -> None:
    """Create a project; you become its admin."""
    if (c := remote()) is not None:
        data = c.call("POST", "/projects", json={"name": name, "description": description})
    else:
        with open_context() as ctx:
            data = _project_json(accounts.create_project(ctx, name, description))
    _print_project(data, as_json)


@project_app.command("update")
def project_update(name: str = typer.Argument(..., metavar="PROJECT"),
                   description: str = typer.Option(..., "--description", "-d",
                                                   help="What the project is for ('' clears)"),
                   as_json: bool = JsonOpt) -> None:
    """Change a project's description (needs project.manage)."""
    text = description or None
    if (c := remote()) is not None:
        data = c.call("PATCH", f"/projects/{name}", json={"description": text})
    else:
        with open_context() as ctx:
            data = _project_json(accounts.update_project(ctx, name, description=text))
    _print_project(data, as_json)


@project_app.command("list")
def project_list(as_json: bool = JsonOpt) -> None:
    """The projects you may read."""
    if (c := remote()) is not None:
        names = c.call("GET", "/projects")
    else:
        with open_context() as ctx:
            names = accounts.projects(ctx)
    if as_json:
        print(json.dumps(names, indent=2))
    else:
        for n in names:
            out.print(n)


@project_app.command("get")
def project_get(name: str = typer.Argument(..., metavar="PROJECT"),
                as_json: bool = JsonOpt) -> None:
    """A project and its members."""
    if (c := remote()) is not None:
        data = c.call("GET", f"/projects/{name}")
    else:
        with open_context() as ctx:
            data = _project_json(accounts.project(ctx, name))
    _print_project(data, as_json)


@project_app.command("members")
def project_members(name: str = typer.Argument(..., metavar="PROJECT"),
                    as_json: bool = JsonOpt) -> None:
    """A project's members and their roles."""
    project_get(name, as_json)


@project_app.command("delete")
def project_delete(name: str = typer.Argument(..., metavar="PROJECT")) -> None:
    """Remove a project's memberships (needs project.manage)."""
    if (c := remote()) is not None:
        c.call("DELETE", f"/projects/{name}")
    else:
        with open_context() as ctx:
            accounts.delete_project(ctx, name)
    out.print(f"project {name} deleted")


@project_app.command("add-member")
def add_member_cmd(
    project: str = typer.Argument(..., metavar="PROJECT"),
    user: str = typer.Argument(..., metavar="USER"),
    admin: bool = typer.Option(False, "--admin", help="As an admin (may manage the project)"),
) -> None:
    """Let USER submit to PROJECT (and, with --admin, manage it and read its experiments)."""
    if (c := remote()) is not None:
        c.call("POST", f"/projects/{project}/members",
               json={"username": user, "role": "admin" if admin else "member"})
    else:
        with open_context() as ctx:
            authorization.add_member(ctx, project, user, admin=admin)
    out.print(f"{user} is now {'an admin' if admin else 'a member'} of project {project}")


@project_app.command("remove-member")
def remove_member_cmd(
    project: str = typer.Argument(..., metavar="PROJECT"),
    user: str = typer.Argument(..., metavar="USER"),
) -> None:
    """Take USER (a person or a service account) out of PROJECT."""
    if (c := remote()) is not None:
        c.call("DELETE", f"/projects/{project}/members/{user}")
    else:
        with open_context() as ctx:
            authorization.remove_member(ctx, project, user)
    out.print(f"{user} is no longer a member of project {project}")


# -- user ------------------------------------------------------------------------------------


def _account_json(a: accounts.Account) -> dict[str, Any]:
    return {"username": a.name, "kind": a.kind, "project": a.project, "full_name": a.full_name,
            "email": a.email, "disabled": a.disabled, "created_at": a.created_at.isoformat()}


def _print_account(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        for k, v in data.items():
            out.print(f"{k}: {v if v is not None else ''}")


def _password(prompt: str, stdin: bool) -> str:
    return sys.stdin.readline().rstrip("\n") if stdin else getpass.getpass(prompt)


@user_app.command("create")
def user_create(
    name: str = typer.Argument(..., metavar="USER"),
    admin: bool = typer.Option(False, "--admin", help="May create and disable accounts"),
    password_stdin: bool = typer.Option(False, "--password-stdin"),
    as_json: bool = JsonOpt,
) -> None:
    """Create a person's account (needs platform.manage; in local mode on the server's
    machine, its operator is the first admin)."""
    password = _password(f"password for {name}: ", password_stdin)
    if (c := remote()) is not None:
        data = c.call("POST", "/users", json={"username": name, "password": password,
                                              "admin": admin})
    else:
        with open_context() as ctx:
            data = _account_json(accounts.create_person(ctx, name, password, admin=admin))
    _print_account(data, as_json)


@user_app.command("profile")
def user_profile(as_json: bool = JsonOpt) -> None:
    """Your account."""
    if (c := remote()) is not None:
        data = c.call("GET", "/users/me")
    else:
        with open_context() as ctx:
            data = _account_json(accounts.account(ctx, ctx.user))
    _print_account(data, as_json)


@user_app.command("update")
def user_update(full_name: str | None = typer.Option(None, "--full-name"),
                email: str | None = typer.Option(None, "--email"),
                as_json: bool = JsonOpt) -> None:
    """Change your name or e-mail address."""
    if (c := remote()) is not None:
        data = c.call("PATCH", "/users/me", json={"full_name": full_name, "email": email})
    else:
        with open_context() as ctx:
            data = _account_json(accounts.update_profile(ctx, full_name=full_name,
                                                         email=email))
    _print_account(data, as_json)


@user_app.command("password")
def user_password(password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Two lines on stdin: the current, then the new")) -> None:
    """Change your password (you are signed out everywhere else)."""
    old = _password("current password: ", password_stdin)
    new = _password("new password: ", password_stdin)
    if (c := remote()) is not None:
        c.call("POST", "/users/me/password", json={"old_password": old, "new_password": new})
    else:
        with open_context() as ctx:
            accounts.change_password(ctx, old, new)
    out.print("password changed")


@user_app.command("groups")
def user_groups(as_json: bool = JsonOpt) -> None:
    """The groups you are in or administer."""
    if (c := remote()) is not None:
        names = c.call("GET", "/users/me/groups")
    else:
        with open_context() as ctx:
            names = accounts.my_groups(ctx)
    if as_json:
        print(json.dumps(names, indent=2))
        return
    for n in names:
        out.print(n)


@user_app.command("projects")
def user_projects(as_json: bool = JsonOpt) -> None:
    """The projects you may read."""
    project_list(as_json)
