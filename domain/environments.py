"""Software environments (`conda:` and `pip:`), the rules every resource shares.

A step's instances run with a conda environment and/or a Python virtual environment active,
each built once per distinct set (its name carries the digest of the set) in a cache on the
resource and reused by every later instance, bundle and experiment asking for the same set.
When a step asks for both, the virtual environment is layered on the conda one (built with
its `python3`, seeing its packages), so the peer's `conda: [python=3.12, numpy]` plus
`pip: [tqdm]` gets all three; its name then carries the conda environment's too.

The conda tool is whichever of `CONDA_TOOLS` the resource has, first found on PATH; with none
the instance fails saying so (`NO_CONDA_TOOL`). On registered resources envs.sh (shipped in each
bundle beside run_one.sh) does the building; on `local`, usecases/conda_envs.py and
usecases/pip_envs.py do.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import shlex
from collections.abc import Sequence
from pathlib import Path

CONDA_TOOLS = ("micromamba", "mamba", "conda")
# micromamba ships with no channel configured (conda and mamba come with theirs).
CONDA_CHANNELS: dict[str, tuple[str, ...]] = {"micromamba": ("-c", "conda-forge")}
NO_CONDA_TOOL = ("no conda tool on this resource: none of "
                 f"{', '.join(CONDA_TOOLS[:-1])} or {CONDA_TOOLS[-1]} is on PATH")
BUILD_TIMEOUT_SECONDS = 1800  # each build command; a hung one would hold the lock forever
COMPLETE = ".complete"  # written last: an environment without it is half-built
RESOURCE_CACHE = ".airavata-envs"  # beside the experiments in a resource's working directory
PYTHON = "python3"  # the interpreter a resource's virtual environments are built with


def env_key(kind: str, items: Sequence[str], interpreter: str) -> str:
    """The same set (order and repeats aside) for the same interpreter: the same environment."""
    key = json.dumps([kind, interpreter, sorted(set(items))])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def conda_name(specs: Sequence[str]) -> str:
    return f"conda-{env_key('conda', specs, '')}"


def pip_name(requirements: Sequence[str], conda: Sequence[str] = ()) -> str:
    """On a resource: built with `python3` from PATH, or the conda environment's."""
    interpreter = f"{conda_name(conda)}/{PYTHON}" if conda else PYTHON
    return f"pip-{env_key('pip', requirements, interpreter)}"


def conda_create(tool: str, prefix: str, specs: Sequence[str]) -> list[str]:
    """The command that builds a conda environment at `prefix`. Specs were checked at submit
    (domain/spec.py: package specs, never options), so none can pass for a flag."""
    channels = CONDA_CHANNELS.get(posixpath.basename(tool), ())
    return [tool, "create", "-y", "-p", prefix, *channels, *specs]


def describe(kind: str, items: Sequence[str]) -> str:
    """How messages name an environment: `pip environment [six==1.16.0, tqdm]`."""
    return f"{kind} environment [{', '.join(items)}]"


def resource_cache(experiment_root: str) -> str:
    """The environment cache of the resource whose experiment directory is `experiment_root`."""
    return posixpath.join(posixpath.dirname(experiment_root.rstrip("/")), RESOURCE_CACHE)


def _shell_channels() -> str:
    """envs.sh's case items: each tool's channel flags."""
    return "\n    ".join(f"{tool}) extra=({shlex.join(flags)}) ;;"
                         for tool, flags in CONDA_CHANNELS.items())


# Its constants are filled in from the ones above, so both sides follow one rule.
ENVS_SH = ((Path(__file__).parent / "envs.sh").read_text()
           .replace("@CONDA_TOOLS@", " ".join(CONDA_TOOLS))
           .replace("# @CONDA_CHANNELS@", _shell_channels())
           .replace("@NO_CONDA_TOOL@", NO_CONDA_TOOL)
           .replace("@TIMEOUT@", str(BUILD_TIMEOUT_SECONDS))
           .replace("@COMPLETE@", COMPLETE)
           .replace("@PYTHON@", PYTHON))


__all__ = ["BUILD_TIMEOUT_SECONDS", "COMPLETE", "CONDA_CHANNELS", "CONDA_TOOLS", "ENVS_SH",
           "NO_CONDA_TOOL", "PYTHON", "RESOURCE_CACHE", "conda_create", "conda_name",
           "describe", "env_key", "pip_name", "resource_cache"]
