"""Running one attempt of one task instance on this node, as fast as the node can fork.

The rules are the `local` resource's (usecases/local.py), so the same script ends in the same
state wherever it runs: `bash <script>` in the instance's working directory, its own session
and process group, default signal dispositions, stdin /dev/null, stdout.log / stderr.log there
(a retry keeps the earlier attempt's, domain/instance.py), an environment built from scratch
(a few host variables, the instance's own, AIRAVATA_WORKDIR: never the agent's token), the
walltime enforced on the whole group (SIGTERM, SIGKILL after a grace), declared outputs
checked after a zero exit, and domain/endings.py's `judge` as the only mapping to a state.

Why not asyncio's subprocesses: an agent runs thousands of short instances a second, and
`create_subprocess_exec` costs a transport, a pipe and (on 3.11) a watcher thread per child.
Here a child is `os.posix_spawn` (vfork + exec in glibc; `setsid` and the signal defaults are
done in the child) and its end is a pidfd the event loop watches; `os.wait4` reaps it with the
rusage of the whole tree (bash waits for its children, so their CPU and peak RSS are in it).
`posix_spawn` has no working-directory action: the loop's thread changes the process's current
directory around the spawn and straight back (nothing of the agent resolves relative paths).

Peak RSS has a floor: Linux carries the spawning process's peak into a child that execs (with
vfork the child briefly runs on the agent's memory; with fork on a copy of it), so
`max_rss_bytes` is exact for an instance that uses more than the agent (~50 MB) and reads as
the agent's peak for one that uses less. Every spawn from a Python process has this, asyncio's
too; only spawning through a small helper process would lower the floor.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal, Protocol

from airavata_prefect.domain.endings import Exit, Outcome, judge
from airavata_prefect.domain.instance import (
    LOGS,
    host_environment,
    keep_earlier_logs,
    stderr_tail,
)
from airavata_prefect.domain.pilot import Usage
from airavata_prefect.domain.states import TaskState
from airavata_prefect.domain.usage import limited_argv, memory_failure
from airavata_prefect.usecases.local import KILL_GRACE_SECONDS

SCRIPTS_DIR = ".airavata-scripts"  # under the agent's root: one copy per script digest
_CATCHABLE = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC  # opened by the child, onto 1 and 2

Ended = Literal["exit", "timeout", "cancel"]


class AttemptSpec(Protocol):
    """What an attempt needs; proto's TaskSpec is one."""

    @property
    def attempt(self) -> int: ...
    @property
    def script(self) -> str: ...
    @property
    def script_sha256(self) -> str: ...
    @property
    def workdir(self) -> str: ...  # relative to the agent's root
    @property
    def env(self) -> Mapping[str, str]: ...
    @property
    def walltime_seconds(self) -> int: ...  # 0: none
    @property
    def outputs(self) -> Sequence[str]: ...  # relative to the workdir
    @property
    def ram_gb(self) -> float: ...  # 0: no memory limit


