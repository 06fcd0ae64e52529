"""Pilot mode end to end, on real processes: the scheduler service (gRPC over TLS, its own
process), agents it never started itself (the experiment's run starts them), the store.

Every instance must end COMPLETED exactly once whatever dies on the way: an agent killed
mid-instance (its lease expires, the instance runs again elsewhere), an agent told to stop
(it hands its instances back at once), the service itself killed and restarted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from airavata_prefect.adapters.store import Store
from airavata_prefect.domain.pilot import WorkItem
from airavata_prefect.domain.records import load_graph
from airavata_prefect.domain.scheduler import Hooks
from airavata_prefect.domain.states import ExperimentStatus, TaskState
from airavata_prefect.proto import agent_pb2 as pb
from airavata_prefect.proto import agent_pb2_grpc as pb_grpc
from airavata_prefect.usecases import agent_tokens, run
from airavata_prefect.usecases.agent_starters import LocalAgents
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.pilot_dispatch import PilotExecutor
from airavata_prefect.usecases.settings import Settings, get_settings
from airavata_prefect.usecases.submit import submit as submit_experiment
from tests.services import AgentService as Service
from tests.services import free_port


@pytest.fixture()
def service(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    """The agent service on a free port with short leases; runs of this test use pilots."""
    port = free_port()
    settings = {"AIRAVATA_AGENT_PORT": str(port), "AIRAVATA_AGENT_LEASE_SECONDS": "3",
                "AIRAVATA_AGENT_HEARTBEAT_SECONDS": "0.5", "AIRAVATA_AGENT_IDLE_SECONDS": "5",
                "AIRAVATA_AGENT_SLOTS": "2", "AIRAVATA_LOCAL_MODE": "pilot"}
    for k, v in settings.items():
        monkeypatch.setenv(k, v)
    home.mkdir(parents=True, exist_ok=True)
    svc = Service(home, port, {**os.environ})
    svc.start()
    yield svc
    if svc.proc is not None and svc.proc.poll() is None:
        svc.proc.terminate()
        svc.proc.wait(10)
    for p in _agents(home):  # none may outlive its test
        p.kill()


def _agents(home: Path) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "airavata_prefect.agent.pilot" in cmd and any(str(home) in c for c in cmd):
            out.append(p)
    return out


def _submit(tmp_path: Path, text: str, *, authorize: bool = False) -> tuple[Store, str]:
    """As `tester`; `authorize`: with its permissions recorded (for the doors that check)."""
    spec = tmp_path / "exp.yml"
    spec.write_text(textwrap.dedent(text))
    settings = get_settings()
    ctx = Context(settings, Store(settings.db_url), "tester")
    return ctx.store, submit_experiment(ctx, spec, [], authorize=authorize)


class Run(threading.Thread):
    """One experiment run (what the flow does, without Prefect) in a thread of its own."""

    def __init__(self, store: Store, exp_id: str) -> None:
        super().__init__(daemon=True)
        self.store, self.exp_id = store, exp_id
        self.result: Any = None

    def run(self) -> None:
        claimed = run.claim(self.store, self.exp_id, None)
        self.result = asyncio.run(run.execute(self.store, claimed, get_settings(), Hooks(),
                                              flow_run_id=None))

    def finish(self, timeout: float = 120) -> ExperimentStatus:
        self.join(timeout)
        assert not self.is_alive(), "the experiment did not end"
        return ExperimentStatus(self.result[0])


def _wait(what: Callable[[], Any], timeout: float = 30, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


def _terminal_events(store: Store, exp_id: str) -> Counter[str]:
    """How many times each instance ended (per attempt item), from the agents' reports."""
    return Counter(f"{e.instance_id}@{e.attempt}" for e in store.pilot.events_after(exp_id, 0)
                   if e.state in (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELED))


