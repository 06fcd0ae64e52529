"""Conda environments for steps that ask for `conda:` packages, on this machine (the `local`
resource): one per distinct set of specs, built once under `$AIRAVATA_HOME/envs/conda-<digest>`
(usecases/env_cache.py) with whichever of micromamba, mamba or conda is first on PATH, and
reused by every instance and later run asking for the same set. Instances run with it active
(`CONDA_PREFIX`, its `bin` first on PATH). With no conda tool here, the instance fails saying so.

Specs are checked at submit (domain/spec.py: package specs, never options).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from airavata_prefect.domain.environments import (
    COMPLETE,
    CONDA_TOOLS,
    NO_CONDA_TOOL,
    conda_create,
    conda_name,
    describe,
)
from airavata_prefect.domain.instance import DEFAULT_PATH
from airavata_prefect.usecases.env_cache import (
    EnvCache,
    EnvironmentFailed,
    build_environ,
    run_logged,
)
from airavata_prefect.usecases.settings import Settings

# The tools' own settings (channels, package caches, root prefixes) pass to a build.
_TOOL_PREFIXES = ("CONDA_", "MAMBA_")


def find_tool(path: str) -> str | None:
    """The first of micromamba, mamba and conda on `path`."""
    for tool in CONDA_TOOLS:
        found = shutil.which(tool, path=path)
        if found:
            return found
    return None


def activate(env: dict[str, str], prefix: Path) -> dict[str, str]:
    """An instance's environment with the conda environment at `prefix` active."""
    return {**env, "CONDA_PREFIX": str(prefix), "PATH": f"{prefix}/bin:{env.get('PATH', '')}"}


class CondaEnvironments:
    def __init__(self, settings: Settings) -> None:
        self.cache = EnvCache(settings)

    async def ensure(self, specs: Sequence[str]) -> Path:
        """The environment for `specs`, built first if no run built it yet."""
        specs = list(specs)
        what = describe("conda", specs)
        name = conda_name(specs)
        if (self.cache.root / name / COMPLETE).exists():  # a built one needs no tool
            return self.cache.root / name
        path = os.environ.get("PATH", DEFAULT_PATH)
        tool = find_tool(path)
        if tool is None:
            raise EnvironmentFailed(f"{what}: {NO_CONDA_TOOL}")

        def build(prefix: Path, log: Path) -> None:
            run_logged([conda_create(tool, str(prefix), specs)], log,
                       {**build_environ(_TOOL_PREFIXES), "PATH": path}, what)

        return await self.cache.ensure(name, build, marker="\n".join(specs))


__all__ = ["CondaEnvironments", "activate", "find_tool"]
