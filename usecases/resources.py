"""Registered compute and storage resources, one by one: read, replace, remove and test them.

Registration itself is usecases/registration.py (the CLI's path too); this module adds what a
resource's page needs: who may see it (`scheduler.node.read`, `storage.read`), who may change
or remove it (`scheduler.node.operate`: its project's managers), and a connectivity test that
uses the resource's bound credential as the acting user (`credential.read`, audited), within a
hard deadline, never returning or logging the secret. Every change and every test is audited.
"""

from __future__ import annotations

import contextvars
import json
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from airavata_prefect.adapters import prefect_api
from airavata_prefect.adapters.hosts import HostError, LocalHost, check
from airavata_prefect.adapters.openbao import SecretRef
from airavata_prefect.adapters.slurm import SlurmError
from airavata_prefect.adapters.spicedb import Subject
from airavata_prefect.adapters.ssh import SSHEndpoint, SSHHost
from airavata_prefect.adapters.storage import StorageError
from airavata_prefect.blocks import (
    COMPUTE_KINDS,
    STORAGE_KINDS,
    BareMetalHost,
    ComputeBlock,
    CredentialRef,
    KubernetesCluster,
    LocalStorage,
    SlurmCluster,
    StorageBlock,
)
from airavata_prefect.blocks.slurm import open_slurm
from airavata_prefect.domain.errors import NotFound
from airavata_prefect.domain.resources import LOCAL, local_resource
from airavata_prefect.usecases import events
from airavata_prefect.usecases.authorization import allowed, audit, ensure_project, require
from airavata_prefect.usecases.catalog import credential_id
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.credentials import CredentialError, _service
from airavata_prefect.usecases.dispatch import BUNDLE_FLOW
from airavata_prefect.usecases.errors import BadInput, Conflict, Unavailable
from airavata_prefect.usecases.registration import (
    build_block,
    check_name,
    credential_ref,
    register_compute,
    register_storage,
)

What = Literal["compute", "storage"]
Status = Literal["ok", "failed", "not_checked"]
Block = ComputeBlock | StorageBlock
TEST_DEADLINE_SECONDS = 12.0  # a connectivity test answers within this, whatever the host does
_SSH_TIMEOUT = 8.0
_OBJECT = {"compute": "compute_resource", "storage": "storage_resource"}
_READ = {"compute": "scheduler.node.read", "storage": "storage.read"}
_USE = {"compute": "resource.use", "storage": "storage.read"}
_HIDDEN = {"credential", "block_type_slug"}  # shown apart (the credential by its id)


class _Keep:
    """`update(credential=KEEP)`: leave the bound credential as it is."""


KEEP = _Keep()


@dataclass(frozen=True)
class ResourceView:
    name: str
    kind: str
    project: str | None  # None: not known here (a SpiceDB server keeps no journal with us)
    fields: dict[str, Any]
    credential: str | None  # the bound credential's id (a reference, never a secret)
    can_manage: bool
    work_pool: str | None = None
    worker_type: str | None = None
    # What its staging cache did (compute): files found there, files sent, bytes sent and
    # spared, sends repeated after a checksum mismatch. None: nothing staged there yet.
    staging: dict[str, int] | None = None


@dataclass
class Probe:
    """What a connectivity test tried, in order (when it failed, the last step did), and what
    it found. `status`: ok, failed, or not_checked (nothing here to connect to)."""

    status: Status = "not_checked"
    detail: str = ""
    checked: list[str] = field(default_factory=list)
    seconds: float = 0.0


# -- finding resources ---------------------------------------------------------------------------


def _kinds(what: What) -> dict[str, type[Any]]:
    return dict(COMPUTE_KINDS if what == "compute" else STORAGE_KINDS)


def _slugs(what: What) -> list[str]:
    return [k.get_block_type_slug() for k in _kinds(what).values()]


def _blocks(what: What, name: str | None = None) -> list[tuple[str, Block]]:
    if prefect_api.api_url() is None:
        raise Unavailable("no Prefect API is configured (PREFECT_API_URL): registered "
                          "resources live there")
    try:
        found = prefect_api.read_blocks(_slugs(what), name)
    except prefect_api.PrefectUnavailable as exc:
        raise Unavailable(str(exc)) from None
    cls = ComputeBlock if what == "compute" else StorageBlock
    return [(n, b) for n, b in found if isinstance(b, cls)
            and not (what == "compute" and n == LOCAL)]


