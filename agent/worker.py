"""What every bundle worker does with a flow run: load its bundle, open its resource with
short-lived secrets, stage, run and follow it (agent/bundle_run.py), and end the flow run in the
state its instances reached.

A flow run's parameters are `experiment_id` and `bundle_id`, nothing else: the spec, the
instances and the resource come from the store and the resource's block. The worker never runs
Prefect inside the allocation ("bundle" mode), so compute nodes need no route back to us.
"""

from __future__ import annotations

import abc
import asyncio
import shlex
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import anyio.abc
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.states import Cancelled, Completed, Failed, Running
from prefect.workers.base import (
    BaseJobConfiguration,
    BaseVariables,
    BaseWorker,
    BaseWorkerResult,
)
from pydantic import Field

from adapters.bundle_store import BUNDLE_ENDED, BundleEvent, BundleStatus
from adapters.db import Store
from adapters.hosts import Host, check
from adapters.openbao import SecretRef
from agent.bundle import Member, bundle_dir
from agent.bundle_run import BundleJob, BundleRunner, Launcher
from agent.secrets import BundleSecrets
from agent.staging import dependency_inputs, mount_names, scratch_dir, stage_mounts
from agent.storage_blocks import load_storage, storage_reader
from flows.dag import compile_graph
from flows.settings import Settings, get_settings
from flows.spec import parse_spec_text
from flows.states import TaskState

TOKEN_MARGIN_SECONDS = 3600  # a bundle's queue wait is unknown: its token outlives the walltime


class BundleJobConfiguration(BaseJobConfiguration):
    """What every bundle worker reads from its pool's base job template."""

    resource: str = Field(json_schema_extra={"template": "{{ resource }}"})
    poll_seconds: float = Field(1.0, json_schema_extra={"template": "{{ poll_seconds }}"})

    def prepare_for_flow_run(self, flow_run: FlowRun, *args: Any, **kwargs: Any) -> None:
        # The job runs bash, not Prefect: none of the worker's own PREFECT_* settings (its API
        # URL, an API key) reach it, only the env the pool or deployment sets on purpose.
        chosen = dict(self.env)
        super().prepare_for_flow_run(flow_run, *args, **kwargs)
        self.env = {k: v for k, v in chosen.items() if v is not None}


class BundleVariables(BaseVariables):
    resource: str = Field(description="The compute resource (its block name) this pool runs")
    poll_seconds: float = Field(1.0, gt=0, description="How often the worker checks progress")


class BundleWorkerResult(BaseWorkerResult):
    pass


@dataclass
class Session:
    """An opened resource: where commands run, how bundles launch, where they live."""

    host: Host
    launcher: Launcher
    working_directory: str


def resolve_directory(host: Host, directory: str) -> str:
    """An absolute path on the host (`~` expanded there), created if needed."""
    if directory == "~" or directory.startswith("~/"):
        target = '"$HOME"' + shlex.quote(directory[1:]) if directory != "~" else '"$HOME"'
    else:
        target = shlex.quote(directory)
    out = check(host, f"mkdir -p {target} && cd {target} && pwd -P", what="mkdir").text
    return out.strip().splitlines()[-1]


