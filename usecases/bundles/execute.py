"""Running one bundle, wherever it is asked for: by a `slurm` or `baremetal` worker (the resource
is reached over SSH, sbatch or slurmrestd), or by the `execute_bundle` flow itself in place (a
Kubernetes pod, a process worker: the resource is the machine it runs on).

Load the bundle and its experiment from the store, open the resource with short-lived secrets,
stage, then run and follow it (usecases/bundles/runner.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import State
from prefect.states import Cancelled, Completed, Failed

from airavata_prefect.adapters import prefect_api
from airavata_prefect.adapters.store import Store
from airavata_prefect.domain.bundle_layout import Member, bundle_dir
from airavata_prefect.domain.pilot import AGENTS_STEP
from airavata_prefect.domain.records import Bundle, BundleEvent, load_graph
from airavata_prefect.domain.states import BUNDLE_ENDED, BundleStatus, TaskState, summarize
from airavata_prefect.usecases.bundles.agents import run_agents
from airavata_prefect.usecases.bundles.opening import (
    BundleResult,
    InPlace,
    Opener,
    ThroughWorker,
    open_resource,
    resolve_directory,
)
from airavata_prefect.usecases.bundles.resource_cache import ResourceCache
from airavata_prefect.usecases.bundles.runner import BundleJob, BundleRunner
from airavata_prefect.usecases.bundles.staging import (
    dependency_inputs,
    mount_names,
    scratch_dir,
    stage_dependencies,
    stage_mounts,
)
from airavata_prefect.usecases.correlation import correlated
from airavata_prefect.usecases.settings import Settings


async def run_bundle(settings: Settings, experiment_id: str, bundle_id: str, opener: Opener,
                     *, flow_run_id: Any, poll_seconds: float, logger: Any,
                     submitted: Callable[[list[str]], None] | None = None) -> BundleResult:
    """Run a bundle to its end; every instance's state reaches the store. It is canceled when
    its experiment's flow asks (the store) or someone cancels its flow run in Prefect."""
    store = Store(settings.db_url)

    async def cancelled() -> bool:
        return (store.bundles.cancel_requested(bundle_id)
                or await prefect_api.flow_run_cancelling(flow_run_id))

    try:
        with correlated(store.audit.submit_correlation(experiment_id)) as cid:
            logger.info("bundle %s of experiment %s (correlation id %s)", bundle_id,
                        experiment_id, cid)
            return await _run(store, settings, experiment_id, bundle_id, opener,
                              poll_seconds=poll_seconds, logger=logger, submitted=submitted,
                              cancelled=cancelled)
    finally:
        store.close()


async def _never() -> bool:
    return False


def flow_state(result: BundleResult) -> State:
    """The state a bundle's flow run ends in."""
    if result.canceled:
        return Cancelled(message=result.message)
    if set(result.counts) == {str(TaskState.COMPLETED)}:
        return Completed(message=result.message)
    return Failed(message=result.message)


