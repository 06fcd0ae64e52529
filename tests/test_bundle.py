"""Bundles: the files a resource receives (asserted line by line), the bash runner executed for
real on this machine, and a whole bundle run through the bare-metal launcher on LocalHost."""

from __future__ import annotations

import asyncio
import textwrap
import time
from pathlib import Path

import pytest

from airavata_prefect.adapters.detached import BareMetalLauncher
from airavata_prefect.adapters.hosts import LocalHost, upload
from airavata_prefect.adapters.launcher import read_markers
from airavata_prefect.adapters.store import Store
from airavata_prefect.domain.bundle_layout import (
    EXECUTABLE,
    Link,
    Marker,
    Member,
    bundle_dir,
    bundle_files,
    parse_end,
    parse_markers,
    task_file,
)
from airavata_prefect.domain.compile import compile_graph
from airavata_prefect.domain.dag import TaskGraph
from airavata_prefect.domain.endings import Exit, judge
from airavata_prefect.domain.records import NewTask
from airavata_prefect.domain.spec import parse_spec_text
from airavata_prefect.domain.states import BundleStatus, TaskState
from airavata_prefect.usecases.bundles.runner import BundleJob, BundleRunner

SPEC = textwrap.dedent("""\
    scripts:
      S: |
        #!/bin/bash
        echo "seed=$SEED $GREETING" > "$OUT"
        echo "to stderr" >&2
        env | sort > env.txt
        case "$SEED" in
          3) exit 3 ;;
          4) sleep 30 ;;
          5) exit 255 ;;
          6) kill -TERM $$ ;;
          7) kill -KILL $$ ;;
          8) exit 137 ;;
          9) kill -INT $$ ;;  # SIGINT must reach it, however its runner was started
        esac
        exit 0
    tasks:
      sim:
        script: S
        task_inputs: {SEED: 1..9, GREETING: "it's \\"quoted\\" $HOME `x` $(y)"}
        task_outputs: {OUT: out.txt}
    resources:
      environment: ["EXTRA=/opt/x:$PATH"]
    """)


def graph(root: str) -> TaskGraph:
    return compile_graph(parse_spec_text(SPEC, "b.yml"), {}, root=root)


def test_task_file_line_by_line() -> None:
    g = graph("/r/exp1")
    text = task_file(Member(g.instance("sim", 2), 1), experiment_id="exp1",
                     workdir="/r/exp1/sim/2", walltime=60,
                     links=[Link("mounts/0", "./data"), Link("mounts/1/x.csv", "in/x.csv")])
    assert text.splitlines() == [
        "AV_STEP=sim",
        "AV_WORKDIR=/r/exp1/sim/2",
        "AV_WALLTIME=60",
        "AV_MEMORY_KIB=",
        "AV_KEEP_LOGS=('stdout.log|stdout.attempt0.log' 'stderr.log|stderr.attempt0.log')",
        "AV_LINKS=('mounts/0|./data' 'mounts/1/x.csv|in/x.csv')",
        "export GREETING='it'\"'\"'s \"quoted\" $HOME `x` $(y)'",
        "export SEED=3",
        "export OUT=/r/exp1/sim/2/out.txt",
        "export AIRAVATA_EXPERIMENT_ID=exp1",
        "export AIRAVATA_TASK_ID='sim[2]'",
        "export AIRAVATA_ATTEMPT=1",
        "export AIRAVATA_WORKDIR=/r/exp1/sim/2",
    ]


def test_bundle_files_and_markers() -> None:
    g = graph("/r/exp1")
    files = bundle_files(g, "sim", [Member(g.instance("sim", i), 0) for i in (4, 0)],
                         experiment_id="exp1")
    assert sorted(files) == ["envs.sh", "measure.py", "results/.keep", "run_all.sh",
                             "run_one.sh", "steps/sim.sh", "tasks/0.sh", "tasks/1.sh"]
    assert "export SEED=5" in files["tasks/0.sh"]  # position 0 is instance 4
    assert files["steps/sim.sh"].splitlines()[:2] == ["#!/bin/bash",
                                                       'export EXTRA="/opt/x:$PATH"']
    assert bundle_dir("/r/exp1", "b1") == "/r/exp1/.bundles/b1"
    assert parse_markers("./0.start:17\n./0.exit:exit 0\n./1.start:18\n./2.exit:timeout\n"
                         "./3.exit:\n./4.exit:exi\n./x.exit:exit 1\n./5.exit:signal 9\n"
                         "./.keep:\n./6.said:x: line 3: Killed\n") == {
        0: Marker(True, Exit(code=0)), 1: Marker(True, None), 2: Marker(True, Exit(timed_out=True)),
        5: Marker(True, Exit(signal=9))}


