"""Usage per instance on `local` (wall, CPU, peak memory from the spawning process's rusage),
`ram_gb` enforced there, and the domain's rules about both."""

from __future__ import annotations

import asyncio
import os
import textwrap
import time
from pathlib import Path

import pytest

from airavata_prefect.domain.compile import compile_graph
from airavata_prefect.domain.scheduler import Recorder, Scheduler
from airavata_prefect.domain.spec import parse_spec_text
from airavata_prefect.domain.states import TaskState, Transition
from airavata_prefect.domain.usage import (
    DURATION_BUCKETS,
    Usage,
    duration_bucket,
    limit_kib,
    memory_failure,
    percentile,
)
from airavata_prefect.usecases.local import LocalExecutor, run_to_end

MB = 2 ** 20
# Touches every page (b"x" * n writes them; a zeroed bytearray would not be resident).
# It burns until the process has used 1 s of CPU, the allocation's page faults included.
ALLOC_AND_BURN = ("python3 -c 'import time; b = b\"x\" * (200 * 2**20); "
                  "[0 for _ in iter(lambda: time.process_time() < 1, False)]'")


def run(text: str, root: Path) -> dict[str, Transition]:
    graph = compile_graph(parse_spec_text(textwrap.dedent(text), "t.yml"), root=str(root))
    ends: dict[str, Transition] = {}
    executor = LocalExecutor(graph, "exp")

    def sink(batch: list[Transition]) -> None:
        ends.update({t.instance_id: t for t in batch if t.to_state in
                     (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELED)})

    asyncio.run(run_to_end(
        Scheduler(graph, executor, Recorder(sink, interval=0.05), concurrency=2), executor))
    return ends


def test_a_task_s_usage_is_its_own_within_ten_percent(tmp_path: Path) -> None:
    hog = bytearray(300 * MB)  # this runner's own peak must not show in the instance's
    hog[::4096] = b"x" * len(hog[::4096])
    ends = run(f"""
        tasks:
          burn:
            command: |
              {ALLOC_AND_BURN}
          idle: {{command: "python3 -c pass"}}
        """, tmp_path)
    del hog
    burn = ends["burn[0]"].usage
    assert ends["burn[0]"].to_state == TaskState.COMPLETED and burn is not None
    idle = ends["idle[0]"].usage  # the interpreter alone: what the 200 MB come on top of
    assert idle is not None and idle.max_rss_bytes < 50 * MB, idle  # not the runner's 300 MB
    assert abs(burn.max_rss_bytes - idle.max_rss_bytes - 200 * MB) <= 20 * MB, (burn, idle)
    assert 0.9 <= burn.cpu_seconds <= 1.1, burn
    assert burn.wall_seconds >= burn.cpu_seconds * 0.95


def test_ram_gb_is_enforced_on_local_and_the_reason_names_memory(tmp_path: Path) -> None:
    ends = run("""
        tasks:
          big:
            command: python3 -c "b = b'x' * (600 * 2**20)"
            resources: {compute: {ram_gb: 0.25}}
          fits:
            command: python3 -c "b = b'x' * (100 * 2**20)"
            resources: {compute: {ram_gb: 0.25}}
        """, tmp_path)
    assert ends["big[0]"].to_state == TaskState.FAILED
    assert ends["big[0]"].message and "out of memory" in ends["big[0]"].message
    assert "ram_gb 0.25" in ends["big[0]"].message and "MemoryError" in ends["big[0]"].message
    assert ends["fits[0]"].to_state == TaskState.COMPLETED, ends["fits[0]"].message


def test_canceling_kills_the_tree_and_closing_leaves_nothing_running(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    graph = compile_graph(parse_spec_text(textwrap.dedent(f"""
        tasks:
          s: {{command: 'sleep 300 & echo $! > {pidfile}; wait'}}
        """), "t.yml"), root=str(tmp_path))
    executor = LocalExecutor(graph, "exp")
    sched = Scheduler(graph, executor, Recorder(lambda _b: None, interval=0.05), concurrency=1)

    async def main() -> None:
        asyncio.get_running_loop().call_later(1.0, sched.request_cancel)
        assert (await run_to_end(sched, executor)).canceled

    started = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - started < 8
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_usage_line_round_trips_and_hostile_lines_are_refused() -> None:
    u = Usage(1.5, 0.25, 123456, 3.0)
    assert Usage.parse(u.to_line()) == u
    assert Usage.parse("wall=2 cpu=1 maxrss=10 extra=x") == Usage(2.0, 1.0, 10, 0.0)
    for bad in ("", "cpu=1", "wall=nan", "wall=-1", "wall=1 maxrss=1e99x", "wall=inf"):
        assert Usage.parse(bad) is None, bad


def test_memory_rules() -> None:
    assert limit_kib(None) is None and limit_kib(0) is None
    assert limit_kib(1) == (2 ** 30 + 64 * MB) // 1024
    why = memory_failure(0.25, "Traceback...\nMemoryError\n", None)
    assert why is not None and why.startswith("out of memory: exceeded ram_gb 0.25 (256.0 MiB)")
    assert memory_failure(0.25, "exit 3: no such file", Usage(1, 1, 10 * MB)) is None
    assert memory_failure(None, "MemoryError", None) is None  # no limit: not ours to say
    peak = memory_failure(0.25, "", Usage(1, 1, 300 * MB))
    assert peak is not None and "peak 300.0 MiB" in peak


def test_percentiles_and_buckets() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 90) == 3.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(list(range(1, 11)), 90) == pytest.approx(9.1)
    assert duration_bucket(0.0) == 0 and duration_bucket(0.1) == 0
    assert duration_bucket(0.2) == 1
    assert duration_bucket(1e9) == len(DURATION_BUCKETS)


