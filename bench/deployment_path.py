"""Experiments as flow runs of the `run-experiment/default` deployment, against the detached
runner they replaced (bench/detached_runner.py), on one embedded stack (`airavata server start`
in a temporary AIRAVATA_HOME on a free port, stopped at the end whatever happens).

1. Start latency: from `prefect deployment run run-experiment/default --param spec=PATH`, from
   `airavata experiment run PATH` and from the old detached path to the first instance RUNNING
   (its task event's timestamp), counted from when the command started and from when it
   returned; median of REPEAT, the three doors interleaved. Target: <= 2 s, with the worker
   polling every second (PREFECT_WORKER_QUERY_SECONDS=1, set by `airavata server start`).
2. N x `true` end to end (from the command's start until the experiment's flow run ended)
   through both doors of the deployment, through the detached runner, and `xargs -P<cpus>`, in
   the same run. Target: no more than 10% slower than the detached runner.

Runs are sequential (each ends, its flow run too, before the next starts), so the stack uses
Prefect's default SQLite database.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airavata_prefect.adapters.store import Store
    from airavata_prefect.domain.records import Experiment

N = 10_000
REPEAT = 5
TARGET_LATENCY_S = 2.0
TARGET_SLOWDOWN = 1.10
POOL = "default"
DEPLOYMENT = "run-experiment/default"
REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
FLOW_RUN_ENDED = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}

DOORS = ("prefect deployment run", "airavata experiment run", "detached runner")


@dataclass(frozen=True)
class Sample:
    """One start: seconds from the command's start and from its return to the first instance
    RUNNING, and how long the command itself took. Where the time went, from the command's
    return: until the flow run was Running (its process up, the flow begun) and until the
    experiment was claimed by it (stored as RUNNING)."""

    from_start_s: float
    from_return_s: float
    command_s: float
    flow_running_s: float
    claimed_s: float


@dataclass(frozen=True)
class Latency:
    samples: tuple[Sample, ...]

    @property
    def from_start_s(self) -> float:
        return statistics.median(s.from_start_s for s in self.samples)

    @property
    def from_return_s(self) -> float:
        return statistics.median(s.from_return_s for s in self.samples)

    @property
    def command_s(self) -> float:
        return statistics.median(s.command_s for s in self.samples)

    @property
    def flow_running_s(self) -> float:
        return statistics.median(s.flow_running_s for s in self.samples)

    @property
    def claimed_s(self) -> float:
        return statistics.median(s.claimed_s for s in self.samples)

    @property
    def spread(self) -> str:
        """min-max of the from-start samples."""
        values = [s.from_start_s for s in self.samples]
        return f"{min(values):.2f}-{max(values):.2f}"


@dataclass(frozen=True)
class Result:
    latency: dict[str, Latency]  # by door (DOORS)
    sweep_s: dict[str, float]  # N x `true` end to end, by door and "xargs"
    load: dict[str, float]  # 1-minute load average after each sweep (and the latency part)
    cpus: int
    notes: tuple[str, ...] = field(default=())


@dataclass
class Stack:
    home: Path
    port: int
    env: dict[str, str]  # for every command run against the stack
    notes: list[str] = field(default_factory=list)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(url: str, body: dict[str, Any] | None = None, method: str | None = None,
          attempts: int = 6) -> Any:
    """JSON from the Prefect API; a busy server's 503 (its SQLite locked) is tried again, as
    Prefect's own client does."""
    data = None if body is None else json.dumps(body).encode()
    for attempt in range(attempts):
        req = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                text = r.read()
            return json.loads(text) if text else None
        except urllib.error.HTTPError as exc:
            if exc.code not in (502, 503, 504) or attempt == attempts - 1:
                raise
        time.sleep(0.5 * 2 ** attempt)
    raise AssertionError("unreachable")