def find(what: What, name: str) -> Block:
    """The registered resource, or NotFound."""
    for n, block in _blocks(what, name):
        if n == name:
            return block
    raise NotFound(f"no {what} resource {name!r} is registered")


def _ref(block: Block) -> CredentialRef | None:
    return block.credential if isinstance(block, ComputeBlock) else block.credential_ref


def project_of(ctx: Context, what: What, name: str) -> str | None:
    """The project a resource belongs to, from the permission graph's journal."""
    for row in ctx.store.relationships.of_object(_OBJECT[what], name):
        if row[2] == "project":
            return row[4]
    return None


def _may_operate(ctx: Context, what: What, name: str, project: str | None) -> bool:
    return allowed(ctx, "scheduler.node.operate" if what == "compute" else "storage.operate",
                   name)


def _require_operate(ctx: Context, what: What, name: str) -> str | None:
    """Refuse (audited) unless the acting user manages the resource; its project."""
    project = project_of(ctx, what, name)
    require(ctx, "scheduler.node.operate" if what == "compute" else "storage.operate", name)
    return project


def _view(ctx: Context, what: What, name: str, block: Block) -> ResourceView:
    project = project_of(ctx, what, name)
    fields = {k: v for k, v in block.model_dump(mode="json", exclude=_HIDDEN).items()
              if not k.startswith("_")}  # a saved block's document id and name
    pool, worker_type = (block.work_pool_name, type(block).worker_type) \
        if isinstance(block, ComputeBlock) else (None, None)
    return ResourceView(
        name=name, kind=type(block).kind, project=project, fields=fields,
        credential=credential_id(ctx, _ref(block)),
        can_manage=_may_operate(ctx, what, name, project),
        work_pool=pool, worker_type=worker_type,
        staging=_staging(ctx, name) if what == "compute" else None)


def _staging(ctx: Context, name: str) -> dict[str, int] | None:
    totals = ctx.store.staging.totals(name)
    if not totals:
        return None
    t = totals[0]
    return {"cache_hits": t.hits, "cache_misses": t.misses, "bytes_sent": t.bytes_moved,
            "bytes_spared": t.bytes_saved, "resent_after_mismatch": t.retries}


def _local_view() -> ResourceView:
    fields = local_resource().model_dump(mode="json", exclude={"name", "type"})
    return ResourceView(name=LOCAL, kind="local", project=None, fields=fields, credential=None,
                        can_manage=False)


def list_resources(ctx: Context, what: What) -> list[ResourceView]:
    """Those the acting user may read (compute: `local`, this machine, first)."""
    out = [_local_view()] if what == "compute" else []
    for name, block in sorted(_blocks(what), key=lambda nb: nb[0]):
        if allowed(ctx, _READ[what], name):
            out.append(_view(ctx, what, name, block))
    return out


def get(ctx: Context, what: What, name: str) -> ResourceView:
    if what == "compute" and name == LOCAL:
        return _local_view()
    block = find(what, name)
    require(ctx, _READ[what], name)
    return _view(ctx, what, name, block)


# -- creating and replacing ----------------------------------------------------------------------


def _fields(what: What, kind: str, cls: type[Any], fields: dict[str, Any]) -> dict[str, Any]:
    known = {k for k in cls.model_fields if k not in _HIDDEN}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise BadInput(f"fields.{unknown[0]}: {kind} {what} resources have no field "
                       f"{unknown[0]!r} (fields: {', '.join(sorted(known))})")
    return dict(fields)


def _not_local(what: What, name: str) -> None:
    if what == "compute" and name == LOCAL:
        raise BadInput(f"{LOCAL!r} is this machine, built in: it cannot be registered, "
                       "changed or removed")


