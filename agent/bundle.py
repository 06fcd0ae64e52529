"""What a bundle puts on a resource, and how its progress is read back.

Layout under the experiment's directory on the resource (`<working_directory>/<experiment>`):

    <step>/<index>/                  each instance's working directory (stdout.log, outputs)
    .bundles/<bundle>/run_one.sh     runs one instance (bash + coreutils only)
    .bundles/<bundle>/run_all.sh     runs them all, P at a time (bare metal)
    .bundles/<bundle>/steps/<step>.sh   the step's script, its `environment` exported
    .bundles/<bundle>/tasks/<k>.sh   instance k: its variables (exported) and a few AV_ settings
    .bundles/<bundle>/results/       k.start / k.exit markers, written by run_one.sh

Nothing secret is in any of these: instance variables come from the experiment YAML, and the
scripts' environment is rebuilt from scratch (`env -i`) so nothing of the host's leaks in.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from airavata_prefect.adapters.hosts import Host, HostError
from airavata_prefect.agent.local import render_script
from airavata_prefect.flows.dag import TaskGraph, TaskInstance

_HERE = Path(__file__).parent
RUN_ONE = (_HERE / "run_one.sh").read_text()
RUN_ALL = (_HERE / "run_all.sh").read_text()
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


def task_file(member: Member, *, experiment_id: str, workdir: str,
              walltime: int | None = None, links: Sequence[Link] = ()) -> str:
    inst = member.instance
    env = {**inst.env, "AIRAVATA_EXPERIMENT_ID": experiment_id, "AIRAVATA_TASK_ID": inst.id,
           "AIRAVATA_ATTEMPT": str(member.attempt), "AIRAVATA_WORKDIR": workdir}
    link_items = " ".join(_q(f"{link.src}|{link.dst}") for link in links)
    lines = [f"AV_STEP={_q(inst.step)}", f"AV_WORKDIR={_q(workdir)}",
             f"AV_ATTEMPT={member.attempt}", f"AV_WALLTIME={walltime or ''}",
             f"AV_LINKS=({link_items})",
             *(f"export {k}={_q(v)}" for k, v in env.items())]
    return "\n".join(lines) + "\n"


def bundle_files(graph: TaskGraph, step: str, members: Sequence[Member], *, experiment_id: str,
                 walltime: int | None = None, links: Sequence[Link] = ()) -> dict[str, str]:
    """Every file of a bundle, by path relative to its directory. `graph` is compiled with the
    experiment's directory on the resource as its root, so paths resolve there."""
    plan = graph.by_name[step]
    files = {"run_one.sh": RUN_ONE, "run_all.sh": RUN_ALL, "results/.keep": "",
             f"steps/{step}.sh": render_script(plan.script, plan.resources.environment)}
    for k, m in enumerate(members):
        files[f"tasks/{k}.sh"] = task_file(
            m, experiment_id=experiment_id, walltime=walltime, links=links,
            workdir=graph.workdir(m.instance.step, m.instance.index))
    return files


@dataclass(frozen=True)
class Marker:
    started: bool = False
    exit_code: int | None = None  # set once the instance ended on its own
    note: str | None = None  # "timeout", or why run_one.sh could not start the script

    @property
    def ended(self) -> bool:
        return self.exit_code is not None


def parse_markers(text: str) -> dict[int, Marker]:
    """`grep -r ''` over results/: lines like `./12.start:1700000000` or `./12.exit:124 timeout`."""
    out: dict[int, Marker] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        base = name.rsplit("/", 1)[-1]
        stem, _, kind = base.partition(".")
        if not stem.isdigit() or kind not in ("start", "exit"):
            continue
        k = int(stem)
        current = out.get(k, Marker())
        if kind == "start":
            out[k] = Marker(True, current.exit_code, current.note)
            continue
        code, _, note = value.strip().partition(" ")
        try:
            out[k] = Marker(True, int(code), note or None)
        except ValueError:
            continue  # a half-written file: read it next time
    return out


def read_markers(host: Host, directory: str) -> dict[int, Marker]:
    result = host.run(f"cd {_q(directory)}/results && grep -r '' . 2>/dev/null; true")
    if result.exit_status != 0:
        raise HostError(f"cannot read the results of {directory} on {host.name}: "
                        f"{result.error_text()[-300:]}")
    return parse_markers(result.text)


__all__ = ["EXECUTABLE", "Link", "Marker", "Member", "bundle_dir", "bundle_files",
           "parse_markers", "read_markers", "task_file"]
