"""The scheduler with the local executor, real bash processes, no Prefect."""

from __future__ import annotations

import asyncio
import os
import textwrap
import time
from pathlib import Path

import pytest

from airavata_prefect.domain.compile import compile_graph
from airavata_prefect.domain.dag import TaskGraph
from airavata_prefect.domain.instance import render_script
from airavata_prefect.domain.scheduler import Recorder, Scheduler, Summary
from airavata_prefect.domain.spec import parse_spec_text
from airavata_prefect.domain.states import TaskState as S
from airavata_prefect.domain.states import Transition
from airavata_prefect.usecases.local import LocalExecutor, run_to_end


def run(text: str, root: Path, *, concurrency: int = 2, cancel_after: float | None = None,
        ) -> tuple[Summary, list[Transition], TaskGraph]:
    graph = compile_graph(parse_spec_text(textwrap.dedent(text), "t.yml"), root=str(root))
    changes: list[Transition] = []
    recorder = Recorder(changes.extend, interval=0.05)
    executor = LocalExecutor(graph, "exp")
    sched = Scheduler(graph, executor, recorder, concurrency=concurrency)

    async def main() -> Summary:
        if cancel_after is not None:
            asyncio.get_running_loop().call_later(cancel_after, sched.request_cancel)
        return await run_to_end(sched, executor)

    return asyncio.run(main()), changes, graph


def final(changes: list[Transition]) -> dict[str, str]:
    out = {}
    for c in changes:
        out[c.instance_id] = str(c.to_state)
    return out


def test_failure_marks_dependents_and_independent_branches_run(tmp_path: Path) -> None:
    summary, changes, _ = run("""\
        tasks:
          a: {command: '[ "$X" != 2 ] || exit 3; echo $X > $O', task_inputs: {X: 1..3},
              task_outputs: {O: o}}
          b: {command: 'cat $I', foreach: [a], task_inputs: {I: "${a.O}"}}
          c: {command: 'true', depends_on: [b]}
          other: {command: 'echo independent'}
        """, tmp_path)
    states = final(changes)
    assert states == {"a[0]": "COMPLETED", "a[1]": "FAILED", "a[2]": "COMPLETED",
                      "b[0]": "COMPLETED", "b[1]": "UPSTREAM_FAILED", "b[2]": "COMPLETED",
                      "c[0]": "UPSTREAM_FAILED", "other[0]": "COMPLETED"}
    failed = [c for c in changes if c.to_state == S.FAILED]
    assert failed[0].exit_code == 3 and failed[0].message == "exit code 3"
    assert not summary.ok
    assert (tmp_path / "a/0/o").read_text() == "1\n"
    assert (tmp_path / "b/0/stdout.log").read_text() == "1\n"


def test_every_state_is_walked_in_order(tmp_path: Path) -> None:
    _, changes, _ = run("tasks:\n  a: {command: 'true'}\n", tmp_path)
    assert [c.to_state for c in changes] == [S.QUEUED, S.DATA_STAGING, S.ENV_SETUP, S.RUNNING,
                                             S.OUTPUT_STAGING, S.COMPLETED]


def test_retries_rerun_and_keep_earlier_logs(tmp_path: Path) -> None:
    summary, changes, _ = run("""\
        tasks:
          flaky:
            retries: 2
            command: |
              n=$(cat count 2>/dev/null || echo 0); echo $((n+1)) > count
              echo "attempt $AIRAVATA_ATTEMPT"; [ "$n" -ge 2 ]
        """, tmp_path)
    assert summary.ok
    assert [c.to_state for c in changes].count(S.FAILED) == 2
    assert [c.attempt for c in changes if c.to_state == S.QUEUED] == [0, 1, 2]
    assert (tmp_path / "flaky/0/stdout.log").read_text() == "attempt 2\n"
    assert (tmp_path / "flaky/0/stdout.attempt0.log").read_text() == "attempt 0\n"


def test_retries_exhausted_fail(tmp_path: Path) -> None:
    _, changes, _ = run("tasks:\n  a: {command: 'exit 7', retries: 1}\n", tmp_path)
    assert final(changes) == {"a[0]": "FAILED"}
    assert [c.to_state for c in changes].count(S.QUEUED) == 2


