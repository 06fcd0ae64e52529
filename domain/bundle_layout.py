"""What a bundle puts on a resource, and how its progress reads back.

Layout under the experiment's directory on the resource (`<working_directory>/<experiment>`):

    <step>/<index>/                  each instance's working directory (stdout.log, outputs)
    .bundles/<bundle>/run_one.sh     runs one instance (bash, coreutils, util-linux only)
    .bundles/<bundle>/envs.sh        builds its conda / pip environments (sourced by run_one.sh)
    .bundles/<bundle>/measure.py     measures an instance where the host has a python3
    .bundles/<bundle>/run_all.sh     runs them all, P at a time (bare metal)
    .bundles/<bundle>/steps/<step>.sh   the step's script, its `environment` exported
    .bundles/<bundle>/tasks/<k>.sh   instance k: its variables (exported) and a few AV_ settings
    .bundles/<bundle>/results/       k.start / k.usage / k.exit markers, written by run_one.sh

and beside the experiments, `<working_directory>/.airavata-envs/` caches the environments
instances ask for (domain/environments.py), shared by every bundle and experiment there.

Nothing secret is in any of these: instance variables come from the experiment YAML, and the
scripts' environment is rebuilt from scratch (`env -i`) so nothing of the host's leaks in.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from airavata_prefect.domain.dag import TaskGraph, TaskInstance
from airavata_prefect.domain.endings import Exit
from airavata_prefect.domain.environments import ENVS_SH, conda_name, pip_name, resource_cache
from airavata_prefect.domain.instance import (
    PASSTHROUGH,
    PASSTHROUGH_PREFIXES,
    earlier_logs,
    instance_environment,
    render_script,
)
from airavata_prefect.domain.usage import Usage, limit_kib

_HERE = Path(__file__).parent
RUN_ONE = (_HERE / "run_one.sh").read_text().replace(
    "@PASSTHROUGH@", "|".join((*PASSTHROUGH, *(f"{p}*" for p in PASSTHROUGH_PREFIXES))))
RUN_ALL = (_HERE / "run_all.sh").read_text()
MEASURE = (_HERE / "measure.py").read_text()  # run by run_one.sh, never imported here
EXECUTABLE = frozenset({"run_one.sh", "run_all.sh"})


@dataclass(frozen=True)
class Link:
    """A staged storage mount: `src` under the bundle directory, linked at `dst` (relative to
    each instance's working directory)."""

    src: str
    dst: str


@dataclass(frozen=True)
class Member:
    """One instance in a bundle, at position `k`."""

    instance: TaskInstance
    attempt: int


def bundle_dir(experiment_root: str, bundle_id: str) -> str:
    return f"{experiment_root}/.bundles/{bundle_id}"


def _q(value: str) -> str:
    return shlex.quote(value)


def _array(items: Sequence[str]) -> str:
    return "(" + " ".join(_q(i) for i in items) + ")"


def frame_files() -> dict[str, str]:
    """What every bundle holds besides its steps and tasks."""
    return {"run_one.sh": RUN_ONE, "run_all.sh": RUN_ALL, "envs.sh": ENVS_SH,
            "measure.py": MEASURE, "results/.keep": ""}


@dataclass(frozen=True)
class Environments:
    """The conda specs and pip requirements a step runs with, and the resource's cache."""

    cache: str
    conda: Sequence[str] = ()
    pip: Sequence[str] = ()

    def lines(self) -> list[str]:
        """Their settings for run_one.sh (envs.sh); none when the step asks for neither."""
        if not (self.conda or self.pip):
            return []
        lines = [f"AV_ENVS={_q(self.cache)}"]
        if self.conda:
            lines += [f"AV_CONDA_ENV={conda_name(self.conda)}", f"AV_CONDA={_array(self.conda)}"]
        if self.pip:
            lines += [f"AV_PIP_ENV={pip_name(self.pip, self.conda)}",
                      f"AV_PIP={_array(self.pip)}"]
        return lines


def environment_prelude(envs: Environments) -> str:
    """What a step's script runs first where it runs on its own (a pilot agent runs it with
    bash, no run_one.sh around it): envs.sh builds or finds its environments and they are
    made active; a failure ends the script with envs.sh's message on stderr and its code."""
    if not (envs.conda or envs.pip):
        return ""
    return "\n".join([
        "#!/bin/bash",
        "# Its conda / pip environments, built once on this resource (domain/envs.sh).",
        *envs.lines(),
        'finish() { printf \'%s\\n\' "${1#error * }" >&2; exit "$2"; }',
        ENVS_SH,
        "env_prepare",
        'export PATH="$env_path$PATH"',
        'for kv in "${env_active[@]}"; do export "${kv?}"; done',
        "unset -f finish; unset AV_ENVS AV_CONDA_ENV AV_CONDA AV_PIP_ENV AV_PIP env_path "
        "env_active env_tool env_tools kv",
        ""])


def position_file(step: str, workdir: str, *, walltime: int | None = None,
                  keep_logs: Sequence[tuple[str, str]] = (), links: Sequence[Link] = (),
                  env: dict[str, str] | None = None, envs: Environments | None = None,
                  ram_gb: float | None = None) -> str:
    """`tasks/<k>.sh`: how run_one.sh runs position k (`steps/<step>.sh` in `workdir`), under
    the address-space limit of `ram_gb` (domain/usage.py) when the step asks for memory."""
    lines = [f"AV_STEP={_q(step)}", f"AV_WORKDIR={_q(workdir)}",
             f"AV_WALLTIME={walltime or ''}", f"AV_MEMORY_KIB={limit_kib(ram_gb) or ''}",
             f"AV_KEEP_LOGS={_array([f'{a}|{b}' for a, b in keep_logs])}",
             f"AV_LINKS={_array([f'{link.src}|{link.dst}' for link in links])}",
             *(envs.lines() if envs else []),
             *(f"export {k}={_q(v)}" for k, v in (env or {}).items())]
    return "\n".join(lines) + "\n"


def task_file(member: Member, *, experiment_id: str, workdir: str,
              walltime: int | None = None, links: Sequence[Link] = (),
              envs: Environments | None = None, ram_gb: float | None = None) -> str:
    inst = member.instance
    env = instance_environment(inst, experiment_id=experiment_id, attempt=member.attempt,
                               workdir=workdir)
    return position_file(inst.step, workdir, walltime=walltime,
                         keep_logs=earlier_logs(member.attempt), links=links, env=env,
                         envs=envs, ram_gb=ram_gb)


def bundle_files(graph: TaskGraph, step: str, members: Sequence[Member], *, experiment_id: str,
                 walltime: int | None = None, links: Sequence[Link] = ()) -> dict[str, str]:
    """Every file of a bundle, by path relative to its directory. `graph` is rooted at the
    experiment's directory on the resource, so paths resolve there."""
    plan = graph.by_name[step]
    files = {**frame_files(),
             f"steps/{step}.sh": render_script(plan.script, plan.resources.environment)}
    envs = Environments(resource_cache(graph.root), plan.resources.conda, plan.resources.pip)
    ram_gb = plan.resources.compute.ram_gb if plan.resources.compute else None
    for k, m in enumerate(members):
        files[f"tasks/{k}.sh"] = task_file(
            m, experiment_id=experiment_id, walltime=walltime, links=links, envs=envs,
            workdir=graph.workdir(m.instance.step, m.instance.index), ram_gb=ram_gb)
    return files


@dataclass(frozen=True)
class Marker:
    """What run_one.sh left for one instance."""

    started: bool = False
    end: Exit | None = None  # set once the instance ended on its own
    usage: Usage | None = None  # what it used, written just before its end

    @property
    def ended(self) -> bool:
        return self.end is not None


def parse_end(line: str) -> Exit | None:
    """An `.exit` line: "exit N", "signal S", "timeout" or "error N WHY"; None if torn."""
    kind, _, rest = line.strip().partition(" ")
    try:
        if kind == "exit":
            return Exit(code=int(rest))
        if kind == "signal":
            return Exit(signal=int(rest))
        if kind == "timeout":
            return Exit(timed_out=True)
        if kind == "error":
            code, _, why = rest.partition(" ")
            return Exit(code=int(code), failure=f"could not start: {why or 'unknown'}")
    except ValueError:
        return None
    return None


def parse_markers(text: str) -> dict[int, Marker]:
    """`grep -r ''` over results/: lines like `./12.start:1700000000`, `./12.exit:exit 3` or
    `./12.usage:wall=1.5 cpu=1.2 maxrss=2048 queue=0`."""
    out: dict[int, Marker] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        base = name.rsplit("/", 1)[-1]
        stem, _, kind = base.partition(".")
        if not stem.isdigit() or kind not in ("start", "exit", "usage"):
            continue
        k = int(stem)
        current = out.get(k, Marker())
        if kind == "start":
            out[k] = replace(current, started=True)
        elif kind == "usage":
            out[k] = replace(current, usage=Usage.parse(value))
        elif (end := parse_end(value)) is not None:  # else half-written: read it next time
            out[k] = replace(current, started=True, end=end)
    return out


__all__ = ["EXECUTABLE", "Environments", "Link", "Marker", "Member", "bundle_dir",
           "bundle_files", "environment_prelude", "frame_files", "parse_end", "parse_markers",
           "position_file", "task_file"]
