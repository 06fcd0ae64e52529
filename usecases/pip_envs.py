"""Python environments for steps that ask for `pip:` packages, on this machine (the `local`
resource): one virtual environment per distinct requirement set and interpreter, built once
under `$AIRAVATA_HOME/envs/pip-<digest>` (usecases/env_cache.py) and reused by every instance
and every later run that asks for the same set. Instances run with it active (`VIRTUAL_ENV`,
its `bin` first on PATH).

A step that also asks for `conda:` gets its virtual environment layered on the conda one: built
with that environment's `python3` and seeing its packages (domain/environments.py).
Requirements are checked at submit (domain/spec.py: each one a requirement, never a pip
option) and passed after `--`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from airavata_prefect.domain.environments import COMPLETE, PYTHON, describe, env_key
from airavata_prefect.usecases.env_cache import EnvCache, build_environ, run_logged
from airavata_prefect.usecases.settings import Settings


def digest(requirements: Sequence[str], python: str, over: Path | None = None) -> str:
    """The same set (order and repeats aside) on the same interpreter: the same environment."""
    if over is not None:  # layered on a conda environment: its interpreter, whatever it is
        return env_key("pip", requirements, f"{over}/bin/{PYTHON}")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return env_key("pip", requirements, f"{os.path.realpath(python)}:{version}")


def activate(env: dict[str, str], venv: Path) -> dict[str, str]:
    """An instance's environment with `venv` active."""
    return {**env, "VIRTUAL_ENV": str(venv), "PATH": f"{venv}/bin:{env.get('PATH', '')}"}


class PipEnvironments:
    def __init__(self, settings: Settings, python: str = sys.executable) -> None:
        self.cache = EnvCache(settings)
        self.python = python

    async def ensure(self, requirements: Sequence[str], over: Path | None = None) -> Path:
        """The environment for `requirements` (on the conda environment `over`, if given),
        built first if no run built it yet."""
        python, site = self.python, []
        if over is not None and (over / "bin" / PYTHON).exists():
            python, site = str(over / "bin" / PYTHON), ["--system-site-packages"]
        reqs = list(requirements)
        what = describe("pip", reqs)

        def build(venv: Path, log: Path) -> None:
            run_logged([[python, "-m", "venv", *site, str(venv)],
                        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-input",
                         "--disable-pip-version-check", "--", *reqs]],
                       log, build_environ(["PIP_"]), what)

        name = f"pip-{digest(reqs, self.python, over if site else None)}"
        return await self.cache.ensure(name, build, marker="\n".join(reqs))


__all__ = ["COMPLETE", "PipEnvironments", "activate", "digest"]
