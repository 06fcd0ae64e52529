"""Credentials: created, shared, bound, rotated and handed to tasks, each step checked and audited.

SpiceDB says who may; OpenBao holds the secret; our store keeps the audit trail (never a
secret). Resolution for a run stops before anything is dispatched when any step fails, with a
message that names the resource and the missing permission.
"""

from __future__ import annotations

from dataclasses import dataclass

from airavata_prefect.adapters.openbao import OpenBao, SecretRef, SecretStoreError, TaskToken
from airavata_prefect.adapters.spicedb import Authz, AuthzError, PermissionDenied, Subject
from airavata_prefect.adapters.store import Store
from airavata_prefect.domain.errors import NotFound
from airavata_prefect.usecases import events
from airavata_prefect.usecases.authorization import subject
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.correlation import correlation_id
from airavata_prefect.usecases.errors import BadInput


class CredentialError(RuntimeError):
    """Why a credential step was refused; carries the correlation id of its audit rows."""

    def __init__(self, message: str, *, denied: bool = False) -> None:
        self.correlation_id = correlation_id()
        self.denied = denied  # a permission refused, not a failure of OpenBao or SpiceDB
        super().__init__(f"{message} (correlation id {self.correlation_id})")


@dataclass(frozen=True)
class Binding:
    """A resource's bound credential, as a run needs it."""

    resource: str
    credential_id: str
    ref: SecretRef


class CredentialService:
    def __init__(self, store: Store, authz: Authz, bao: OpenBao) -> None:
        self.store, self.authz, self.bao = store, authz, bao

    def _audit(self, actor: str, action: str, obj: str, outcome: str,
               detail: str | None = None) -> None:
        self.store.audit.record(actor=actor, action=action, obj=obj,
                                correlation_id=correlation_id(), outcome=outcome, detail=detail)

    def _require(self, actor: str, key: str, credential_id: str, *, why: str = "") -> None:
        try:
            self.authz.require(actor, key, credential_id)
        except PermissionDenied as exc:
            self._audit(actor, key, f"credential:{credential_id}", "denied")
            raise CredentialError(f"{why}{exc}", denied=True) from None
        except AuthzError as exc:
            self._audit(actor, key, f"credential:{credential_id}", "error", str(exc))
            raise CredentialError(f"{why}{exc}") from None

    def _bao(self, actor: str, action: str, credential_id: str, fn: object, *args: object,
             **kw: object) -> object:
        try:
            return fn(*args, **kw)  # type: ignore[operator]
        except SecretStoreError as exc:
            self._audit(actor, action, f"credential:{credential_id}", "error", str(exc))
            raise CredentialError(str(exc)) from None

    def create(self, actor: str, credential_id: str, ref: SecretRef,
               secret: dict[str, str]) -> int:
        version = self._bao(actor, "credential.create", credential_id, self.bao.put, ref, secret)
        self.authz.relate("credential", credential_id, "owner", Subject.user(actor))
        self._audit(actor, "credential.create", f"credential:{credential_id}", "ok",
                    f"{ref.mount}/{ref.path} version {version}")
        events.credential_changed(actor, "created", credential_id, version=str(version))
        return int(version)  # type: ignore[call-overload]

    def rotate(self, actor: str, credential_id: str, ref: SecretRef,
               secret: dict[str, str]) -> int:
        """A new version: tasks already holding the old one keep it; new tasks get this."""
        self._require(actor, "credential.write", credential_id)
        version = self._bao(actor, "credential.rotate", credential_id, self.bao.put, ref, secret)
        self._audit(actor, "credential.rotate", f"credential:{credential_id}", "ok",
                    f"version {version}")
        events.credential_changed(actor, "rotated", credential_id, version=str(version))
        return int(version)  # type: ignore[call-overload]

    def share(self, actor: str, credential_id: str, with_: Subject,
              relation: str = "reader") -> None:
        self._require(actor, "credential.share", credential_id)
        self.authz.relate("credential", credential_id, relation, with_)
        self._audit(actor, "credential.share", f"credential:{credential_id}", "ok",
                    f"{relation}: {with_.type}:{with_.id}")
        events.credential_changed(actor, "shared", credential_id, role=relation,
                                  grantee=f"{with_.type}:{with_.id}")

    def bind(self, actor: str, credential_id: str, resource_type: str, resource: str) -> None:
        self._binding(actor, credential_id, resource_type, resource, bound=True)

    def unbind(self, actor: str, credential_id: str, resource_type: str, resource: str) -> None:
        self._binding(actor, credential_id, resource_type, resource, bound=False)

    def _binding(self, actor: str, credential_id: str, resource_type: str, resource: str, *,
                 bound: bool) -> None:
        self._require(actor, "credential.bind", credential_id)  # binding either way
        change = self.authz.relate if bound else self.authz.unrelate
        change(resource_type, resource, "bound_credential", Subject("credential", credential_id))
        self._audit(actor, "credential.bind" if bound else "credential.unbind",
                    f"credential:{credential_id}", "ok", f"{resource_type}:{resource}")
        events.credential_changed(actor, "bound" if bound else "unbound", credential_id,
                                  resource=f"{resource_type}:{resource}")

    def read(self, actor: str, credential_id: str, ref: SecretRef) -> dict[str, str]:
        self._require(actor, "credential.read", credential_id)
        value = self._bao(actor, "credential.read", credential_id, self.bao.get, ref)
        self._audit(actor, "credential.read", f"credential:{credential_id}", "ok")
        return value  # type: ignore[return-value]

    def token_for_task(self, actor: str, bindings: list[Binding], *, walltime_seconds: int,
                       task: str) -> TaskToken:
        """Check every binding first, then issue one short-lived token for exactly them.
        Any refusal stops here: nothing is issued, nothing dispatched."""
        try:
            self.bao.check()
        except SecretStoreError as exc:
            self._audit(actor, "credential.read", f"task:{task}", "error", str(exc))
            raise CredentialError(f"cannot run {task}: {exc}") from None
        for b in bindings:
            self._require(actor, "credential.read", b.credential_id,
                          why=f"cannot run {task} on {b.resource}: ")
        token = self._bao(actor, "credential.read", bindings[0].credential_id if bindings
                          else "-", self.bao.issue_task_token, [b.ref for b in bindings],
                          walltime_seconds, task=task)
        for b in bindings:
            self._audit(actor, "credential.read", f"credential:{b.credential_id}", "allowed",
                        f"task token for {task} on {b.resource}")
        return token  # type: ignore[return-value]


