"""A bundle on a host reached over SSH (or this machine): run detached in a session of its own
(`setsid`), P instances at a time, its id recorded, so a dropped SSH connection stops nothing:
exit codes land in files read when the worker reconnects, and cancel kills the whole session
(`pkill -s`), whatever its processes started. run_one.sh enforces each walltime itself."""

from __future__ import annotations

import shlex
import time
from collections.abc import Collection

from airavata_prefect.adapters.hosts import Host, HostError, check
from airavata_prefect.domain.endings import Exit, Requeue

KILL_GRACE_SECONDS = 5


class BareMetalLauncher:
    requeues = False

    def __init__(self, host: Host, parallel: int) -> None:
        self.host = host
        self.parallel = max(1, parallel)
        self.name = f"host {host.name}"

    def files(self, bdir: str, count: int) -> dict[str, str]:
        return {}

    def submit(self, bdir: str, count: int) -> list[str]:
        b = shlex.quote(bdir)
        # `setsid -f`, not a shell's `&`: a background job of a non-interactive shell starts
        # with SIGINT and SIGQUIT ignored, and its instances would inherit that.
        check(self.host, f"rm -f {b}/session; setsid -f bash {b}/run_all.sh {b} {count} "
                         f"{self.parallel} >{b}/run_all.log 2>&1 </dev/null", what="setsid")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # run_all.sh records its session id first thing
            out = self.host.run(f"cat {b}/session 2>/dev/null").text.strip()
            if out.isdigit():
                return [out]
            time.sleep(0.1)
        raise HostError(f"the bundle did not start on {self.host.name} "
                        f"(see {bdir}/run_all.log)")

    def _alive(self, session: str) -> bool:
        return self.host.run(f"pgrep -s {int(session)} >/dev/null").exit_status == 0

    def unmarked(self, ids: list[str], positions: Collection[int]
                 ) -> dict[int, Exit | Requeue]:
        if any(self._alive(s) for s in ids if s.isdigit()):
            return {}
        # Its session is gone and these never wrote an exit status: killed from outside.
        return {k: Exit(failure="ended without an exit status (its process was killed)")
                for k in positions}

    def queued(self, ids: list[str], positions: Collection[int]) -> dict[int, float]:
        return {}  # nothing queues: instances start as soon as a slot is free

    def cancel(self, ids: list[str]) -> None:
        sessions = " ".join(str(int(s)) for s in ids if s.isdigit())
        if not sessions:
            return
        self.host.run(f"for s in {sessions}; do pkill -TERM -s $s; done; "
                      f"sleep {KILL_GRACE_SECONDS}; "
                      f"for s in {sessions}; do pkill -KILL -s $s; done; true")

    def resubmit(self, bdir: str, positions: list[int]) -> list[str]:
        raise HostError("a bare-metal host never re-queues")


__all__ = ["BareMetalLauncher"]
