"""Test harness: starts the real services the tests use (Prefect API server, PostgreSQL).

Prefect reads its settings when first imported, so the API URL is chosen here, before any test
module imports Prefect; the server itself starts only when a test asks for `prefect_api`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import services

ROOT = Path(__file__).resolve().parent.parent
# A real Kubernetes cluster cannot run here: its test runs only through `make test-kubernetes`.
collect_ignore = [] if os.environ.get("AIRAVATA_KUBERNETES_CLUSTER") else ["kubernetes_cluster"]
SAMPLE = ROOT / "examples" / "airavata_sample.yml"
PEER_SAMPLE = ROOT.parent / "shared" / "peers" / "airavata" / "sample_experiment.yml"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Events tests emitted while no Prefect server answered are not sent at exit (the
    server of the session is gone by then, and so is pytest's captured stderr)."""
    from airavata_prefect.adapters import prefect_events
    prefect_events.discard_pending()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_PREFECT_PORT = _free_port()
_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="airavata-test-prefect-"))
if not os.environ.get("AIRAVATA_KUBERNETES_CLUSTER"):  # that test uses the user's Prefect
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{_PREFECT_PORT}/api"
    os.environ["PREFECT_HOME"] = str(_PREFECT_HOME)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ.pop("AIRAVATA_DATABASE_URL", None)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


PREFECT_DATABASE: list[str] = []  # the Prefect server's own database, once it runs


@pytest.fixture(scope="session")
def prefect_api(pg_server: int) -> Iterator[str]:
    """A real Prefect API server for the whole session, on PostgreSQL (as advised for
    production: on SQLite, concurrent flow runs get 503s from a locked database)."""
    import psycopg
    api = os.environ["PREFECT_API_URL"]
    name = f"prefect_test_{uuid.uuid4().hex[:10]}"
    admin = f"postgresql://postgres@127.0.0.1:{pg_server}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    PREFECT_DATABASE.append(f"postgresql://postgres@127.0.0.1:{pg_server}/{name}")
    log = open(_PREFECT_HOME / "server.log", "wb")  # noqa: SIM115  closed at teardown
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
         "--port", str(_PREFECT_PORT)], stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "PREFECT_HOME": str(_PREFECT_HOME),
             "PREFECT_SERVER_DATABASE_CONNECTION_URL":
                 f"postgresql+asyncpg://postgres@127.0.0.1:{pg_server}/{name}",
             # Schedules fire within seconds in tests (the scheduler loop's default is 60 s).
             "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
             "PREFECT_API_SERVICES_SCHEDULER_LOOP_SECONDS": "2"})
    deadline = time.monotonic() + 120
    while not _healthy(api + "/health"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("Prefect server did not start:\n"
                               + (_PREFECT_HOME / "server.log").read_text()[-3000:])
        time.sleep(0.5)
    yield api
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh AIRAVATA_HOME (SQLite store and run directories) for one test."""
    h = tmp_path / "airavata"
    monkeypatch.setenv("AIRAVATA_HOME", str(h))
    monkeypatch.delenv("AIRAVATA_DATABASE_URL", raising=False)
    return h


# -- PostgreSQL -----------------------------------------------------------------------------------


def _pg_answers(port: int) -> bool:
    try:
        import psycopg
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres",
                             connect_timeout=3):
            return True
    except Exception:
        return False


def _start_own_postgres() -> tuple[int, Path]:
    """initdb + pg_ctl into a temporary directory, as the postgres user when we are root."""
    bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    initdb = shutil.which("initdb") or next((str(b / "initdb") for b in bindirs
                                             if (b / "initdb").exists()), None)
    if not initdb:
        raise RuntimeError("no PostgreSQL answers on 127.0.0.1:5432 and initdb is not "
                           "installed (apt-get install postgresql)")
    bindir = Path(initdb).parent
    data = Path(tempfile.mkdtemp(prefix="airavata-test-pg-"))
    port = _free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data / "db"), "-U", "postgres",
                    "--auth=trust"], check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-w", "-l",
                    str(data / "log"), "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
                    "start"], check=True, capture_output=True)
    return port, data


@pytest.fixture(scope="session")
def pg_server() -> Iterator[int]:
    if os.environ.get("AIRAVATA_TEST_OWN_POSTGRES") != "1" and _pg_answers(5432):
        yield 5432
        return
    port, data = _start_own_postgres()
    yield port
    bindir = next(Path("/usr/lib/postgresql").glob("*/bin"), None)
    pg_ctl = shutil.which("pg_ctl") or (str(bindir / "pg_ctl") if bindir else "pg_ctl")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*as_user, pg_ctl, "-D", str(data / "db"), "-m", "fast", "stop"],
                   capture_output=True)
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture()
def pg_url(pg_server: int) -> Iterator[str]:
    """A fresh database on a real PostgreSQL server, dropped afterwards."""
    import psycopg
    name = f"airavata_test_{uuid.uuid4().hex[:10]}"
    admin = f"postgresql://postgres@127.0.0.1:{pg_server}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:{pg_server}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A fresh store on SQLite, then on a real PostgreSQL (a module's own `store` overrides)."""
    from airavata_prefect.adapters.store import Store

    url = (f"sqlite:///{tmp_path / 'a.db'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    s = Store(url)
    yield s
    s.close()


# -- OpenBao --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def openbao_dev() -> Iterator[tuple[str, str]]:
    """A real OpenBao dev server (in memory, unsealed, root token) for the session."""
    bao = Path(sys.executable).parent / "bao"
    port = _free_port()
    root = uuid.uuid4().hex
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(bao), "server", "-dev", f"-dev-listen-address=127.0.0.1:{port}",
         f"-dev-root-token-id={root}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not _healthy(f"{url}/v1/sys/health"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("OpenBao dev server did not start: "
                               + (proc.stderr.read().decode()[-2000:] if proc.stderr else ""))
        time.sleep(0.1)
    yield url, root
    proc.terminate()
    proc.wait(10)


# -- sshd, SLURM, S3 (tests/services.py) -------------------------------------------------------


@pytest.fixture(scope="session")
def sshd() -> Iterator[services.Sshd]:
    """A real sshd on loopback with a test user and its key pair (scripts/sshd_server.sh)."""
    s = services.start_sshd()
    yield s
    services.stop_sshd(s)


@pytest.fixture(scope="session")
def slurm() -> Iterator[services.Slurm]:
    """A real single-node SLURM 22.05 with slurmrestd (scripts/slurm_cluster.sh)."""
    s = services.start_slurm()
    yield s
    services.stop_slurm(s)


@pytest.fixture(scope="session")
def s3() -> Iterator[services.S3Server]:
    """A real S3 server (SeaweedFS) with its own access and secret key."""
    s = services.start_s3()
    yield s
    services.stop_s3(s)


# -- experiment deployments and their workers ----------------------------------------------------


@dataclass
class Stack:
    """A deployment of the experiment flow in its own pool, and the workers polling it."""

    deployment: str
    pool: str
    home: Path
    env: dict[str, str]
    workers: list[subprocess.Popen]

    def airavata(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(Path(sys.executable).parent / "airavata"), *args],
                              env=self.env, capture_output=True, text=True, timeout=timeout)

    def prefect(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(Path(sys.executable).parent / "prefect"), *args],
                              env=self.env, capture_output=True, text=True, timeout=timeout)

    def start_worker(self, *extra: str) -> subprocess.Popen:
        log = open(self.home / f"worker{len(self.workers)}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool",
             self.pool, "--type", "process", *extra], stdout=log, stderr=subprocess.STDOUT,
            env=self.env, start_new_session=True)
        self.workers.append(proc)
        return proc

    def wait_online(self, n: int = 1, timeout: float = 60) -> None:
        import httpx
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = httpx.post(f"{self.env['PREFECT_API_URL']}/work_pools/{self.pool}/workers/filter",
                           json={})
            if sum(w["status"] == "ONLINE" for w in r.json()) >= n:
                return
            time.sleep(0.5)
        raise AssertionError(f"{n} worker(s) did not come online for pool {self.pool}")


