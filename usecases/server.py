"""The embedded default: everything one machine needs, started in the background by `airavata
server start` with its logs and state under `AIRAVATA_HOME/server`: the Prefect server (API and
UI), a Prefect worker polling the default pool, the default deployment it runs, and the REST
API. Idempotent:
what already answers is left alone. Ports come from the settings, so two stacks with different
`AIRAVATA_HOME`s run side by side.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from airavata_prefect.usecases.settings import Settings

START_TIMEOUT = 120.0
WORKER_POLL_SECONDS = "1"  # how often the worker asks for new runs: sets the start latency


@dataclass(frozen=True)
class Service:
    name: str
    pid: int | None
    alive: bool
    log: Path
    detail: str = ""


def state_dir(settings: Settings) -> Path:
    return settings.home / "server"


def api_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.prefect_port}/api"


def recorded_api_url(settings: Settings) -> str | None:
    """The Prefect API of this home's embedded stack, when `server start` recorded one."""
    try:
        return str(json.loads((state_dir(settings) / "state.json").read_text())["api_url"])
    except (OSError, ValueError, KeyError):
        return None


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _answers(url: str) -> bool:
    """Any HTTP answer (the API's health is 503 while a service it checks is down)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def rest_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.api_port}"


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited child not yet reaped is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def _environment(settings: Settings) -> dict[str, str]:
    env = {**os.environ, "PREFECT_API_URL": api_url(settings),
           "PREFECT_HOME": str(state_dir(settings) / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_API_URL": api_url(settings),
           "PREFECT_WORKER_QUERY_SECONDS": WORKER_POLL_SECONDS,
           "AIRAVATA_HOME": str(settings.home)}
    if settings.prefect_database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = settings.prefect_database_url
    return env


def _spawn(settings: Settings, name: str, argv: list[str]) -> int:
    d = state_dir(settings)
    with open(d / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=_environment(settings), cwd=d)
    (d / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start_prefect(settings: Settings) -> bool:
    """Start the Prefect server unless this home's already answers; True when started."""
    d = state_dir(settings)
    d.mkdir(parents=True, exist_ok=True)
    url = api_url(settings)
    if _healthy(url):
        return False
    pid = _spawn(settings, "prefect", [str(Path(sys.executable).parent / "prefect"), "server",
                                       "start", "--host", "127.0.0.1", "--port",
                                       str(settings.prefect_port)])
    deadline = time.monotonic() + START_TIMEOUT
    while not _healthy(url):
        if not _alive(pid) or time.monotonic() > deadline:
            raise RuntimeError(f"the Prefect server did not start on port "
                               f"{settings.prefect_port}; last lines of {d / 'prefect.log'}:\n"
                               + _tail(d / "prefect.log"))
        time.sleep(0.5)
    (d / "state.json").write_text(json.dumps({"api_url": url}))
    return True


def start_worker(settings: Settings, pool: str) -> bool:
    """Start a worker for `pool` unless this home's is running; True when started."""
    d = state_dir(settings)
    if _alive(_pid(d / "worker.pid")):
        return False
    argv = [str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", pool,
            "--type", "process", "--name", f"airavata-{os.uname().nodename}-{os.getpid()}"]
    if settings.worker_limit:
        argv += ["--limit", str(settings.worker_limit)]
    pid = _spawn(settings, "worker", argv)
    time.sleep(0.5)
    if not _alive(pid):
        raise RuntimeError("the worker exited at once; last lines of "
                           f"{d / 'worker.log'}:\n{_tail(d / 'worker.log')}")
    return True


def start_api(settings: Settings) -> bool:
    """Start the REST API unless this home's answers; True when started."""
    d = state_dir(settings)
    d.mkdir(parents=True, exist_ok=True)
    health = rest_url(settings) + "/api/v1/health"
    if _answers(health):
        return False
    pid = _spawn(settings, "api", [sys.executable, "-m", "airavata_prefect.api.rest",
                                   "--port", str(settings.api_port)])
    deadline = time.monotonic() + START_TIMEOUT
    while not _answers(health):
        if not _alive(pid) or time.monotonic() > deadline:
            raise RuntimeError(f"the REST API did not start on port {settings.api_port}; "
                               f"last lines of {d / 'api.log'}:\n" + _tail(d / "api.log"))
        time.sleep(0.3)
    return True


def _listening(host: str, port: int) -> bool:
    import socket
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def start_agent_service(settings: Settings) -> bool:
    """Start the scheduler service pilot agents talk to unless this home's answers; True when
    started."""
    d = state_dir(settings)
    d.mkdir(parents=True, exist_ok=True)
    if _alive(_pid(d / "agents.pid")) or _listening(settings.agent_host, settings.agent_port):
        return False
    pid = _spawn(settings, "agents", [sys.executable, "-m", "airavata_prefect.api.agent_service"])
    deadline = time.monotonic() + START_TIMEOUT
    while not _listening(settings.agent_host, settings.agent_port):
        if not _alive(pid) or time.monotonic() > deadline:
            raise RuntimeError(f"the agent service did not start on port {settings.agent_port}"
                               f"; last lines of {d / 'agents.log'}:\n" + _tail(d / "agents.log"))
        time.sleep(0.2)
    return True


def status(settings: Settings) -> list[Service]:
    d = state_dir(settings)
    out = []
    for name in ("prefect", "worker", "api", "agents"):
        pid = _pid(d / f"{name}.pid")
        detail = ""
        alive = _alive(pid)
        if name == "prefect":
            alive = _healthy(api_url(settings))
            detail = f"http://127.0.0.1:{settings.prefect_port}" if alive else ""
        if name == "api":
            alive = _answers(rest_url(settings) + "/api/v1/health")
            detail = rest_url(settings) + "/api/v1" if alive else ""
        if name == "agents":
            alive = alive and _listening(settings.agent_host, settings.agent_port)
            detail = settings.agent_target if alive else ""
        out.append(Service(name, pid, alive, d / f"{name}.log", detail))
    return out


def stop(settings: Settings, timeout: float = 20.0) -> list[str]:
    """Stop the worker, then the server (their process groups); names of what was stopped."""
    d = state_dir(settings)
    stopped = []
    for name in ("agents", "api", "worker", "prefect"):
        pid = _pid(d / f"{name}.pid")
        if _alive(pid) and pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)
            stopped.append(name)
        (d / f"{name}.pid").unlink(missing_ok=True)
    (d / "state.json").unlink(missing_ok=True)
    return stopped


__all__ = ["Service", "api_url", "recorded_api_url", "rest_url", "start_agent_service",
           "start_api", "start_prefect",
           "start_worker",
           "state_dir", "status", "stop"]
