"""Run N tasks of `bash -c CMD` on one peer with exactly 2 parallel slots; print one JSON line.

Runs inside .venv-peers (scripts/bench_peers.sh) as its own process, started by bench/peers.py,
so that no peer's imports ever reach the bench's process. It imports nothing of ours and only the
standard library at module level: each peer's imports stay inside its own function.

    .venv-peers/bin/python bench/peer_driver.py --peer parsl-htex --n 10000 --cmd true

prints {"peer": ..., "n": ..., "cmd": ..., "seconds": ..., "rate": ..., "version": ...}.

The clock: from the first submission to the last result. The peer's cluster, workers or pool are
started before it, and a warm-up round of 2 x `true` per slot has completed on them, so neither
the startup nor the first connection of a worker is counted: the same rule as our agents' figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

SLOTS = 2
Result = dict[str, Any]  # seconds, version; anything more a peer has to say
WARM_UP = 2 * SLOTS


def _run_bash(cmd: str) -> int:
    """One task as Dask runs it: a subprocess `bash -c CMD` (module level so it pickles)."""
    return subprocess.run(["bash", "-c", cmd], check=True).returncode


def xargs(n: int, cmd: str) -> Result:
    """`xargs -P2 -n1 bash -c CMD`, fed N lines: each line one `bash -c CMD` (the line is its $0).

    -n1 rather than -I{}: the same one process per task, without the substitution."""
    lines = "".join(f"{i}\n" for i in range(n)).encode()
    start = time.perf_counter()
    proc = subprocess.run(["xargs", f"-P{SLOTS}", "-n1", "bash", "-c", cmd], input=lines,
                          check=False)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"xargs exited {proc.returncode}")
    out = subprocess.run(["xargs", "--version"], capture_output=True, text=True, check=False)
    first = out.stdout.split("\n", 1)[0].split()  # "xargs (GNU findutils) 4.9.0"
    return {"seconds": seconds, "version": first[-1] if first else "?"}


def _parsl(n: int, cmd: str, executor: Any) -> Result:
    import parsl
    from parsl.app.app import bash_app
    from parsl.config import Config

    # HTEX starts interchange.py and process_worker_pool.py from PATH, as an activated venv has.
    os.environ["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"
    tmp = tempfile.TemporaryDirectory(prefix="bench-parsl-")
    # Parsl's own defaults otherwise (its per-task log in run_dir included): the natural way.
    dfk = parsl.load(Config(executors=[executor], run_dir=tmp.name, strategy="none"))
    try:
        @bash_app
        def task(command: str) -> str:
            return command  # Parsl runs the string as `/bin/bash -c command`: one bash a task

        for f in [task("true") for _ in range(WARM_UP)]:
            f.result()
        start = time.perf_counter()
        futures = [task(cmd) for _ in range(n)]
        for f in futures:
            f.result()  # raises on a non-zero exit
        seconds = time.perf_counter() - start
    finally:
        dfk.cleanup()
        parsl.clear()
        tmp.cleanup()
    return {"seconds": seconds, "version": parsl.__version__}


def parsl_htex(n: int, cmd: str) -> Result:
    """HighThroughputExecutor: one block on this machine (LocalProvider), 2 workers in it."""
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    executor = HighThroughputExecutor(
        label="htex", address="127.0.0.1", max_workers_per_node=SLOTS, cores_per_worker=1,
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1))
    return _parsl(n, cmd, executor)


def parsl_tpe(n: int, cmd: str) -> Result:
    """ThreadPoolExecutor with 2 threads."""
    from parsl.executors.threads import ThreadPoolExecutor

    return _parsl(n, cmd, ThreadPoolExecutor(label="tpe", max_threads=SLOTS))


def hq(n: int, cmd: str) -> Result:
    """HyperQueue through its Python API: the PyPI wheel ships no `hq` binary; its extension
    embeds the server and the worker (LocalCluster). One job of N tasks, submitted at once, as
    `hq submit --array 1-N` would: one worker with 2 CPUs, each task 1 CPU. Tasks' stdout and
    stderr are discarded (HQ's default is 2 files a task), as every other peer here does."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # HQ's wait_for_jobs draws a progress bar
    import hyperqueue
    from hyperqueue import Job, LocalCluster
    from hyperqueue.cluster import WorkerConfig

    with tempfile.TemporaryDirectory(prefix="bench-hq-") as work, \
            LocalCluster(server_dir=work, worker_config=WorkerConfig(cores=SLOTS)) as cluster:
        client = cluster.client()

        def job(count: int, command: str) -> Any:
            j = Job(default_workdir=work, max_fails=0)
            for _ in range(count):
                j.program(["bash", "-c", command], stdout=None, stderr=None)
            return j

        warm = client.submit(job(WARM_UP, "true"))
        client.wait_for_jobs([warm])
        # N Python task objects are built before the clock (`hq submit --array` builds none);
        # submit() serialises and sends them, and that is counted.
        timed = job(n, cmd)
        polls: list[tuple[float, int]] = []
        start = time.perf_counter()
        submitted = client.submit(timed)
        # Client.wait_for_jobs, with a callback that keeps the progress HQ reports at each poll
        failed = client.connection.wait_for_jobs(
            [submitted.id], lambda jobs: polls.append(
                (time.perf_counter(), sum(s["finished"] + s["failed"] for s in jobs.values()))))
        seconds = time.perf_counter() - start
        if failed:
            raise RuntimeError(f"HyperQueue: tasks failed in job {submitted.id}")
    extra: Result = {"seconds": seconds, "version": hyperqueue.get_version()}
    # HQ's client learns of the end by polling the server once a second, so `seconds` is up to
    # 1 s late (the figure an `hq submit --wait` user sees). Between the last two polls before
    # the end, tasks finished at a known rate: the end extrapolated from it, for a note.
    before = [p for p in polls if p[1] < n]
    if len(before) >= 2 and before[-1][1] > before[-2][1]:
        (t0, f0), (t1, f1) = before[-2], before[-1]
        extra["seconds_extrapolated"] = t1 - start + (n - f1) * (t1 - t0) / (f1 - f0)
    extra["poll_s"] = polls[-1][0] - polls[-2][0] if len(polls) >= 2 else None
    return extra


def dask(n: int, cmd: str) -> Result:
    """Dask distributed: LocalCluster of 2 worker processes, 1 thread each; client.map."""
    import distributed
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=SLOTS, threads_per_worker=1, processes=True,
                      dashboard_address=None, host="127.0.0.1") as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(SLOTS)
        client.gather(client.map(_run_bash, ["true"] * WARM_UP, pure=False))
        start = time.perf_counter()
        futures = client.map(_run_bash, [cmd] * n, pure=False)
        client.gather(futures)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "version": distributed.__version__}


PEERS: dict[str, Callable[[int, str], Result]] = {
    "xargs": xargs, "parsl-htex": parsl_htex, "parsl-tpe": parsl_tpe, "hq": hq, "dask": dask,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", choices=sorted(PEERS), required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--cmd", required=True)
    args = parser.parse_args(argv)
    result = PEERS[args.peer](args.n, args.cmd)
    # stdout may carry the peers' noise (HQ prints its server's table): the result is the last
    # line, printed after everything before it was flushed.
    sys.stdout.flush()
    print(json.dumps({"peer": args.peer, "n": args.n, "cmd": args.cmd, **result,
                      "rate": args.n / result["seconds"]}), flush=True)


if __name__ == "__main__":
    main()
