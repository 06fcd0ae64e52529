"""Run every benchmark and print each figure beside its baseline or target.

Some run alone too: `python -m bench.deployment_path`, `python -m bench.api_load [--seconds S]`,
`python -m bench.staging [--quick]`, `python -m bench.usage_overhead [--n N]`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

N_TRUE = 2000


def bench_compile(repeat: int = 3) -> dict:
    """Median of `repeat` fresh processes (a shared VM's timings vary by ~30% run to run)."""
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-m", "bench.compile_sweep"],
                             capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout))
    runs.sort(key=lambda r: r["total_s"])
    median = runs[len(runs) // 2]
    return {**median, "min_s": runs[0]["total_s"], "max_s": runs[-1]["total_s"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}


def bench_xargs(cpus: int) -> float:
    start = time.perf_counter()
    subprocess.run(f"seq {N_TRUE} | xargs -P {cpus} -n 1 bash -c true", shell=True, check=True)
    return time.perf_counter() - start


def bench_local_run(home: Path) -> tuple[float, float]:
    """(seconds for the whole run_experiment flow, seconds for the scheduler alone)."""
    import asyncio

    from airavata_prefect.adapters.store import Store
    from airavata_prefect.domain.compile import compile_graph
    from airavata_prefect.domain.scheduler import Recorder, Scheduler
    from airavata_prefect.domain.spec import load_spec
    from airavata_prefect.flows.experiment_flow import run_experiment
    from airavata_prefect.usecases.context import Context
    from airavata_prefect.usecases.local import LocalExecutor, run_to_end
    from airavata_prefect.usecases.settings import get_settings
    from airavata_prefect.usecases.submit import submit

    spec = home / "true.yml"
    spec.write_text(f"tasks:\n  t: {{command: 'true', task_inputs: {{X: 1..{N_TRUE}}}}}\n")
    settings = get_settings()
    store = Store(settings.db_url)
    exp_id = submit(Context(settings, store, "bench"), spec, [], authorize=False)
    start = time.perf_counter()
    state = asyncio.run(run_experiment(experiment_id=exp_id, return_state=True))
    flow_s = time.perf_counter() - start
    assert state.is_completed(), state
    assert store.tasks.state_counts(exp_id) == {"t": {"COMPLETED": N_TRUE}}

    graph = compile_graph(load_spec(spec), root=str(home / "bare"))
    executor = LocalExecutor(graph, "bare")
    sched = Scheduler(graph, executor, Recorder(lambda _b: None),
                      concurrency=settings.concurrency)

    start = time.perf_counter()
    assert asyncio.run(run_to_end(sched, executor)).ok
    return flow_s, time.perf_counter() - start


def start_prefect(home: Path) -> subprocess.Popen:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
                      PREFECT_HOME=str(home / "prefect"), PREFECT_LOGGING_LEVEL="WARNING",
                      PREFECT_SERVER_ANALYTICS_ENABLED="false", AIRAVATA_HOME=str(home))
    proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start",
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(240):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("Prefect server did not start")


def add_deployment_rows(table: Table) -> None:
    """Experiments as flow runs of run-experiment/default (a stack of its own, started and
    stopped by bench/deployment_path.py) beside the detached runner they replaced."""
    from bench import deployment_path as dp

    r = dp.run()
    base = r.latency["detached runner"]
    repeat = len(base.samples)
    for door in ("prefect deployment run", "airavata experiment run"):
        lat = r.latency[door]
        cmd = ("`prefect deployment run run-experiment/default --param spec=PATH`"
               if door == "prefect deployment run" else "`airavata experiment run PATH`")
        table.add_row(f"start latency: {cmd} to the first instance RUNNING, from the command's "
                      f"start (median of {repeat}; {lat.spread} s; the command took "
                      f"{lat.command_s:.2f} s)", f"{lat.from_start_s:.2f} s",
                      f"detached runner: {base.from_start_s:.2f} s (its command "
                      f"{base.command_s:.2f} s); target <= {dp.TARGET_LATENCY_S:.2f} s",
                      f"{lat.from_start_s / base.from_start_s:.2f}x, "
                      f"{lat.from_start_s / dp.TARGET_LATENCY_S:.2f}x of target")
        table.add_row(f"start latency: {cmd}, from the command's return (median of {repeat}; "
                      "in brackets: until its flow run was Running, until the experiment was "
                      "claimed)", f"{lat.from_return_s:.2f} s ({lat.flow_running_s:.2f}, "
                      f"{lat.claimed_s:.2f})",
                      f"detached runner: {base.from_return_s:.2f} s ({base.flow_running_s:.2f}, "
                      f"{base.claimed_s:.2f}); target <= {dp.TARGET_LATENCY_S:.2f} s",
                      f"{lat.from_return_s / base.from_return_s:.2f}x, "
                      f"{lat.from_return_s / dp.TARGET_LATENCY_S:.2f}x of target")
    s, load = r.sweep_s, r.load
    detached = s["detached runner"]
    before, after = "detached runner (first)", "detached runner (last)"
    for door in ("airavata experiment run", "prefect deployment run"):
        table.add_row(f"{dp.N:,} x `true` end to end through the deployment: `{door}` (command "
                      f"start to the flow run's end; load average after: {load[door]:.1f})",
                      f"{s[door]:.1f} s",
                      f"detached runner: {detached:.1f} s (before {s[before]:.1f}, load "
                      f"{load[before]:.1f}; after {s[after]:.1f}, load {load[after]:.1f}); "
                      f"target <= {dp.TARGET_SLOWDOWN:.2f}x; xargs -P{r.cpus}: "
                      f"{s['xargs']:.1f} s", f"{s[door] / detached:.2f}x")
    table.add_row(f"{dp.N:,} x `true` end to end, detached runner (baseline above)",
                  f"{detached:.1f} s", f"xargs -P{r.cpus}: {s['xargs']:.1f} s",
                  f"{detached / s['xargs']:.2f}x")
    for note in r.notes:
        table.add_row("note (deployment benchmark)", note, "", "")


def add_api_load_rows(table: Table) -> list[str]:
    """The REST API under load on PostgreSQL (a stack of its own, started and stopped by
    bench/api_load.py) beside Prefect's own API under the same load; why it failed (any 5xx
    from our API), to report after the table."""
    from bench import api_load

    r = api_load.run()
    for row in api_load.rows(r):
        table.add_row(*row)
    return r.failures


def add_pilot_rows(table: Table) -> None:
    """Our pilot agents beside Parsl (HTEX, TPE), HyperQueue, Dask and xargs, same run, 2
    slots (bench/peers.py installs the peers in .venv-peers)."""
    from bench import peers, pilots

    peer_results = peers.run_peers(peers.N_TRUE, peers.N_SLEEP)
    ours = [pilots.run_ours(peers.N_TRUE, "true"), pilots.run_ours(peers.N_SLEEP, "sleep 0.01")]
    for row in peers.rows(peer_results, ours):
        table.add_row(*row)


def add_usage_rows(table: Table) -> None:
    """What measuring and storing every instance's usage costs (bench/usage_overhead.py)."""
    from bench import usage_overhead

    for row in usage_overhead.rows(usage_overhead.run()):
        table.add_row(*row)


def add_staging_rows(table: Table) -> None:
    """Data staging from S3: our adapter beside plain boto3 on one SeaweedFS server (started
    and stopped by bench/staging.py), and its peak RSS while it moves 1 GB."""
    from bench import staging

    for row in staging.rows(staging.run()):
        table.add_row(*row)


def main() -> None:
    console = Console(width=160)  # a wide table, also when piped to a file or CI log
    cpus = os.cpu_count() or 1
    home = Path(tempfile.mkdtemp(prefix="airavata-bench-"))
    table = Table(title=f"airavata benchmarks ({cpus} CPUs)")
    for col in ("benchmark", "measured", "baseline / target", "ratio"):
        table.add_column(col)

    c = bench_compile()
    table.add_row(f"compile {c['instances']:,}-instance sweep, every instance materialised "
                  f"(median of 3; {c['min_s']:.2f}-{c['max_s']:.2f} s)", f"{c['total_s']:.2f} s",
                  "target 5.00 s", f"{c['total_s'] / 5:.2f}x of target")
    table.add_row("compile 1M sweep (peak RSS)", f"{c['peak_rss_mb']:.0f} MB",
                  "target 1536 MB", f"{c['peak_rss_mb'] / 1536:.2f}x of target")

    from bench import placement

    seconds, gap, status = placement.solve_time()
    table.add_row("placement: 1,000,000 instances / 200 classes / 20 resources (median of 3)",
                  f"{seconds:.2f} s ({status}, gap {gap:.1%})", "target 1.00 s",
                  f"{seconds:.2f}x of target")
    q = placement.quality()
    n = q["cost_vs_greedy"]["n"]
    for key, label in (("cost_vs_greedy", "cost (objective cost) vs greedy cheapest-first"),
                       ("cost_vs_airavata", "cost (objective cost) vs Airavata round-robin"),
                       ("time_vs_greedy", "makespan (objective time) vs greedy"),
                       ("time_vs_airavata", "makespan (objective time) vs Airavata round-robin")):
        table.add_row(f"placement, {n} generated scenarios: {label}",
                      f"geomean {q[key]['geomean']:.2f}x", "baseline 1.00x",
                      f"worst {q[key]['max']:.2f}x")
    table.add_row(f"placement: gap to the LP relaxation bound ({q['gap']['n']} plans, solver "
                  "limit 2 s)", f"mean {q['gap']['geomean']:.1%}", "0% = proven optimal",
                  f"worst {q['gap']['max']:.1%}")
    for row in placement.near_optimal_rows(placement.near_optimal()):
        table.add_row(*row)

    prefect = start_prefect(home)
    try:
        xargs_s = bench_xargs(cpus)
        flow_s, bare_s = bench_local_run(home)
        from bench import slurm_pool
        sl = slurm_pool.run(home)
    finally:
        prefect.terminate()
        prefect.wait(30)
    table.add_row(f"{N_TRUE:,} x `true`, run_experiment flow (local)", f"{flow_s:.2f} s",
                  f"xargs -P{cpus}: {xargs_s:.2f} s", f"{flow_s / xargs_s:.2f}x")
    table.add_row(f"{N_TRUE:,} x `true`, scheduler alone (no Prefect, no store)",
                  f"{bare_s:.2f} s", f"xargs -P{cpus}: {xargs_s:.2f} s",
                  f"{bare_s / xargs_s:.2f}x")
    table.add_row(f"{slurm_pool.N:,} x `true` on local SLURM through our slurm work pool "
                  "(submit to last state, worker process, job array)", f"{sl['pool_s']:.1f} s",
                  f"raw sbatch --array: {sl['raw_s']:.1f} s (before {sl['raw_before_s']:.1f}, "
                  f"after {sl['raw_after_s']:.1f}); target <= 1.20x",
                  f"{sl['pool_s'] / sl['raw_s']:.2f}x")
    table.add_row("sbatch calls for that sweep", f"{sl['sbatch_calls']:.0f}",
                  "raw: 1 (one array)", f"{sl['sbatch_calls']:.0f}x")
    table.add_row(f"{slurm_pool.N:,} x `true` on local SLURM through pilot agents the pool "
                  "starts (mode: pilot; submit to last state)", f"{sl['pilot_s']:.1f} s",
                  f"raw sbatch --array: {sl['raw_s']:.1f} s; target >= 5x faster",
                  f"{sl['raw_s'] / sl['pilot_s']:.2f}x faster")
    table.add_row("sbatch calls for that sweep in pilot mode",
                  f"{sl['pilot_sbatch_calls']:.0f}", "raw: 1 (one array)",
                  f"{sl['pilot_sbatch_calls']:.0f}x")
    add_pilot_rows(table)
    add_usage_rows(table)
    add_staging_rows(table)
    add_deployment_rows(table)
    failures = add_api_load_rows(table)
    console.print(table)
    shutil.rmtree(home, ignore_errors=True)
    if failures:
        raise SystemExit("; ".join(failures))


if __name__ == "__main__":
    main()