def _airavata(stack: Stack, *args: str, timeout: float = 300) -> str:
    out = subprocess.run([str(BIN / "airavata"), *args], env=stack.env, cwd=stack.home,
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"airavata {' '.join(args)} exited {out.returncode}:\n"
                           f"{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return out.stdout


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


def _worker_online(stack: Stack) -> bool:
    workers = _http(f"{stack.api}/work_pools/{POOL}/workers/filter", {"offset": 0, "limit": 50})
    return any(str(w.get("status", "")).upper() == "ONLINE" for w in workers)


def _heartbeat_accepted(value: str) -> bool:
    """Whether the installed Prefect accepts this PREFECT_FLOWS_HEARTBEAT_FREQUENCY."""
    from prefect.settings.models.flows import FlowsSettings
    from pydantic import ValidationError

    try:
        FlowsSettings(heartbeat_frequency=value)
    except ValidationError:
        return False
    return True


def _check_pool_heartbeat(stack: Stack) -> None:
    """A flow-run heartbeat the installed Prefect refuses makes every flow run of the pool crash
    at start (and the resume automation start another). Raised to Prefect's minimum here, and
    noted in the result, so the rest can be measured."""
    from prefect.settings.models.flows import FlowsSettings

    pool = _http(f"{stack.api}/work_pools/{POOL}")
    template = pool["base_job_template"]
    env = template["variables"]["properties"]["env"].get("default") or {}
    value = env.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY")
    if value is None or _heartbeat_accepted(str(value)):
        return
    meta = FlowsSettings.model_fields["heartbeat_frequency"].metadata
    minimum = next((int(m.ge) for m in meta if getattr(m, "ge", None) is not None), 30)
    env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = str(minimum)
    template["variables"]["properties"]["env"]["default"] = env
    _http(f"{stack.api}/work_pools/{POOL}", {"base_job_template": template}, method="PATCH")
    stack.notes.append(
        f"work pool {POOL!r}: PREFECT_FLOWS_HEARTBEAT_FREQUENCY={value} is below the installed "
        f"Prefect's minimum ({minimum}), so every flow run crashed at start; the bench set it "
        f"to {minimum} (usecases/deployments.py HEARTBEAT_SECONDS needs fixing)")


def new_stack() -> Stack:
    """A temporary home and a free port for a stack, and the environment of its commands:
    nothing of the caller's PREFECT_* or AIRAVATA_* settings (another server's) leaks in."""
    home = Path(tempfile.mkdtemp(prefix="airavata-bench-deploy-"))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AIRAVATA_"))}
    env.update(AIRAVATA_HOME=str(home), AIRAVATA_PREFECT_PORT=str(port),
               PREFECT_HOME=str(home / "client-prefect"),
               PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return Stack(home, port, env)


def start_stack(stack: Stack) -> None:
    """`airavata server start`, then wait until its worker polls the pool."""
    _airavata(stack, "server", "start")
    deadline = time.monotonic() + 120
    while not _worker_online(stack):
        if time.monotonic() > deadline:
            raise RuntimeError("the worker never came online:\n"
                               + _tail(stack.home / "server" / "worker.log"))
        time.sleep(0.5)
    _check_pool_heartbeat(stack)


@contextlib.contextmanager
def running_stack() -> Iterator[Stack]:
    """A started stack; `airavata server stop` at the end, also when its start failed."""
    stack = new_stack()
    try:
        start_stack(stack)
        yield stack
    finally:
        try:
            _airavata(stack, "server", "stop", timeout=120)
        finally:
            shutil.rmtree(stack.home, ignore_errors=True)


# -- one experiment through one door ------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    door: str
    started: float  # wall clock (time.time()) when the command started
    returned: float  # ... and when it returned
    ref: str  # the experiment id; for `prefect deployment run`, the flow run's id
    output: str


def _command(door: str, spec: Path) -> list[str]:
    if door == "prefect deployment run":
        return [str(BIN / "prefect"), "deployment", "run", DEPLOYMENT, "--param", f"spec={spec}"]
    if door == "airavata experiment run":
        return [str(BIN / "airavata"), "experiment", "run", str(spec)]
    if door == "detached runner":
        return [sys.executable, "-m", "bench.detached_runner", "run", str(spec)]
    raise ValueError(door)


def launch(stack: Stack, door: str, spec: Path) -> Launch:
    """Run the door's command to its return (it starts the experiment, does not wait for it)."""
    argv = _command(door, spec)
    env = stack.env
    if door == "detached runner":  # `python -m bench...` from anywhere
        path = env.get("PYTHONPATH")
        env = {**env, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}
    started = time.time()
    out = subprocess.run(argv, env=env, cwd=stack.home, capture_output=True, text=True,
                         timeout=600)
    returned = time.time()
    if out.returncode:
        raise RuntimeError(f"{door}: exited {out.returncode}:\n{out.stdout[-2000:]}"
                           f"{out.stderr[-2000:]}")
    if door == "prefect deployment run":
        found = re.search(r"UUID:\s*(" + UUID.pattern + ")", out.stdout)
    else:
        found = re.search(r"experiment (" + UUID.pattern + ")", out.stdout)
    if not found:
        raise RuntimeError(f"{door}: no id in its output:\n{out.stdout[-2000:]}")
    return Launch(door, started, returned, found.group(1), out.stdout)


def _flow_run(stack: Stack, flow_run_id: str) -> dict[str, Any]:
    run: dict[str, Any] = _http(f"{stack.api}/flow_runs/{flow_run_id}")
    return run


def _fail(stack: Stack, what: str) -> RuntimeError:
    return RuntimeError(f"{what}\n-- worker log:\n"
                        + _tail(stack.home / "server" / "worker.log"))


@dataclass(frozen=True)
class Ended:
    experiment: Experiment
    flow_run: dict[str, Any]  # as Prefect's API reads it

    def at(self, key: str) -> datetime:
        """A timestamp of the flow run: start_time, end_time."""
        return datetime.fromisoformat(str(self.flow_run[key]))


def wait_ended(stack: Stack, store: Store, run: Launch, timeout: float = 900,
               poll: float = 0.2) -> Ended:
    """Wait until the experiment and its flow run ended (completed, else raise)."""
    from airavata_prefect.domain.states import EXPERIMENT_TERMINAL, ExperimentStatus

    deadline = time.monotonic() + timeout
    exp_id = "" if run.door == "prefect deployment run" else run.ref
    while not exp_id:  # submitted by the flow run itself
        found = store.experiments.submitted_by(run.ref)
        if found is not None:
            exp_id = found.id
            break
        if str(_flow_run(stack, run.ref).get("state_type")) in FLOW_RUN_ENDED:
            raise _fail(stack, f"flow run {run.ref} ended without submitting an experiment")
        if time.monotonic() > deadline:
            raise _fail(stack, f"flow run {run.ref} submitted nothing in {timeout:.0f} s")
        time.sleep(poll)
    while True:
        exp = store.experiments.get(exp_id)
        if exp.status in EXPERIMENT_TERMINAL and exp.flow_run_id:
            fr = _flow_run(stack, exp.flow_run_id)
            if str(fr.get("state_type")) in FLOW_RUN_ENDED and fr.get("end_time"):
                break
        if time.monotonic() > deadline:
            raise _fail(stack, f"{run.door}: experiment {exp_id} still {exp.status} after "
                               f"{timeout:.0f} s")
        time.sleep(poll)
    if exp.status != ExperimentStatus.COMPLETED or fr["state_type"] != "COMPLETED":
        raise _fail(stack, f"{run.door}: experiment {exp_id} {exp.status} ({exp.message}), "
                           f"flow run {fr['state_type']}")
    return Ended(exp, fr)


def first_running(store: Store, exp_id: str) -> datetime:
    """When the experiment's first instance went RUNNING (its task event)."""
    from airavata_prefect.domain.states import TaskState

    return min(e.at for e in store.tasks.events(exp_id) if e.to_state == TaskState.RUNNING)


def latency_sample(stack: Stack, store: Store, door: str, spec: Path) -> Sample:
    run = launch(stack, door, spec)
    ended = wait_ended(stack, store, run)
    exp = ended.experiment
    at = first_running(store, exp.id).timestamp()
    if exp.started_at is None:
        raise RuntimeError(f"{door}: experiment {exp.id} has no start time")
    return Sample(at - run.started, at - run.returned, run.returned - run.started,
                  ended.at("start_time").timestamp() - run.returned,
                  exp.started_at.timestamp() - run.returned)


def sweep(stack: Stack, store: Store, door: str, spec: Path, n: int) -> float:
    """Seconds from the command's start until the experiment's flow run ended."""
    from airavata_prefect.domain.states import TaskState

    run = launch(stack, door, spec)
    ended = wait_ended(stack, store, run, poll=0.5)
    counts = store.tasks.state_counts(ended.experiment.id)
    if counts != {"t": {TaskState.COMPLETED: n}}:
        raise RuntimeError(f"{door}: {counts}")
    return ended.at("end_time").timestamp() - run.started


def xargs(n: int, cpus: int) -> float:
    start = time.perf_counter()
    subprocess.run(f"seq {n} | xargs -P {cpus} -n 1 bash -c true", shell=True, check=True)
    return time.perf_counter() - start


def _settle() -> None:
    """Let the last run's processes exit before the next starts."""
    time.sleep(1.0)


def run(n: int = N, repeat: int = REPEAT, log: Callable[[str], None] | None = None) -> Result:
    """Both measurements on one stack of our own (started and stopped here)."""
    from airavata_prefect.adapters.store import Store

    say = log or (lambda _m: None)
    cpus = os.cpu_count() or 1
    with running_stack() as stack:
        store = Store(f"sqlite:///{stack.home / 'airavata.db'}")
        try:
            one = stack.home / "one.yml"
            one.write_text("tasks:\n  t: {command: 'true'}\n")
            many = stack.home / "sweep.yml"
            many.write_text(f"tasks:\n  t: {{command: 'true', task_inputs: {{X: 1..{n}}}}}\n")
            # Warm-up, not counted: the worker's first run, the imports in the page cache.
            wait_ended(stack, store, launch(stack, "airavata experiment run", one))
            _settle()
            samples: dict[str, list[Sample]] = {door: [] for door in DOORS}
            for i in range(repeat):
                for door in DOORS:
                    samples[door].append(latency_sample(stack, store, door, one))
                    say(f"latency {i + 1}/{repeat} {door}: {samples[door][-1]}")
                    _settle()
            # The baseline first and last (their mean counts), so a drifting machine favours
            # neither side; the 1-minute load average after each tells how busy it was.
            seconds: dict[str, float] = {}
            load: dict[str, float] = {"latency": os.getloadavg()[0]}
            for key, door in (("detached runner (first)", "detached runner"),
                              ("airavata experiment run", "airavata experiment run"),
                              ("prefect deployment run", "prefect deployment run"),
                              ("detached runner (last)", "detached runner")):
                seconds[key] = sweep(stack, store, door, many, n)
                load[key] = os.getloadavg()[0]
                say(f"{n} x true, {key}: {seconds[key]:.2f} s (load {load[key]:.1f})")
                _settle()
            seconds["detached runner"] = (seconds["detached runner (first)"]
                                          + seconds["detached runner (last)"]) / 2
            seconds["xargs"] = xargs(n, cpus)
            load["xargs"] = os.getloadavg()[0]
        finally:
            store.close()
        return Result({d: Latency(tuple(s)) for d, s in samples.items()}, seconds, load, cpus,
                      tuple(stack.notes))


if __name__ == "__main__":
    print(run(log=lambda m: print(m, flush=True)))
