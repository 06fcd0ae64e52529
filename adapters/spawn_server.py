"""A small process that starts `local` instances and reaps them with their rusage.

Why a process of its own: Linux carries the spawning process's peak RSS into a child that
execs, so every instance spawned straight from a runner holding 300 MB reported a 300 MB peak.
Spawned from here (a bare interpreter: `python -I -S`, stdlib only, ~10 MB), an instance's peak
is its own. It also takes the forks off the runner's event loop, and when the runner goes away
(its end of the pipe closes) every instance still running is killed and reaped: none is left
behind a dead run (a resumed run starts them again).

Protocol: frames of a 4-byte big-endian length and a `marshal`led dict (both ends are the same
interpreter, and marshal is several times cheaper than JSON: this process's CPU is taken from
the instances on a small machine). In (stdin):
  {"op": "spawn", "id": N, "path": EXE, "argv": [...], "cwd": DIR, "env": {...}, "out": F,
   "err": F}
  {"op": "kill", "id": N, "signal": S}   (its process group; ignored once it was reaped)
Out (stdout):
  {"id": N, "pid": P}  |  {"id": N, "error": "..."}   (spawned, or why not)
  {"id": N, "status": W, "cpu": SECONDS, "maxrss": BYTES}   (ended: wait status, rusage)
Runs by path (not as a package module), so nothing of ours is imported into it.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import selectors
import signal
import struct
import sys
from typing import Any

_CATCHABLE = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
_LENGTH = struct.Struct(">I")


class Server:
    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.live: dict[int, tuple[int, int]] = {}  # id -> (pid, pidfd)
        self.devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.out = sys.stdout.buffer
        self.buf = b""

    def say(self, **reply: Any) -> None:
        body = marshal.dumps(reply)
        with contextlib.suppress(BrokenPipeError):  # the runner is gone: serve() ends
            self.out.write(_LENGTH.pack(len(body)) + body)

    def spawn(self, req: dict[str, Any]) -> None:
        ident = req["id"]
        try:  # (posix_spawn has no working-directory action: this process moves there)
            os.chdir(req["cwd"])
            pid = os.posix_spawn(
                req["path"], req["argv"], req["env"], setsid=True, setsigmask=(),
                setsigdef=_CATCHABLE,
                file_actions=[(os.POSIX_SPAWN_DUP2, self.devnull, 0),
                              (os.POSIX_SPAWN_OPEN, 1, req["out"], _FLAGS, 0o644),
                              (os.POSIX_SPAWN_OPEN, 2, req["err"], _FLAGS, 0o644)])
        except (OSError, KeyError, TypeError, ValueError) as exc:
            self.say(id=ident, error=str(exc))
            return
        fd = os.pidfd_open(pid)
        self.live[ident] = (pid, fd)
        self.sel.register(fd, selectors.EVENT_READ, ident)
        self.say(id=ident, pid=pid)

    def reap(self, ident: int, block: bool = False) -> None:
        pid, fd = self.live[ident]
        got, status, ru = os.wait4(pid, 0 if block else os.WNOHANG)
        if got == 0:
            return
        del self.live[ident]
        self.sel.unregister(fd)
        os.close(fd)
        self.say(id=ident, status=status, cpu=ru.ru_utime + ru.ru_stime,
                 maxrss=ru.ru_maxrss * 1024)

    def kill(self, req: dict[str, Any]) -> None:
        found = self.live.get(req.get("id", -1))
        if found is not None:  # not reaped: its pid still names its group
            with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                os.killpg(found[0], int(req.get("signal", signal.SIGTERM)))

    def requests(self) -> bool:
        """Handle what arrived on stdin; False at its end (the runner is gone)."""
        chunk = os.read(0, 1 << 16)
        if not chunk:
            return False
        self.buf += chunk
        while len(self.buf) >= 4:
            (size,) = _LENGTH.unpack_from(self.buf)
            if len(self.buf) < 4 + size:
                break
            frame, self.buf = self.buf[4:4 + size], self.buf[4 + size:]
            try:
                req = marshal.loads(frame)
            except (EOFError, ValueError, TypeError):
                continue
            if not isinstance(req, dict):
                continue
            if req.get("op") == "spawn":
                self.spawn(req)
            elif req.get("op") == "kill":
                self.kill(req)
        return True

    def serve(self) -> None:
        self.sel.register(0, selectors.EVENT_READ, None)
        running = True
        while running:
            for key, _ in self.sel.select():
                if key.data is None:
                    running = self.requests()
                elif key.data in self.live:
                    self.reap(key.data)
            try:
                self.out.flush()
            except BrokenPipeError:
                running = False  # the runner is gone
        for ident, (pid, _) in list(self.live.items()):  # the runner is gone: so are they
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            self.reap(ident, block=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the runner's to handle
    Server().serve()