def test_walltime_kills_the_process_group(tmp_path: Path) -> None:
    start = time.monotonic()
    _, changes, _ = run("""\
        tasks:
          slow:
            command: 'sleep 30 & echo $! > child.pid; wait'
            resources: {compute: {time: "0:00:01"}}
        """, tmp_path)
    assert time.monotonic() - start < 10
    last = changes[-1]
    assert last.to_state == S.FAILED and last.message == "timeout: exceeded walltime 00:00:01"
    child = int((tmp_path / "slow/0/child.pid").read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or \
        Path(f"/proc/{child}/stat").read_text().split(") ")[1][0] == "Z"


def test_cancel_stops_running_and_never_starts_waiting(tmp_path: Path) -> None:
    start = time.monotonic()
    summary, changes, _ = run("""\
        tasks:
          a: {command: 'sleep 30', task_inputs: {X: 1..4}}
          b: {command: 'true', depends_on: [a]}
        """, tmp_path, concurrency=2, cancel_after=1.0)
    assert time.monotonic() - start < 10
    assert summary.canceled and not summary.ok
    states = final(changes)
    assert set(states.values()) == {"CANCELED"} and len(states) == 5
    ran = {c.instance_id for c in changes if c.to_state == S.RUNNING}
    assert ran == {"a[0]", "a[1]"}  # only what fitted in 2 slots ever started


def test_missing_declared_output_fails(tmp_path: Path) -> None:
    _, changes, _ = run("tasks:\n  a: {command: 'true', task_outputs: {O: never.txt}}\n",
                        tmp_path)
    assert changes[-1].to_state == S.FAILED
    assert changes[-1].message == f"declared outputs not produced: O={tmp_path}/a/0/never.txt"


def test_concurrency_and_cpu_weights(tmp_path: Path) -> None:
    text = """\
        tasks:
          a:
            command: |
              echo "$(date +%s.%N) start" >> ../../log; sleep 0.3
              echo "$(date +%s.%N) end" >> ../../log
            task_inputs: {X: 1..6}
            resources: {compute: {cpu: CPU}}
        """
    for cpu, limit in (("1", 3), ("2", 1)):
        root = tmp_path / cpu
        run(text.replace("CPU", cpu), root, concurrency=3)
        events = sorted((float(t), kind) for t, kind in
                        (line.split() for line in (root / "log").read_text().splitlines()))
        live = peak = 0
        for _, kind in events:
            live += 1 if kind == "start" else -1
            peak = max(peak, live)
        assert peak == limit, (cpu, peak)


def test_environment_is_minimal_and_resource_environment_is_exported(tmp_path: Path,
                                                                      monkeypatch) -> None:
    monkeypatch.setenv("AIRAVATA_DATABASE_URL", "postgresql://u:SECRET@db/x")
    monkeypatch.setenv("PREFECT_API_KEY", "SECRET")
    run("""\
        tasks:
          a:
            command: env > env.txt
            task_inputs: {X: "a b"}
            resources: {environment: ['GREETING=hello "world" $X']}
        """, tmp_path)
    env = (tmp_path / "a/0/env.txt").read_text()
    assert "SECRET" not in env
    assert "AIRAVATA_TASK_ID=a[0]\n" in env and "X=a b\n" in env
    assert 'GREETING=hello "world" a b\n' in env
    assert f"PATH={os.environ['PATH']}" in env


def test_render_script_keeps_the_shebang_first() -> None:
    assert render_script("#!/bin/bash\necho hi\n", ["A=1"]) == \
        '#!/bin/bash\nexport A="1"\necho hi\n'
    assert render_script("echo hi", []) == "echo hi"


def test_a_failing_store_write_is_retried_not_lost(tmp_path: Path) -> None:
    graph = compile_graph(parse_spec_text("tasks:\n  a: {command: 'true'}\n", "t.yml"),
                          root=str(tmp_path))
    written: list[Transition] = []
    failures = iter([True, True])  # the first two writes fail (a locked database)

    def flaky_sink(batch: list[Transition]) -> None:
        if next(failures, False):
            raise OSError("database is locked")
        written.extend(batch)

    executor = LocalExecutor(graph, "exp")
    sched = Scheduler(graph, executor, Recorder(flaky_sink, interval=0.05), concurrency=1)
    assert asyncio.run(run_to_end(sched, executor)).ok
    assert [c.to_state for c in written] == [S.QUEUED, S.DATA_STAGING, S.ENV_SETUP, S.RUNNING,
                                             S.OUTPUT_STAGING, S.COMPLETED]


def test_a_store_that_stays_down_fails_the_run(tmp_path: Path) -> None:
    graph = compile_graph(parse_spec_text("tasks:\n  a: {command: 'true'}\n", "t.yml"),
                          root=str(tmp_path))

    def down(batch: list[Transition]) -> None:
        raise OSError("database is down")

    executor = LocalExecutor(graph, "exp")
    sched = Scheduler(graph, executor, Recorder(down, interval=0.05), concurrency=1)
    with pytest.raises(OSError, match="database is down"):
        asyncio.run(run_to_end(sched, executor))
    assert len(sched.recorder._pending) == 6  # kept, in order, for whoever retries
