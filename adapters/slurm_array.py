"""A bundle on SLURM: its instances as job arrays (split at MaxArraySize), array task t of the
chunk at offset o running position o + t through run_one.sh. Node failures and preemptions
re-queue positions as new arrays; each position belongs to the job that runs it now.

Where SLURM enforces memory by sampling (jobacct_gather with OverMemoryKill, no cgroups), a
step over its --mem is SIGKILLed and its state says FAILED, signal 9: slurmstepd's message in the
task's output file is what says memory, and a task it names ends "out of memory", as one in
SLURM's OUT_OF_MEMORY state does."""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Collection

from airavata_prefect.adapters.hosts import Host, HostError, upload
from airavata_prefect.adapters.launcher import read_tails
from airavata_prefect.adapters.slurm import (
    JobRequest,
    SlurmClient,
    SlurmTask,
    array_chunks,
    array_spec,
    classify,
    job_script,
)
from airavata_prefect.domain.endings import Exit, Requeue

ABSENT_POLLS = 3  # polls a task may be missing from the controller before it counts as lost
PER_TASK_QUERIES = 50  # queue waits of this many tasks are asked one by one; more: whole arrays
_OVER_MEMORY = re.compile(r"[Ee]xceeded (?:job |step )?memory limit")  # slurmstepd's words


class SlurmLauncher:
    """A bundle as job arrays: array task t of the chunk at offset o runs position o + t."""

    requeues = True

    def __init__(self, client: SlurmClient, files: Host, base: JobRequest, *,
                 max_array_size: int, throttle: int | None) -> None:
        self.client = client
        self.files_host = files
        self.base = base
        self.max_array = max_array_size
        self.throttle = throttle
        self.name = client.name
        self.offsets: dict[str, int] = {}
        self.owner: dict[int, str] = {}  # the job that runs each position now (re-queues move it)
        self._absent: dict[int, int] = {}
        self._queue: dict[int, float] = {}  # what each position waited, once SLURM said
        self._bdir = ""
        self._resubmits = 0

    def request(self, bdir: str, offset: int, array: str) -> JobRequest:
        b = shlex.quote(bdir)
        return dataclasses.replace(
            self.base, workdir=bdir, array=array, output=f"{bdir}/slurm-%A_%a.out",
            command=f"exec bash {b}/run_one.sh {b} $((SLURM_ARRAY_TASK_ID + {offset}))")

    def _chunks(self, count: int) -> list[tuple[int, int]]:
        return array_chunks(count, self.max_array)

    def files(self, bdir: str, count: int) -> dict[str, str]:
        return {f"job_{c}.sh": job_script(self.request(bdir, off, array_spec(n, self.throttle)))
                for c, (off, n) in enumerate(self._chunks(count))}

    def submit(self, bdir: str, count: int) -> list[str]:
        self._bdir = bdir
        ids = []
        for c, (off, n) in enumerate(self._chunks(count)):
            job = self.client.submit(self.request(bdir, off, array_spec(n, self.throttle)),
                                     f"{bdir}/job_{c}.sh")
            self.offsets[job] = off
            self.owner.update(dict.fromkeys(range(off, off + n), job))
            ids.append(job)
        return ids

    def unmarked(self, ids: list[str], positions: Collection[int]
                 ) -> dict[int, Exit | Requeue]:
        want = set(positions)
        seen: set[int] = set()
        out: dict[int, Exit | Requeue] = {}
        for task in self.client.tasks(ids):
            k = self._note(task)
            if k is None or k not in want:
                continue  # not asked about, or an earlier job's record of a re-queued task
            seen.add(k)
            said = classify(task)
            if said is not None:
                out[k] = said
        for k in want - seen:  # gone from the controller, with no exit marker either
            self._absent[k] = self._absent.get(k, 0) + 1
            if self._absent[k] >= ABSENT_POLLS:
                out[k] = Exit(failure="ended without an exit status, and SLURM no longer "
                                      "knows the job")
        return self._over_memory(out)

    def _over_memory(self, said: dict[int, Exit | Requeue]) -> dict[int, Exit | Requeue]:
        """SIGKILLed tasks whose output file says SLURM killed them over their --mem."""
        killed = {k: e for k, e in said.items() if isinstance(e, Exit) and e.signal == 9
                  and not (e.canceled or e.failure) and k in self.owner}
        if not killed or not self._bdir:
            return said
        paths = {k: f"{self._bdir}/slurm-{self.owner[k]}_{k - self.offsets[self.owner[k]]}.out"
                 for k in killed}
        try:
            tails = read_tails(self.files_host, paths)
        except HostError:
            return said  # killed by a signal, as SLURM says
        for k, end in killed.items():
            if _OVER_MEMORY.search(tails.get(k, "")):
                said[k] = dataclasses.replace(end, failure="out of memory")
        return said

    def _note(self, task: SlurmTask) -> int | None:
        """The position a task record is of (None: not ours, or an earlier job's record of a
        re-queued position), keeping its queue wait."""
        if task.job_id not in self.offsets:
            return None
        k = self.offsets[task.job_id] + (task.task_id or 0)
        if self.owner.get(k) != task.job_id:
            return None
        if task.queue_seconds is not None:
            self._queue[k] = task.queue_seconds
        return k

    def queued(self, ids: list[str], positions: Collection[int]) -> dict[int, float]:
        """Queue waits from SLURM's records (start - submit); positions whose wait no earlier
        query saw are asked for: one by one when few, else their whole arrays."""
        unknown = [k for k in positions if k not in self._queue and k in self.owner]
        if unknown:
            refs = (sorted({self.owner[k] for k in unknown}) if len(unknown) > PER_TASK_QUERIES
                    else [f"{self.owner[k]}_{k - self.offsets[self.owner[k]]}" for k in unknown])
            for task in self.client.tasks(refs):
                self._note(task)
        return {k: self._queue[k] for k in positions if k in self._queue}

    def cancel(self, ids: list[str]) -> None:
        self.client.cancel(ids)

    def resubmit(self, bdir: str, positions: list[int]) -> list[str]:
        ids = []
        for off, n in self._chunks(max(positions) + 1):
            mine = [k - off for k in sorted(positions) if off <= k < off + n]
            if not mine:
                continue
            self._resubmits += 1
            name = f"job_requeue_{self._resubmits}.sh"
            req = self.request(bdir, off, ",".join(map(str, mine)))
            upload(self.files_host, bdir, {name: job_script(req)})
            job = self.client.submit(req, f"{bdir}/{name}")
            self.offsets[job] = off
            self.owner.update({off + t: job for t in mine})
            for t in mine:
                self._queue.pop(off + t, None)  # it waits anew
            ids.append(job)
        return ids


__all__ = ["SlurmLauncher"]
