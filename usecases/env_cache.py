"""The cache of software environments on this machine (the `local` resource): each one built
once, in place, under `$AIRAVATA_HOME/envs/<name>`, and reused by every later instance and run.

Neither a virtual environment nor a conda one can move once built (their scripts name their
own path), so each is built where it stays, under a file lock (so concurrent runs build it
once), and marked usable by a `.complete` file written last: a build that died half-way is found
unmarked, removed and built again. Its log stays beside it (`<name>.log`). The same rules hold
on registered resources, where the bundle's envs.sh applies them (domain/environments.py).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from airavata_prefect.domain.environments import BUILD_TIMEOUT_SECONDS, COMPLETE
from airavata_prefect.usecases.settings import Settings

ENVS_DIR = "envs"
# What a build may need from this machine's environment (an index, a proxy, a CA); nothing else.
_PASSED = ("PATH", "HOME", "USER", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE",
           "REQUESTS_CA_BUNDLE", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY",
           "HTTPS_PROXY", "NO_PROXY")

Build = Callable[[Path, Path], None]  # build(where, log): raises EnvironmentFailed


class EnvironmentFailed(Exception):
    """An environment could not be built: the message says which and why."""


def build_environ(prefixes: Sequence[str]) -> dict[str, str]:
    """This machine's variables a build tool sees: `_PASSED` and its own (`PIP_`, `CONDA_`)."""
    return {k: v for k, v in os.environ.items() if k in _PASSED or k.startswith(tuple(prefixes))}


class EnvCache:
    def __init__(self, settings: Settings) -> None:
        self.root = settings.home / ENVS_DIR
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure(self, name: str, build: Build, marker: str = "") -> Path:
        """`<root>/<name>`, built first by `build` if no run built it yet."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            return await asyncio.to_thread(self._ensure, name, build, marker)

    def _ensure(self, name: str, build: Build, marker: str) -> Path:
        where = self.root / name
        if (where / COMPLETE).exists():
            return where
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building the same set
            if not (where / COMPLETE).exists():
                shutil.rmtree(where, ignore_errors=True)  # a build that died half-way
                build(where, self.root / f"{name}.log")
                (where / COMPLETE).write_text(marker)
        return where


def run_logged(commands: Sequence[Sequence[str]], log: Path, env: dict[str, str],
               what: str) -> None:
    """Run a build's commands in turn, their output in `log`; the first failure raises,
    naming `what` and the log's last error line."""
    with open(log, "wb") as out:
        for cmd in commands:
            try:
                done = subprocess.run(list(cmd), stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, env=env,
                                      timeout=BUILD_TIMEOUT_SECONDS)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise EnvironmentFailed(f"{what}: {exc} (log: {log})") from None
            if done.returncode != 0:
                raise EnvironmentFailed(f"{what} failed to build: {last_error(log)} "
                                        f"(log: {log})")


def last_error(log: Path) -> str:
    """The log's last line naming an error, else its last line (as envs.sh picks it)."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["no output"])[-1][:300]


__all__ = ["ENVS_DIR", "EnvCache", "EnvironmentFailed", "build_environ", "last_error",
           "run_logged"]
