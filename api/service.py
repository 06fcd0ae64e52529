"""Experiment use cases shared by the CLI and (later) the REST API: submit, status, cancel."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from airavata_prefect.adapters.db import NewTask, Store
from airavata_prefect.adapters.spicedb import Authz, PermissionDenied, Subject
from airavata_prefect.api.correlation import correlation_id
from airavata_prefect.flows import placement
from airavata_prefect.flows.dag import TaskGraph, compile_graph
from airavata_prefect.flows.params import parse_overrides
from airavata_prefect.flows.problems import SpecError
from airavata_prefect.flows.resources import ComputeResource, local_resource
from airavata_prefect.flows.runner import fail_unfinished
from airavata_prefect.flows.settings import Settings
from airavata_prefect.flows.spec import LoadedSpec, load_spec
from airavata_prefect.flows.states import EXPERIMENT_TERMINAL, ExperimentStatus


def compile_file(path: str | Path, params: list[str], *, root: str,
                 max_instances: int) -> tuple[LoadedSpec, dict[str, str], TaskGraph]:
    """Load, validate and expand; every problem (spec and --param) in one SpecError."""
    overrides, param_problems = parse_overrides(params)
    try:
        loaded = load_spec(path)
        graph = compile_graph(loaded, overrides, root=root, max_instances=max_instances)
    except SpecError as exc:
        raise SpecError([*param_problems, *exc.problems]) from None
    if param_problems:
        raise SpecError(param_problems)
    return loaded, overrides, graph


def plan_experiment(loaded: LoadedSpec, graph: TaskGraph, resources: list[ComputeResource],
                    *, user: str, time_limit: float = placement.TIME_LIMIT_S) -> placement.Plan:
    """Place the experiment's instances on `resources`; unknown resource names in its
    constraints are input errors, located in the spec."""
    names = {r.name for r in resources}
    problems = [loaded.problem(("constraints", key, i),
                               f"unknown resource {name!r} (resources: {', '.join(sorted(names))})")
                for key in ("preferred", "excluded")
                for i, name in enumerate(getattr(loaded.spec.constraints, key))
                if name not in names]
    if problems:
        raise SpecError(problems)
    return placement.plan(placement.task_classes(graph), resources, loaded.spec.constraints,
                          usable=lambda r: r.users is None or user in r.users, user=user,
                          time_limit=time_limit)


class NoPlacement(Exception):
    """No placement satisfies the experiment's needs and constraints (exit status 3)."""


class Unavailable(Exception):
    """An outside service needed for this command does not answer (exit status 1)."""


def registered_resources() -> list[tuple[ComputeResource, object]]:
    """Compute resources registered as blocks in the Prefect API, with their credential refs.
    Empty when no Prefect API is configured (PREFECT_API_URL)."""
    if not os.environ.get("PREFECT_API_URL"):
        return []
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from airavata_prefect.blocks import BareMetalHost, KubernetesCluster, SlurmCluster

    out: list[tuple[ComputeResource, object]] = []
    try:
        with get_client(sync_client=True) as client:
            for cls in (SlurmCluster, KubernetesCluster, BareMetalHost):
                try:
                    docs = client.read_block_documents_by_type(
                        cls.get_block_type_slug(), offset=0, limit=500, include_secrets=False)
                except ObjectNotFound:
                    continue  # the block types are not registered there
                for doc in docs:
                    if doc.name and doc.name != "local" and not doc.is_anonymous:
                        block = cls._from_block_document(doc)  # no call per block
                        out.append((block.to_compute_resource(doc.name), block.credential))
    except (httpx.HTTPError, OSError) as exc:
        raise Unavailable(f"cannot list registered resources: the Prefect API at "
                          f"{os.environ['PREFECT_API_URL']} does not answer ({exc})") from None
    return out


def planning_resources(store: Store, authz: Authz, user: str) -> list[ComputeResource]:
    """This machine and every registered compute resource the user may use (`resource.use`:
    a member of its project). One whose credential the user may not read stays in the list,
    ineligible, so plans say why."""
    pool = [local_resource()]
    for resource, credential in registered_resources():
        if not authz.check(user, "resource.use", resource.name):
            continue  # another project's: not the user's to see
        if credential is not None:
            cid = store.credential_at(credential.mount, credential.path)  # type: ignore[attr-defined]
            allowed = cid is not None and authz.check(user, "credential.read", cid)
            resource = resource.model_copy(update={"users": [user] if allowed else []})
        pool.append(resource)
    return pool


