"""A real REST API server for tests: `python -m airavata_prefect.api.rest` on a free port, its
own AIRAVATA_HOME (and store), an admin made the way an operator makes one (local mode on the
server's machine), and helpers to sign in and call it with httpx."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.services import free_port

ADMIN, ADMIN_PASSWORD = "admin", "admin-password-1"


@dataclass
class ApiServer:
    base: str  # http://127.0.0.1:PORT
    home: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log: Path
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.base + "/api/v1"

    def client(self, token: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kw)

    def login(self, user: str, password: str) -> str:
        """An access token (kept in `tokens[user]`)."""
        r = httpx.post(f"{self.url}/auth/login", json={"username": user, "password": password},
                       timeout=60)
        assert r.status_code == 200, r.text
        self.tokens[user] = r.json()["access_token"]
        return self.tokens[user]

    def as_admin(self) -> httpx.Client:
        return self.client(self.tokens.get(ADMIN) or self.login(ADMIN, ADMIN_PASSWORD))

    def add_user(self, name: str, password: str | None = None) -> httpx.Client:
        """A person made by the admin through the API, signed in."""
        password = password or f"{name}-password-1"
        with self.as_admin() as admin:
            r = admin.post("/users", json={"username": name, "password": password})
            assert r.status_code == 201, r.text
        return self.client(self.login(name, password))

    def store_env(self) -> dict[str, str]:
        return {k: v for k, v in self.env.items() if k.startswith("AIRAVATA_")}


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
        return True
    except httpx.HTTPError:
        return False


@contextmanager
def api_server(home: Path, *, db_url: str | None = None,
               extra_env: dict[str, str] | None = None) -> Iterator[ApiServer]:
    from airavata_prefect.usecases import accounts
    from airavata_prefect.usecases.context import open_context
    from airavata_prefect.usecases.settings import Settings

    port = free_port()
    env = {**os.environ, "AIRAVATA_HOME": str(home), "AIRAVATA_API_PORT": str(port),
           **({"AIRAVATA_DATABASE_URL": db_url} if db_url else {}), **(extra_env or {})}
    env.pop("AIRAVATA_USER", None)
    home.mkdir(parents=True, exist_ok=True)
    settings = Settings(home=home, database_url=db_url, user=accounts_os_login())
    with open_context(settings) as ctx:  # the operator, on the server's machine
        accounts.create_person(ctx, ADMIN, ADMIN_PASSWORD, admin=True)
    log = home / "api.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "airavata_prefect.api.rest", "--port",
                                 str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not _answers(base + "/api/v1/health"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the API did not start:\n" + log.read_text()[-3000:])
        time.sleep(0.2)
    server = ApiServer(base, home, env, proc, log)
    try:
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def accounts_os_login() -> str:
    from airavata_prefect.usecases.context import os_login
    return os_login()
