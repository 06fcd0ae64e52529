"""What recording usage costs: 10,000 x `true` on `local`, scheduler and a real SQLite store,
with usage measured and stored vs the same run without it, interleaved in one process.

- with usage: what runs now: instances spawned by adapters/spawn_server.py and reaped with
  their rusage; every end writes wall / CPU / peak memory and counts the duration histogram;
- without: the same executor and store, instances spawned by asyncio from the runner itself
  (the path before usage existed: no rusage, no helper process) and ends stored without usage.

Target: with <= 1.05 x without. `python -m bench.usage_overhead [--n N] [--repeat R]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from airavata_prefect.adapters.spawner import Ended, Spawned
from airavata_prefect.adapters.store import Store
from airavata_prefect.domain.compile import compile_graph
from airavata_prefect.domain.dag import TaskInstance
from airavata_prefect.domain.endings import Outcome
from airavata_prefect.domain.records import NewTask
from airavata_prefect.domain.scheduler import Recorder, Report, Scheduler
from airavata_prefect.domain.spec import parse_spec_text
from airavata_prefect.domain.usage import Usage
from airavata_prefect.usecases.local import LocalExecutor, run_to_end

N = 10_000
TARGET = 1.05


class _AsyncioProcess(Spawned):
    def __init__(self, proc: asyncio.subprocess.Process, started: float) -> None:
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[Ended] = loop.create_future()
        super().__init__(None, 0, proc.pid, ended)  # type: ignore[arg-type]
        self._proc = proc

        def done(waited: asyncio.Task[int]) -> None:
            ended.set_result(Ended(waited.result(), Usage(time.monotonic() - started)))

        asyncio.ensure_future(proc.wait()).add_done_callback(done)

    def signal_group(self, sig: int) -> None:
        os.killpg(self.pid, sig)


class AsyncioSpawner:
    """The spawn path before usage was measured: asyncio from the runner, wall time only."""

    async def spawn(self, executable: str, argv: Sequence[str], *,
                    cwd: str | os.PathLike[str], env: Mapping[str, str], stdout: str,
                    stderr: str) -> Spawned:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        fds = [os.open(os.path.join(cwd, name), flags, 0o644) for name in (stdout, stderr)]
        try:
            proc = await asyncio.create_subprocess_exec(
                executable, *argv[1:], cwd=cwd, env=dict(env), stdin=asyncio.subprocess.DEVNULL,
                stdout=fds[0], stderr=fds[1], start_new_session=True)
        finally:
            for fd in fds:
                os.close(fd)
        return _AsyncioProcess(proc, time.monotonic())

    async def close(self) -> None:
        return None


class WithoutUsage(LocalExecutor):
    async def __call__(self, inst: TaskInstance, attempt: int, report: Report,
                       cancel: asyncio.Event) -> Outcome:
        return (await super().__call__(inst, attempt, report, cancel))._replace(usage=None)


def one_run(base: Path, n: int, measured: bool, tag: str) -> float:
    root = base / tag
    spec = parse_spec_text(f"tasks:\n  t: {{command: 'true', task_inputs: {{X: 1..{n}}}}}\n",
                           "true.yml")
    graph = compile_graph(spec, root=str(root), max_instances=n)
    store = Store(f"sqlite:///{base / (tag + '.db')}")
    exp_id = store.experiments.create(
        name="bench", source="true.yml", spec_text="", params={}, workdir_root=root,
        total=n, plan=None, owner="bench", project=None,
        tasks_iter=(NewTask(i.id, i.step, i.index, graph.workdir(i.step, i.index))
                    for i in graph.iter_instances()))
    executor = LocalExecutor(graph, exp_id) if measured else WithoutUsage(graph, exp_id)
    if not measured:
        executor.spawner = AsyncioSpawner()  # type: ignore[assignment]
    sched = Scheduler(graph, executor, Recorder(
        lambda batch: store.tasks.apply_transitions(exp_id, batch)),
        concurrency=os.cpu_count() or 1)

    start = time.perf_counter()
    assert asyncio.run(run_to_end(sched, executor)).ok
    took = time.perf_counter() - start
    counts = store.tasks.state_counts(exp_id)
    assert counts == {"t": {"COMPLETED": n}}, counts
    hist = store.tasks.durations()
    assert (sum(h.total for h in hist) == n) if measured else not hist
    store.close()
    return took


def run(n: int = N, repeat: int = 6) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"with": [], "without": []}
    with tempfile.TemporaryDirectory(prefix="airavata-usage-") as tmp:
        for r in range(repeat):  # interleaved: the machine's load touches both alike
            for key in (("without", "with") if r % 2 else ("with", "without")):
                out[key].append(one_run(Path(tmp), n, key == "with", f"{key}{r}"))
    return out


def rows(result: dict[str, list[float]], n: int = N) -> list[tuple[str, str, str, str]]:
    w, wo = statistics.median(result["with"]), statistics.median(result["without"])
    return [(f"usage recording: {n:,} x `true` on local, scheduler + SQLite store, usage "
             f"measured and stored (median of {len(result['with'])}, interleaved)",
             f"{w:.1f} s ({n / w:.0f}/s)",
             f"without usage (asyncio spawn, nothing stored): {wo:.1f} s ({n / wo:.0f}/s); "
             f"target <= {TARGET:.2f}x", f"{w / wo:.2f}x")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=N)
    parser.add_argument("--repeat", type=int, default=6)
    args = parser.parse_args()
    for row in rows(run(args.n, args.repeat), args.n):
        print(" | ".join(row))


if __name__ == "__main__":
    main()
