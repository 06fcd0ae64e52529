"""People, API service accounts, groups and projects: who exists, who belongs where. Every
change is permission-checked (SpiceDB keys, never role names) and audited."""

from __future__ import annotations

import re
from dataclasses import dataclass

from airavata_prefect.adapters.spicedb import Subject
from airavata_prefect.adapters.store import Account
from airavata_prefect.domain.errors import NotFound
from airavata_prefect.usecases.authorization import allowed, audit, require
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.errors import BadInput, Conflict, Forbidden
from airavata_prefect.usecases.identity import hash_password, new_api_token

PLATFORM = "airavata"  # the one platform object its admins hang on
NAME = re.compile(r"^[a-z][a-z0-9_-]{1,62}$")  # SpiceDB object ids: no dots
SERVICE_PREFIX = "svc-"


def check_name(what: str, name: str) -> None:
    if not NAME.match(name):
        raise BadInput(f"{what} name {name!r}: 2-63 characters, lowercase letters, digits, "
                       "'_' or '-', starting with a letter")


def ensure_platform(ctx: Context) -> None:
    """An installation nobody administers yet is administered by its first acting user (the
    operator, in local mode on the server's machine)."""
    if not ctx.store.relationships.has_object("platform", PLATFORM):
        ctx.authz.relate("platform", PLATFORM, "admin", Subject.user(ctx.user))
        audit(ctx, "platform.manage", f"platform:{PLATFORM}", "ok", f"first admin: {ctx.user}")


# -- people --------------------------------------------------------------------------------


def create_person(ctx: Context, name: str, password: str, *, admin: bool = False,
                  full_name: str | None = None, email: str | None = None) -> Account:
    ensure_platform(ctx)
    require(ctx, "platform.manage", PLATFORM)
    check_name("user", name)
    if name.startswith(SERVICE_PREFIX):
        raise BadInput(f"user name {name!r}: {SERVICE_PREFIX}* names are service accounts'")
    if not ctx.store.accounts.create(name, kind="person", created_by=ctx.user,
                                     password_hash=hash_password(password),
                                     full_name=full_name, email=email):
        raise Conflict(f"user {name!r} exists")
    if admin:
        ctx.authz.relate("platform", PLATFORM, "admin", Subject.user(name))
    audit(ctx, "platform.manage", f"user:{name}", "ok", "created" + (" (admin)" if admin else ""))
    return account(ctx, name)


def account(ctx: Context, name: str) -> Account:
    found = ctx.store.accounts.get(name)
    if found is None:
        raise NotFound(f"no user {name!r}")
    return found


def update_profile(ctx: Context, *, full_name: str | None, email: str | None) -> Account:
    values = {k: v for k, v in (("full_name", full_name), ("email", email)) if v is not None}
    if values:
        ctx.store.accounts.update(ctx.user, **values)
        audit(ctx, "account.update", f"user:{ctx.user}", "ok", ", ".join(sorted(values)))
    return account(ctx, ctx.user)


def change_password(ctx: Context, old: str, new: str) -> None:
    from airavata_prefect.usecases.identity import _password_ok
    me = account(ctx, ctx.user)
    if not _password_ok(me.password_hash, old):
        audit(ctx, "account.password", f"user:{ctx.user}", "denied", "wrong current password")
        raise Forbidden("the current password is wrong")
    ctx.store.accounts.update(ctx.user, password_hash=hash_password(new))
    for t in ctx.store.accounts.tokens_of(ctx.user, "refresh"):  # sign out everywhere
        ctx.store.accounts.revoke(t.id)
    audit(ctx, "account.password", f"user:{ctx.user}", "ok")


def set_disabled(ctx: Context, name: str, disabled: bool) -> None:
    require(ctx, "platform.manage", PLATFORM)
    account(ctx, name)
    if disabled and name == ctx.user:  # the last admin would lock everyone out
        raise Conflict("you cannot disable your own account; another admin can")
    ctx.store.accounts.update(name, disabled=disabled)
    if disabled:
        for t in ctx.store.accounts.tokens_of(name):
            ctx.store.accounts.revoke(t.id)
    audit(ctx, "platform.manage", f"user:{name}", "ok", "disabled" if disabled else "enabled")


# -- API service accounts ------------------------------------------------------------------


def create_service_account(ctx: Context, project: str, name: str) -> Account:
    """An account for scripts and pipelines, in `project` only (needs project.manage)."""
    require(ctx, "project.manage", project)
    full = name if name.startswith(SERVICE_PREFIX) else SERVICE_PREFIX + name
    check_name("service account", full)
    if not ctx.store.accounts.create(full, kind="service", project=project, created_by=ctx.user):
        raise Conflict(f"account {full!r} exists")
    ctx.authz.relate("project", project, "member", Subject.user(full))
    audit(ctx, "project.manage", f"project:{project}", "ok", f"service account {full}")
    return account(ctx, full)


def _service_account(ctx: Context, name: str) -> Account:
    acc = ctx.store.accounts.get(name)
    if acc is None or acc.kind != "service" or acc.project is None:
        raise NotFound(f"no service account {name!r}")
    require(ctx, "project.manage", acc.project)
    return acc