def create(ctx: Context, what: What, name: str, kind: str, fields: dict[str, Any], *,
           project: str, credential: str | None) -> ResourceView:
    """Register a resource (needs project.manage in `project`; credential.bind on the
    credential); refuses a name already registered."""
    kinds = _kinds(what)
    if kind not in kinds:
        raise BadInput(f"unknown {what} kind {kind!r} (one of: {', '.join(kinds)})")
    check_name(name)
    _not_local(what, name)
    ensure_project(ctx, project)
    require(ctx, "project.manage", project)
    cls = kinds[kind]
    data = _fields(what, kind, cls, fields)
    if any(n == name for n, _ in _blocks(what, name)):
        raise Conflict(f"{what} resource {name!r} exists: use --replace (or PUT "
                       f"/resources/{what}/{name}) to change it")
    if what == "compute":
        data.setdefault("work_pool_name", name)
    ref = credential_ref(ctx, credential)
    if ref is not None and what == "storage" and not cls.needs_credential:
        raise BadInput(f"a {kind} storage resource takes no credential")
    block = build_block(cls, data, ref)
    if what == "compute":
        register_compute(ctx, project=project, name=name, block=block)
    else:
        register_storage(ctx, project=project, name=name, block=block)
    events.resource_changed(ctx, "registered", what, name, project=project, kind=kind)
    return _view(ctx, what, name, block)


def update(ctx: Context, what: What, name: str, fields: dict[str, Any], *,
           kind: str | None = None, project: str | None = None,
           credential: str | _Keep | None = KEEP) -> ResourceView:
    """Replace a resource's fields (those not given take their defaults; a compute resource
    keeps its work pool unless `work_pool_name` is given). `project` moves it (needs
    project.manage there too); `credential` None unbinds, an id binds (credential.bind)."""
    _not_local(what, name)
    old = find(what, name)
    current = _require_operate(ctx, what, name)
    cls = type(old)
    if kind is not None and kind != cls.kind:
        raise BadInput(f"{name} is a {cls.kind} resource: a resource keeps its kind (remove "
                       "it and register it again)")
    target = project or current
    if target is None:
        raise BadInput(f"the project of {what} resource {name!r} is not known here: give "
                       "project")
    if target != current:
        require(ctx, "project.manage", target)
    data = _fields(what, cls.kind, cls, fields)
    if isinstance(old, ComputeBlock):
        data.setdefault("work_pool_name", old.work_pool_name)
    old_ref = _ref(old)
    ref = old_ref if isinstance(credential, _Keep) else credential_ref(ctx, credential)
    if ref is not None and isinstance(old, StorageBlock) and not old.needs_credential:
        raise BadInput(f"a {cls.kind} storage resource takes no credential")
    block = build_block(cls, data, ref)
    if isinstance(block, ComputeBlock):
        register_compute(ctx, project=target, name=name, block=block, replace=True)
    else:
        register_storage(ctx, project=target, name=name, block=block, replace=True)
    object_type = _OBJECT[what]
    if current is not None and current != target:
        ctx.authz.unrelate(object_type, name, "project", Subject("project", current))
    old_cid, new_cid = credential_id(ctx, old_ref), credential_id(ctx, ref)
    if old_cid and old_cid != new_cid:
        ctx.authz.unrelate(object_type, name, "bound_credential", Subject("credential", old_cid))
    audit(ctx, "resource.update", f"{object_type}:{name}", "ok",
          f"fields: {', '.join(sorted(fields)) or '-'}; project {target}; "
          f"credential {new_cid or '-'}")
    events.resource_changed(ctx, "updated", what, name, project=target, kind=cls.kind)
    return _view(ctx, what, name, block)


# -- removing ------------------------------------------------------------------------------------