class BundleWorker(BaseWorker, abc.ABC):  # type: ignore[type-arg]  # ABC: not registered
    """Subclasses set `type`, the job configuration, and how to open their resource."""

    block_type: ClassVar[Any]

    def open_session(self, block: Any, configuration: Any,
                     secret: dict[str, str] | None) -> Session:
        raise NotImplementedError

    def walltime(self, configuration: Any, step_walltime: int | None) -> int | None:
        """The walltime run_one.sh enforces itself (None where the scheduler does)."""
        return None

    async def run(self, flow_run: FlowRun, configuration: Any,
                  task_status: anyio.abc.TaskStatus[Any] | None = None) -> BundleWorkerResult:
        logger = self.get_flow_run_logger(flow_run)
        params = flow_run.parameters
        settings = get_settings()
        store = Store(settings.db_url)
        bundle_id = str(params["bundle_id"])
        started: list[str] = []
        running: list[asyncio.Future[None]] = []

        def submitted(ids: list[str]) -> None:
            started.append(f"{bundle_id}|{','.join(ids)}")
            if task_status is not None:
                task_status.started(started[0])  # Prefect records it as the infrastructure id
            running.append(asyncio.ensure_future(self._set_state(flow_run, Running())))

        async def cancelled() -> bool:
            if store.bundles.cancel_requested(bundle_id):
                return True
            try:
                state = (await self.client.read_flow_run(flow_run.id)).state
            except Exception:  # the API being briefly away must not cancel anything
                return False
            return state is not None and state.type in (StateType.CANCELLING,
                                                        StateType.CANCELLED)

        try:
            counts, message = await self._execute(store, settings, params, configuration,
                                                  logger, submitted, cancelled)
        finally:
            if not started and task_status is not None:
                task_status.started(f"{bundle_id}|")  # failed before submitting
            store.close()
        await asyncio.gather(*running)
        await self._final_state(flow_run, counts, message)
        return BundleWorkerResult(identifier=started[0] if started else bundle_id,
                                  status_code=0)

    async def _open(self, stack: ExitStack, store: Store, settings: Settings, bundle: dict,
                    exp: dict, configuration: Any, *, walltime: int | None,
                    mounts: list[str]) -> tuple[Session, dict[str, Any], dict[str, Any]]:
        """The resource opened with the bundle's short-lived secrets (closed by `stack`), and
        the storage blocks and secret values its mounts need."""
        secrets = BundleSecrets(store, settings)
        stack.callback(secrets.close)
        block = await self.block_type.aload(configuration.resource)
        storage = {name: await load_storage(name) for name in mounts}
        refs: dict[str, SecretRef] = {}
        if block.credential is not None:
            refs[f"compute:{configuration.resource}"] = block.credential.secret_ref()
        refs |= {f"storage:{n}": b.credential.secret_ref() for n, b in storage.items()
                 if getattr(b, "credential", None) is not None}
        values = await asyncio.to_thread(
            secrets.open, exp["owner"] or "", refs,
            walltime_seconds=(walltime or 0) + TOKEN_MARGIN_SECONDS,
            task=f"bundle {bundle['id']} of experiment {exp['id']}")
        session = await asyncio.to_thread(self.open_session, block, configuration,
                                          values.get(f"compute:{configuration.resource}"))
        stack.callback(session.host.close)
        return session, storage, values

    async def _execute(self, store: Store, settings: Settings, params: dict[str, Any],
                       configuration: Any, logger: Any, submitted: Callable[[list[str]], None],
                       cancelled: Callable[[], Awaitable[bool]]
                       ) -> tuple[dict[str, int], str]:
        bundle = store.bundles.get(str(params["bundle_id"]))
        exp = store.get_experiment(str(params["experiment_id"]))
        loaded = parse_spec_text(exp["spec_text"], exp["source"])
        home = compile_graph(loaded, exp["params"], root=exp["workdir"],
                             max_instances=settings.max_instances)
        step = home.by_name[bundle["step"]]
        walltime = step.resources.compute.walltime_seconds if step.resources.compute else None
        with ExitStack() as stack:
            try:
                session, storage, values = await self._open(
                    stack, store, settings, bundle, exp, configuration, walltime=walltime,
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
                    lambda n: storage_reader(n, storage[n], values.get(f"storage:{n}")),
                    scratch)
                staged.files |= dependency_inputs(store, exp["id"], bundle["resource"],
                                                  members, remote, home)
            except Exception as exc:  # nothing was submitted: the bundle fails as a whole
                reason = f"could not prepare bundle on {configuration.resource}: {exc}"
                logger.error(reason)
                _fail_all(store, bundle, exp["id"], reason)
                return {str(TaskState.FAILED): len(bundle["instances"])}, reason
            job = BundleJob(store, bundle, exp, remote, home, members, session.host,
                            session.launcher, staged,
                            walltime=self.walltime(configuration, walltime), log=logger)
            runner = BundleRunner(job, poll_seconds=configuration.poll_seconds,
                                  cancelled=cancelled, on_submitted=submitted)
            counts = await runner.run()
            text = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
            if runner.cancel_sent:
                counts["_canceled"] = 1
            return counts, text

    async def kill_infrastructure(self, infrastructure_pid: str, configuration: Any,
                                  grace_seconds: int = 30) -> None:
        """Cancel a bundle (`bundle_id|id,id`). The worker following it sees the request in the
        store and cancels; when nobody follows it (that worker is gone), cancel here."""
        bundle_id, _, ids = infrastructure_pid.partition("|")
        settings = get_settings()
        store = Store(settings.db_url)
        try:
            store.bundles.request_cancel([bundle_id])
            deadline = asyncio.get_running_loop().time() + max(
                5.0, 3 * float(configuration.poll_seconds))
            while asyncio.get_running_loop().time() < deadline:
                bundle = store.bundles.get(bundle_id)
                if bundle["status"] in BUNDLE_ENDED:
                    return
                await asyncio.sleep(0.5)
            exp = store.get_experiment(bundle["experiment_id"])
            with ExitStack() as stack:
                session, _, _ = await self._open(stack, store, settings, bundle, exp,
                                                 configuration, walltime=None, mounts=[])
                await asyncio.to_thread(session.launcher.cancel,
                                        [i for i in ids.split(",") if i])
            _fail_all(store, bundle, exp["id"], "canceled", state=TaskState.CANCELED,
                      status=BundleStatus.CANCELED)
        finally:
            store.close()

    async def _final_state(self, flow_run: FlowRun, counts: dict[str, int],
                           message: str) -> None:
        if counts.pop("_canceled", 0):
            state = Cancelled(message=message)
        elif set(counts) == {str(TaskState.COMPLETED)}:
            state = Completed(message=message)
        else:
            state = Failed(message=message)
        await self._set_state(flow_run, state)

    async def _set_state(self, flow_run: FlowRun, state: Any) -> None:
        # Nothing runs Prefect inside the allocation, so the worker reports the flow run's state.
        try:
            await self.client.set_flow_run_state(flow_run.id, state, force=True)
        except Exception as exc:  # our store holds the truth; Prefect shows it when it can
            self._logger.warning("could not set flow run %s to %s: %s", flow_run.id,
                                 state.type, exc)


def _fail_all(store: Store, bundle: dict, experiment_id: str, reason: str, *,
              state: TaskState = TaskState.FAILED,
              status: BundleStatus = BundleStatus.FAILED) -> None:
    """End every instance of a bundle nobody follows (the flow ignores what already ended)."""
    store.bundles.add_events(experiment_id, bundle["id"], [
        BundleEvent(k, str(state), None, reason) for k in range(len(bundle["instances"]))])
    store.bundles.update(bundle["id"], status=status, message=reason)


__all__ = ["BundleJobConfiguration", "BundleVariables", "BundleWorker", "BundleWorkerResult",
           "Session", "resolve_directory"]
