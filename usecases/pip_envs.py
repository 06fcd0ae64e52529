"""Python environments for steps that ask for `pip:` packages, on this machine (the `local`
resource): one virtual environment per distinct requirement set and interpreter, built once
under `$AIRAVATA_HOME/envs/pip-<digest>` and reused by every instance and every later run that
asks for the same set. Instances run with it active (`VIRTUAL_ENV`, its `bin` first on PATH).

A virtual environment cannot move once built (its scripts name their own path), so it is built
in place under a file lock, and marked usable by a `.complete` file written last: a build that
died half-way is found unmarked, removed and built again. Requirements are checked at submit
(domain/spec.py: each one a requirement, never a pip option) and passed after `--`.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from airavata_prefect.usecases.settings import Settings

ENVS_DIR = "envs"
COMPLETE = ".complete"
BUILD_TIMEOUT_SECONDS = 1800.0
# What pip may need from this machine's environment (an index, a proxy, a CA); nothing else.
_PASSED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE",
           "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


class EnvironmentFailed(Exception):
    """An environment could not be built: the message says which and why."""


def digest(requirements: Sequence[str], python: str) -> str:
    """The same set (order and repeats aside) on the same interpreter: the same environment."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    key = json.dumps([os.path.realpath(python), version, sorted(set(requirements))])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def activate(env: dict[str, str], venv: Path) -> dict[str, str]:
    """An instance's environment with `venv` active."""
    return {**env, "VIRTUAL_ENV": str(venv), "PATH": f"{venv}/bin:{env.get('PATH', '')}"}


class PipEnvironments:
    def __init__(self, settings: Settings, python: str = sys.executable) -> None:
        self.root = settings.home / ENVS_DIR
        self.python = python
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure(self, requirements: Sequence[str]) -> Path:
        """The environment for `requirements`, built first if no run built it yet."""
        key = digest(requirements, self.python)
        async with self._locks.setdefault(key, asyncio.Lock()):
            return await asyncio.to_thread(self._ensure, key, list(requirements))

    def _ensure(self, key: str, requirements: list[str]) -> Path:
        venv = self.root / f"pip-{key}"
        if (venv / COMPLETE).exists():
            return venv
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"pip-{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building the same set
            if not (venv / COMPLETE).exists():
                self._build(venv, requirements)
        return venv

    def _build(self, venv: Path, requirements: list[str]) -> None:
        shutil.rmtree(venv, ignore_errors=True)  # a build that died half-way
        env = {k: v for k, v in os.environ.items() if k in _PASSED or k.startswith("PIP_")}
        what = f"pip environment [{', '.join(requirements)}]"
        log = venv.parent / f"{venv.name}.log"
        with open(log, "wb") as out:
            for cmd in ([self.python, "-m", "venv", str(venv)],
                        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-input",
                         "--disable-pip-version-check", "--", *requirements]):
                try:
                    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, env=env,
                                          timeout=BUILD_TIMEOUT_SECONDS)
                except (OSError, subprocess.TimeoutExpired) as exc:
                    raise EnvironmentFailed(f"{what}: {exc} (log: {log})") from None
                if done.returncode != 0:
                    raise EnvironmentFailed(f"{what} failed to build: {_last_error(log)} "
                                            f"(log: {log})")
        (venv / COMPLETE).write_text(json.dumps(requirements))


def _last_error(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return (errors or lines or ["no output"])[0][:300]


__all__ = ["EnvironmentFailed", "PipEnvironments", "activate", "digest"]
