"""Submitting an experiment: validate, authorise, place, check that every resource the plan
uses can be reached, then store the experiment with all its task rows. When anything refuses,
nothing is stored."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from airavata_prefect.domain.lineage import script_sha256
from airavata_prefect.domain.plan import Plan, expand
from airavata_prefect.domain.records import NewTask
from airavata_prefect.domain.resources import LOCAL, ComputeResource, local_resource
from airavata_prefect.domain.spec import LoadedSpec, parse_mount
from airavata_prefect.usecases import events
from airavata_prefect.usecases.authorization import audit, ensure_project, require
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.errors import BadInput, NoPlacement, Unavailable
from airavata_prefect.usecases.plan import compile_file, learned_runtimes, plan_experiment


def _uses_prefect() -> bool:
    # Registered resources live in the Prefect API; without one, only this machine exists
    # (and this command need not load Prefect at all).
    return bool(os.environ.get("PREFECT_API_URL"))


def planning_pool(ctx: Context) -> list[ComputeResource]:
    if not _uses_prefect():
        return [local_resource()]
    from airavata_prefect.usecases.catalog import planning_resources
    return planning_resources(ctx)


def check_dispatchable(ctx: Context, loaded: LoadedSpec, placed: dict[str, list[str]],
                       pool: list[ComputeResource]) -> None:
    """Before anything is stored: every resource the plan uses has a deployment for its
    bundles, the user may read the credentials of the storage its steps mount, and OpenBao
    answers when any credential is needed. Raises Unavailable or Forbidden (audited)."""
    used = {r for names in placed.values() for r in set(names)} - {LOCAL}
    if not used:
        return
    from airavata_prefect.adapters import prefect_api
    from airavata_prefect.usecases.catalog import credential_id, load_storage
    from airavata_prefect.usecases.dispatch import BUNDLE_FLOW

    needs_secrets = any(r.users is not None for r in pool if r.name in used)
    for name in sorted(used):
        try:
            if not prefect_api.deployment_exists(f"{BUNDLE_FLOW}/{name}"):
                raise Unavailable(f"compute resource {name} has no work pool deployment: "
                                  "register it with airavata resource compute create")
        except prefect_api.PrefectUnavailable as exc:
            raise Unavailable(str(exc)) from None
    spec = loaded.spec
    mounts = {parse_mount(m).storage for step, names in placed.items() if set(names) - {LOCAL}
              for m in spec.resources.merged(spec.tasks[step].resources).storage}
    for name in sorted(mounts):
        try:
            block = asyncio.run(load_storage(name))
        except Exception as exc:
            raise Unavailable(str(exc)) from None
        if block.credential_ref is None:
            continue
        cid = credential_id(ctx, block.credential_ref)
        if cid is None:
            ref = block.credential_ref
            raise Unavailable(f"storage {name}: no credential is registered at "
                              f"{ref.mount}/{ref.path}")
        require(ctx, "credential.read", cid)
        needs_secrets = True
    if needs_secrets:
        from airavata_prefect.adapters.openbao import OpenBao, SecretUnavailable
        try:  # health needs no token: nothing secret leaves this process for it
            OpenBao(ctx.settings.openbao_url, "", timeout=5).check()
        except SecretUnavailable as exc:
            raise Unavailable(f"cannot run: {exc}") from None


def submit(ctx: Context, path: str | Path | LoadedSpec, params: list[str], *,
           project: str | None = None, authorize: bool = True,
           origin_flow_run_id: str | None = None, compute: str | None = None,
           before_store: Callable[[], object] | None = None) -> str:
    """Validate, authorise, place and store an experiment with all its task rows; returns its
    id. Raises SpecError (bad input), Forbidden, NoPlacement or Unavailable, and then nothing
    is stored. `authorize=False` is for benchmarks of this machine alone."""
    if not project:  # a service account's own project, else the configured one
        account = ctx.store.accounts.get(ctx.user)
        project = account.project if account and account.project else ctx.settings.project
    if authorize:
        ensure_project(ctx, project)
        require(ctx, "scheduler.queue.submit", project)
    exp_id = str(uuid.uuid4())
    runs = ctx.settings.runs_dir.resolve()
    loaded, overrides, graph = compile_file(path, params, root=str(runs / exp_id),
                                            max_instances=ctx.settings.max_instances)
    pool = planning_pool(ctx) if authorize else [local_resource()]
    if compute:  # pinned (Airavata's --compute): this resource or nothing
        pinned = [r for r in pool if r.name == compute]
        if not pinned:
            raise BadInput(f"compute resource {compute!r} is not one you may use (yours: "
                           f"{', '.join(sorted(r.name for r in pool))})")
        pool = pinned
    plan: Plan = plan_experiment(loaded, graph, pool, user=ctx.user,
                                 learned=learned_runtimes(ctx.store.tasks.runtimes, graph))
    if plan.status == "infeasible":
        raise NoPlacement(plan.reason)
    placed = expand(graph, plan.counts())
    if authorize:
        check_dispatchable(ctx, loaded, placed, pool)
    if before_store is not None:  # e.g. "a worker will run it", checked after the input
        before_store()
    hashes = {s.name: script_sha256(s) for s in graph.steps}
    ctx.store.experiments.create(
        experiment_id=exp_id, name=loaded.name, source=loaded.source, spec_text=loaded.text,
        params=overrides, workdir_root=runs, total=graph.total, plan=plan.to_json(),
        owner=ctx.user, project=project, origin_flow_run_id=origin_flow_run_id,
        tasks_iter=(NewTask(i.id, i.step, i.index, graph.workdir(i.step, i.index),
                            placed[i.step][i.index], hashes[i.step])
                    for i in graph.iter_instances()))
    if authorize:
        from airavata_prefect.adapters.spicedb import Subject
        ctx.authz.relate("experiment", exp_id, "owner", Subject.user(ctx.user))
        ctx.authz.relate("experiment", exp_id, "project", Subject("project", project))
    audit(ctx, "scheduler.queue.submit", f"experiment:{exp_id}", "ok",
          f"{loaded.name}: {graph.total} tasks")
    events.experiment_submitted(ctx, exp_id, name=loaded.name, project=project, total=graph.total)
    return exp_id


__all__ = ["check_dispatchable", "planning_pool", "submit"]