# -- what the doors ask ------------------------------------------------------------------------


def _service(ctx: Context) -> CredentialService:
    if ctx.settings.openbao_token is None:
        raise BadInput("AIRAVATA_OPENBAO_TOKEN is not set (the token this CLI uses to reach "
                       "OpenBao)")
    bao = OpenBao(ctx.settings.openbao_url, ctx.settings.openbao_token.get_secret_value())
    return CredentialService(ctx.store, ctx.authz, bao)


def create(ctx: Context, credential_id: str, secret: dict[str, str], *,
           path: str | None = None, mount: str = "secret") -> tuple[SecretRef, int]:
    """Store a new credential in OpenBao; the acting user becomes its owner."""
    svc = _service(ctx)
    try:
        ctx.store.credentials.get(credential_id)
        raise BadInput(f"credential {credential_id!r} exists: use rotate")
    except NotFound:
        pass
    ref = SecretRef(path or f"users/{ctx.user}/{credential_id}", mount)
    version = svc.create(ctx.user, credential_id, ref, secret)
    ctx.store.credentials.add(credential_id, owner=ctx.user, mount=mount, path=ref.path)
    return ref, version


def rotate(ctx: Context, credential_id: str, secret: dict[str, str]) -> int:
    """A new version: running tasks keep theirs, new tasks get this one."""
    svc = _service(ctx)
    row = ctx.store.credentials.get(credential_id)
    return svc.rotate(ctx.user, credential_id, SecretRef(row.path, row.mount), secret)


def share(ctx: Context, credential_id: str, who: str, *, writer: bool) -> None:
    svc = _service(ctx)
    ctx.store.credentials.get(credential_id)
    svc.share(ctx.user, credential_id, subject(who), "writer" if writer else "reader")


def bind(ctx: Context, credential_id: str, resource: str, *, storage: bool,
         remove: bool) -> None:
    svc = _service(ctx)
    ctx.store.credentials.get(credential_id)
    kind = "storage_resource" if storage else "compute_resource"
    (svc.unbind if remove else svc.bind)(ctx.user, credential_id, kind, resource)


__all__ = ["Binding", "CredentialError", "CredentialService", "bind", "create", "rotate",
           "share"]