def check_dispatchable(store: Store, authz: Authz, settings: Settings, user: str,
                       loaded: LoadedSpec, placed: dict[str, list[str]],
                       pool: list[ComputeResource]) -> None:
    """Before anything is stored: every resource the plan uses has a deployment for its
    bundles, the user may read the credentials of the storage its steps mount, and OpenBao
    answers when any credential is needed. Raises Unavailable or Forbidden (audited)."""
    used = {r for names in placed.values() for r in set(names)} - {"local"}
    if not used:
        return
    needs_secrets = any(r.users is not None for r in pool if r.name in used)
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from airavata_prefect.flows.bundle_flow import FLOW_NAME
    try:
        with get_client(sync_client=True) as client:
            for name in sorted(used):
                try:
                    client.read_deployment_by_name(f"{FLOW_NAME}/{name}")
                except ObjectNotFound:
                    raise Unavailable(f"compute resource {name} has no work pool deployment: "
                                      "register it with airavata resource compute create"
                                      ) from None
    except httpx.HTTPError as exc:
        raise Unavailable(f"the Prefect API does not answer ({exc})") from None
    from airavata_prefect.agent.storage_blocks import load_storage
    from airavata_prefect.flows.spec import parse_mount
    mounts = {parse_mount(m).storage for step, names in placed.items()
              if set(names) - {"local"} for m in _step_mounts(loaded, step)}
    for name in sorted(mounts):
        try:
            block = asyncio.run(load_storage(name))
        except Exception as exc:
            raise Unavailable(str(exc)) from None
        ref = getattr(block, "credential", None)
        if ref is None:
            continue
        cid = store.credential_at(ref.mount, ref.path)
        if cid is None:
            raise Unavailable(f"storage {name}: no credential is registered at "
                              f"{ref.mount}/{ref.path}")
        require(store, authz, user, "credential.read", cid)
        needs_secrets = True
    if needs_secrets:
        from airavata_prefect.adapters.openbao import OpenBao, SecretUnavailable
        try:  # health needs no token: nothing secret leaves this process for it
            OpenBao(settings.openbao_url, "", timeout=5).check()
        except SecretUnavailable as exc:
            raise Unavailable(f"cannot run: {exc}") from None


def _step_mounts(loaded: LoadedSpec, step: str) -> list[str]:
    task = loaded.spec.tasks[step]
    return loaded.spec.resources.merged(task.resources).storage


class Forbidden(Exception):
    """A permission check refused the action (exit status 4); audited."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{message} (correlation id {correlation_id()})")


def authorizer(store: Store) -> Authz:
    """The permission graph: embedded SpiceDB rebuilt from the store's journal."""
    return Authz.embedded(journal=store)


def ensure_project(store: Store, authz: Authz, project: str, user: str) -> None:
    """A project nobody holds yet is created with `user` as its admin (first use)."""
    if not any(r[0] == "project" and r[1] == project for r in store.load_relationships()):
        authz.relate("project", project, "admin", Subject.user(user))
        store.audit(actor=user, action="project.create", obj=f"project:{project}",
                    correlation_id=correlation_id(), outcome="ok")


def require(store: Store, authz: Authz, user: str, key: str, object_id: str) -> None:
    try:
        authz.require(user, key, object_id)
    except PermissionDenied as exc:
        store.audit(actor=user, action=key, obj=f"{exc.object_type}:{object_id}",
                    correlation_id=correlation_id(), outcome="denied")
        raise Forbidden(f"permission denied: {exc}") from None


