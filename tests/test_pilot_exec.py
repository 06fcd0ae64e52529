"""agent/pilot_exec.py with real processes: how attempts end, what they use and see."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from airavata_prefect.agent.pilot_exec import SCRIPTS_DIR, Attempt, AttemptRunner, run_attempt
from airavata_prefect.domain.endings import Outcome
from airavata_prefect.domain.pilot import Usage
from airavata_prefect.domain.states import TaskState


@dataclass(frozen=True)
class Spec:
    script: str
    workdir: str = "exp/step/0"
    attempt: int = 0
    env: dict[str, str] = field(default_factory=dict)
    walltime_seconds: int = 0
    outputs: tuple[str, ...] = ()
    ram_gb: float = 0.0

    @property
    def script_sha256(self) -> str:
        return hashlib.sha256(self.script.encode()).hexdigest()


def run(spec: Spec, root: Path, cancel: asyncio.Event | None = None) -> tuple[Outcome, Usage]:
    return asyncio.run(run_attempt(spec, root, cancel))


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group `pgid`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry))
    return out


def test_exit_zero_completes_with_logs_in_its_workdir(tmp_path: Path) -> None:
    outcome, usage = run(Spec("echo out; echo err >&2; pwd > where"), tmp_path)
    assert outcome == Outcome(TaskState.COMPLETED, 0, None)
    wd = tmp_path / "exp/step/0"
    assert (wd / "stdout.log").read_text() == "out\n"
    assert (wd / "stderr.log").read_text() == "err\n"
    assert (wd / "where").read_text().strip() == str(wd)
    assert usage.wall_seconds > 0
    # The script is one copy per digest under the root, shared by its instances.
    assert [p.name for p in (tmp_path / SCRIPTS_DIR).iterdir()] == [
        f"{hashlib.sha256(b'echo out; echo err >&2; pwd > where').hexdigest()}.sh"]


def test_exit_code_fails_with_the_code(tmp_path: Path) -> None:
    outcome, _ = run(Spec("exit 3"), tmp_path)
    assert outcome == Outcome(TaskState.FAILED, 3, "exit code 3")


def test_killed_by_its_own_signal_fails(tmp_path: Path) -> None:
    outcome, _ = run(Spec("kill -9 $$"), tmp_path)
    assert outcome == Outcome(TaskState.FAILED, -9, "killed by signal 9 (SIGKILL)")


def test_walltime_kills_the_whole_group(tmp_path: Path) -> None:
    script = "echo $$ > leader; sleep 30 & echo $! > child; sleep 30\n"
    start = time.monotonic()
    outcome, _ = run(Spec(script, walltime_seconds=1), tmp_path)
    elapsed = time.monotonic() - start
    assert outcome.state == TaskState.FAILED
    assert outcome.reason is not None and outcome.reason.startswith("timeout: exceeded walltime")
    assert outcome.exit_code == -15  # SIGTERM stopped it, inside the grace
    assert 1 <= elapsed < 7
    wd = tmp_path / "exp/step/0"
    leader = int((wd / "leader").read_text())
    deadline = time.monotonic() + 3  # the orphaned background sleep is init's to reap
    while group_members(leader) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert group_members(leader) == []


def test_a_group_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    async def go() -> tuple[Outcome, Usage]:
        runner = AttemptRunner(tmp_path, kill_grace=0.5)
        try:
            return await runner.run(Spec("trap '' TERM; sleep 30 & wait", walltime_seconds=1))
        finally:
            runner.close()

    start = time.monotonic()
    outcome, _ = asyncio.run(go())
    assert outcome.state == TaskState.FAILED and outcome.exit_code == -9
    assert time.monotonic() - start < 4


def test_cancel_ends_canceled(tmp_path: Path) -> None:
    async def go() -> tuple[Outcome, Usage, float]:
        cancel = asyncio.Event()
        started = asyncio.Event()
        task = asyncio.ensure_future(run_attempt(Spec("sleep 30"), tmp_path, cancel,
                                                 on_running=started.set))
        await started.wait()
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        cancel.set()
        outcome, usage = await task
        return outcome, usage, time.monotonic() - t0

    outcome, _, took = asyncio.run(go())
    assert outcome.state == TaskState.CANCELED
    assert took < 3


def test_cancel_through_a_handle_before_it_starts(tmp_path: Path) -> None:
    async def go() -> Outcome:
        runner = AttemptRunner(tmp_path)
        handle = Attempt()
        handle.cancel()
        try:
            outcome, _ = await runner.run(Spec("touch ran"), handle)
            return outcome
        finally:
            runner.close()

    assert asyncio.run(go()).state == TaskState.CANCELED
    assert not (tmp_path / "exp/step/0/ran").exists()


def test_a_missing_declared_output_fails_naming_it(tmp_path: Path) -> None:
    outcome, _ = run(Spec("mkdir -p out && touch out/present.txt",
                          outputs=("out/present.txt", "result.txt")), tmp_path)
    assert outcome.state == TaskState.FAILED and outcome.exit_code == 0
    assert outcome.reason == "declared outputs not produced: result.txt"


def test_workdir_outside_the_root_is_refused(tmp_path: Path) -> None:
    outcome, _ = run(Spec("true", workdir="../elsewhere"), tmp_path)
    assert outcome.state == TaskState.FAILED
    assert outcome.reason is not None and "not inside the agent's root" in outcome.reason


def test_usage_counts_the_cpu_of_the_whole_tree(tmp_path: Path) -> None:
    burn = (f'"{sys.executable}" -S -c "import time\nt = time.process_time()\n'
            'while time.process_time() - t < 0.5: pass"\n')
    outcome, usage = run(Spec(burn), tmp_path)
    assert outcome.state == TaskState.COMPLETED
    assert 0.35 <= usage.cpu_seconds <= 0.65, usage
    assert usage.wall_seconds >= usage.cpu_seconds * 0.9


def test_usage_reports_the_peak_rss_of_the_tree(tmp_path: Path) -> None:
    alloc = f'"{sys.executable}" -S -c "b = b\'x\' * (100 * 1024 * 1024)"\n'
    outcome, usage = run(Spec(alloc), tmp_path)
    assert outcome.state == TaskState.COMPLETED
    assert usage.max_rss_bytes >= 90 * 1024 * 1024, usage


def test_the_environment_is_built_from_scratch(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRAVATA_AGENT_TOKEN", "secret-token")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db/x")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    outcome, _ = run(Spec("env > envdump", env={"ALPHA": "1", "AIRAVATA_TASK_ID": "step[0]"}),
                     tmp_path)
    assert outcome.state == TaskState.COMPLETED
    wd = tmp_path / "exp/step/0"
    env = dict(line.split("=", 1) for line in (wd / "envdump").read_text().splitlines()
               if "=" in line)
    assert "AIRAVATA_AGENT_TOKEN" not in env and "DATABASE_URL" not in env
    assert "secret-token" not in (wd / "envdump").read_text()
    assert env["ALPHA"] == "1" and env["AIRAVATA_TASK_ID"] == "step[0]"
    assert env["AIRAVATA_WORKDIR"] == str(wd)
    assert env["SLURM_JOB_ID"] == "4242"  # the allocation's variables pass
    assert "PATH" in env


def test_signals_start_at_their_defaults(tmp_path: Path) -> None:
    # An instance started by an agent that ignores SIGINT (a background job) must not, nor
    # inherit Python's ignored SIGPIPE and SIGXFSZ (`yes | head` must end).
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        outcome, _ = run(Spec("grep -E '^Sig(Ign|Blk)' /proc/self/status > sigs"), tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert outcome.state == TaskState.COMPLETED
    lines = dict(line.split(":\t") for line in
                 (tmp_path / "exp/step/0/sigs").read_text().splitlines())
    assert int(lines["SigBlk"], 16) == 0
    ignored = int(lines["SigIgn"], 16)
    for sig in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
        assert not ignored & (1 << (sig - 1)), sig


def test_a_retry_keeps_the_earlier_attempts_logs(tmp_path: Path) -> None:
    run(Spec("echo first; exit 1"), tmp_path)
    outcome, _ = run(Spec("echo second", attempt=1), tmp_path)
    assert outcome.state == TaskState.COMPLETED
    wd = tmp_path / "exp/step/0"
    assert (wd / "stdout.attempt0.log").read_text() == "first\n"
    assert (wd / "stdout.log").read_text() == "second\n"
    assert (wd / "stderr.attempt0.log").exists()


def test_many_short_attempts_on_two_slots_all_complete(tmp_path: Path) -> None:
    n, slots = 500, 2

    async def go() -> tuple[list[TaskState], float]:
        runner = AttemptRunner(tmp_path)
        todo = iter(range(n))
        states: list[TaskState] = []

        async def slot() -> None:
            for i in todo:
                outcome, _ = await runner.run(Spec("true", workdir=f"exp/true/{i}"))
                states.append(outcome.state)

        start = time.perf_counter()
        try:
            await asyncio.gather(*(slot() for _ in range(slots)))
        finally:
            runner.close()
        return states, time.perf_counter() - start

    states, elapsed = asyncio.run(go())
    assert states.count(TaskState.COMPLETED) == n
    assert len(os.listdir(tmp_path / SCRIPTS_DIR)) == 1
    print(f"\n{n} x true on {slots} slots: {n / elapsed:,.0f}/s "
          "(python -m bench.pilot_exec_rate compares with xargs)")


def test_ram_gb_is_enforced_on_an_agent_and_the_reason_names_memory(tmp_path: Path) -> None:
    big, usage = run(Spec("python3 -c \"b = b'x' * (600 * 2**20)\"", ram_gb=0.25), tmp_path)
    assert big.state == TaskState.FAILED and big.reason is not None
    assert big.reason.startswith("out of memory: exceeded ram_gb 0.25"), big.reason
    fits, usage = run(Spec("python3 -c \"b = b'x' * (100 * 2**20)\"", ram_gb=0.25,
                           workdir="exp/step/1"), tmp_path)
    assert fits.state == TaskState.COMPLETED, fits
    assert usage.max_rss_bytes >= 100 * 2 ** 20