@contextmanager
def experiment_stack(home: Path, name: str, *, project: str = "default", workers: int = 1,
                     db_url: str | None = None, worker_args: tuple[str, ...] = (),
                     user: str | None = "alice") -> Iterator[Stack]:
    """`airavata deployment create NAME --project P --pool NAME` and workers for that pool,
    all acting under AIRAVATA_HOME=home (the store the workers' flow runs use)."""
    env = {**os.environ, "AIRAVATA_HOME": str(home), "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_LOGGING_LEVEL": "INFO", **({"AIRAVATA_USER": user} if user else {})}
    if db_url:
        env["AIRAVATA_DATABASE_URL"] = db_url
    home.mkdir(parents=True, exist_ok=True)
    stack = Stack(name, name, home, env, [])
    made = stack.airavata("deployment", "create", name, "--project", project, "--pool", name)
    assert made.returncode == 0, made.stderr
    try:
        for _ in range(workers):
            stack.start_worker(*worker_args)
        stack.wait_online(workers)
        yield stack
    finally:
        for w in stack.workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w.pid, signal.SIGTERM)
        for w in stack.workers:
            try:
                w.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(w.pid, signal.SIGKILL)


# -- the REST API (tests/api_harness.py) -------------------------------------------------------


@pytest.fixture()
def api(home: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A real REST API server on this test's AIRAVATA_HOME (SQLite store), signed-in admin."""
    from tests.api_harness import api_server
    monkeypatch.delenv("AIRAVATA_USER", raising=False)
    with api_server(home) as server:
        yield server
