"""The built-in `local` compute resource: each instance runs its bash script on this machine.

Each instance gets its own working directory (`<experiment>/<step>/<index>`), the environment the
spec resolved for it (and nothing of ours: the runner's own variables may hold secrets, such as a
database URL), its own process group (so cancel and timeout kill the whole tree), stdout/stderr in
`stdout.log`/`stderr.log`, and its declared outputs checked after a zero exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import warnings
from pathlib import Path

from airavata_prefect.flows.dag import TaskGraph, TaskInstance
from airavata_prefect.flows.scheduler import Outcome, Report
from airavata_prefect.flows.spec import format_duration, parse_mount
from airavata_prefect.flows.states import TaskState

# The only variables passed through from the runner's environment.
PASSTHROUGH = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "TZ", "TMPDIR",
               "TERM")
KILL_GRACE_SECONDS = 5.0


_watched_loops: set[int] = set()


def _fast_child_watcher() -> None:
    """On Python 3.11 asyncio waits for each child with a thread of its own; a pidfd watcher
    makes spawning ~1.5x faster (3.12+ does this by itself)."""
    loop = asyncio.get_running_loop()
    if sys.version_info >= (3, 12) or id(loop) in _watched_loops:
        return
    _watched_loops.add(id(loop))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            watcher = asyncio.PidfdChildWatcher()
            asyncio.set_child_watcher(watcher)
            watcher.attach_loop(loop)
    except (OSError, AttributeError, NotImplementedError):
        pass  # an old kernel: keep the default watcher


def _quote_env_value(value: str) -> str:
    # Double quotes keep `$VAR` expansion (Airavata's `PATH=/x:$PATH` idiom) and allow spaces.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`") + '"'


def render_script(script: str, environment: list[str]) -> str:
    """The user's script with the resource `environment` exported ahead of it (after #!)."""
    if not environment:
        return script
    exports = "".join(f"export {k}={_quote_env_value(v)}\n"
                      for k, _, v in (e.partition("=") for e in environment))
    if script.startswith("#!"):
        first, _, rest = script.partition("\n")
        return f"{first}\n{exports}{rest}"
    return exports + script


class LocalExecutor:
    def __init__(self, graph: TaskGraph, experiment_id: str) -> None:
        self.graph = graph
        self.experiment_id = experiment_id
        self.base_env = {k: os.environ[k] for k in PASSTHROUGH if k in os.environ}
        self.base_env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
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

    async def __call__(self, inst: TaskInstance, attempt: int, report: Report,
                       cancel: asyncio.Event) -> Outcome:
        _fast_child_watcher()
        plan = self.graph.by_name[inst.step]
        workdir = Path(self.graph.workdir(inst.step, inst.index))
        report(TaskState.DATA_STAGING, _staging_note(plan.resources.storage))
        try:
            script_path = self._script(inst.step)
            workdir.mkdir(parents=True, exist_ok=True)
            if attempt:
                _rotate_logs(workdir, attempt)
        except OSError as exc:
            return Outcome(TaskState.FAILED, None, f"cannot prepare {workdir}: {exc}")
        report(TaskState.ENV_SETUP, _env_note(plan.resources.conda, plan.resources.pip))
        env = {**self.base_env, **inst.env,
               "AIRAVATA_EXPERIMENT_ID": self.experiment_id, "AIRAVATA_TASK_ID": inst.id,
               "AIRAVATA_ATTEMPT": str(attempt), "AIRAVATA_WORKDIR": str(workdir)}
        walltime = plan.resources.compute.walltime_seconds if plan.resources.compute else None
        report(TaskState.RUNNING, None)
        fds: list[int] = []
        try:
            fds = [os.open(workdir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                   for name in ("stdout.log", "stderr.log")]
            proc = await asyncio.create_subprocess_exec(
                "bash", script_path, cwd=workdir, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=fds[0], stderr=fds[1], start_new_session=True)
        except OSError as exc:
            return Outcome(TaskState.FAILED, None, f"cannot start bash: {exc}")
        finally:
            for fd in fds:
                os.close(fd)
        ended = await _wait(proc, cancel, walltime)
        if ended == "cancel":
            return Outcome(TaskState.CANCELED, proc.returncode, "canceled while running")
        if ended == "timeout":
            return Outcome(TaskState.FAILED, proc.returncode,
                           f"timeout: exceeded walltime {format_duration(walltime or 0)}")
        code = proc.returncode
        if code is not None and code < 0:
            return Outcome(TaskState.FAILED, code, f"killed by signal {-code}")
        if code != 0:
            return Outcome(TaskState.FAILED, code, f"exit code {code}")
        report(TaskState.OUTPUT_STAGING, None)
        missing = [f"{k}={v}" for k, v in inst.outputs.items() if not os.path.exists(v)]
        if missing:
            return Outcome(TaskState.FAILED, 0, "declared outputs not produced: "
                           + ", ".join(missing))
        return Outcome(TaskState.COMPLETED, 0, None)


async def _wait(proc: asyncio.subprocess.Process, cancel: asyncio.Event,
                walltime: int | None) -> str:
    waiter = asyncio.ensure_future(proc.wait())
    canceller = asyncio.ensure_future(cancel.wait())
    try:
        done, _ = await asyncio.wait({waiter, canceller}, timeout=walltime,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        canceller.cancel()
    if waiter in done:
        return "exit"
    await _kill_group(proc)
    waiter.cancel()
    return "cancel" if cancel.is_set() else "timeout"


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the instance's process group, SIGKILL what is left after a grace period."""
    for sig, grace in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(proc.wait(), grace)
            return
        except TimeoutError:
            continue


def _rotate_logs(workdir: Path, attempt: int) -> None:
    for name in ("stdout", "stderr"):
        log = workdir / f"{name}.log"
        if log.exists():
            log.rename(workdir / f"{name}.attempt{attempt - 1}.log")


def _staging_note(storage: list[str]) -> str | None:
    if not storage:
        return None
    names = sorted({parse_mount(m).storage for m in storage})
    return ("storage mounts are staged on registered resources, not on the local one: "
            f"{', '.join(names)}")


def _env_note(conda: list[str], pip: list[str]) -> str | None:
    if not conda and not pip:
        return None
    return "conda/pip environments are not built; the host's own is used"
