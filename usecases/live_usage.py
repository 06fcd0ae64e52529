"""What running `local` instances use so far: sampled from /proc every few seconds (one pass for
all of them) and handed to a sink, which stores it on their rows, so `experiment tasks` and
`/metrics` show a running instance's CPU and memory before it ends (its end then stores the
exact figures of its rusage)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from airavata_prefect.adapters.proc_sampler import sample
from airavata_prefect.domain.usage import Usage

log = logging.getLogger("airavata.usage")
SAMPLE_SECONDS = 10.0


class LiveUsage:
    def __init__(self, sink: Callable[[dict[str, Usage]], None],
                 seconds: float = SAMPLE_SECONDS) -> None:
        self._sink = sink
        self._seconds = seconds
        self._running: dict[int, tuple[str, float]] = {}  # group -> (instance, started)
        self._peak: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None

    def started(self, instance_id: str, group: int) -> None:
        self._running[group] = (instance_id, time.monotonic())
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._loop())

    def ended(self, group: int) -> None:
        self._running.pop(group, None)
        self._peak.pop(group, None)

    def snapshot(self) -> dict[str, Usage]:
        """Each running instance's usage so far (peak memory: the largest sample yet)."""
        groups = dict(self._running)
        now = time.monotonic()
        out: dict[str, Usage] = {}
        for group, figures in sample(groups).items():
            if group not in self._running:
                continue  # ended while /proc was read
            peak = self._peak[group] = max(self._peak.get(group, 0), figures.rss_bytes)
            iid, since = groups[group]
            out[iid] = Usage(now - since, figures.cpu_seconds, peak)
        return out

    async def _loop(self) -> None:
        while self._running:
            await asyncio.sleep(self._seconds)
            try:
                usages = await asyncio.to_thread(self.snapshot)
                if usages:
                    await asyncio.to_thread(self._sink, usages)
            except Exception as exc:  # a figure not stored is no reason to stop a run
                log.warning("usage of running instances not recorded: %s", exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


__all__ = ["SAMPLE_SECONDS", "LiveUsage"]
