"""Executing one bundle, wherever it is asked for: by a `slurm` or `baremetal` worker (the
resource is reached over SSH, sbatch or slurmrestd), or by the `execute_bundle` flow body itself
(a Kubernetes pod, a process worker: the resource is the machine it runs on).

Load the bundle and its experiment from the store, open the resource with short-lived secrets,
stage, then run and follow it (agent/bundle_run.py).
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airavata_prefect.adapters.bundle_store import BundleEvent, BundleStatus
from airavata_prefect.adapters.db import Store
from airavata_prefect.adapters.hosts import Host, check
from airavata_prefect.adapters.openbao import SecretRef
from airavata_prefect.agent.bundle import Member, bundle_dir
from airavata_prefect.agent.bundle_run import BundleJob, BundleRunner, Launcher
from airavata_prefect.agent.secrets import BundleSecrets
from airavata_prefect.agent.staging import dependency_inputs, mount_names, scratch_dir, stage_mounts
from airavata_prefect.agent.storage_blocks import load_storage, storage_reader
from airavata_prefect.api.correlation import correlated
from airavata_prefect.flows.dag import compile_graph
from airavata_prefect.flows.settings import Settings
from airavata_prefect.flows.spec import parse_spec_text
from airavata_prefect.flows.states import TaskState

TOKEN_MARGIN_SECONDS = 3600  # a bundle's queue wait is unknown: its token outlives the walltime


@dataclass
class Session:
    """An opened resource: where commands run, how bundles launch, where they live."""

    host: Host
    launcher: Launcher
    working_directory: str


@dataclass
class Opener:
    """How to open the resource a bundle runs on."""

    block_type: Any  # the block class of the resource (SlurmCluster, BareMetalHost, ...)
    resource: str  # its name
    open_session: Callable[[Any, dict[str, str] | None], Session]
    compute_secret: bool = True  # False where the resource is this machine (a pod)
    enforce_walltime: bool = False  # run_one.sh enforces it (where no scheduler does)


@dataclass
class Outcome:
    counts: dict[str, int]
    message: str
    canceled: bool = False


def resolve_directory(host: Host, directory: str) -> str:
    """An absolute path on the host (`~` expanded there), created if needed."""
    if directory == "~" or directory.startswith("~/"):
        target = '"$HOME"' + shlex.quote(directory[1:]) if directory != "~" else '"$HOME"'
    else:
        target = shlex.quote(directory)
    out = check(host, f"mkdir -p {target} && cd {target} && pwd -P", what="mkdir").text
    return out.strip().splitlines()[-1]


async def open_resource(stack: ExitStack, store: Store, settings: Settings, bundle: dict,
                        exp: dict, opener: Opener, *, walltime: int | None,
                        mounts: list[str]) -> tuple[Session, dict[str, Any], dict[str, Any]]:
    """The resource opened with the bundle's short-lived secrets (closed by `stack`), and the
    storage blocks and secret values its mounts need."""
    secrets = BundleSecrets(store, settings)
    stack.callback(secrets.close)
    block = await opener.block_type.aload(opener.resource)
    storage = {name: await load_storage(name) for name in mounts}
    refs: dict[str, SecretRef] = {}
    if opener.compute_secret and block.credential is not None:
        refs[f"compute:{opener.resource}"] = block.credential.secret_ref()
    refs |= {f"storage:{n}": b.credential.secret_ref() for n, b in storage.items()
             if getattr(b, "credential", None) is not None}
    values = await asyncio.to_thread(
        secrets.open, exp["owner"] or "", refs,
        walltime_seconds=(walltime or 0) + TOKEN_MARGIN_SECONDS,
        task=f"bundle {bundle['id']} of experiment {exp['id']}")
    session = await asyncio.to_thread(opener.open_session, block,
                                      values.get(f"compute:{opener.resource}"))
    stack.callback(session.host.close)
    return session, storage, values


async def execute_bundle(store: Store, settings: Settings, experiment_id: str, bundle_id: str,
                         opener: Opener, *, poll_seconds: float, logger: Any,
                         submitted: Callable[[list[str]], None] | None = None,
                         cancelled: Callable[[], Awaitable[bool]] | None = None) -> Outcome:
    with correlated(store.submit_correlation(experiment_id)) as cid:
        logger.info("bundle %s of experiment %s (correlation id %s)", bundle_id,
                    experiment_id, cid)
        return await _execute(store, settings, experiment_id, bundle_id, opener,
                              poll_seconds=poll_seconds, logger=logger, submitted=submitted,
                              cancelled=cancelled)


async def _execute(store: Store, settings: Settings, experiment_id: str, bundle_id: str,
                   opener: Opener, *, poll_seconds: float, logger: Any,
                   submitted: Callable[[list[str]], None] | None,
                   cancelled: Callable[[], Awaitable[bool]] | None) -> Outcome:
    bundle = store.bundles.get(bundle_id)
    exp = store.get_experiment(experiment_id)
    loaded = parse_spec_text(exp["spec_text"], exp["source"])
    home = compile_graph(loaded, exp["params"], root=exp["workdir"],
                         max_instances=settings.max_instances)
    step = home.by_name[bundle["step"]]
    walltime = step.resources.compute.walltime_seconds if step.resources.compute else None
    with ExitStack() as stack:
        try:
            session, storage, values = await open_resource(
                stack, store, settings, bundle, exp, opener, walltime=walltime,
                mounts=mount_names(home, bundle["step"]))
            base = await asyncio.to_thread(resolve_directory, session.host,
                                           session.working_directory)
            remote = compile_graph(loaded, exp["params"], root=f"{base}/{exp['id']}",
                                   max_instances=settings.max_instances)
            members = [Member(remote.instance(bundle["step"], idx), attempt)
                       for idx, attempt in bundle["instances"]]
            scratch = Path(stack.enter_context(scratch_dir()))
            prefix = bundle_dir(remote.root, bundle["id"]).removeprefix(remote.root + "/")
            staged = await asyncio.to_thread(
                stage_mounts, remote, bundle["step"], prefix,
                lambda n: storage_reader(n, storage[n], values.get(f"storage:{n}")), scratch)
            staged.files |= dependency_inputs(store, exp["id"], bundle["resource"], members,
                                              remote, home)
        except Exception as exc:  # nothing was submitted: the bundle fails as a whole
            reason = f"could not prepare bundle on {opener.resource}: {exc}"
            logger.error(reason)
            fail_all(store, bundle, exp["id"], reason)
            return Outcome({str(TaskState.FAILED): len(bundle["instances"])}, reason)
        job = BundleJob(store, bundle, exp, remote, home, members, session.host,
                        session.launcher, staged,
                        walltime=walltime if opener.enforce_walltime else None, log=logger)
        runner = BundleRunner(job, poll_seconds=poll_seconds, cancelled=cancelled,
                              on_submitted=submitted)
        counts = await runner.run()
        text = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
        return Outcome(counts, text, runner.cancel_sent)


def fail_all(store: Store, bundle: dict, experiment_id: str, reason: str, *,
             state: TaskState = TaskState.FAILED,
             status: BundleStatus = BundleStatus.FAILED) -> None:
    """End every instance of a bundle nobody follows (the flow ignores what already ended)."""
    store.bundles.add_events(experiment_id, bundle["id"], [
        BundleEvent(k, str(state), None, reason) for k in range(len(bundle["instances"]))])
    store.bundles.update(bundle["id"], status=status, message=reason)


__all__ = ["Opener", "Outcome", "Session", "execute_bundle", "fail_all", "open_resource",
           "resolve_directory"]
