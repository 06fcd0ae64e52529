"""Who may do what: permission keys checked in SpiceDB for the acting user, every refusal
audited with the correlation id; projects and their members."""

from __future__ import annotations

from airavata_prefect.adapters.spicedb import PermissionDenied, Subject
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.correlation import correlation_id
from airavata_prefect.usecases.errors import Forbidden


def audit(ctx: Context, action: str, obj: str, outcome: str, detail: str | None = None) -> None:
    ctx.store.audit.record(actor=ctx.user, action=action, obj=obj,
                           correlation_id=correlation_id(), outcome=outcome, detail=detail)


def require(ctx: Context, key: str, object_id: str) -> None:
    """Raise Forbidden (audited) unless the acting user holds `key` on the object."""
    try:
        ctx.authz.require(ctx.user, key, object_id)
    except PermissionDenied as exc:
        audit(ctx, key, f"{exc.object_type}:{object_id}", "denied")
        raise Forbidden(f"permission denied: {exc}") from None


def allowed(ctx: Context, key: str, object_id: str) -> bool:
    return ctx.authz.check(ctx.user, key, object_id)


def subject(who: str) -> Subject:
    """`alice` or `group:lab`."""
    return Subject.group(who.removeprefix("group:")) if who.startswith("group:") \
        else Subject.user(who)


def ensure_project(ctx: Context, project: str) -> None:
    """In local mode, a project nobody holds yet is created with the acting user as its admin
    (first use)."""
    if ctx.auto_projects and not ctx.store.relationships.has_object("project", project):
        ctx.authz.relate("project", project, "admin", Subject.user(ctx.user))
        ctx.store.projects.add(project, created_by=ctx.user)
        audit(ctx, "project.create", f"project:{project}", "ok")


def check_may_join(ctx: Context, project: str, who: str) -> None:
    """Service accounts belong to one project only."""
    acc = ctx.store.accounts.get(who)
    if acc is not None and acc.kind == "service" and acc.project != project:
        audit(ctx, "project.manage", f"project:{project}", "denied",
              f"service account {who} belongs to {acc.project}")
        raise Forbidden(f"service account {who} belongs to project {acc.project} only")


def add_member(ctx: Context, project: str, user: str, *, admin: bool) -> None:
    """Let `user` submit to `project` (and, as an admin, manage it and read its experiments)."""
    ensure_project(ctx, project)
    require(ctx, "project.manage", project)
    check_may_join(ctx, project, user)
    ctx.authz.relate("project", project, "admin" if admin else "member", Subject.user(user))
    audit(ctx, "project.manage", f"project:{project}", "ok",
          f"{'admin' if admin else 'member'}: {user}")


def remove_member(ctx: Context, project: str, user: str) -> None:
    """Take `user` out of `project` (both roles); needs project.manage; audited."""
    require(ctx, "project.manage", project)
    for role in ("admin", "member"):
        ctx.authz.unrelate("project", project, role, Subject.user(user))
    audit(ctx, "project.manage", f"project:{project}", "ok", f"removed: {user}")


__all__ = ["add_member", "allowed", "audit", "check_may_join", "ensure_project", "remove_member",
           "require", "subject"]
