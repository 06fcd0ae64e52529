"""Credentials as the REST API shows them: metadata only (who owns it, where it lives in
OpenBao, what the acting user may do with it, where it is bound), its removal, and a test that
proves the acting user may read it and OpenBao holds it. A secret value never leaves OpenBao
through here: not in a result, an audit row or a log line.

Creating, rotating, sharing and binding are usecases/credentials.py; the wrappers here add the
checks a server needs (the OpenBao path is always the owner's own, a share names someone who
exists, a binding names a registered resource)."""

from __future__ import annotations

from dataclasses import dataclass

from airavata_prefect.adapters.openbao import SecretRef, SecretStoreError
from airavata_prefect.adapters.spicedb import Subject
from airavata_prefect.adapters.store import CredentialRow
from airavata_prefect.domain.errors import NotFound
from airavata_prefect.usecases import credentials, events
from airavata_prefect.usecases.authorization import allowed, audit, require, subject
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.credentials import CredentialError, _service
from airavata_prefect.usecases.errors import BadInput, Conflict

ROLES = ("reader", "writer")


@dataclass(frozen=True)
class Share:
    who: str  # a user, or group:NAME
    role: str  # reader | writer


@dataclass(frozen=True)
class CredentialView:
    id: str
    owner: str
    mount: str
    path: str
    may_write: bool  # rotate, bind
    may_share: bool
    may_delete: bool
    bindings: list[str] | None  # "compute_resource:NAME"; None: not known here
    shared_with: list[Share] | None  # shown to those who may share it


@dataclass(frozen=True)
class CredentialProbe:
    ok: bool
    keys: list[str]  # the names of its values, never a value
    detail: str


def _journal_known(ctx: Context) -> bool:
    """Relationships are journaled in our store only with the embedded SpiceDB."""
    return not ctx.settings.spicedb_endpoint


def _bindings(ctx: Context, credential_id: str) -> list[str] | None:
    if not _journal_known(ctx):
        return None
    return sorted(f"{r[0]}:{r[1]}" for r in
                  ctx.store.relationships.of_subject("credential", credential_id)
                  if r[2] == "bound_credential")


def _shares(ctx: Context, credential_id: str) -> list[Share] | None:
    if not _journal_known(ctx):
        return None
    return sorted((Share(r[4] if r[3] == "user" else f"{r[3]}:{r[4]}", r[2])
                   for r in ctx.store.relationships.of_object("credential", credential_id)
                   if r[2] in ROLES), key=lambda s: (s.who, s.role))


def _view(ctx: Context, row: CredentialRow) -> CredentialView:
    may_share = allowed(ctx, "credential.share", row.id)
    return CredentialView(
        id=row.id, owner=row.owner, mount=row.mount, path=row.path,
        may_write=allowed(ctx, "credential.write", row.id), may_share=may_share,
        may_delete=allowed(ctx, "credential.delete", row.id),
        bindings=_bindings(ctx, row.id),
        shared_with=_shares(ctx, row.id) if may_share else None)


def list_credentials(ctx: Context) -> list[CredentialView]:
    """Every credential the acting user may read (credential.read), metadata only."""
    return [_view(ctx, row) for row in ctx.store.credentials.all()
            if allowed(ctx, "credential.read", row.id)]


def get(ctx: Context, credential_id: str) -> CredentialView:
    row = ctx.store.credentials.get(credential_id)  # NotFound
    require(ctx, "credential.read", credential_id)
    return _view(ctx, row)


def create(ctx: Context, credential_id: str, secret: dict[str, str], *,
           path: str | None = None, mount: str = "secret") -> tuple[CredentialView, int]:
    """A new credential, by default at the acting user's own path (users/USER/ID; the API
    offers no other), which must be free; the acting user owns it. Its view and version."""
    try:
        ctx.store.credentials.get(credential_id)
        raise Conflict(f"credential {credential_id!r} exists: rotate it, or choose another id")
    except NotFound:
        pass
    path = path or f"users/{ctx.user}/{credential_id}"
    taken = ctx.store.credentials.at(mount, path)
    if taken is not None:
        raise Conflict(f"OpenBao path {mount}/{path} already holds credential {taken!r}")
    _, version = credentials.create(ctx, credential_id, secret, path=path, mount=mount)
    return _view(ctx, ctx.store.credentials.get(credential_id)), version