class AttemptRunner:
    """Runs attempts under one root; shares script copies, /dev/null and the host variables."""

    def __init__(self, root: Path, *, kill_grace: float = KILL_GRACE_SECONDS,
                 environ: Mapping[str, str] | None = None) -> None:
        self.root = Path(os.path.abspath(root))
        self.kill_grace = kill_grace  # SIGTERM .. SIGKILL of a group being stopped
        self.base_env = host_environment(os.environ if environ is None else environ)
        bash = shutil.which("bash", path=self.base_env["PATH"]) or shutil.which("bash")
        if bash is None:
            raise FileNotFoundError("no bash on this host's PATH")
        self.bash = bash
        self._scripts: dict[str, str] = {}  # digest the server sent -> our copy's path
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._live: set[int] = set()  # spawned, not reaped: their process groups are ours

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._devnull)

    @property
    def running(self) -> int:
        return len(self._live)

    def kill_all(self) -> None:
        """SIGKILL every running attempt's group now (the agent is going away). Safe: a group
        leader is reaped only after it leaves `_live`, so its pid still names our group."""
        for pid in self._live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    # -- preparing --------------------------------------------------------------------------

    def script_path(self, script: str, sha256: str) -> str:
        """The script's copy on this node, written once (atomically: agents may share the
        root); named by its own digest, whatever the server said it was."""
        path = self._scripts.get(sha256)
        if path is None:
            digest = hashlib.sha256(script.encode()).hexdigest()
            folder = self.root / SCRIPTS_DIR
            target = folder / f"{digest}.sh"
            if not target.exists():
                folder.mkdir(parents=True, exist_ok=True)
                tmp = folder / f".{digest}.{os.getpid()}.{id(self)}.tmp"
                tmp.write_text(script)
                os.replace(tmp, target)
            path = self._scripts[sha256 or digest] = str(target)
        return path

    def workdir(self, relative: str) -> str:
        """`<root>/<relative>`, created; a path that leaves the root is refused."""
        rel = os.path.normpath(relative)
        if os.path.isabs(rel) or rel == ".." or rel.startswith("../"):
            raise ValueError(f"workdir {relative!r} is not inside the agent's root")
        path = os.path.join(self.root, rel)
        try:
            os.mkdir(path)
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(path, exist_ok=True)
        return path

    # -- running ----------------------------------------------------------------------------

    def _spawn(self, argv: list[str], workdir: str, env: dict[str, str]) -> int:
        """`argv` (bash running the script) in `workdir`, in a new session; the logs are
        opened by the child."""
        home = os.open(".", os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.chdir(workdir)
            try:
                return os.posix_spawn(
                    self.bash, argv, env, setsid=True, setsigmask=(),
                    setsigdef=_CATCHABLE,
                    file_actions=[(os.POSIX_SPAWN_DUP2, self._devnull, 0),
                                  (os.POSIX_SPAWN_OPEN, 1, LOGS[0], _LOG_FLAGS, 0o644),
                                  (os.POSIX_SPAWN_OPEN, 2, LOGS[1], _LOG_FLAGS, 0o644)])
            finally:
                os.fchdir(home)
        finally:
            os.close(home)

    async def run(self, spec: AttemptSpec, handle: Attempt | None = None, *,
                  on_running: Callable[[], None] | None = None) -> tuple[Outcome, Usage]:
        """Run one attempt to its end: its outcome (judged) and what it used. `handle`
        (optional) is how someone else stops it: `handle.cancel()`."""
        handle = handle or Attempt()
        if handle.canceled:
            return judge(Exit(), cancel_requested=True), Usage()
        try:
            script = self.script_path(spec.script, spec.script_sha256)
            workdir = self.workdir(spec.workdir)
            if spec.attempt > 0:
                keep_earlier_logs(Path(workdir), spec.attempt)
        except (OSError, ValueError) as exc:
            return Outcome(TaskState.FAILED, None, f"cannot prepare {spec.workdir}: {exc}"), Usage()
        env = {**self.base_env, **spec.env, "AIRAVATA_WORKDIR": workdir}
        walltime = spec.walltime_seconds or None
        started = time.monotonic()
        try:
            pid = self._spawn(limited_argv(self.bash, script, spec.ram_gb), workdir, env)
        except OSError as exc:
            return Outcome(TaskState.FAILED, None, f"cannot start bash: {exc}"), Usage()
        self._live.add(pid)
        try:
            if on_running is not None:
                on_running()
            ended = await self._wait(pid, handle, walltime)
        finally:
            # Reaped here whatever happened (even if this task was cancelled): no zombies.
            code, usage = self._reap(pid, started)
        end = Exit.of_returncode(code)
        if ended == "timeout":
            end = Exit(end.code, end.signal, timed_out=True)
        elif ended == "exit" and end != Exit(code=0):
            why = memory_failure(spec.ram_gb, stderr_tail(Path(workdir) / LOGS[1]), usage)
            if why:
                end = Exit(end.code, end.signal, failure=why)
        missing: list[str] = []
        if ended == "exit" and end.code == 0 and spec.outputs:
            missing = [o for o in spec.outputs if not os.path.exists(os.path.join(workdir, o))]
        return judge(end, missing=missing, cancel_requested=ended == "cancel",
                     walltime=walltime), usage

    async def _wait(self, pid: int, handle: Attempt, walltime: int | None) -> Ended:
        """Until the process exits, its walltime passes or it is canceled; in the latter two
        cases its group is stopped (SIGTERM, SIGKILL after the grace) before this returns."""
        loop = asyncio.get_running_loop()
        pidfd = os.pidfd_open(pid)
        exited: asyncio.Future[None] = loop.create_future()
        woken: asyncio.Future[Ended] = loop.create_future()

        def on_exit() -> None:
            loop.remove_reader(pidfd)  # level-triggered: once is enough
            exited.set_result(None)
            if not woken.done():
                woken.set_result("exit")

        loop.add_reader(pidfd, on_exit)
        timer = loop.call_later(walltime, handle._wake, "timeout") if walltime else None
        handle._woken = woken
        if handle.canceled:
            handle._wake("cancel")
        try:
            why = await woken
            if why != "exit":
                await self._stop_group(pid, exited)
            return why
        finally:
            handle._woken = None
            if timer is not None:
                timer.cancel()
            if not exited.done():
                loop.remove_reader(pidfd)
            os.close(pidfd)

    async def _stop_group(self, pid: int, exited: asyncio.Future[None]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(exited), self.kill_grace)
        # The leader is not reaped yet, so `pid` still names this group: whatever of it is
        # left (the leader itself, or a child that ignored SIGTERM) goes now.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        await exited

    def _reap(self, pid: int, started: float) -> tuple[int | None, Usage]:
        """Its Python return code (N, or -S for a signal) and what the tree used."""
        try:
            got, status, ru = os.wait4(pid, os.WNOHANG)
            if got == 0:  # not ended: only when our task was cancelled mid-wait
                os.killpg(pid, signal.SIGKILL)
                got, status, ru = os.wait4(pid, 0)
        except ChildProcessError:
            return None, Usage(time.monotonic() - started)
        finally:
            self._live.discard(pid)
        return os.waitstatus_to_exitcode(status), Usage(
            wall_seconds=time.monotonic() - started,
            cpu_seconds=ru.ru_utime + ru.ru_stime, max_rss_bytes=ru.ru_maxrss * 1024)


class Attempt:
    """A handle on one attempt: `cancel()` stops it (its group SIGTERM, then SIGKILL), from any
    callback of the loop, before or while it runs; it then ends CANCELED (unless it had
    completed)."""

    __slots__ = ("_woken", "canceled")

    def __init__(self) -> None:
        self.canceled = False
        self._woken: asyncio.Future[Ended] | None = None

    def cancel(self) -> None:
        self.canceled = True
        self._wake("cancel")

    def _wake(self, why: Ended) -> None:
        if self._woken is not None and not self._woken.done():
            self._woken.set_result(why)


async def run_attempt(spec: AttemptSpec, root: Path, cancel: asyncio.Event | None = None, *,
                      on_running: Callable[[], None] | None = None) -> tuple[Outcome, Usage]:
    """One attempt with a runner of its own, stopped when `cancel` is set (tests, one-offs;
    an agent keeps one runner and an `Attempt` handle per instance)."""
    runner = AttemptRunner(root)
    handle = Attempt()
    waiter = None
    if cancel is not None:
        if cancel.is_set():
            handle.cancel()
        waiter = asyncio.ensure_future(cancel.wait())

        def on_set(w: asyncio.Task[Literal[True]]) -> None:
            if not w.cancelled():
                handle.cancel()

        waiter.add_done_callback(on_set)
    try:
        return await runner.run(spec, handle, on_running=on_running)
    finally:
        if waiter is not None:
            waiter.cancel()
        runner.close()


__all__ = ["SCRIPTS_DIR", "Attempt", "AttemptRunner", "AttemptSpec", "run_attempt"]
