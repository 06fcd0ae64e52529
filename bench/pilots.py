"""Our pilot agents' throughput: N x `bash -c CMD` as one experiment on the `local` resource in
pilot mode, 2 slots, through the whole path: the experiment's scheduler enqueues ready
instances in the store, the agent service (its own process, TLS) hands them to an agent in
batches, the agent runs them and reports, the scheduler records every state change.

The rate counts from the first instance queued to the last one ended, as the peers' count
from the first submission to the last result (neither counts starting its workers); the
whole run's wall time, agent start included, is printed beside it.

    python -m bench.pilots --n 10000 --cmd true     # prints one JSON line
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_service(home: Path) -> subprocess.Popen[bytes]:
    """The agent service for this home, once it listens (its log: home/service.log)."""
    with open(home / "service.log", "wb") as log:
        service = subprocess.Popen([sys.executable, "-m",
                                    "airavata_prefect.api.agent_service"],
                                   stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while b"listening" not in (home / "service.log").read_bytes():
        if service.poll() is not None or time.monotonic() > deadline:
            service.kill()
            raise RuntimeError((home / "service.log").read_text())
        time.sleep(0.05)
    return service


def measure(n: int, cmd: str, slots: int = 2) -> dict[str, object]:
    home = Path(tempfile.mkdtemp(prefix="airavata-bench-pilots-"))
    os.environ.update({"AIRAVATA_HOME": str(home), "AIRAVATA_LOCAL_MODE": "pilot",
                       "AIRAVATA_AGENT_PORT": str(free_port()),
                       "AIRAVATA_AGENT_SLOTS": str(slots), "AIRAVATA_AGENT_IDLE_SECONDS": "5",
                       "AIRAVATA_CONCURRENCY": str(slots)})
    os.environ.pop("AIRAVATA_DATABASE_URL", None)
    from airavata_prefect.adapters.store import Store
    from airavata_prefect.domain.scheduler import Hooks
    from airavata_prefect.usecases import run
    from airavata_prefect.usecases.context import Context
    from airavata_prefect.usecases.settings import get_settings
    from airavata_prefect.usecases.submit import submit

    settings = get_settings()
    store = Store(settings.db_url)
    spec = home / "bench.yml"
    spec.write_text(f"tasks:\n  t: {{command: {json.dumps(cmd)}, task_inputs: {{X: 1..{n}}}}}\n")
    exp_id = submit(Context(settings, store, "bench"), spec, [], authorize=False)
    service = start_service(home)
    try:
        start = time.perf_counter()
        claimed = run.claim(store, exp_id, None)
        status, text, _ = asyncio.run(run.execute(store, claimed, settings, Hooks(),
                                                  flow_run_id=None))
        wall = time.perf_counter() - start
    finally:
        service.terminate()
        service.wait(10)
    if str(status) != "COMPLETED":
        raise RuntimeError(f"the benchmark experiment ended {status}: {text}")
    events = store.tasks.events(exp_id)
    first = min(e.at for e in events if e.to_state == "QUEUED")
    last = max(e.at for e in events if e.to_state == "COMPLETED")
    seconds = (last - first).total_seconds()
    return {"peer": "airavata pilots", "workload": cmd, "n": n, "seconds": round(seconds, 3),
            "rate": round(n / seconds, 1), "wall_seconds": round(wall, 3)}


def measure_queue(n: int, cmd: str, slots: int = 2) -> dict[str, object]:
    """The pilot path alone, as the peers are measured (an executor fed directly): N work
    items enqueued at once, one agent started by the same starter the flow uses, the service
    between them; from the enqueue to the last report stored. Durable, exactly-once leases
    and every report in the store, but no experiment scheduler or task-state recording."""
    home = Path(tempfile.mkdtemp(prefix="airavata-bench-queue-"))
    os.environ.update({"AIRAVATA_HOME": str(home), "AIRAVATA_AGENT_PORT": str(free_port()),
                       "AIRAVATA_AGENT_SLOTS": str(slots), "AIRAVATA_AGENT_IDLE_SECONDS": "5"})
    os.environ.pop("AIRAVATA_DATABASE_URL", None)
    from airavata_prefect.adapters.store import Store
    from airavata_prefect.domain.pilot import WorkItem
    from airavata_prefect.domain.records import load_graph
    from airavata_prefect.usecases.agent_starters import LocalAgents
    from airavata_prefect.usecases.context import Context
    from airavata_prefect.usecases.pilot_dispatch import PilotExecutor
    from airavata_prefect.usecases.settings import get_settings
    from airavata_prefect.usecases.submit import submit

    settings = get_settings()
    store = Store(settings.db_url)
    spec = home / "bench.yml"
    spec.write_text(f"tasks:\n  t: {{command: {json.dumps(cmd)}, task_inputs: {{X: 1..{n}}}}}\n")
    exp_id = submit(Context(settings, store, "bench"), spec, [], authorize=False)
    graph = load_graph(store.experiments.get(exp_id))
    starter = LocalAgents(settings)
    ex = PilotExecutor(store, exp_id, graph, lambda s, i: "local", lambda r: starter)
    items = [WorkItem(exp_id, f"t[{i}]", 0, "local", ex.payload(graph.instance("t", i), 0))
             for i in range(n)]
    service = start_service(home)
    try:
        asyncio.run(starter.start(1, experiment_id=exp_id, root=Path(graph.root).parent))
        time.sleep(1.0)  # the agent is up (its start is not counted, as the peers')
        start = time.perf_counter()
        store.pilot.enqueue(items)
        while store.pilot.pending(exp_id).get("DONE", 0) < n:
            time.sleep(0.05)
        seconds = time.perf_counter() - start
    finally:
        service.terminate()
        service.wait(10)
    done = [e for e in store.pilot.events_after(exp_id, 0, limit=10 * n)
            if e.state is not None and str(e.state) == "COMPLETED"]
    if len(done) != n:
        raise RuntimeError(f"{len(done)} of {n} completed")
    return {"peer": "airavata pilots (queue to agents, no experiment scheduler)",
            "workload": cmd, "n": n, "seconds": round(seconds, 3),
            "rate": round(n / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--cmd", default="true")
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--path", choices=["experiment", "queue"], default="experiment")
    args = parser.parse_args()
    fn = measure if args.path == "experiment" else measure_queue
    print(json.dumps(fn(args.n, args.cmd, args.slots)))


def run_ours(n: int, cmd: str, path: str = "experiment") -> dict[str, object]:
    """`measure` (or `measure_queue`) in a fresh process (its own settings and store)."""
    out = subprocess.run([sys.executable, "-m", "bench.pilots", "--n", str(n), "--cmd", cmd,
                          "--path", path], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        return {"peer": "airavata pilots", "workload": cmd, "n": n,
                "error": (out.stderr or out.stdout).strip().splitlines()[-1:]}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()