def test_usage_is_stored_listed_and_summarised_per_step(home: Path) -> None:
    import json

    from airavata_prefect.usecases.context import os_login
    from tests.cli_inproc import airavata
    from tests.local_runs import run_local

    store, exp_id, status = run_local(home, """
        name: usage
        tasks:
          t:
            command: python3 -c "b = b'x' * ($MB * 2**20)"
            task_inputs: {MB: [10, 60]}
        """, "usage", owner=os_login())
    assert status == "COMPLETED"
    ran = airavata("experiment", "tasks", exp_id, "--json")
    assert ran.returncode == 0, ran.stderr
    rows = {r["instance_id"]: r for r in json.loads(ran.stdout)}
    small, big = rows["t[0]"]["usage"], rows["t[1]"]["usage"]
    assert big["max_rss_bytes"] - small["max_rss_bytes"] >= 45 * MB, rows
    assert small["wall_seconds"] > 0 and small["cpu_seconds"] > 0
    ran = airavata("experiment", "usage", exp_id, "--json")
    assert ran.returncode == 0, ran.stderr
    (step,) = json.loads(ran.stdout)
    assert step["step"] == "t" and step["measured"] == 2
    assert step["rss_max"] == big["max_rss_bytes"]
    assert small["max_rss_bytes"] < step["rss_p50"] < big["max_rss_bytes"]
    table = airavata("experiment", "usage", exp_id)
    assert table.returncode == 0 and "memory" in table.stdout and "MiB" in table.stdout
    # The duration histogram counted both, on `local`.
    (hist,) = store.tasks.durations()
    assert hist.resource == "local" and hist.total == 2
    assert hist.seconds == pytest.approx(small["wall_seconds"] + big["wall_seconds"])
    # A bad experiment id is one clear line.
    bad = airavata("experiment", "usage", "nope-nope")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "nope-nope" in bad.stderr


def test_running_instances_are_sampled_before_they_end(tmp_path: Path) -> None:
    from airavata_prefect.usecases.live_usage import LiveUsage

    graph = compile_graph(parse_spec_text(textwrap.dedent("""
        tasks:
          hold:
            command: |
              python3 -c "import time; b = b'x' * (100 * 2**20); t = time.time()
              while time.time() - t < 2.5: pass"
        """), "t.yml"), root=str(tmp_path))
    samples: list[dict[str, Usage]] = []
    executor = LocalExecutor(graph, "exp", live=LiveUsage(samples.append, seconds=0.5))
    sched = Scheduler(graph, executor, Recorder(lambda _b: None, interval=0.05), concurrency=1)
    assert asyncio.run(run_to_end(sched, executor)).ok
    seen = [s["hold[0]"] for s in samples if "hold[0]" in s]
    assert len(seen) >= 2, samples
    late = seen[-1]
    assert late.cpu_seconds >= 1.0 and late.max_rss_bytes >= 100 * MB, seen
    assert [u.cpu_seconds for u in seen] == sorted(u.cpu_seconds for u in seen)


def test_proc_stat_lines_with_odd_command_names() -> None:
    from airavata_prefect.adapters.proc_sampler import parse_stat

    fields = "S 1 4242 4242 0 -1 0 0 0 0 0 150 50 30 20 20 0 1 0 100 1000 250 rest"
    got = parse_stat(f"4243 (a) (b c)) {fields}")
    assert got is not None
    pgrp, cpu, rss = got
    assert pgrp == 4242 and rss == 250 * os.sysconf("SC_PAGE_SIZE")
    assert cpu == pytest.approx(250 / os.sysconf("SC_CLK_TCK"))
    assert parse_stat("garbage") is None and parse_stat("1 (x) S 1 2") is None


def test_instances_start_with_default_signals_whatever_the_runner_ignores(
        tmp_path: Path) -> None:
    import signal

    out = tmp_path / "sigign"
    graph = compile_graph(parse_spec_text(textwrap.dedent(f"""
        tasks:
          s: {{command: 'grep SigIgn /proc/self/status > {out}'}}
        """), "t.yml"), root=str(tmp_path))
    before = signal.signal(signal.SIGQUIT, signal.SIG_IGN)  # as a background job's shell has
    try:
        executor = LocalExecutor(graph, "exp")
        sched = Scheduler(graph, executor, Recorder(lambda _b: None, interval=0.05),
                          concurrency=1)
        assert asyncio.run(run_to_end(sched, executor)).ok
    finally:
        signal.signal(signal.SIGQUIT, before)
    ignored = int(out.read_text().split()[1], 16)  # of a command the script runs (bash
    # itself ignores SIGQUIT in its own process, whatever it inherited)
    assert not ignored & (1 << (signal.SIGQUIT - 1)), hex(ignored)
