"""The `airavata` command as a user runs it: exit codes, messages, run/watch/cancel end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_inproc import Ran, airavata
from tests.conftest import SAMPLE, Stack, experiment_stack

AIRAVATA = str(Path(sys.executable).parent / "airavata")


def script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The installed console script, in a process of its own."""
    return subprocess.run([AIRAVATA, *args], capture_output=True, text=True, timeout=timeout,
                          env=os.environ.copy())


def cli(*args: str, timeout: float = 120) -> Ran:
    """The CLI's main() in this process: the same parsing, errors and exit codes as the
    script, without a new Python's seconds of imports (tests/cli_inproc.py)."""
    return airavata(*args)


@pytest.fixture()
def stack(prefect_api: str, home: Path) -> Iterator[Stack]:
    """The default deployment and a worker polling its pool, as `airavata server start` makes
    them, for the commands that run experiments."""
    with experiment_stack(home, "default", user=None) as stack_:
        yield stack_


def write(tmp_path: Path, text: str, name: str = "exp.yml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_compile_json_of_the_sample(home: Path) -> None:
    r = script("experiment", "compile", str(SAMPLE), "--json", "--workdir", "/w")  # the script
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["name"] == "airavata_sample" and len(doc["tasks"]) == 1000
    tasks = {t["id"]: t for t in doc["tasks"]}
    assert tasks["task1[0]"]["env"] | {} == {"MESSAGE": "hello", "SLEEP_TIME": "1",
                                             "OUTPUT_FILE": "/w/task1/0/output.1.txt"}
    assert (tasks["task1[1]"]["env"]["MESSAGE"], tasks["task1[1]"]["env"]["SLEEP_TIME"]) == \
        ("hello", "2")
    assert (tasks["task1[100]"]["env"]["MESSAGE"], tasks["task1[100]"]["env"]["SLEEP_TIME"]) \
        == ("this", "1")
    t2 = tasks["task2[42]"]
    assert t2["depends_on"] == ["task1[42]"]
    assert t2["env"]["INPUT_FILE"] == "/w/task1/42/output.1.txt"
    assert t2["outputs"] == {"OUTPUT_FILE": "/w/task2/42/output.2.txt"}
    assert t2["resources"]["compute"]["cpu"] == 16


def test_compile_table(home: Path) -> None:
    r = cli("experiment", "compile", str(SAMPLE))
    assert r.returncode == 0 and "1,000 task instances" in r.stdout and "task2" in r.stdout


def test_bad_spec_exits_2_with_one_line_per_problem(home: Path, tmp_path: Path) -> None:
    spec = write(tmp_path, """\
        tasks:
          a: {command: echo, foreach: [ghost], retries: -1}
        """)
    r = cli("experiment", "run", spec, "--param", "NOPE=1", "--param", "novalue")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert lines == [
        "--param novalue: error: <document>: expected KEY=VALUE",
        f"{spec}:2:49: error: tasks.a.retries: input should be greater than or equal to 0 "
        "(got -1)",
    ]
    assert not (home / "runs").exists()  # nothing was stored or started


def test_semantic_and_param_problems_together(home: Path, tmp_path: Path) -> None:
    spec = write(tmp_path, "parameters: {N: {type: int, default: 1}}\n"
                           "tasks:\n  a: {command: echo, foreach: [ghost]}\n")
    r = cli("experiment", "compile", spec, "-p", "N=x")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "--param N: error: <document>: N: expected an int, got 'x'",
        f"{spec}:3:32: error: tasks.a.foreach[0]: unknown task 'ghost'"]


