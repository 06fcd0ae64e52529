"""/resources/compute, /resources/storage and /credentials, in the shapes of Apache Airavata's
API: register, read, replace, remove and test resources; create, share, bind, rotate, test and
remove credentials. A credential's values are write-only: no route returns one, and none is
logged or audited (only the names of its keys)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints

from airavata_prefect.api.rest.deps import Ctx, Writer
from airavata_prefect.api.rest.errors import CONFLICT, UNAVAILABLE, ErrorOut
from airavata_prefect.usecases import credential_queries, resource_status, resources
from airavata_prefect.usecases.resources import KEEP, Probe, ResourceView, What

router = APIRouter(tags=["resources"])
_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"  # a resource: it names a Prefect block and work pool
_ID = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"  # a credential: a SpiceDB object id too
_PROJECT = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"  # what SpiceDB takes as an object id
ResourceName = Annotated[str, Path(min_length=1, max_length=63, pattern=_NAME,
                                   description="the resource's name (its Prefect block)")]
CredentialId = Annotated[str, Path(min_length=1, max_length=200)]
Responses = dict[int | str, dict[str, Any]]


def _declare(*parts: Mapping[int, dict[str, Any]] | Mapping[int | str, dict[str, Any]]
             ) -> Responses:
    return {code: doc for part in parts for code, doc in part.items()}


BAD_GATEWAY: Responses = {502: {"model": ErrorOut, "description": "OpenBao or SpiceDB failed "
                                                                  "a credential step (not a "
                                                                  "refusal)"}}
PREFECT = _declare(UNAVAILABLE)  # registered resources live in the Prefect API
SECRETS = _declare(BAD_GATEWAY, UNAVAILABLE)
CREATED = _declare(CONFLICT, UNAVAILABLE)
CREATED_SECRET = _declare(CONFLICT, BAD_GATEWAY, UNAVAILABLE)
SecretKey = Annotated[str, StringConstraints(min_length=1, max_length=100,
                                             pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")]
SecretValue = Annotated[str, StringConstraints(max_length=64 * 1024)]
Secret = Annotated[dict[SecretKey, SecretValue], Field(
    min_length=1, max_length=32,
    description="the values, by key (e.g. private_key, token, access_key): write-only, "
                "stored in OpenBao, never returned")]
Fields = Annotated[dict[str, Any], Field(
    max_length=100, description="the kind's fields (JSON values), e.g. {\"login_host\": "
                                "\"10.0.0.5\", \"username\": \"alice\", \"nodes\": 4}")]


# -- resources -------------------------------------------------------------------------------


class ResourceIn(BaseModel):
    name: str = Field(min_length=1, max_length=63,
                      description="lowercase letters, digits and '-': it names the Prefect "
                                  "block (and, for compute, its work pool)")
    kind: str = Field(min_length=1, max_length=40,
                      description="compute: slurm | baremetal | kubernetes; "
                                  "storage: s3 | sftp | local")
    project: str = Field(min_length=1, max_length=200, pattern=_PROJECT,
                         description="the project that may use it (you need project.manage)")
    fields: Fields = Field(default_factory=dict)
    credential: str | None = Field(None, min_length=1, max_length=200, pattern=_ID,
                                   description="a credential to bind (credential.bind)")


class ResourceUpdate(BaseModel):
    fields: Fields = Field(default_factory=dict,
                           description="replaces every field: those not given take their "
                                       "defaults (a compute resource keeps its work pool)")
    kind: str | None = Field(None, min_length=1, max_length=40,
                             description="must be its kind if given")
    project: str | None = Field(None, min_length=1, max_length=200, pattern=_PROJECT,
                                description="move it to this project (project.manage there)")
    credential: str | None = Field(None, min_length=1, max_length=200, pattern=_ID,
                                   description="absent: keep the bound credential; null: "
                                               "unbind it; an id: bind that one")


class ResourceOut(BaseModel):
    name: str
    kind: str
    project: str | None = Field(description="null: not known to this server")
    fields: dict[str, Any]
    credential: str | None = Field(description="the bound credential's id")
    can_manage: bool
    work_pool: str | None = None
    worker_type: str | None = None
    staging: dict[str, int] | None = Field(
        default=None, description="compute: its staging cache's totals (cache_hits, "
        "cache_misses, bytes_sent, bytes_spared, resent_after_mismatch); null: none yet")


class ProbeOut(BaseModel):
    status: Literal["ok", "failed", "not_checked"]
    detail: str
    checked: list[str] = Field(description="what was tried, in order (when it failed, the "
                                           "last step did)")
    seconds: float


class StatusOut(BaseModel):
    name: str
    kind: str
    work_pool: str | None
    pool_status: str | None = Field(description="READY, NOT_READY or PAUSED; null: the work "
                                                "pool does not exist")
    workers: list[str] = Field(description="the workers polling its pool now")
    queued: int = Field(description="instances queued there (every user's; a number only)")
    running: int = Field(description="instances past the queue: staging, running, staging out")
    ready: bool = Field(description="work placed here would start: a ready pool with a worker")
    mode: str = Field(description="bundle or pilot (local: process or pilot)")
    agents: int = Field(description="pilot agents alive there now (every user's; a number)")
    agent_slots: int = Field(description="instances those agents run at once")


def _status(s: resource_status.ResourceStatus) -> StatusOut:
    return StatusOut(name=s.name, kind=s.kind, work_pool=s.work_pool, pool_status=s.pool_status,
                     workers=s.workers, queued=s.queued, running=s.running, ready=s.ready,
                     mode=s.mode, agents=s.agents, agent_slots=s.agent_slots)


def _resource(v: ResourceView) -> ResourceOut:
    return ResourceOut(name=v.name, kind=v.kind, project=v.project, fields=v.fields,
                       credential=v.credential, can_manage=v.can_manage, work_pool=v.work_pool,
                       worker_type=v.worker_type, staging=v.staging)


def _probe(p: Probe) -> ProbeOut:
    return ProbeOut(status=p.status, detail=p.detail, checked=p.checked, seconds=p.seconds)


def _update(ctx: Ctx, what: What, name: str, body: ResourceUpdate) -> ResourceOut:
    credential = body.credential if "credential" in body.model_fields_set else KEEP
    return _resource(resources.update(ctx, what, name, body.fields, kind=body.kind,
                                      project=body.project, credential=credential))


@router.get("/resources/compute", response_model=list[ResourceOut], responses=PREFECT)
def list_compute(ctx: Ctx) -> list[ResourceOut]:
    """The compute resources you may read (`local`, this machine, first)."""
    return [_resource(v) for v in resources.list_resources(ctx, "compute")]


@router.post("/resources/compute", response_model=ResourceOut, status_code=201,
             responses=CREATED)
def create_compute(body: ResourceIn, ctx: Ctx, _: Writer) -> ResourceOut:
    """Register a compute resource: its block, work pool and bundle deployment (needs
    project.manage)."""
    return _resource(resources.create(ctx, "compute", body.name, body.kind, body.fields,
                                      project=body.project, credential=body.credential))


@router.get("/resources/compute/{name}", response_model=ResourceOut, responses=PREFECT)
def get_compute(ctx: Ctx, name: ResourceName) -> ResourceOut:
    return _resource(resources.get(ctx, "compute", name))


@router.put("/resources/compute/{name}", response_model=ResourceOut, responses=PREFECT)
def update_compute(body: ResourceUpdate, ctx: Ctx, _: Writer, name: ResourceName
                   ) -> ResourceOut:
    """Replace its fields (needs scheduler.node.operate: its project's managers)."""
    return _update(ctx, "compute", name, body)


@router.delete("/resources/compute/{name}", status_code=204, responses=PREFECT)
def delete_compute(ctx: Ctx, _: Writer, name: ResourceName) -> None:
    """Remove it: its block, bundle deployment, own work pool and relationships."""
    resources.delete(ctx, "compute", name)


@router.post("/resources/compute/{name}/test", response_model=ProbeOut, responses=SECRETS)
def test_compute(ctx: Ctx, _: Writer, name: ResourceName) -> ProbeOut:
    """Reach it as its bundles would, with its credential read as you (resource.use,
    credential.read); answers within about 12 s, never with a secret."""
    return _probe(resources.check_connectivity(ctx, "compute", name))


@router.get("/resources/status", response_model=list[StatusOut], responses=PREFECT)
def compute_status(ctx: Ctx) -> list[StatusOut]:
    """How each compute resource you may read stands now: its work pool, its workers, and the
    instances queued and running there."""
    return [_status(s) for s in resource_status.status(ctx)]


@router.get("/resources/compute/{name}/status", response_model=StatusOut, responses=PREFECT)
def one_compute_status(ctx: Ctx, name: ResourceName) -> StatusOut:
    return _status(resource_status.status(ctx, name)[0])


@router.get("/resources/storage", response_model=list[ResourceOut], responses=PREFECT)
def list_storage(ctx: Ctx) -> list[ResourceOut]:
    """The storage resources you may read."""
    return [_resource(v) for v in resources.list_resources(ctx, "storage")]


@router.post("/resources/storage", response_model=ResourceOut, status_code=201,
             responses=CREATED)
def create_storage(body: ResourceIn, ctx: Ctx, _: Writer) -> ResourceOut:
    """Register a storage resource that experiments mount as NAME:/path (needs
    project.manage)."""
    return _resource(resources.create(ctx, "storage", body.name, body.kind, body.fields,
                                      project=body.project, credential=body.credential))


@router.get("/resources/storage/{name}", response_model=ResourceOut, responses=PREFECT)
def get_storage(ctx: Ctx, name: ResourceName) -> ResourceOut:
    return _resource(resources.get(ctx, "storage", name))


@router.put("/resources/storage/{name}", response_model=ResourceOut, responses=PREFECT)
def update_storage(body: ResourceUpdate, ctx: Ctx, _: Writer, name: ResourceName
                   ) -> ResourceOut:
    """Replace its fields (needs its project's project.manage)."""
    return _update(ctx, "storage", name, body)


@router.delete("/resources/storage/{name}", status_code=204, responses=PREFECT)
def delete_storage(ctx: Ctx, _: Writer, name: ResourceName) -> None:
    resources.delete(ctx, "storage", name)


@router.post("/resources/storage/{name}/test", response_model=ProbeOut, responses=SECRETS)
def test_storage(ctx: Ctx, _: Writer, name: ResourceName) -> ProbeOut:
    """List it with its credential read as you (storage.read, credential.read); a local path
    is only looked for on the server's host."""
    return _probe(resources.check_connectivity(ctx, "storage", name))


# -- credentials -----------------------------------------------------------------------------


class CredentialIn(BaseModel):
    id: str = Field(pattern=_ID, description="a name, e.g. alice-ssh-cluster-a")
    secret: Secret


class RotateIn(BaseModel):
    secret: Secret


class ShareIn(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    with_: str = Field(alias="with", min_length=1, max_length=200,
                       pattern=r"^(group:)?[A-Za-z0-9][A-Za-z0-9_-]*$",
                       description="a user, or group:NAME")
    writer: StrictBool = Field(False, description="may also rotate and bind it")


class BindIn(BaseModel):
    resource: str = Field(min_length=1, max_length=63, pattern=_NAME)
    storage: StrictBool = Field(False, description="the resource is a storage resource")


class ShareOut(BaseModel):
    who: str
    role: str


class CredentialOut(BaseModel):
    id: str
    owner: str
    mount: str
    path: str = Field(description="where it lives in OpenBao (a reference, not the secret)")
    may_write: bool
    may_share: bool
    may_delete: bool
    bindings: list[str] | None = Field(description="resources it is bound to, "
                                                   "type:name; null: not known here")
    shared_with: list[ShareOut] | None = Field(description="shown to those who may share it")


class CredentialCreated(CredentialOut):
    version: int


class Version(BaseModel):
    id: str
    version: int


class CredentialProbeOut(BaseModel):
    ok: bool
    keys: list[str] = Field(description="the names of its values (never a value)")
    detail: str


def _credential(v: credential_queries.CredentialView) -> CredentialOut:
    return CredentialOut(
        id=v.id, owner=v.owner, mount=v.mount, path=v.path, may_write=v.may_write,
        may_share=v.may_share, may_delete=v.may_delete, bindings=v.bindings,
        shared_with=None if v.shared_with is None
        else [ShareOut(who=s.who, role=s.role) for s in v.shared_with])


@router.post("/credentials", response_model=CredentialCreated, status_code=201,
             tags=["credentials"], responses=CREATED_SECRET)
def create_credential(body: CredentialIn, ctx: Ctx, _: Writer) -> CredentialCreated:
    """Store a new credential in OpenBao (at users/YOU/ID); you own it."""
    view, version = credential_queries.create(ctx, body.id, body.secret)
    return CredentialCreated(**_credential(view).model_dump(), version=version)


@router.get("/credentials", response_model=list[CredentialOut], tags=["credentials"])
def list_credentials(ctx: Ctx) -> list[CredentialOut]:
    """The credentials you may read: metadata only."""
    return [_credential(v) for v in credential_queries.list_credentials(ctx)]


@router.get("/credentials/{credential_id}", response_model=CredentialOut, tags=["credentials"])
def get_credential(ctx: Ctx, credential_id: CredentialId) -> CredentialOut:
    return _credential(credential_queries.get(ctx, credential_id))


@router.delete("/credentials/{credential_id}", status_code=204, tags=["credentials"],
                responses=SECRETS)
def delete_credential(ctx: Ctx, _: Writer, credential_id: CredentialId) -> None:
    """Remove it from OpenBao (every version), with its shares and bindings (owner only)."""
    credential_queries.delete(ctx, credential_id)


@router.post("/credentials/{credential_id}/share", response_model=CredentialOut,
             tags=["credentials"], responses=SECRETS)
def share_credential(body: ShareIn, ctx: Ctx, _: Writer, credential_id: CredentialId
                     ) -> CredentialOut:
    """Let a user or group read it (or, as writer, also rotate and bind it); owner only."""
    return _credential(credential_queries.share(ctx, credential_id, body.with_,
                                                writer=body.writer))


@router.post("/credentials/{credential_id}/bind", response_model=CredentialOut,
             tags=["credentials"], responses=SECRETS)
def bind_credential(body: BindIn, ctx: Ctx, _: Writer, credential_id: CredentialId
                    ) -> CredentialOut:
    return _credential(credential_queries.bind(ctx, credential_id, body.resource,
                                               storage=body.storage, remove=False))


@router.post("/credentials/{credential_id}/unbind", response_model=CredentialOut,
             tags=["credentials"], responses=SECRETS)
def unbind_credential(body: BindIn, ctx: Ctx, _: Writer, credential_id: CredentialId
                      ) -> CredentialOut:
    return _credential(credential_queries.bind(ctx, credential_id, body.resource,
                                               storage=body.storage, remove=True))


@router.post("/credentials/{credential_id}/rotate", response_model=Version,
             tags=["credentials"], responses=SECRETS)
def rotate_credential(body: RotateIn, ctx: Ctx, _: Writer, credential_id: CredentialId
                      ) -> Version:
    """A new version: running tasks keep theirs, new tasks get this one."""
    return Version(id=credential_id,
                   version=credential_queries.rotate(ctx, credential_id, body.secret))


@router.post("/credentials/{credential_id}/test", response_model=CredentialProbeOut,
             tags=["credentials"], responses=SECRETS)
def test_credential(ctx: Ctx, _: Writer, credential_id: CredentialId) -> CredentialProbeOut:
    """Prove you may read it and OpenBao holds it; only its keys' names come back."""
    p = credential_queries.probe(ctx, credential_id)
    return CredentialProbeOut(ok=p.ok, keys=p.keys, detail=p.detail)