def mint_token(ctx: Context, name: str, *, label: str | None, days: int | None = None
               ) -> tuple[str, str]:
    """(token id, token) for a service account; the token is shown once, stored hashed."""
    acc = _service_account(ctx, name)
    token_id, token = new_api_token(ctx.store, acc.name, label=label,
                                    days=days or ctx.settings.api_token_days)
    audit(ctx, "project.manage", f"account:{acc.name}", "ok", f"api token {token_id} minted")
    return token_id, token


def revoke_token(ctx: Context, name: str, token_id: str) -> None:
    acc = _service_account(ctx, name)
    row = ctx.store.accounts.token(token_id)
    if row is None or row.account != acc.name or not ctx.store.accounts.revoke(token_id):
        raise NotFound(f"service account {acc.name} has no live token {token_id}")
    audit(ctx, "project.manage", f"account:{acc.name}", "ok", f"api token {token_id} revoked")


# -- groups (nested) -----------------------------------------------------------------------


def create_group(ctx: Context, name: str) -> None:
    check_name("group", name)
    if ctx.store.relationships.has_object("group", name):
        raise Conflict(f"group {name!r} exists")
    ctx.authz.relate("group", name, "admin", Subject.user(ctx.user))
    audit(ctx, "group.manage", f"group:{name}", "ok", "created")


def _member(who: str) -> Subject:
    """`alice`, or `group:lab` for everyone in group lab (groups nest)."""
    return Subject.group(who.removeprefix("group:")) if who.startswith("group:") \
        else Subject.user(who)


def set_group_member(ctx: Context, group: str, who: str, *, present: bool) -> None:
    require(ctx, "group.manage", group)
    subject = _member(who)
    if subject.type == "group" and subject.id == group:
        raise BadInput(f"group {group} cannot contain itself")
    (ctx.authz.relate if present else ctx.authz.unrelate)("group", group, "member", subject)
    audit(ctx, "group.manage", f"group:{group}", "ok",
          f"{'added' if present else 'removed'}: {who}")


def group_members(ctx: Context, group: str) -> list[tuple[str, str]]:
    """(role, member) pairs; members of nested groups show as `group:NAME`."""
    require(ctx, "group.read", group)
    return sorted((r[2], r[4] if r[3] == "user" else f"group:{r[4]}")
                  for r in ctx.store.relationships.of_object("group", group))


def my_groups(ctx: Context) -> list[str]:
    return [g for g in ctx.store.relationships.objects("group") if allowed(ctx, "group.read", g)]


# -- projects ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectView:
    name: str
    members: list[tuple[str, str]]  # (role, member)
    can_manage: bool
    description: str | None = None


def _exists(ctx: Context, name: str) -> bool:
    # Projects from before the projects table are in the permission journal only.
    return (ctx.store.projects.get(name) is not None
            or ctx.store.relationships.has_object("project", name))


def create_project(ctx: Context, name: str, description: str | None = None) -> ProjectView:
    check_name("project", name)
    acting = ctx.store.accounts.get(ctx.user)
    if acting is not None and acting.kind == "service":
        audit(ctx, "project.create", f"project:{name}", "denied",
              f"service account of project {acting.project}")
        raise Forbidden("a service account cannot create projects")
    if _exists(ctx, name) or not ctx.store.projects.add(name, created_by=ctx.user,
                                                        description=description):
        raise Conflict(f"project {name!r} exists")
    ctx.authz.relate("project", name, "admin", Subject.user(ctx.user))
    audit(ctx, "project.create", f"project:{name}", "ok")
    return project(ctx, name)


def projects(ctx: Context) -> list[str]:
    names = set(ctx.store.projects.names()) | set(ctx.store.relationships.objects("project"))
    return [p for p in sorted(names) if allowed(ctx, "project.read", p)]


def project(ctx: Context, name: str) -> ProjectView:
    require(ctx, "project.read", name)
    members = sorted((r[2], r[4] if r[3] == "user" else f"group:{r[4]}")
                     for r in ctx.store.relationships.of_object("project", name)
                     if r[2] in ("admin", "member"))
    row = ctx.store.projects.get(name)
    return ProjectView(name, members, allowed(ctx, "project.manage", name),
                       row.description if row else None)


def update_project(ctx: Context, name: str, *, description: str | None) -> ProjectView:
    """Change a project's description (needs project.manage)."""
    require(ctx, "project.manage", name)
    if ctx.store.projects.get(name) is None:
        if not ctx.store.relationships.has_object("project", name):
            raise NotFound(f"no project {name!r}")
        ctx.store.projects.add(name, created_by=ctx.user)
    ctx.store.projects.set_description(name, description)
    audit(ctx, "project.manage", f"project:{name}", "ok", "description changed")
    return project(ctx, name)


def delete_project(ctx: Context, name: str) -> None:
    """Remove a project and its memberships (its experiments' records stay, readable by
    their owners)."""
    require(ctx, "project.manage", name)
    for row in ctx.store.relationships.of_object("project", name):
        ctx.authz.unrelate(row[0], row[1], row[2], Subject(row[3], row[4], row[5]))
    ctx.store.projects.delete(name)
    audit(ctx, "project.manage", f"project:{name}", "ok", "deleted")


__all__ = ["PLATFORM", "ProjectView", "account", "change_password",
           "check_name", "create_group", "create_person", "create_project",
           "create_service_account", "delete_project", "group_members", "mint_token",
           "my_groups", "project", "projects", "revoke_token", "set_disabled",
           "set_group_member", "update_profile", "update_project"]