def submit(store: Store, settings: Settings, path: str | Path, params: list[str], *,
           user: str, authz: Authz | None = None, project: str | None = None) -> str:
    """Validate, authorise, place and store an experiment with all its task rows; returns its
    id. Raises SpecError (bad input), Forbidden or NoPlacement, and then nothing is stored."""
    project = project or settings.project
    if authz is not None:
        ensure_project(store, authz, project, user)
        require(store, authz, user, "scheduler.queue.submit", project)
    exp_id = str(uuid.uuid4())
    root = settings.runs_dir.resolve() / exp_id
    loaded, overrides, graph = compile_file(path, params, root=str(root),
                                            max_instances=settings.max_instances)
    pool = planning_resources(store, authz, user) if authz is not None else [local_resource()]
    result = plan_experiment(loaded, graph, pool, user=user)
    if result.status == "infeasible":
        raise NoPlacement(result.reason)
    placed = placement.expand(graph, result.counts())
    if authz is not None:
        check_dispatchable(store, authz, settings, user, loaded, placed, pool)
    store.create_experiment(
        experiment_id=exp_id, name=loaded.name, source=str(path), spec_text=loaded.text,
        params=overrides, workdir_root=settings.runs_dir.resolve(), total=graph.total,
        plan=result.to_json(), owner=user, project=project,
        tasks_iter=(NewTask(i.id, i.step, i.index, graph.workdir(i.step, i.index),
                            placed[i.step][i.index]) for i in graph.iter_instances()))
    if authz is not None:
        authz.relate("experiment", exp_id, "owner", Subject.user(user))
        authz.relate("experiment", exp_id, "project", Subject("project", project))
    store.audit(actor=user, action="scheduler.queue.submit", obj=f"experiment:{exp_id}",
                correlation_id=correlation_id(), outcome="ok",
                detail=f"{loaded.name}: {graph.total} tasks")
    return exp_id


def start_runner(exp: dict) -> int:
    """Start the experiment's runner as a detached process; its log is `<workdir>/runner.log`."""
    workdir = Path(exp["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "runner.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "airavata_prefect.flows.runner", exp["id"]],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=workdir)
    return proc.pid


def runner_alive(exp: dict) -> bool:
    pid = exp.get("runner_pid")
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own exited child, not yet reaped) is not alive.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def reconcile(store: Store, exp: dict) -> dict:
    """An experiment whose runner process is gone mid-run is ended here, so no view shows it
    running forever. Safe against a runner that just finished: only non-terminal rows change."""
    if (exp["status"] in EXPERIMENT_TERMINAL or not exp.get("runner_pid")
            or runner_alive(exp)):
        return exp
    if exp["status"] == ExperimentStatus.CANCELING:
        fail_unfinished(store, exp["id"], ExperimentStatus.CANCELED, "canceled")
    else:
        fail_unfinished(store, exp["id"], ExperimentStatus.FAILED,
                        f"runner exited unexpectedly; see {exp['workdir']}/runner.log")
    return store.get_experiment(exp["id"])


@dataclass
class CancelResult:
    accepted: bool
    message: str


def cancel(store: Store, exp_ref: str, *, user: str) -> CancelResult:
    exp = store.get_experiment(exp_ref)
    store.audit(actor=user, action="scheduler.queue.cancel", obj=f"experiment:{exp['id']}",
                correlation_id=correlation_id(),
                outcome="ok" if exp["status"] not in EXPERIMENT_TERMINAL else "refused",
                detail=str(exp["status"]))
    if exp["status"] in EXPERIMENT_TERMINAL:
        return CancelResult(False, f"experiment {exp['id']} already ended ({exp['status']})")
    store.request_cancel(exp["id"])
    store.update_experiment(exp["id"], status=ExperimentStatus.CANCELING,
                            expect=[ExperimentStatus.RUNNING])
    if exp["status"] == ExperimentStatus.CREATED or not runner_alive(exp):
        # No runner will act on the request: cancel what is left here.
        fail_unfinished(store, exp["id"], ExperimentStatus.CANCELED, "canceled")
        return CancelResult(True, f"experiment {exp['id']} canceled")
    return CancelResult(True, f"cancel requested for experiment {exp['id']}; "
                              "running tasks are being stopped")


def prefect_ui_url() -> str | None:
    api = os.environ.get("PREFECT_UI_URL") or os.environ.get("PREFECT_API_URL")
    if not api:
        return None
    return api.rstrip("/").removesuffix("/api")
