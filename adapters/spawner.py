"""The runner's side of adapters/spawn_server.py: start a process there, learn how it ended and
what its tree used (wall, CPU, peak RSS), signal its process group while it runs.

One server per event loop, started on first use; if it dies, the attempts it held end with
`SpawnerGone` and the next spawn starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import os
import struct
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from airavata_prefect.domain.usage import Usage

_SERVER = str(Path(__file__).with_name("spawn_server.py"))
_LENGTH = struct.Struct(">I")  # the frames of spawn_server.py's protocol


class SpawnerGone(RuntimeError):
    """The spawning process stopped: what it ran is gone with it."""


@dataclass(frozen=True)
class Ended:
    returncode: int  # Python's convention: N for an exit, -S for a signal
    usage: Usage


class Spawned:
    """A process running in the spawner: `ended` resolves when it was reaped."""

    def __init__(self, spawner: Spawner, ident: int, pid: int,
                 ended: asyncio.Future[Ended]) -> None:
        self._spawner = spawner
        self.id = ident
        self.pid = pid
        self.ended = ended

    def signal_group(self, sig: int) -> None:
        """Signal its process group, unless it was reaped already (then nothing happens)."""
        if not self.ended.done():
            self._spawner._send({"op": "kill", "id": self.id, "signal": int(sig)})


class Spawner:
    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._next = 0
        self._started: dict[int, asyncio.Future[int]] = {}
        self._ended: dict[int, tuple[asyncio.Future[Ended], float]] = {}
        self._lock = asyncio.Lock()

    async def _ensure(self) -> asyncio.subprocess.Process:
        async with self._lock:
            if self._proc is None or self._proc.returncode is not None:
                self._proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-I", "-S", _SERVER, stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE, cwd="/", start_new_session=True)
                self._reader = asyncio.ensure_future(self._read(self._proc))
            return self._proc

    def _send(self, message: dict[str, object]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            return
        body = marshal.dumps(message)
        proc.stdin.write(_LENGTH.pack(len(body)) + body)

    async def spawn(self, executable: str, argv: Sequence[str], *,
                    cwd: str | os.PathLike[str], env: Mapping[str, str], stdout: str,
                    stderr: str) -> Spawned:
        """Start `executable` (a path) with `argv` in `cwd` in a new session, stdin /dev/null,
        stdout/stderr into these files (relative to `cwd`), default signal dispositions.
        OSError if it cannot start."""
        proc = await self._ensure()
        self._next += 1
        ident = self._next
        loop = asyncio.get_running_loop()
        started: asyncio.Future[int] = loop.create_future()
        ended: asyncio.Future[Ended] = loop.create_future()
        self._started[ident] = started
        self._ended[ident] = (ended, time.monotonic())
        self._send({"op": "spawn", "id": ident, "path": executable, "argv": list(argv),
                    "cwd": os.fspath(cwd), "env": dict(env), "out": stdout, "err": stderr})
        try:
            pid = await started
        except BaseException:
            self._ended.pop(ident, None)
            raise
        finally:
            self._started.pop(ident, None)
        del proc
        return Spawned(self, ident, pid, ended)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            while True:
                try:
                    (size,) = _LENGTH.unpack(await proc.stdout.readexactly(4))
                    reply = marshal.loads(await proc.stdout.readexactly(size))
                except asyncio.IncompleteReadError:
                    break  # it ended
                except (EOFError, ValueError, TypeError):
                    continue
                if isinstance(reply, dict):
                    self._reply(reply)
        finally:
            gone = SpawnerGone("the process that started local instances stopped")
            for started in self._started.values():
                if not started.done():
                    started.set_exception(gone)
            for ended, _ in self._ended.values():
                if not ended.done():
                    ended.set_exception(gone)
            self._started.clear()
            self._ended.clear()

    def _reply(self, reply: dict[str, object]) -> None:
        ident = reply.get("id")
        if not isinstance(ident, int):
            return
        if "pid" in reply or "error" in reply:
            fut = self._started.get(ident)
            if fut is not None and not fut.done():
                if "error" in reply:
                    fut.set_exception(OSError(str(reply["error"])))
                else:
                    fut.set_result(int(reply["pid"]))  # type: ignore[call-overload]
            return
        entry = self._ended.pop(ident, None)
        if entry is None:
            return
        ended, at = entry
        status = int(reply.get("status", 0))  # type: ignore[call-overload]
        usage = Usage(wall_seconds=time.monotonic() - at,
                      cpu_seconds=float(reply.get("cpu", 0.0)),  # type: ignore[arg-type]
                      max_rss_bytes=int(reply.get("maxrss", 0)))  # type: ignore[call-overload]
        if not ended.done():
            ended.set_result(Ended(os.waitstatus_to_exitcode(status), usage))

    async def close(self) -> None:
        """Stop the server: whatever still runs in it is killed and reaped."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 10)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


__all__ = ["Ended", "Spawned", "Spawner", "SpawnerGone"]