# Every ending run_one.sh can record, through the one mapping every resource uses.
@pytest.mark.parametrize(("line", "missing", "canceled", "want"), [
    ("exit 0", [], False, (TaskState.COMPLETED, 0, None)),
    ("exit 0", ["OUT=/x"], False,
     (TaskState.FAILED, 0, "declared outputs not produced: OUT=/x")),
    ("exit 3", [], False, (TaskState.FAILED, 3, "exit code 3")),
    ("exit 255", [], False, (TaskState.FAILED, 255, "exit code 255")),
    ("exit 137", [], False, (TaskState.FAILED, 137, "exit code 137")),
    ("timeout", [], False, (TaskState.FAILED, None, "timeout: exceeded its walltime")),
    ("signal 15", [], False, (TaskState.FAILED, -15, "killed by signal 15 (SIGTERM)")),
    ("signal 9", [], False, (TaskState.FAILED, -9, "killed by signal 9 (SIGKILL)")),
    ("signal 11", [], False, (TaskState.FAILED, -11, "killed by signal 11 (SIGSEGV)")),
    ("exit 1", [], True, (TaskState.CANCELED, 1, "canceled")),
    ("signal 15", [], True, (TaskState.CANCELED, -15, "canceled")),
    ("exit 0", [], True, (TaskState.COMPLETED, 0, None)),  # finished before the cancel
    ("error 71 cannot create /x", [], False,
     (TaskState.FAILED, 71, "could not start: cannot create /x")),
])
def test_endings(line: str, missing: list[str], canceled: bool, want: tuple) -> None:
    end = parse_end(line)
    assert end is not None
    assert judge(end, missing=missing, cancel_requested=canceled)[:3] == want


def _run_all(tmp_path: Path, walltime: int = 2, attempt: int = 0) -> tuple[str, TaskGraph]:
    root = str(tmp_path / "exp1")
    g = graph(root)
    b = bundle_dir(root, f"B{attempt}")  # a retry goes out in a bundle of its own
    host = LocalHost()
    files = bundle_files(g, "sim", [Member(g.instance("sim", i), attempt) for i in range(9)],
                         experiment_id="exp1", walltime=walltime,
                         links=[Link("mounts/0", "./data")])
    files["mounts/0/in.txt"] = "mounted"
    upload(host, b, files, executable=EXECUTABLE)
    # Started as a shell's background job, as a careless launcher would: SIGINT and SIGQUIT
    # arrive ignored, and run_one.sh must still give each script the default dispositions.
    host.run(f"setsid bash {b}/run_all.sh {b} 9 9 >{b}/run_all.log 2>&1 </dev/null &")
    deadline = time.monotonic() + 30
    while not Path(b, "all.done").exists():
        assert time.monotonic() < deadline, Path(b, "run_all.log").read_text()
        time.sleep(0.1)
    return b, g


def test_the_runner_on_this_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRAVATA_OPENBAO_TOKEN", "s.must-not-leak")  # the worker's secret
    b, g = _run_all(tmp_path)
    markers = read_markers(LocalHost(), b)
    assert {k: m.end for k, m in markers.items()} == {
        0: Exit(code=0), 1: Exit(code=0), 2: Exit(code=3), 3: Exit(timed_out=True),
        4: Exit(code=255),  # and it did not stop the others (xargs would have)
        5: Exit(signal=15), 6: Exit(signal=9), 7: Exit(code=137), 8: Exit(signal=2)}
    wd = Path(g.workdir("sim", 0))
    assert (wd / "out.txt").read_text() == "seed=1 it's \"quoted\" $HOME `x` $(y)\n"
    assert (wd / "stderr.log").read_text() == "to stderr\n"
    assert (wd / "data" / "in.txt").read_text() == "mounted"  # the mount, linked
    env = dict(line.split("=", 1) for line in (wd / "env.txt").read_text().splitlines()
               if "=" in line)
    assert "AIRAVATA_OPENBAO_TOKEN" not in env and "s.must-not-leak" not in str(env)
    assert env["EXTRA"].startswith("/opt/x:") and env["AIRAVATA_TASK_ID"] == "sim[0]"
    assert set(env) <= {"SEED", "GREETING", "OUT", "EXTRA", "AIRAVATA_EXPERIMENT_ID",
                        "AIRAVATA_TASK_ID", "AIRAVATA_ATTEMPT", "AIRAVATA_WORKDIR", "PATH",
                        "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "TZ", "TMPDIR",
                        "TERM", "PWD", "SHLVL", "_"}


