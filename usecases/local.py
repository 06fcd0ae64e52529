"""The built-in `local` compute resource: each instance runs its bash script on this machine.

Each instance gets its own working directory (`<experiment>/<step>/<index>`), the environment
domain/instance.py gives it (nothing of ours: the runner's own variables may hold secrets, such
as a database URL) with its step's conda / pip environments active (built once each, while it
is in ENV_SETUP: usecases/conda_envs.py, usecases/pip_envs.py), its own session and process
group (so cancel and timeout kill the whole tree) with default signal dispositions whatever
the runner inherited (set by adapters/spawn_server.py, which starts it), stdout/stderr in its
logs, and its declared outputs checked after a zero exit. How it ended
becomes a state through domain/endings.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path

from airavata_prefect.adapters.spawner import Spawned, Spawner, SpawnerGone
from airavata_prefect.domain.dag import TaskGraph, TaskInstance
from airavata_prefect.domain.endings import Exit, Outcome, judge
from airavata_prefect.domain.environments import describe
from airavata_prefect.domain.instance import (
    LOGS,
    host_environment,
    instance_environment,
    keep_earlier_logs,
    render_script,
    stderr_tail,
)
from airavata_prefect.domain.scheduler import Report, Scheduler, Summary
from airavata_prefect.domain.states import TaskState
from airavata_prefect.domain.usage import limited_argv, memory_failure
from airavata_prefect.usecases import conda_envs, pip_envs
from airavata_prefect.usecases.conda_envs import CondaEnvironments
from airavata_prefect.usecases.env_cache import EnvironmentFailed
from airavata_prefect.usecases.live_usage import LiveUsage
from airavata_prefect.usecases.local_mounts import LocalMounts, MountError
from airavata_prefect.usecases.pip_envs import PipEnvironments

KILL_GRACE_SECONDS = 5.0


class LocalExecutor:
    def __init__(self, graph: TaskGraph, experiment_id: str,
                 mounts: LocalMounts | None = None,
                 envs: PipEnvironments | None = None,
                 conda: CondaEnvironments | None = None,
                 live: LiveUsage | None = None) -> None:
        self.graph = graph
        self.experiment_id = experiment_id
        self.mounts = mounts
        self.envs = envs
        self.conda = conda
        self.base_env = host_environment(os.environ)
        self.bash = shutil.which("bash", path=self.base_env["PATH"]) or "/bin/bash"
        self.spawner = Spawner()
        self.live = live  # samples running instances' usage, when given
        self._scripts: dict[str, str] = {}

    def _script(self, step: str) -> str:
        """The step's script, written once as `<experiment>/<step>/script.sh` (file creation is
        the costliest part of a short instance, so instances share it)."""
        path = self._scripts.get(step)
        if path is None:
            plan = self.graph.by_name[step]
            target = Path(self.graph.root) / step / "script.sh"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(render_script(plan.script, plan.resources.environment))
            path = self._scripts[step] = str(target)
        return path

    async def _environments(self, env: dict[str, str], conda: list[str],
                            pip: list[str]) -> dict[str, str]:
        """`env` with the step's environments active, built first if need be; conda first, as
        a virtual environment is layered on it."""
        prefix: Path | None = None
        if conda and self.conda is not None:
            prefix = await self.conda.ensure(conda)
            env = conda_envs.activate(env, prefix)
        if pip and self.envs is not None:
            env = pip_envs.activate(env, await self.envs.ensure(pip, over=prefix))
        return env

    async def __call__(self, inst: TaskInstance, attempt: int, report: Report,
                       cancel: asyncio.Event) -> Outcome:
        plan = self.graph.by_name[inst.step]
        workdir = Path(self.graph.workdir(inst.step, inst.index))
        storage = plan.resources.storage
        report(TaskState.DATA_STAGING, f"{len(storage)} storage mount(s)" if storage else None)
        skipped: str | None = None
        try:
            script_path = self._script(inst.step)
            workdir.mkdir(parents=True, exist_ok=True)
            keep_earlier_logs(workdir, attempt)
            if storage and self.mounts is not None:
                skipped = await self.mounts.link(inst.step, workdir)
        except OSError as exc:
            return Outcome(TaskState.FAILED, None, f"cannot prepare {workdir}: {exc}")
        except MountError as exc:
            return Outcome(TaskState.FAILED, None, f"staging: {exc}")
        pip, conda = plan.resources.pip, plan.resources.conda
        notes = [n for n in (skipped, conda and describe("conda", conda),
                             pip and describe("pip", pip)) if n]
        report(TaskState.ENV_SETUP, "; ".join(notes) or None)
        env = {**self.base_env, **instance_environment(
            inst, experiment_id=self.experiment_id, attempt=attempt, workdir=str(workdir))}
        try:
            env = await self._environments(env, conda, pip)
        except EnvironmentFailed as exc:
            return Outcome(TaskState.FAILED, None, f"environment: {exc}")
        compute = plan.resources.compute
        walltime = compute.walltime_seconds if compute else None
        ram_gb = compute.ram_gb if compute else None
        report(TaskState.RUNNING, None)
        try:
            proc = await self.spawner.spawn(
                self.bash, limited_argv(self.bash, script_path, ram_gb), cwd=workdir, env=env,
                stdout=LOGS[0], stderr=LOGS[1])
        except OSError as exc:
            return Outcome(TaskState.FAILED, None, f"cannot start bash: {exc}")
        except SpawnerGone as exc:
            return Outcome(TaskState.FAILED, None, str(exc))
        if self.live is not None:
            self.live.started(inst.id, proc.pid)
        try:
            ended = await _wait(proc, cancel, walltime)
            result = await proc.ended
        except SpawnerGone as exc:
            return Outcome(TaskState.FAILED, None, str(exc))
        finally:
            if self.live is not None:
                self.live.ended(proc.pid)
        end = Exit.of_returncode(result.returncode)
        if ended == "timeout":
            end = Exit(end.code, end.signal, timed_out=True)
        elif ended == "exit" and end != Exit(code=0):
            why = memory_failure(ram_gb, stderr_tail(workdir / LOGS[1]), result.usage)
            if why:
                end = Exit(end.code, end.signal, failure=why)
        missing: list[str] = []
        if end.code == 0 and ended == "exit":
            report(TaskState.OUTPUT_STAGING, None)
            missing = [f"{k}={v}" for k, v in inst.outputs.items() if not os.path.exists(v)]
        return judge(end, missing=missing, cancel_requested=ended == "cancel",
                     walltime=walltime)._replace(usage=result.usage)

    async def close(self) -> None:
        """Stop the spawning process (anything of ours still running there is killed)."""
        if self.live is not None:
            await self.live.close()
        await self.spawner.close()


async def run_to_end(scheduler: Scheduler, executor: LocalExecutor) -> Summary:
    """Run a scheduler over this executor, then stop its spawning process, whatever happened
    (what usecases/run.py does around a whole run; tests and benchmarks drive it this way)."""
    try:
        return await scheduler.run()
    finally:
        await executor.close()


async def _wait(proc: Spawned, cancel: asyncio.Event, walltime: int | None) -> str:
    canceller: asyncio.Future[object] = asyncio.ensure_future(cancel.wait())
    waiter: asyncio.Future[object] = asyncio.shield(proc.ended)
    try:
        done, _ = await asyncio.wait({waiter, canceller}, timeout=walltime,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        canceller.cancel()
    if waiter in done:
        return "exit"
    await _kill_group(proc)
    return "cancel" if cancel.is_set() else "timeout"


async def _kill_group(proc: Spawned) -> None:
    """SIGTERM the instance's process group, SIGKILL what is left after a grace period."""
    for sig, grace in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, None)):
        proc.signal_group(sig)
        try:
            await asyncio.wait_for(asyncio.shield(proc.ended), grace)
            return
        except TimeoutError:
            continue