def _drop_deployment_and_pool(name: str, pool: str) -> list[str]:
    """The resource's bundle deployment, and its work pool when registration named it after
    the resource and no other registered compute resource uses it. What went."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    gone: list[str] = []
    users = {b.work_pool_name for n, b in _blocks("compute")
             if isinstance(b, ComputeBlock) and n != name}
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(f"{BUNDLE_FLOW}/{name}")
            client.delete_deployment(deployment.id)
            gone.append(f"deployment {BUNDLE_FLOW}/{name}")
        except ObjectNotFound:
            pass
        if pool == name and pool not in users:
            try:
                client.delete_work_pool(pool)
                gone.append(f"work pool {pool}")
            except ObjectNotFound:
                pass
    return gone


def delete(ctx: Context, what: What, name: str) -> None:
    """Remove the block, (compute) its deployment and own work pool, and its relationships."""
    _not_local(what, name)
    block = find(what, name)
    project = _require_operate(ctx, what, name)
    try:
        type(block).delete(name)
    except (OSError, RuntimeError) as exc:
        raise Unavailable(f"cannot remove block {name!r}: {type(exc).__name__}") from None
    gone = [f"block {name}"]
    if isinstance(block, ComputeBlock):
        gone += _drop_deployment_and_pool(name, block.work_pool_name)
    object_type = _OBJECT[what]
    rows = ctx.store.relationships.of_object(object_type, name)
    cid = credential_id(ctx, _ref(block))
    if cid and not any(r[2] == "bound_credential" and r[4] == cid for r in rows):
        rows.append((object_type, name, "bound_credential", "credential", cid, ""))
    for row in rows:
        ctx.authz.unrelate(object_type, name, row[2], Subject(row[3], row[4], row[5]))
    audit(ctx, "resource.delete", f"{object_type}:{name}", "ok", "; ".join(gone))
    events.resource_changed(ctx, "removed", what, name, project=project, kind=block.kind)


# -- connectivity tests --------------------------------------------------------------------------


def _secret(ctx: Context, what: What, name: str, block: Block, probe: Probe
            ) -> dict[str, str] | None:
    """The bound credential's value, read as the acting user (credential.read, audited)."""
    ref = _ref(block)
    if ref is None:
        return None
    cid = credential_id(ctx, ref)
    probe.checked.append(f"read its credential {cid or f'at {ref.mount}/{ref.path}'} from "
                         f"OpenBao as {ctx.user}")
    if cid is None:
        raise _Failed(f"its credential reference {ref.mount}/{ref.path} names no registered "
                      "credential")
    return _service(ctx).read(ctx.user, cid, SecretRef(ref.path, ref.mount, ref.version))


class _Failed(Exception):
    pass


def _exports(env: dict[str, str]) -> str:
    import shlex
    return "".join(f"export {k}={shlex.quote(v)}; " for k, v in env.items())


def _probe_slurm(block: SlurmCluster, secret: dict[str, str] | None, probe: Probe) -> str:
    if block.submit_via == "local":
        probe.checked.append("run `sinfo --version` on the API server's host (submit_via "
                             "local)")
        check(LocalHost(block.environment), "sinfo --version", timeout=_SSH_TIMEOUT,
              what="sinfo --version")
        return "the local SLURM commands answer"
    client, host = open_slurm(block, secret)
    try:
        if isinstance(host, SSHHost):
            probe.checked.append(f"SSH to {host.name} with the pinned host key and the "
                                 "credential's key")
            check(host, "true", timeout=_SSH_TIMEOUT, what="a login")
        if block.submit_via == "ssh":
            probe.checked.append(f"run `sinfo --version` on {host.name}")
            check(host, _exports(block.environment) + "sinfo --version",
                  timeout=_SSH_TIMEOUT, what="sinfo --version")
            return f"SLURM answers on {host.name}"
        probe.checked.append(f"an authenticated request to slurmrestd at {block.rest_url}")
        client.tasks(["1"])  # a job's status: an unknown job is no error, a bad token is
        return f"slurmrestd at {block.rest_url} accepts the credential's token"
    finally:
        host.close()
        closer = getattr(client, "close", None)
        if callable(closer):
            closer()


def _probe_baremetal(block: BareMetalHost, secret: dict[str, str] | None, probe: Probe) -> str:
    if not secret or "private_key" not in secret:
        raise _Failed("no credential with a private_key is bound to it: cannot log in")
    host = SSHHost(SSHEndpoint(block.host, block.port, block.username, block.host_key),
                   secret["private_key"], passphrase=secret.get("passphrase"),
                   timeout=_SSH_TIMEOUT)
    probe.checked.append(f"SSH to {host.name} with the pinned host key and the credential's "
                         "key")
    try:
        check(host, "true", timeout=_SSH_TIMEOUT, what="a login")
    finally:
        host.close()
    return f"logged in to {host.name}"