def test_a_retry_keeps_the_earlier_attempts_logs(tmp_path: Path) -> None:
    _run_all(tmp_path, walltime=1)
    _, g = _run_all(tmp_path, walltime=1, attempt=1)
    wd = Path(g.workdir("sim", 0))
    assert (wd / "stderr.attempt0.log").read_text() == "to stderr\n"
    assert (wd / "stderr.log").read_text() == "to stderr\n"


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'a.db'}")
    yield s
    s.close()


def test_a_bundle_run_reports_every_instance_in_order(tmp_path: Path, store: Store) -> None:
    """BundleRunner with the bare-metal launcher on this machine: no mocks, real processes."""
    home_root = str(tmp_path / "home" / "exp1")
    remote_root = str(tmp_path / "remote" / "exp1")
    loaded = parse_spec_text(SPEC, "b.yml")
    home, remote = (compile_graph(loaded, {}, root=r) for r in (home_root, remote_root))
    exp_id = store.experiments.create(
        experiment_id="exp1", name="b", source="b.yml", spec_text=SPEC, params={},
        workdir_root=tmp_path / "home", total=9,
        tasks_iter=(NewTask(i.id, i.step, i.index, home.workdir(i.step, i.index))
                    for i in home.iter_instances()))
    bundle_id = store.bundles.create(exp_id, "here", "sim", [(i, 0) for i in range(9)])
    host = LocalHost()
    job = BundleJob(store, store.bundles.get(bundle_id), store.experiments.get(exp_id), remote,
                    home, [Member(remote.instance("sim", i), 0) for i in range(9)], host,
                    BareMetalLauncher(host, 9), walltime=2)
    submitted: list[list[str]] = []
    counts = asyncio.run(BundleRunner(job, poll_seconds=0.2,
                                      on_submitted=submitted.append).run())
    assert counts == {"COMPLETED": 2, "FAILED": 7}  # nobody canceled anything
    assert len(submitted) == 1 and submitted[0][0].isdigit()  # the session id
    row = store.bundles.get(bundle_id)
    assert row.status == BundleStatus.COMPLETED and list(row.infrastructure) == submitted[0]
    events = store.bundles.events_after(exp_id, 0, bundle_id=bundle_id)
    by_pos: dict[int, list[str]] = {}
    for e in events:
        by_pos.setdefault(e.position, []).append(e.state)
    assert by_pos[0] == ["DATA_STAGING", "ENV_SETUP", "RUNNING", "OUTPUT_STAGING", "COMPLETED"]
    assert by_pos[2][-1] == "FAILED" and by_pos[3][-1] == "FAILED"
    final = {e.position: (e.exit_code, e.message) for e in events
             if e.state in ("COMPLETED", "FAILED", "CANCELED")}
    assert final[2] == (3, "exit code 3")
    assert final[3] == (None, "timeout: exceeded walltime 00:00:02")
    assert final[4] == (255, "exit code 255")
    assert final[5] == (-15, "killed by signal 15 (SIGTERM)")
    assert final[6] == (-9, "killed by signal 9 (SIGKILL)")
    assert final[7] == (137, "exit code 137")
    assert final[8] == (-2, "killed by signal 2 (SIGINT)")
    # Outputs and logs came home; the home copy is what later steps and `logs` read.
    assert Path(home.output_path("sim", 0, "OUT")).read_text().startswith("seed=1 ")
    assert Path(home.workdir("sim", 2), "stderr.log").read_text() == "to stderr\n"
