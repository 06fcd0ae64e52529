"""What bundle instances use, and their memory limit: measure.py (exit statuses and signals
passed through, its line), run_one.sh without a python3, the usage line through markers, bundle
events and the flow's executor, then a real SLURM and a real bare-metal host over SSH: figures
within 10% of what the instance saw itself, and a step over its `ram_gb` failing on memory."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from airavata_prefect.adapters.detached import BareMetalLauncher
from airavata_prefect.adapters.hosts import Host, LocalHost, upload
from airavata_prefect.adapters.launcher import Launcher, read_markers, read_tails
from airavata_prefect.adapters.slurm import JobRequest, SlurmCli, SlurmTask, parse_scontrol
from airavata_prefect.adapters.slurm_array import SlurmLauncher
from airavata_prefect.adapters.ssh import SSHEndpoint, SSHHost
from airavata_prefect.adapters.store import Store
from airavata_prefect.blocks.compute import mem_mb
from airavata_prefect.domain import measure
from airavata_prefect.domain.bundle_layout import (
    EXECUTABLE,
    Marker,
    Member,
    bundle_dir,
    bundle_files,
    parse_markers,
)
from airavata_prefect.domain.compile import compile_graph
from airavata_prefect.domain.endings import Exit, Outcome
from airavata_prefect.domain.records import BundleEvent
from airavata_prefect.domain.spec import parse_spec_text
from airavata_prefect.domain.states import TaskState
from airavata_prefect.domain.usage import Usage, limit_kib
from airavata_prefect.usecases.bundles.runner import BundleJob, BundleRunner
from tests.services import Slurm, Sshd
from tests.test_dispatch import FakeLaunch, Reports, dispatch, executor, experiment, until
from tests.test_launchers import make_job

MEASURE = Path(measure.__file__)

# -- measure.py ----------------------------------------------------------------------------------


def _measure(tmp_path: Path, script: str) -> tuple[int, Usage | None]:
    usage = tmp_path / "k.usage"
    r = subprocess.run([sys.executable, str(MEASURE), str(usage), "--", "bash", "-c", script],
                       capture_output=True, timeout=60)
    return r.returncode, Usage.parse(usage.read_text()) if usage.exists() else None


@pytest.mark.parametrize(("script", "returncode"), [
    ("exit 0", 0), ("exit 3", 3), ("exit 255", 255),
    ("kill -TERM $$", -signal.SIGTERM), ("kill -KILL $$", -signal.SIGKILL),
    ("kill -INT $$", -signal.SIGINT), ("kill -SEGV $$", -signal.SIGSEGV),
])
def test_measure_ends_the_way_its_command_did(tmp_path: Path, script: str,
                                              returncode: int) -> None:
    code, usage = _measure(tmp_path, script)
    assert code == returncode  # a signal re-raised on itself: its shell sees the same signal
    assert usage is not None and usage.wall_seconds > 0 and usage.queue_seconds == 0


def test_measure_passes_a_signal_sent_to_it_alone_on(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    proc = subprocess.Popen([sys.executable, str(MEASURE), str(tmp_path / "k.usage"), "--",
                             "bash", "-c", f'echo $$ > {pid_file}; exec sleep 60'])
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # to measure.py only, not its process group
    assert proc.wait(30) == -signal.SIGTERM
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)  # its command got it, and ended
    usage = Usage.parse((tmp_path / "k.usage").read_text())
    assert usage is not None and usage.wall_seconds < 30


def test_measure_counts_the_whole_tree(tmp_path: Path) -> None:
    code, usage = _measure(tmp_path, f"{sys.executable} -c \"x = bytearray(b'x') * (80 << 20)\"")
    assert code == 0 and usage is not None
    assert usage.max_rss_bytes >= 80 << 20  # its grandchild's peak, not bash's
    assert usage.cpu_seconds > 0


def test_the_usage_line() -> None:
    u = Usage(wall_seconds=12.5, cpu_seconds=3.25, max_rss_bytes=7 << 20, queue_seconds=4.0)
    assert Usage.parse(u.to_line()) == u
    rusage = type("R", (), {"ru_utime": 1.5, "ru_stime": 0.25, "ru_maxrss": 2048})()
    line = measure.usage_line(2.0, rusage)
    assert line.endswith("\n") and [f.split("=")[0] for f in line.split()] == [
        f.split("=")[0] for f in u.to_line().split()]  # the same fields, in the same order
    assert Usage.parse(line) == Usage(2.0, 1.75, 2048 * 1024, 0.0)
    for bad in ("", "wall=nan cpu=1", "wall=-1", "wall=1 maxrss=1.5", "wall=x"):
        assert Usage.parse(bad) is None


def test_markers_carry_usage_in_any_order() -> None:
    text = ("./0.usage:wall=2.5 cpu=1.0 maxrss=1024 queue=0\n./0.exit:exit 0\n./0.start:17\n"
            "./1.start:18\n./1.usage:garbage\n./1.exit:signal 9\n./2.usage.tmp:wall=1\n"
            "./3.times:0m0.010s 0m0.000s\n")
    assert parse_markers(text) == {
        0: Marker(True, Exit(code=0), Usage(2.5, 1.0, 1024, 0.0)),
        1: Marker(True, Exit(signal=9), None)}


def test_scontrol_times_give_the_queue_wait() -> None:
    text = ("JobId=12 ArrayJobId=10 ArrayTaskId=2 JobState=COMPLETED Reason=None ExitCode=0:0 "
            "SubmitTime=2024-03-01T10:00:00 EligibleTime=2024-03-01T10:00:00 "
            "StartTime=2024-03-01T10:01:05 EndTime=2024-03-01T10:02:00\n"
            "JobId=10 ArrayJobId=10 ArrayTaskId=3-4 JobState=PENDING Reason=Resources "
            "ExitCode=0:0 SubmitTime=2024-03-01T10:00:00 StartTime=2024-03-01T11:00:00\n"
            "JobId=13 JobState=CANCELLED Reason=None ExitCode=0:15 "
            "SubmitTime=2024-03-01T10:00:00 StartTime=Unknown\n")
    assert [(t.task_id, t.queue_seconds) for t in parse_scontrol(text)] == [
        (2, 65.0), (3, None), (4, None), (None, None)]  # pending: a start still expected


# -- run_one.sh ----------------------------------------------------------------------------------

SPEC = """\
    tasks:
      burn:
        command: 'i=0; while [ $i -lt 150000 ]; do i=$((i + 1)); done'
        task_inputs: {I: 1..1}
        resources: {compute: {ram_gb: 0.25}}
    """


def test_without_python_bash_records_wall_and_cpu(tmp_path: Path) -> None:
    root = str(tmp_path / "exp1")
    g = compile_graph(parse_spec_text(textwrap.dedent(SPEC), "u.yml"), {}, root=root)
    b = bundle_dir(root, "B")
    files = bundle_files(g, "burn", [Member(g.instance("burn", 0), 0)], experiment_id="exp1")
    assert f"AV_MEMORY_KIB={limit_kib(0.25)}" in files["tasks/0.sh"].splitlines()
    no_python = files["run_one.sh"].replace("py=/usr/bin/python3\n", "py=\n").replace(
        '[ -x "$py" ] || py=$(command -v python3) || py=\n', "")
    assert no_python != files["run_one.sh"]
    files["run_one.sh"] = no_python
    host = LocalHost()
    upload(host, b, files, executable=EXECUTABLE)
    host.run(f"bash {b}/run_one.sh {b} 0")
    marker = read_markers(host, b)[0]
    assert marker.end == Exit(code=0)
    assert marker.usage is not None and marker.usage.max_rss_bytes == 0  # bash knows no peak
    assert marker.usage.wall_seconds >= marker.usage.cpu_seconds > 0.1
    assert not list(Path(b, "results").glob("*.times"))  # its scratch file is gone


def test_read_tails_keeps_each_file_apart(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x" * 10_000 + "MemoryError\n")
    (tmp_path / "b").write_text("fine\n")
    tails = read_tails(LocalHost(), {0: str(tmp_path / "a"), 1: str(tmp_path / "b"),
                                     2: str(tmp_path / "missing")}, limit=100)
    assert tails == {0: "x" * 88 + "MemoryError\n", 1: "fine\n", 2: ""}


# -- usage through the store to the flow's executor ------------------------------------------------


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'a.db'}")
    yield s
    s.close()


def test_events_carry_usage_to_the_outcome(store: Store, tmp_path: Path) -> None:
    exp_id, graph = experiment(store, tmp_path)
    launch = FakeLaunch()
    ex = executor(store, exp_id, graph, launch)
    used = Usage(3.5, 2.25, 300 << 20, 1.0)

    async def scenario() -> list[Outcome]:
        tasks = dispatch(ex, graph, [("sim", 0, 0), ("sim", 1, 0)], Reports(), asyncio.Event())
        await until(lambda: bool(launch.created))
        store.bundles.add_events(exp_id, launch.created[0][1], [
            BundleEvent(0, TaskState.COMPLETED, 0, usage=used),
            BundleEvent(1, TaskState.FAILED, None, "lost")])
        try:
            return await asyncio.wait_for(asyncio.gather(*tasks), 5)
        finally:
            await ex.close()

    assert asyncio.run(scenario()) == [Outcome(TaskState.COMPLETED, 0, None, used),
                                       Outcome(TaskState.FAILED, None, "lost", None)]
    stored = store.bundles.events_after(exp_id, 0)
    assert [e.usage for e in stored] == [used, None]


# -- a real SLURM and a real bare-metal host -------------------------------------------------------


@pytest.fixture(params=["slurm", "baremetal"])
def resource(request: pytest.FixtureRequest, tmp_path: Path
             ) -> Iterator[tuple[str, Host, str, JobRequest]]:
    """(kind, host, the experiments' root there, the SLURM request a pool would make)."""
    if request.param == "slurm":
        slurm: Slurm = request.getfixturevalue("slurm")
        yield "slurm", LocalHost(slurm.env), str(tmp_path / "cluster"), JobRequest(
            name="usage", workdir="", command="")
        return
    sshd: Sshd = request.getfixturevalue("sshd")
    host = SSHHost(SSHEndpoint(sshd.host, sshd.port, sshd.user, sshd.host_key), sshd.private_key)
    yield "baremetal", host, f"{sshd.home}/usage-{uuid.uuid4().hex[:6]}", JobRequest(
        name="usage", workdir="", command="")
    host.close()


def _run(store: Store, tmp_path: Path, spec: str, kind: str, host: Host, root: str,
         base: JobRequest) -> tuple[BundleJob, BundleRunner]:
    launcher: Launcher = (SlurmLauncher(SlurmCli(host), host, base, max_array_size=1001,
                                        throttle=None) if kind == "slurm"
                          else BareMetalLauncher(host, 2))
    job = make_job(store, tmp_path, spec, host, launcher, root)
    runner = BundleRunner(job, poll_seconds=0.3)
    asyncio.run(runner.run())
    return job, runner


def _end(store: Store, job: BundleJob, k: int = 0) -> BundleEvent:
    return [e for e in store.bundles.events_after(job.experiment.id, 0, bundle_id=job.id)
            if e.position == k
            and e.state in (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELED)][-1]


# 200 MB touched, 1 s of CPU, then a second asleep; it writes down what it saw itself.
USES = """\
    tasks:
      use:
        command: |
          t0=$(date +%s.%N)
          /usr/bin/python3 -c '
          import resource, sys, time
          x = bytearray(b"x") * (200 << 20)
          while time.process_time() < 1.0:
              pass
          r = resource.getrusage(resource.RUSAGE_SELF)
          open(sys.argv[1], "w").write("%f %d" % (r.ru_utime + r.ru_stime, r.ru_maxrss * 1024))
          ' "$OWN"
          sleep 1
          echo "$t0 $(date +%s.%N)" > "$WALL"
        task_outputs: {OWN: own.txt, WALL: wall.txt}
    """


def test_usage_is_recorded_within_ten_percent(store: Store, tmp_path: Path,
                                              resource: tuple[str, Host, str, JobRequest]
                                              ) -> None:
    kind, host, root, base = resource
    job, runner = _run(store, tmp_path, USES, kind, host, root, base)
    end = _end(store, job)
    assert (end.state, end.message) == (TaskState.COMPLETED, None)
    used = end.usage
    assert used is not None
    own_cpu, own_rss = (float(v) for v in
                        Path(job.home.output_path("use", 0, "OWN")).read_text().split())
    t0, t1 = (float(v) for v in Path(job.home.output_path("use", 0, "WALL")).read_text().split())
    assert own_cpu >= 1.0 and own_rss >= 200 << 20
    assert own_cpu <= used.cpu_seconds <= own_cpu * 1.1  # python, and a few shell commands
    assert own_rss <= used.max_rss_bytes <= own_rss * 1.1  # the peak of the largest process
    assert t1 - t0 <= used.wall_seconds <= (t1 - t0) * 1.1
    if kind == "slurm":  # SLURM's own record: start - submit (here, at once)
        assert runner.job.launcher.queued(runner.ids, [0]) == {0: used.queue_seconds}
        assert 0 <= used.queue_seconds < 60
    else:
        assert used.queue_seconds == 0


HOG = """\
    tasks:
      hog:
        command: /usr/bin/python3 -c "bytearray(600 * 2**20)"
        resources: {compute: {ram_gb: %s}}
    """


@pytest.mark.parametrize("ram_gb", [0.25, 1])
def test_a_step_over_its_ram_gb_fails_on_memory(store: Store, tmp_path: Path, ram_gb: float,
                                                resource: tuple[str, Host, str, JobRequest]
                                                ) -> None:
    kind, host, root, base = resource
    # What a SLURM pool asks for the step (blocks/slurm.py job_variables: mem_mb).
    base = JobRequest(name=base.name, workdir="", command="", mem_mb=mem_mb(ram_gb))
    job, _ = _run(store, tmp_path, HOG % ram_gb, kind, host, root, base)
    end = _end(store, job)
    if ram_gb == 1:  # the same allocation within its limit: the limit is the step's own
        assert (end.state, end.message) == (TaskState.COMPLETED, None)
        return
    assert end.state == TaskState.FAILED and end.exit_code == 1
    assert end.message == ("out of memory: exceeded ram_gb 0.25 (256.0 MiB); stderr says "
                           "'MemoryError'")
    assert end.usage is not None and end.usage.max_rss_bytes < 256 << 20  # refused, not used
    if kind == "slurm":
        script = Path(job.bdir, "job_0.sh").read_text().splitlines()
        assert "#SBATCH --mem=256M" in script


def test_slurm_itself_kills_a_step_over_its_mem(store: Store, tmp_path: Path,
                                                slurm: Slurm) -> None:
    """No ram_gb (so no address-space limit), but a pool that asks --mem=256M: SLURM's
    jobacct_gather sees 600 MB resident and kills the step, and the state says memory."""
    host = LocalHost(slurm.env)
    base = JobRequest(name="oom", workdir="", command="", mem_mb=256)
    job, _ = _run(store, tmp_path, """\
        tasks:
          hog:
            command: |
              /usr/bin/python3 -c 'import time; x = bytearray(b"x") * (600 << 20); time.sleep(60)'
        """, "slurm", host, str(tmp_path / "cluster"), base)
    end = _end(store, job)
    assert (end.state, end.exit_code, end.message) == (TaskState.FAILED, -9, "out of memory")


def test_slurm_task_records_keep_a_queue_wait_per_position() -> None:
    """Queue waits come from every record the launcher reads, and only for the job that runs a
    position now (an earlier, re-queued job's record is not its own)."""

    class Client:
        name = "fake"

        def __init__(self) -> None:
            self.asked: list[list[str]] = []

        def tasks(self, refs: list[str]) -> list[SlurmTask]:
            self.asked.append(list(refs))
            return [SlurmTask("7", 0, "RUNNING", queue_seconds=4.0),
                    SlurmTask("7", 1, "COMPLETED", queue_seconds=9.0),
                    SlurmTask("5", 1, "FAILED", queue_seconds=99.0)]  # an earlier job

    client = Client()
    launcher = SlurmLauncher(client, LocalHost(), JobRequest(name="n", workdir="", command=""),
                             max_array_size=10, throttle=None)
    launcher.offsets = {"5": 0, "7": 0}
    launcher.owner = {0: "7", 1: "7"}
    assert launcher.queued(["7"], [1]) == {1: 9.0}
    assert client.asked == [["7_1"]]  # one task asked for by name
    assert launcher.queued(["7"], [0, 1]) == {0: 4.0, 1: 9.0}
    assert len(client.asked) == 1  # both already known