def rotate(ctx: Context, credential_id: str, secret: dict[str, str]) -> int:
    return credentials.rotate(ctx, credential_id, secret)


def share(ctx: Context, credential_id: str, who: str, *, writer: bool) -> CredentialView:
    """Let a user or a group (group:NAME) read it, or, as a writer, also rotate and bind it.
    Only its owner may (credential.share); the user or group must exist."""
    row = ctx.store.credentials.get(credential_id)
    require(ctx, "credential.share", credential_id)
    target = subject(who)
    if target.type == "user":
        if ctx.store.accounts.get(target.id) is None:
            raise BadInput(f"no user {target.id!r}")
    elif not ctx.store.relationships.has_object("group", target.id):
        raise BadInput(f"no group {target.id!r}")
    credentials.share(ctx, credential_id, who, writer=writer)
    return _view(ctx, row)


def bind(ctx: Context, credential_id: str, resource: str, *, storage: bool,
         remove: bool) -> CredentialView:
    """Bind it to (or unbind it from) a compute or storage resource (credential.bind); a
    binding names a registered resource."""
    from airavata_prefect.usecases.resources import find

    row = ctx.store.credentials.get(credential_id)
    if not remove:
        require(ctx, "credential.bind", credential_id)
        find("storage" if storage else "compute", resource)  # NotFound
    credentials.bind(ctx, credential_id, resource, storage=storage, remove=remove)
    return _view(ctx, row)


def delete(ctx: Context, credential_id: str) -> list[str]:
    """Remove it (owner only: credential.delete): every version in OpenBao, its shares and
    bindings, its row. The bindings it had. Resources whose blocks still point at its path
    fail to resolve it from then on, with a message naming the path."""
    row = ctx.store.credentials.get(credential_id)  # NotFound
    require(ctx, "credential.delete", credential_id)
    svc = _service(ctx)
    try:
        svc.bao.destroy(SecretRef(row.path, row.mount))
    except SecretStoreError as exc:
        audit(ctx, "credential.delete", f"credential:{credential_id}", "error", str(exc))
        raise CredentialError(str(exc)) from None
    own = ctx.store.relationships.of_object("credential", credential_id)
    bound = [r for r in ctx.store.relationships.of_subject("credential", credential_id)
             if r[2] == "bound_credential"]
    for r in own:
        ctx.authz.unrelate("credential", credential_id, r[2], Subject(r[3], r[4], r[5]))
    for r in bound:
        ctx.authz.unrelate(r[0], r[1], r[2], Subject("credential", credential_id))
    ctx.store.credentials.delete(credential_id)
    unbound = [f"{r[0]}:{r[1]}" for r in bound]
    audit(ctx, "credential.delete", f"credential:{credential_id}", "ok",
          f"{row.mount}/{row.path} (every version)"
          + (f"; unbound from {', '.join(unbound)}" if unbound else ""))
    events.credential_changed(ctx.user, "deleted", credential_id, unbound=len(unbound))
    return unbound


def probe(ctx: Context, credential_id: str) -> CredentialProbe:
    """Read it as the acting user (credential.read, audited) and report its keys only. A
    refusal raises (403); OpenBao not holding it is a failed test, not an error."""
    row = ctx.store.credentials.get(credential_id)  # NotFound
    svc = _service(ctx)
    try:
        value = svc.read(ctx.user, credential_id, SecretRef(row.path, row.mount))
    except CredentialError as exc:
        if exc.denied:
            raise
        return CredentialProbe(False, [], str(exc))
    keys = sorted(value)
    del value
    return CredentialProbe(True, keys, f"OpenBao holds {row.mount}/{row.path} and "
                                       f"{ctx.user} may read it")


__all__ = ["CredentialProbe", "CredentialView", "Share", "bind", "create", "delete", "get",
           "list_credentials", "probe", "rotate", "share"]