async def _run(store: Store, settings: Settings, experiment_id: str, bundle_id: str,
               opener: Opener, *, poll_seconds: float, logger: Any,
               submitted: Callable[[list[str]], None] | None,
               cancelled: Callable[[], Awaitable[bool]] | None) -> BundleResult:
    bundle = store.bundles.get(bundle_id)
    exp = store.experiments.get(experiment_id)
    home = load_graph(exp)
    if bundle.step == AGENTS_STEP:  # pilot mode: this bundle starts agents, not instances
        return await run_agents(store, settings, bundle, exp, home, opener,
                                poll_seconds=poll_seconds, logger=logger, submitted=submitted,
                                cancelled=cancelled or _never)
    step = home.by_name[bundle.step]
    walltime = step.resources.compute.walltime_seconds if step.resources.compute else None
    with ExitStack() as stack:
        try:
            session, storage, values = await open_resource(
                stack, store, settings, bundle, exp, home, opener, walltime=walltime,
                mounts=mount_names(home, bundle.step))
            base = await asyncio.to_thread(resolve_directory, session.host,
                                           session.working_directory)
            remote = home.at(f"{base}/{exp.id}")
            members = [Member(remote.instance(bundle.step, idx), attempt)
                       for idx, attempt in bundle.instances]
            scratch = Path(stack.enter_context(scratch_dir()))
            cache = ResourceCache(session.host, base, bundle.resource)
            staged, totals, inputs = await asyncio.to_thread(
                stage_mounts, remote, bundle.step, bundle_dir(remote.root, bundle.id),
                lambda n: storage[n].reader(n, values.get(f"storage:{n}")), scratch, cache)
            upstream = dependency_inputs(store, exp.id, bundle.resource, members, remote, home)
            if upstream:
                totals += await asyncio.to_thread(stage_dependencies, upstream, remote.root,
                                                  cache)
            store.staging.record_inputs(exp.id, bundle.step, inputs)
            if totals.hits or totals.misses:
                store.staging.add_totals(totals)
                logger.info("bundle %s: %d staged file(s), %d already in the cache on %s, "
                            "%d bytes sent", bundle.id, totals.hits + totals.misses,
                            totals.hits, bundle.resource, totals.bytes_moved)
        except Exception as exc:  # nothing was submitted: the bundle fails as a whole
            reason = f"could not prepare bundle on {bundle.resource}: {exc}"
            logger.error(reason)
            fail_all(store, bundle, reason)
            return BundleResult({str(TaskState.FAILED): len(bundle.instances)}, reason)
        job = BundleJob(store, bundle, exp, remote, home, members, session.host,
                        session.launcher, staged,
                        walltime=walltime if opener.enforce_walltime else None, log=logger)
        runner = BundleRunner(job, poll_seconds=poll_seconds, cancelled=cancelled,
                              on_submitted=submitted)
        counts = await runner.run()
        return BundleResult(counts, summarize(counts), runner.cancel_sent)


def fail_all(store: Store, bundle: Bundle, reason: str, *,
             state: TaskState = TaskState.FAILED,
             status: BundleStatus = BundleStatus.FAILED) -> None:
    """End every instance of a bundle nobody follows (the flow ignores what already ended)."""
    store.bundles.add_events(bundle.experiment_id, bundle.id, [
        BundleEvent(k, state, None, reason) for k in range(len(bundle.instances))])
    store.bundles.update(bundle.id, status=status, message=reason)


async def cancel_bundle(settings: Settings, bundle_id: str, ids: list[str], opener: Opener, *,
                        wait_seconds: float) -> None:
    """Cancel a bundle. The worker following it sees the request in the store and cancels;
    when nobody follows it (that worker is gone), cancel its jobs here and end it."""
    store = Store(settings.db_url)
    try:
        await _cancel(store, settings, bundle_id, ids, opener, wait_seconds)
    finally:
        store.close()


async def _cancel(store: Store, settings: Settings, bundle_id: str, ids: list[str],
                  opener: Opener, wait_seconds: float) -> None:
    store.bundles.request_cancel([bundle_id])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while loop.time() < deadline:
        bundle = store.bundles.get(bundle_id)
        if bundle.status in BUNDLE_ENDED:
            return
        await asyncio.sleep(0.5)
    exp = store.experiments.get(bundle.experiment_id)
    with ExitStack() as stack:
        session, _, _ = await open_resource(stack, store, settings, bundle, exp,
                                            load_graph(exp), opener, walltime=None, mounts=[])
        await asyncio.to_thread(session.launcher.cancel, [i for i in ids if i])
    fail_all(store, bundle, "canceled", state=TaskState.CANCELED,
             status=BundleStatus.CANCELED)


__all__ = ["BundleResult", "InPlace", "Opener", "ThroughWorker", "cancel_bundle", "fail_all",
           "flow_state", "open_resource", "resolve_directory", "run_bundle"]
