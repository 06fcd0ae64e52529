"""/users, /groups, /projects, /service-accounts: who exists and who belongs where."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from airavata_prefect.api.rest.deps import Ctx, Writer
from airavata_prefect.api.rest.errors import CONFLICT
from airavata_prefect.usecases import accounts, authorization, queries, trace

router = APIRouter(tags=["people"])
NameP = Annotated[str, Path(min_length=1, max_length=200)]
NAME = accounts.NAME.pattern  # what a new user, group, project or service account may be named


class UserIn(BaseModel):
    username: str = Field(min_length=2, max_length=63, pattern=NAME)
    password: str = Field(min_length=8, max_length=1024)
    full_name: str | None = Field(None, max_length=200)
    email: str | None = Field(None, max_length=320)
    admin: bool = False


class ProfileIn(BaseModel):
    full_name: str | None = Field(None, max_length=200)
    email: str | None = Field(None, max_length=320)


class PasswordIn(BaseModel):
    old_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=8, max_length=1024)


class UserOut(BaseModel):
    username: str
    kind: str
    project: str | None
    full_name: str | None
    email: str | None
    disabled: bool
    created_at: datetime


class NameIn(BaseModel):
    name: str = Field(min_length=2, max_length=63, pattern=NAME)


Description = Field(None, max_length=2000, description="what the project is for")


class ProjectIn(NameIn):
    description: str | None = Description


class ProjectUpdate(BaseModel):
    description: str | None = Description


class ServiceAccountIn(BaseModel):
    name: str = Field(min_length=2, max_length=59, pattern=NAME,
                      description="its account is svc-NAME (NAME as it is when it starts so)")


class MemberIn(BaseModel):
    member: str = Field(min_length=1, max_length=200,
                        description="a user, or group:NAME for everyone in a group")


class ProjectMemberIn(BaseModel):
    username: str = Field(min_length=1, max_length=200)
    role: Literal["member", "admin"] = "member"


class Membership(BaseModel):
    role: str
    member: str


class ProjectOut(BaseModel):
    name: str
    description: str | None
    members: list[Membership]
    can_manage: bool


class TokenIn(BaseModel):
    label: str | None = Field(None, max_length=200)
    days: int | None = Field(None, ge=1, le=3650)


class TokenOut(BaseModel):
    id: str
    token: str = Field(description="shown this once; only its digest is kept")


def _user(a: accounts.Account) -> UserOut:
    return UserOut(username=a.name, kind=a.kind, project=a.project, full_name=a.full_name,
                   email=a.email, disabled=a.disabled, created_at=a.created_at)


def _project(v: accounts.ProjectView) -> ProjectOut:
    return ProjectOut(name=v.name, description=v.description, can_manage=v.can_manage,
                      members=[Membership(role=r, member=m) for r, m in v.members])


# -- users ---------------------------------------------------------------------------------

@router.post("/users", response_model=UserOut, status_code=201, responses=CONFLICT)
def create_user(body: UserIn, ctx: Ctx, _: Writer) -> UserOut:
    """A person who signs in with a password (needs platform.manage)."""
    return _user(accounts.create_person(ctx, body.username, body.password, admin=body.admin,
                                        full_name=body.full_name, email=body.email))


@router.get("/users/me", response_model=UserOut)
def profile(ctx: Ctx) -> UserOut:
    return _user(accounts.account(ctx, ctx.user))


@router.patch("/users/me", response_model=UserOut)
def update_profile(body: ProfileIn, ctx: Ctx, _: Writer) -> UserOut:
    return _user(accounts.update_profile(ctx, full_name=body.full_name, email=body.email))


@router.post("/users/me/password", status_code=204)
def change_password(body: PasswordIn, ctx: Ctx, _: Writer) -> None:
    """Change your password; every refresh token of yours is revoked."""
    accounts.change_password(ctx, body.old_password, body.new_password)


@router.get("/users/me/groups", response_model=list[str])
def my_groups(ctx: Ctx) -> list[str]:
    return accounts.my_groups(ctx)


@router.get("/users/me/projects", response_model=list[str])
def my_projects(ctx: Ctx) -> list[str]:
    return accounts.projects(ctx)


class AuditOut(BaseModel):
    at: datetime
    action: str
    object: str
    outcome: str = Field(description="ok | allowed | denied | refused | error")
    correlation_id: str
    detail: str | None


@router.get("/users/me/audit", response_model=list[AuditOut])
def my_audit(ctx: Ctx, correlation_id: str | None = Query(None, min_length=1, max_length=200),
             limit: int = Query(50, ge=1, le=1000)) -> list[AuditOut]:
    """Your own privileged actions and refusals, oldest first (`correlation_id`: the rows of
    one request, as an error's envelope names it)."""
    return [AuditOut(at=r.at, action=r.action, object=r.object, outcome=r.outcome,
                     correlation_id=r.correlation_id, detail=r.detail)
            for r in queries.my_audit(ctx, correlation_id, limit)]


class TraceLineOut(BaseModel):
    at: datetime | None
    source: Literal["audit", "event", "log"]
    what: str = Field(description="an audit row's action, an event's type, a log level")
    subject: str
    actor: str | None
    outcome: str | None
    detail: str


class TraceOut(BaseModel):
    correlation_id: str
    lines: list[TraceLineOut]
    notes: list[str] = Field(description="sources that could not be read")


@router.get("/users/me/trace/{correlation_id}", response_model=TraceOut)
def my_trace(ctx: Ctx, correlation_id: Annotated[str, Path(min_length=1, max_length=200)]
             ) -> TraceOut:
    """The timeline of one of your requests: your audit rows and the lifecycle events that
    acted as you under its correlation id, oldest first (log lines: `airavata trace` on the
    server's machine)."""
    found = trace.trace(ctx, correlation_id, actor=ctx.user)
    return TraceOut(correlation_id=found.correlation_id, notes=found.notes,
                    lines=[TraceLineOut.model_validate(line, from_attributes=True)
                           for line in found.lines])


@router.post("/users/{username}/disable", status_code=204, responses=CONFLICT)
def disable_user(ctx: Ctx, _: Writer, username: NameP) -> None:
    """Disable an account and revoke its tokens (needs platform.manage)."""
    accounts.set_disabled(ctx, username, True)


@router.post("/users/{username}/enable", status_code=204)
def enable_user(ctx: Ctx, _: Writer, username: NameP) -> None:
    accounts.set_disabled(ctx, username, False)


# -- groups --------------------------------------------------------------------------------

@router.post("/groups", status_code=201, response_model=list[Membership], responses=CONFLICT)
def create_group(body: NameIn, ctx: Ctx, _: Writer) -> list[Membership]:
    accounts.create_group(ctx, body.name)
    return [Membership(role=r, member=m) for r, m in accounts.group_members(ctx, body.name)]


@router.get("/groups/{group}/members", response_model=list[Membership])
def group_members(ctx: Ctx, group: NameP) -> list[Membership]:
    return [Membership(role=r, member=m) for r, m in accounts.group_members(ctx, group)]


@router.post("/groups/{group}/members", status_code=204)
def add_group_member(body: MemberIn, ctx: Ctx, _: Writer, group: NameP) -> None:
    accounts.set_group_member(ctx, group, body.member, present=True)


@router.delete("/groups/{group}/members/{member}", status_code=204)
def remove_group_member(ctx: Ctx, _: Writer, group: NameP, member: NameP) -> None:
    accounts.set_group_member(ctx, group, member, present=False)


# -- projects ------------------------------------------------------------------------------

@router.post("/projects", response_model=ProjectOut, status_code=201, responses=CONFLICT)
def create_project(body: ProjectIn, ctx: Ctx, _: Writer) -> ProjectOut:
    return _project(accounts.create_project(ctx, body.name, body.description))


@router.get("/projects", response_model=list[str])
def list_projects(ctx: Ctx) -> list[str]:
    return accounts.projects(ctx)


@router.get("/projects/{project}", response_model=ProjectOut)
def get_project(ctx: Ctx, project: NameP) -> ProjectOut:
    return _project(accounts.project(ctx, project))


@router.patch("/projects/{project}", response_model=ProjectOut)
def update_project(body: ProjectUpdate, ctx: Ctx, _: Writer, project: NameP) -> ProjectOut:
    """Change its description (needs project.manage)."""
    return _project(accounts.update_project(ctx, project, description=body.description))


@router.delete("/projects/{project}", status_code=204)
def delete_project(ctx: Ctx, _: Writer, project: NameP) -> None:
    accounts.delete_project(ctx, project)


@router.post("/projects/{project}/members", response_model=ProjectOut)
def add_member(body: ProjectMemberIn, ctx: Ctx, _: Writer, project: NameP) -> ProjectOut:
    authorization.require(ctx, "project.manage", project)
    authorization.add_member(ctx, project, body.username, admin=body.role == "admin")
    return _project(accounts.project(ctx, project))


@router.delete("/projects/{project}/members/{username}", status_code=204)
def remove_member(ctx: Ctx, _: Writer, project: NameP, username: NameP) -> None:
    authorization.remove_member(ctx, project, username)


# -- service accounts ----------------------------------------------------------------------

@router.post("/projects/{project}/service-accounts", response_model=UserOut, status_code=201,
             responses=CONFLICT)
def create_service_account(body: ServiceAccountIn, ctx: Ctx, _: Writer, project: NameP
                           ) -> UserOut:
    """An account for scripts, in this project only; it signs in with API tokens."""
    return _user(accounts.create_service_account(ctx, project, body.name))


@router.post("/service-accounts/{name}/tokens", response_model=TokenOut, status_code=201)
def mint_token(body: TokenIn, ctx: Ctx, _: Writer, name: NameP) -> TokenOut:
    token_id, token = accounts.mint_token(ctx, name, label=body.label, days=body.days)
    return TokenOut(id=token_id, token=token)


@router.delete("/service-accounts/{name}/tokens/{token_id}", status_code=204)
def revoke_token(ctx: Ctx, _: Writer, name: NameP, token_id: NameP) -> None:
    accounts.revoke_token(ctx, name, token_id)