SWEEP = """\
tasks:
  a: {command: 'echo "$X" > "$O"; echo out-$X; echo err-$X >&2', task_inputs: {X: 1..12},
      task_outputs: {O: o.txt}}
  b: {command: 'cat "$I" > copy.txt', foreach: [a], task_inputs: {I: "${a.O}"}}
  c: {command: 'true', depends_on: [b]}
"""


def test_an_experiment_on_local_agents(service: Service, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # only `local`: no registry to ask
    store, exp_id = _submit(tmp_path, SWEEP, authorize=True)
    r = Run(store, exp_id)
    r.start()
    assert r.finish() == ExperimentStatus.COMPLETED
    tasks = store.tasks.list(exp_id)
    assert len(tasks) == 25 and {t.state for t in tasks} == {TaskState.COMPLETED}
    ended = _terminal_events(store, exp_id)
    assert len(ended) == 25 and set(ended.values()) == {1}  # each instance ended once
    exp = store.experiments.get(exp_id)
    for i in range(12):  # outputs and logs are in the experiment's directory
        wd = Path(exp.workdir) / "a" / str(i)
        assert (wd / "o.txt").read_text() == f"{i + 1}\n"
        assert (wd / "stdout.log").read_text() == f"out-{i + 1}\n"
        assert (wd / "stderr.log").read_text() == f"err-{i + 1}\n"
        assert (Path(exp.workdir) / "b" / str(i) / "copy.txt").read_text() == f"{i + 1}\n"
    # Lineage is recorded in pilot mode too, by the experiment's process (usecases/lineage.py).
    recorded = {r.instance_id: r for r in store.lineage.of_experiment(exp_id)}
    assert sorted(recorded) == sorted(f"a[{i}]" for i in range(12))
    assert {(r.resource, r.sha256) for r in recorded.values()} == {
        ("local", hashlib.sha256(f"{i + 1}\n".encode()).hexdigest()) for i in range(12)}
    # Every instance went through Airavata's states in order.
    for e in [e for e in store.tasks.events(exp_id) if e.instance_id == "a[0]"][:1]:
        assert e.to_state == TaskState.QUEUED
    chain = [e.to_state for e in store.tasks.events(exp_id, "a[0]")]
    assert chain == [TaskState.QUEUED, TaskState.DATA_STAGING, TaskState.ENV_SETUP,
                     TaskState.RUNNING, TaskState.OUTPUT_STAGING, TaskState.COMPLETED]
    # The agents stop by themselves once the experiment has ended.
    _wait(lambda: not _agents(service.home), timeout=20)
    _wait(lambda: not store.pilot.agents(None, exp_id), timeout=10)  # and are known as gone
    assert not list((service.home / "agents").glob("*.token"))  # no token left on disk
    # `airavata experiment agents` shows who ran them, and why each stopped.
    shown = subprocess.run([str(Path(sys.executable).parent / "airavata"), "experiment",
                            "agents", exp_id[:8], "--json"], capture_output=True, text=True,
                           env={**os.environ, "AIRAVATA_USER": "tester"}, timeout=60)
    assert shown.returncode == 0, shown.stderr
    agents = json.loads(shown.stdout)
    assert agents and sum(a["ended"] for a in agents) == 25
    assert all(a["status"] == "GONE" and a["stopped_reason"] and a["slots"] == 2
               and a["resource"] == "local" for a in agents), agents


def test_storage_mounts_reach_local_agents(service: Service, tmp_path: Path,
                                           prefect_api: str) -> None:
    """Pilot mode: the experiment's process fetches a step's mounts once and links them into
    each instance's directory, which the agents share; agents hold no storage credential."""
    from airavata_prefect.usecases.authorization import ensure_project
    from tests.storages import register_path

    settings = get_settings()
    ctx = Context(settings, Store(settings.db_url), "tester")
    ensure_project(ctx, "lab")
    name = f"nfs-{os.getpid()}-{time.monotonic_ns() % 100000}"
    register_path(ctx, tmp_path / "nfs", name=name)
    (tmp_path / "nfs" / "ref").mkdir()
    (tmp_path / "nfs" / "ref" / "genome.fa").write_text(">chr1\nACGT\n")
    spec = tmp_path / "mounts.yml"
    spec.write_text(textwrap.dedent(f"""\
        tasks:
          use:
            command: 'cat ref/genome.fa > "$OUT"'
            task_inputs: {{I: 1..3}}
            task_outputs: {{OUT: out.txt}}
            resources: {{storage: ["{name}:/ref:./ref"]}}
        """))
    exp_id = submit_experiment(ctx, spec, [], project="lab")
    r = Run(ctx.store, exp_id)
    r.start()
    assert r.finish() == ExperimentStatus.COMPLETED, ctx.store.tasks.list(exp_id)
    assert len(_terminal_events(ctx.store, exp_id)) == 3  # the agents ran them
    workdir = Path(ctx.store.experiments.get(exp_id).workdir)
    for i in range(3):
        assert (workdir / "use" / str(i) / "out.txt").read_text() == ">chr1\nACGT\n"
    chain = [(e.to_state, e.message) for e in ctx.store.tasks.events(exp_id, "use[1]")]
    assert chain[:2] == [(TaskState.QUEUED, None),
                         (TaskState.DATA_STAGING, "1 storage mount(s)")], chain
    assert [f.path for f in ctx.store.staging.inputs(exp_id, "use")] == ["genome.fa"]
    ctx.close()


def test_local_agents_run_instances_in_their_conda_environment(
        service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pilot mode: the step's script builds its environment first, once for all instances
    (the stub micromamba: no conda tool or channel can be reached here); with no tool at all,
    the instances fail saying so."""
    from tests.conda_stub import recorded, stub_micromamba

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    bindir, calls = tmp_path / "bin", tmp_path / "calls"
    stub_micromamba(bindir, calls)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")  # the agents inherit it
    store, exp_id = _submit(tmp_path, """\
        tasks:
          c:
            command: 'hello > out.txt; echo "$CONDA_PREFIX" >> out.txt'
            task_inputs: {I: 1..4}
            resources: {conda: ["python=3.12", numpy]}
        """)
    r = Run(store, exp_id)
    r.start()
    assert r.finish() == ExperimentStatus.COMPLETED, store.tasks.list(exp_id)
    assert len(_terminal_events(store, exp_id)) == 4  # the agents ran them
    workdir = Path(store.experiments.get(exp_id).workdir)
    prefix = (workdir / "c" / "0" / "out.txt").read_text().splitlines()[1]
    for i in range(4):
        assert (workdir / "c" / str(i) / "out.txt").read_text() == f"conda-hello\n{prefix}\n"
    assert Path(prefix).parent == workdir.parent / ".airavata-envs"
    assert [c[:4] for c in recorded(calls)] == [["create", "-y", "-p", prefix]]  # once

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    store, exp_id = _submit(tmp_path, """\
        tasks:
          c: {command: 'true', resources: {conda: [scipy]}}
        """)
    r = Run(store, exp_id)
    r.start()
    assert r.finish() == ExperimentStatus.FAILED
    (t,) = store.tasks.list(exp_id)
    log = (Path(t.workdir) / "stderr.log").read_text()
    assert "conda environment [scipy]: no conda tool on this resource: none of micromamba, " \
        "mamba or conda is on PATH" in log, log


SLOW = """\
tasks:
  s: {command: 'sleep 2; echo "$X" > out.txt', task_inputs: {X: 1..4}, task_outputs: {O: out.txt}}
"""


def _running(store: Store, exp_id: str) -> bool:
    return any(t.state == TaskState.RUNNING for t in store.tasks.list(exp_id))


def test_a_killed_agent_loses_its_lease_and_the_instance_runs_again(
        service: Service, tmp_path: Path) -> None:
    store, exp_id = _submit(tmp_path, SLOW)
    r = Run(store, exp_id)
    r.start()
    _wait(lambda: _running(store, exp_id))
    victims = _agents(service.home)
    assert len(victims) == 1
    victims[0].send_signal(signal.SIGKILL)
    assert r.finish() == ExperimentStatus.COMPLETED
    assert {t.state for t in store.tasks.list(exp_id)} == {TaskState.COMPLETED}
    events = store.pilot.events_after(exp_id, 0)
    requeued = [e for e in events if e.state is None]
    assert requeued and all("stopped heartbeating" in (e.message or "") for e in requeued)
    ended = _terminal_events(store, exp_id)
    assert len(ended) == 4 and set(ended.values()) == {1}


def test_canceling_the_experiment_stops_its_agents_instances(service: Service,
                                                             tmp_path: Path) -> None:
    """`airavata experiment cancel` in pilot mode: running instances are killed by their
    agent and end CANCELED, queued ones never start, nothing ends twice, the agents stop."""
    store, exp_id = _submit(tmp_path, """\
        tasks:
          s: {command: 'sleep 60', task_inputs: {X: 1..6}}
        """)
    r = Run(store, exp_id)
    r.start()
    _wait(lambda: _running(store, exp_id))
    started = time.monotonic()
    assert store.experiments.request_cancel(exp_id)
    assert r.finish(timeout=60) == ExperimentStatus.CANCELED
    assert time.monotonic() - started < 30  # not the instances' 60 s
    tasks = store.tasks.list(exp_id)
    assert {t.state for t in tasks} == {TaskState.CANCELED}, [(t.instance_id, t.state)
                                                              for t in tasks]
    ended = _terminal_events(store, exp_id)
    assert set(ended.values()) <= {1}  # whatever an agent reported, it reported once
    _wait(lambda: not _agents(service.home), timeout=30)  # the agents drained and stopped
    workdir = store.experiments.get(exp_id).workdir
    left = [p for p in psutil.process_iter(["cmdline", "cwd"])
            if (p.info["cmdline"] or [])[:2] == ["sleep", "60"]
            and str(p.info["cwd"] or "").startswith(workdir)]
    assert left == []  # each instance's process group was killed


def test_sigterm_hands_instances_back_at_once(service: Service, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Leases far longer than the test: only a hand-back can explain a quick re-run.
    service.kill()
    service.env["AIRAVATA_AGENT_LEASE_SECONDS"] = "300"
    monkeypatch.setenv("AIRAVATA_AGENT_LEASE_SECONDS", "300")
    service.start()
    store, exp_id = _submit(tmp_path, SLOW)
    r = Run(store, exp_id)
    r.start()
    _wait(lambda: _running(store, exp_id))
    agent = _agents(service.home)[0]
    stopped_at = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    agent.wait(10)
    back = _wait(lambda: [e for e in store.pilot.events_after(exp_id, 0) if e.state is None],
                 timeout=5)
    assert time.monotonic() - stopped_at < 5 and "handed back" in (back[0].message or "")
    assert r.finish(timeout=60) == ExperimentStatus.COMPLETED
    assert set(_terminal_events(store, exp_id).values()) == {1}
    # Each agent said goodbye as it stopped: known as gone at once, with its reason, not
    # after a 300 s lease.
    _wait(lambda: not store.pilot.agents(None, exp_id), timeout=15)
    reasons = [a.stopped_reason for a in store.pilot.agents(None, exp_id, active_only=False)]
    assert len(reasons) >= 2 and all(r.startswith("stopped: ") for r in reasons), reasons
    assert "SIGTERM" in reasons[0], reasons


def test_the_service_killed_and_restarted_loses_nothing(service: Service,
                                                        tmp_path: Path) -> None:
    store, exp_id = _submit(tmp_path, SLOW)
    r = Run(store, exp_id)
    r.start()
    _wait(lambda: _running(store, exp_id))
    service.kill()
    time.sleep(1.0)
    service.start()
    assert r.finish() == ExperimentStatus.COMPLETED
    ended = _terminal_events(store, exp_id)
    assert len(ended) == 4 and set(ended.values()) == {1}
    # Nothing went back to the queue: the agents reconnected and kept their leases.
    assert not [e for e in store.pilot.events_after(exp_id, 0) if e.state is None]


def test_a_walltime_overrun_is_killed_and_failed(service: Service, tmp_path: Path) -> None:
    store, exp_id = _submit(tmp_path, """\
        tasks:
          w: {command: 'sleep 30', resources: {compute: {time: "0:00:01"}}}
    """)
    r = Run(store, exp_id)
    r.start()
    assert r.finish(timeout=60) == ExperimentStatus.FAILED
    (t,) = store.tasks.list(exp_id)
    assert t.state == TaskState.FAILED and "timeout" in (t.reason or "")


# -- the service's refusals, through a gRPC client of our own ------------------------------


def _channel(settings: Settings) -> grpc.Channel:
    ca = (settings.home / "agent-tls" / "ca.pem").read_bytes()
    return grpc.secure_channel(f"127.0.0.1:{settings.agent_port}",
                               grpc.ssl_channel_credentials(root_certificates=ca))


def _md(token: str, agent_id: str | None = None) -> list[tuple[str, str]]:
    md = [("authorization", f"Bearer {token}")]
    return [*md, ("x-agent-id", agent_id)] if agent_id else md


def _register(stub: pb_grpc.AgentServiceStub, token: str) -> str:
    reply = stub.RegisterWorker(pb.RegisterRequest(hostname="t", slots=1), metadata=_md(token))
    return str(reply.agent_id)


def _claim_one(stub: pb_grpc.AgentServiceStub, token: str, agent_id: str) -> pb.TaskSpec:
    def messages() -> Iterator[pb.AgentMessage]:
        yield pb.AgentMessage(credit=pb.Credit(n=1))
        time.sleep(30)  # keep the stream open while the test reads

    stream = stub.PollForTask(messages(), metadata=_md(token, agent_id))
    for msg in stream:
        if msg.HasField("assignment"):
            stream.cancel()
            return msg.assignment.tasks[0]
    raise AssertionError("no assignment")


def test_a_stale_report_after_a_lost_lease_is_rejected(service: Service,
                                                       tmp_path: Path) -> None:
    settings = get_settings()
    store, exp_id = _submit(tmp_path, "tasks:\n  t: {command: 'true'}\n")
    graph = load_graph(store.experiments.get(exp_id))
    ex = PilotExecutor(store, exp_id, graph, lambda s, i: "local",
                       lambda r: LocalAgents(settings))
    store.pilot.enqueue([WorkItem(exp_id, "t[0]", 0, "local",
                                  ex.payload(graph.instance("t", 0), 0))])
    token = agent_tokens.mint(settings, resource="local", experiments=[exp_id], seconds=60)
    stub = pb_grpc.AgentServiceStub(_channel(settings))
    agent_id = _register(stub, token)
    task = _claim_one(stub, token, agent_id)
    # No heartbeat: the lease (3 s) expires and the item goes back with a new epoch.
    _wait(lambda: [e for e in store.pilot.events_after(exp_id, 0) if e.state is None],
          timeout=15)
    late = pb.TaskStatus(lease=pb.Lease(item_id=task.item_id, epoch=task.epoch),
                         state="COMPLETED", exit_code=0)
    reply = stub.ReportTaskStatus(pb.StatusBatch(updates=[late]), metadata=_md(token, agent_id))
    assert [(x.item_id, x.epoch) for x in reply.rejected] == [(task.item_id, task.epoch)]
    assert not _terminal_events(store, exp_id)  # nothing ended on a stale lease


def test_forged_expired_and_foreign_tokens_get_nothing(service: Service,
                                                       tmp_path: Path) -> None:
    settings = get_settings()
    _store, exp_id = _submit(tmp_path, "tasks:\n  t: {command: 'true'}\n")
    stub = pb_grpc.AgentServiceStub(_channel(settings))
    other = Settings(home=tmp_path / "elsewhere")  # another server's signing key
    forged = agent_tokens.mint(other, resource="local", experiments=[exp_id], seconds=60)
    expired = agent_tokens.mint(settings, resource="local", experiments=[exp_id], seconds=1)
    time.sleep(1.5)
    for token, why in ((forged, "invalid"), (expired, "expired"), ("nonsense", "invalid")):
        with pytest.raises(grpc.RpcError) as err:
            _register(stub, token)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert why in (err.value.details() or "")
    with pytest.raises(grpc.RpcError) as err:  # no token at all
        stub.RegisterWorker(pb.RegisterRequest(hostname="t", slots=1))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A good token cannot speak for an agent another token started.
    mine = agent_tokens.mint(settings, resource="local", experiments=[exp_id], seconds=60)
    theirs = agent_tokens.mint(settings, resource="local", experiments=[exp_id], seconds=60)
    their_agent = _register(stub, theirs)
    with pytest.raises(grpc.RpcError) as err:
        stub.SendHeartbeat(pb.Heartbeat(), metadata=_md(mine, their_agent))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Nor does a plaintext client get anywhere.
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.AgentServiceStub(grpc.insecure_channel(f"127.0.0.1:{settings.agent_port}")
                                 ).RegisterWorker(pb.RegisterRequest(slots=1),
                                                  metadata=_md(mine), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Traceback" not in service.text() and mine not in service.text()


CHAIN = """\
tasks:
  s: {command: 'sleep 1.5; echo "$X" > out.txt', task_inputs: {X: 1..6},
      task_outputs: {O: out.txt}}
  t: {command: 'cat "$I" > copy.txt', foreach: [s], task_inputs: {I: "${s.O}"}}
"""

_FLOW = """\
import asyncio, sys
from airavata_prefect.adapters.store import Store
from airavata_prefect.domain.scheduler import Hooks
from airavata_prefect.usecases import run
from airavata_prefect.usecases.settings import get_settings
settings = get_settings()
store = Store(settings.db_url)
claimed = run.claim(store, sys.argv[1], "flow-run-1")
asyncio.run(run.execute(store, claimed, settings, Hooks(), flow_run_id=None))
"""


def test_a_killed_flow_resumes_and_follows_what_agents_hold(service: Service,
                                                            tmp_path: Path) -> None:
    """The experiment's own process dies mid-run: its agents keep working, and the resumed
    run follows the instances they hold instead of running them again."""
    store, exp_id = _submit(tmp_path, CHAIN)
    flow = subprocess.Popen([sys.executable, "-c", _FLOW, exp_id], env={**os.environ},
                            start_new_session=True)
    _wait(lambda: _running(store, exp_id), timeout=60)
    held = {i.instance_id for i in store.pilot.active_items(exp_id)}
    assert held
    flow.kill()
    flow.wait()
    claimed = run.claim(store, exp_id, "flow-run-2", is_dead=lambda _: True)
    assert claimed.resumed_from == "flow-run-1"
    status, _, _ = asyncio.run(run.execute(store, claimed, get_settings(), Hooks(),
                                           flow_run_id=None))
    assert status == ExperimentStatus.COMPLETED
    assert {t.state for t in store.tasks.list(exp_id)} == {TaskState.COMPLETED}
    ended = _terminal_events(store, exp_id)
    assert len(ended) == 12 and set(ended.values()) == {1}  # nothing ran twice
    reset = {e.instance_id for e in store.tasks.events(exp_id) if e.message == run.CRASHED}
    assert not reset & held  # what agents held was followed, not reset and run again
    exp = store.experiments.get(exp_id)
    for i in range(6):
        assert (Path(exp.workdir) / "t" / str(i) / "copy.txt").read_text() == f"{i + 1}\n"