def _probe_storage(name: str, block: StorageBlock, secret: dict[str, str] | None,
                   probe: Probe) -> str:
    if isinstance(block, LocalStorage):
        probe.checked.append(f"look for {block.path} on the API server's host")
        if not os.path.isdir(block.path):
            probe.status = "not_checked"
            return (f"a local path: nothing to connect to; {block.path} is not visible from "
                    "the API server's host (it may be on the compute resources only)")
        return f"a local path: nothing to connect to; {block.path} is there"
    marker = f".airavata-connectivity-{uuid.uuid4().hex[:12]}"
    probe.checked.append(f"list {marker} on it with the credential")
    with tempfile.TemporaryDirectory(prefix="airavata-probe-") as tmp:
        try:
            block.reader(name, secret).fetch(marker, Path(tmp))
        except StorageError as exc:
            if "has nothing at" not in str(exc):  # it answered: nothing there, as expected
                raise
    return f"storage {name} answers and accepts the credential"


def _job(ctx: Context, what: What, name: str, block: Block, probe: Probe) -> str:
    """Runs in the probe's thread: read the secret, reach the resource; the detail."""
    if isinstance(block, StorageBlock):
        return _probe_storage(name, block, _secret(ctx, what, name, block, probe), probe)
    if isinstance(block, SlurmCluster):
        return _probe_slurm(block, _secret(ctx, what, name, block, probe), probe)
    if isinstance(block, BareMetalHost):
        return _probe_baremetal(block, _secret(ctx, what, name, block, probe), probe)
    kind = "a Kubernetes cluster" if isinstance(block, KubernetesCluster) \
        else f"a {type(block).kind} resource"
    probe.status = "not_checked"
    probe.checked.append("load its block from Prefect")
    return (f"{kind} is reached by its worker's own configuration, not from the API server: "
            "nothing was connected to")


def check_connectivity(ctx: Context, what: What, name: str) -> Probe:
    """Reach the resource the way its bundles would, with its bound credential read as the
    acting user; answers within TEST_DEADLINE_SECONDS whatever the host does. Audited."""
    start = time.monotonic()
    probe = Probe(status="ok")
    if what == "compute" and name == LOCAL:
        probe.detail = "this machine: nothing to connect to"
        return probe
    block = find(what, name)
    require(ctx, _USE[what], name)
    answer: list[tuple[Status, str]] = []
    refused: list[CredentialError] = []

    def guarded() -> None:
        try:
            detail = _job(ctx, what, name, block, probe)
            answer.append((probe.status, detail))
        except CredentialError as exc:
            if exc.denied:
                refused.append(exc)
            answer.append(("failed", str(exc)))
        except (_Failed, HostError, SlurmError, StorageError, BadInput) as exc:
            answer.append(("failed", str(exc)))
        except (OSError, ValueError) as exc:
            answer.append(("failed", f"{type(exc).__name__}: {exc}"))
        except Exception as exc:  # never a traceback (or a secret in one) to the caller
            answer.append(("failed", f"unexpected {type(exc).__name__}"))

    # in this request's context: the credential read is audited under its correlation id
    worker = threading.Thread(target=contextvars.copy_context().run, args=(guarded,),
                              name=f"probe-{name}", daemon=True)
    worker.start()
    worker.join(TEST_DEADLINE_SECONDS)
    if refused:
        raise refused[0]  # 403: audited where it was refused
    status, detail = answer[0] if answer else (
        "failed", f"no answer within {TEST_DEADLINE_SECONDS:.0f} s")  # it ends on its own
    result = Probe(status, detail, list(probe.checked), round(time.monotonic() - start, 3))
    audit(ctx, "resource.test", f"{_OBJECT[what]}:{name}",
          "error" if status == "failed" else "ok",
          json.dumps({"status": status, "checked": result.checked, "detail": detail})[:2000])
    events.resource_changed(ctx, "tested", what, name, status=status, detail=detail)
    return result


__all__ = ["KEEP", "TEST_DEADLINE_SECONDS", "Probe", "ResourceView", "check_connectivity",
           "create", "delete", "find", "get", "list_resources", "project_of", "update"]