def test_unknown_experiment_and_bad_arguments(home: Path) -> None:
    r = cli("experiment", "status", "zzzzzzzz")
    assert (r.returncode, r.stderr.strip()) == (2, "error: no experiment 'zzzzzzzz'")
    r = cli("experiment", "compile")
    assert r.returncode == 2 and "Missing argument 'FILE'" in r.stderr
    assert "Traceback" not in r.stderr
    r = cli("experiment", "compile", str(SAMPLE), "--max-instances", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_unreachable_database_is_one_line(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRAVATA_DATABASE_URL", "postgresql://u:s3cret@127.0.0.1:1/x")
    r = cli("experiment", "list")
    assert r.returncode == 1
    assert r.stderr.startswith("error: database postgresql://u:***@127.0.0.1:1/x: ")
    assert "s3cret" not in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.prefect
def test_run_watch_completes_and_status_logs_list(stack: Stack, prefect_api: str,
                                                  home: Path, tmp_path: Path) -> None:
    spec = write(tmp_path, """\
        parameters: {WHO: {type: string, default: world}}
        tasks:
          hello: {command: 'echo "hello $WHO $N" | tee $OUT', task_inputs: {N: 1..3},
                  task_outputs: {OUT: out.txt}}
          join: {command: 'cat $IN', foreach: [hello], task_inputs: {IN: "${hello.OUT}"}}
        """)
    r = cli("experiment", "run", spec, "-p", "WHO=alice", "--watch")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "COMPLETED: 6 completed" in r.stdout
    assert f"Prefect UI: {prefect_api.removesuffix('/api')}/runs/flow-run/" in r.stdout
    exp_id = r.stdout.split("experiment ", 1)[1].split()[0]
    status = json.loads(cli("experiment", "status", exp_id[:8], "--json").stdout)
    assert status["status"] == "COMPLETED"
    assert status["started_at"] is not None
    assert status["started_at"] <= status["finished_at"]
    assert status["steps"] == {"hello": {"COMPLETED": 3}, "join": {"COMPLETED": 3}}
    rows = json.loads(cli("experiment", "tasks", exp_id, "--step", "join", "--json").stdout)
    assert [(r["instance_id"], r["state"], r["exit_code"]) for r in rows] == [
        (f"join[{i}]", "COMPLETED", 0) for i in range(3)]
    assert rows[2]["workdir"] == str(home.resolve() / "runs" / exp_id / "join" / "2")
    logs = cli("experiment", "logs", exp_id[:8], "join[2]")
    assert logs.stdout == "hello alice 3\n"
    assert exp_id[:8] in cli("experiment", "list").stdout
    events = cli("experiment", "events", exp_id[:8], "join[2]").stdout
    walked = ["CREATED", "QUEUED", "DATA_STAGING", "ENV_SETUP", "RUNNING", "OUTPUT_STAGING",
              "COMPLETED"]
    assert [line.split("│")[5].strip() for line in events.splitlines()
            if "join[2]" in line] == walked[1:]  # every change of that instance, in order
    assert cli("experiment", "bundles", exp_id, "--json").stdout.strip() == "[]"  # all local
    unknown = cli("experiment", "events", exp_id[:8], "nope[0]")
    assert unknown.returncode == 2 and "no task 'nope[0]'" in unknown.stderr
    mine = json.loads(cli("audit", "--json").stdout)
    assert ("scheduler.queue.submit", f"experiment:{exp_id}", "ok") in {
        (r["action"], r["object"], r["outcome"]) for r in mine}


@pytest.mark.prefect
def test_run_watch_failure_exits_1_and_names_the_failed_task(stack: Stack, home: Path,
                                                             tmp_path: Path) -> None:
    spec = write(tmp_path, "tasks:\n  a: {command: 'echo boom >&2; exit 4', "
                           "task_inputs: {X: [1]}}\n")
    r = cli("experiment", "run", spec, "--watch")
    assert r.returncode == 1
    assert "a[0] failed: exit code 4 (logs: " in r.stdout
    exp_id = r.stdout.split("experiment ", 1)[1].split()[0]
    assert cli("experiment", "logs", exp_id, "a[0]", "--stderr").stdout == "boom\n"
    rows = json.loads(cli("experiment", "tasks", exp_id, "--state", "FAILED", "--json").stdout)
    assert [(r["instance_id"], r["exit_code"], r["reason"]) for r in rows] == [
        ("a[0]", 4, "exit code 4")]
    bad = cli("experiment", "tasks", exp_id, "--state", "BOGUS")
    assert bad.returncode == 2 and "'BOGUS' is not one of" in bad.stderr


@pytest.mark.prefect
def test_cancel_a_running_experiment(stack: Stack, home: Path, tmp_path: Path) -> None:
    spec = write(tmp_path, """\
        tasks:
          slow: {command: 'echo $$ > pid; sleep 60', task_inputs: {X: 1..6}}
        """)
    r = cli("experiment", "run", spec)
    assert r.returncode == 0, r.stderr
    exp_id = r.stdout.split("experiment ", 1)[1].split()[0]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        counts = json.loads(cli("experiment", "status", exp_id, "--json").stdout)["steps"]
        if counts.get("slow", {}).get("RUNNING"):
            break
        time.sleep(0.5)
    pids = [int(p.read_text()) for p in (home / "runs" / exp_id).glob("slow/*/pid")]
    assert pids
    c = cli("experiment", "cancel", exp_id[:8])
    assert c.returncode == 0 and "cancel requested" in c.stdout
    w = cli("experiment", "status", exp_id, "--watch", timeout=60)
    assert w.returncode == 1 and "CANCELED" in w.stdout
    status = json.loads(cli("experiment", "status", exp_id, "--json").stdout)
    assert status["steps"] == {"slow": {"CANCELED": 6}}
    time.sleep(0.5)
    for pid in pids:  # the running scripts were killed, not left behind
        assert not Path(f"/proc/{pid}").exists()
    again = cli("experiment", "cancel", exp_id)
    assert again.returncode == 1 and "already ended (CANCELED)" in again.stdout
    from airavata_prefect.adapters.store import Store
    from airavata_prefect.usecases.settings import get_settings
    trail = Store(get_settings().db_url).audit.trail()
    assert [(r.action, r.object, r.outcome) for r in trail] == [
        ("project.create", "project:default", "ok"),  # first use of the default project
        ("deployment.create", "deployment:run-experiment/default", "ok"),
        ("scheduler.queue.submit", f"experiment:{exp_id}", "ok"),
        ("scheduler.queue.cancel", f"experiment:{exp_id}", "ok"),
        ("scheduler.queue.cancel", f"experiment:{exp_id}", "refused")]


def test_bad_setting_is_one_line(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRAVATA_MAX_INSTANCES", "abc")
    r = cli("experiment", "list")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: AIRAVATA_MAX_INSTANCES='abc': Input should be a valid integer, unable to parse "
        "string as an integer"]


def test_run_without_a_placement_exits_3(home: Path, tmp_path: Path) -> None:
    spec = write(tmp_path, "tasks:\n  train: {command: x, resources: {compute: {gpu: 2}}}\n")
    r = cli("experiment", "run", spec)
    assert r.returncode == 3
    assert r.stderr.strip() == ("error: no placement: step train needs gpu=2: no eligible "
                                "resource (local: no GPUs)")
    from airavata_prefect.adapters.store import Store
    from airavata_prefect.usecases.settings import get_settings
    assert Store(get_settings().db_url).experiments.list() == []  # nothing was stored


@pytest.mark.prefect
def test_permissions_decide_who_may_submit_read_and_cancel(
        stack: Stack, prefect_api: str, home: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write(tmp_path, "tasks:\n  a: {command: 'sleep 600'}\n")  # canceled at the end
    monkeypatch.setenv("AIRAVATA_USER", "alice")
    r = cli("experiment", "run", spec, "--project", "lab")  # first use: alice admins "lab"
    assert r.returncode == 0, r.stderr
    exp_id = r.stdout.split("experiment ", 1)[1].split()[0]

    monkeypatch.setenv("AIRAVATA_USER", "mallory")
    denied = cli("experiment", "run", spec, "--project", "lab")
    assert denied.returncode == 4
    assert denied.stderr.startswith("error: permission denied: user mallory lacks "
                                    "scheduler.queue.submit on project lab (correlation id ")
    for args in (("status", exp_id), ("tasks", exp_id), ("cancel", exp_id)):
        r = cli("experiment", *args)
        assert r.returncode == 4 and "user mallory lacks scheduler.queue." in r.stderr, args
    assert exp_id[:8] not in cli("experiment", "list").stdout  # not even listed
    r = cli("project", "add-member", "lab", "mallory")
    assert r.returncode == 4 and "lacks project.manage on project lab" in r.stderr

    monkeypatch.setenv("AIRAVATA_USER", "alice")
    assert cli("project", "add-member", "lab", "mallory").returncode == 0
    monkeypatch.setenv("AIRAVATA_USER", "mallory")
    mine = cli("experiment", "run", spec, "--project", "lab")
    assert mine.returncode == 0  # a member may submit ...
    assert cli("experiment", "status", exp_id).returncode == 4  # ... but not read alice's
    monkeypatch.setenv("AIRAVATA_USER", "alice")  # the project admin reads and cancels both
    other = mine.stdout.split("experiment ", 1)[1].split()[0]
    assert cli("experiment", "cancel", other).returncode == 0
    assert cli("experiment", "cancel", exp_id).returncode == 0

    from airavata_prefect.adapters.store import Store
    from airavata_prefect.usecases.settings import get_settings
    denials = [r for r in Store(get_settings().db_url).audit.trail() if r.outcome == "denied"]
    assert [(r.actor, r.action) for r in denials] == [
        ("mallory", "scheduler.queue.submit"), ("mallory", "scheduler.queue.read"),
        ("mallory", "scheduler.queue.read"), ("mallory", "scheduler.queue.cancel"),
        ("mallory", "project.manage"), ("mallory", "scheduler.queue.read")]
