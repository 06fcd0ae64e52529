"""An experiment's declared outputs, as found in its directory on this machine
(`<workdir>/<step>/<index>/<path>`): listed with sizes and checksums, streamed as a tar.gz, or
copied elsewhere. Each read is checked for the acting user (scheduler.queue.read).

A task writes its own directory, so any output there may be a symlink (or a FIFO, a device)
planted to make us read something else. Every output is therefore resolved and must lie inside
the experiment's directory, and is then opened by walking the resolved path one component at a
time without following links: a link swapped in after the check is refused, never followed.
Only regular files are read; anything else is reported as missing, with why."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from airavata_prefect.domain.errors import NotFound
from airavata_prefect.domain.lineage import output_id, output_path
from airavata_prefect.domain.records import Experiment, Task, load_graph
from airavata_prefect.usecases import queries
from airavata_prefect.usecases.archives import chunks, tar_gz, write_inside
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.errors import BadInput

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: should a FIFO be swapped in after the check, opening it must not hang the reader.
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
# A step (spec.STEP_NAME) or one instance of it; checked before the store sees it.
_TASK = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)(?:\[(\d{1,18})\])?")


@dataclass(frozen=True, slots=True)
class OutputFile:
    """One declared output of one instance."""

    experiment_id: str
    instance_id: str
    step: str
    index: int
    name: str  # the output's name in the spec (task_outputs: {NAME: path})
    path: str  # `<step>/<index>/<declared path>` (normalised), in the experiment's directory
    output_id: str  # its id for `airavata data lineage` (recorded once its instance completes)
    state: str  # the instance's state, which explains most missing outputs
    exists: bool  # a regular file inside the experiment's directory, read
    size: int | None  # bytes; None when it does not exist
    sha256: str | None  # hex; None when it does not exist
    note: str | None  # why it does not exist (missing, a link leading outside, not a file)


@dataclass(frozen=True, slots=True)
class _Declared:
    task: Task
    name: str
    path: str  # as OutputFile.path


def _declared(ctx: Context, ref: str, task: str | None) -> tuple[Experiment, list[_Declared]]:
    """The experiment (read permission checked) and its declared outputs, by step (in the
    graph's order) and index; `task` narrows them to a step (`sweep`) or one instance
    (`sweep[3]`)."""
    exp = queries.experiment(ctx, ref)
    steps = load_graph(exp).by_name
    if task is None:  # step by step, in the graph's order
        rows = [t for s in steps for t in ctx.store.tasks.list(exp.id, step=s, limit=None)]
    elif not (m := _TASK.fullmatch(task)) or m[1] not in steps:
        raise BadInput(f"experiment {exp.short_id} has no step or instance {task!r} (its "
                       f"steps: {', '.join(steps)}; an instance is STEP[INDEX])")
    elif m[2] is None:
        rows = ctx.store.tasks.list(exp.id, step=task, limit=None)
    else:
        try:
            rows = [ctx.store.tasks.get(exp.id, task)]
        except NotFound:
            raise BadInput(f"experiment {exp.short_id} has no instance {task!r} (step {m[1]} "
                           f"has {steps[m[1]].count})") from None
    return exp, [_Declared(t, name, output_path(t.step, t.idx, rel))
                 for t in rows if t.step in steps
                 for name, rel in steps[t.step].outputs.items()]


def _root(exp: Experiment) -> str:
    return os.path.realpath(exp.workdir)


def _open_inside(root: str, rel: str) -> tuple[int | None, str | None]:
    """(a read-only fd of the regular file `root/rel`, None), or (None, why not)."""
    real = os.path.realpath(os.path.join(root, rel))
    if os.path.commonpath([root, real]) != root:
        return None, "a link leading outside the experiment's directory: not read"
    if real == root:
        return None, "not a regular file"
    parts = Path(real).relative_to(root).parts
    try:
        fd = os.open(root, _DIR)
    except FileNotFoundError:
        return None, "missing"
    try:
        for part in parts[:-1]:
            nxt = os.open(part, _DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
        # A FIFO or a device is never even opened (opening one can have effects of its own).
        if not stat.S_ISREG(os.stat(parts[-1], dir_fd=fd, follow_symlinks=False).st_mode):
            return None, "not a regular file"
        leaf = os.open(parts[-1], _FILE, dir_fd=fd)
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:  # ELOOP/ENOTDIR: a link or a file put where the check saw none
        return None, f"not read: {exc.strerror}"
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(leaf).st_mode):
        os.close(leaf)
        return None, "not a regular file"
    return leaf, None


def _digest(fd: int) -> tuple[int, str]:
    """(size, sha256) of the open file: its first `size` bytes, should it grow meanwhile."""
    size = os.fstat(fd).st_size
    h = hashlib.sha256()
    for data in chunks(fd, size):
        h.update(data)
    return size, h.hexdigest()


def digest_inside(root: str, rel: str) -> tuple[int, str] | None:
    """(size, sha256) of `root/rel` (`root` resolved) when it is a regular file inside `root`,
    read as outputs are (no link leading out is followed); None otherwise."""
    fd, _ = _open_inside(root, rel)
    if fd is None:
        return None
    try:
        return _digest(fd)
    finally:
        os.close(fd)


def _describe(exp: Experiment, root: str, d: _Declared) -> OutputFile:
    fd, note = _open_inside(root, d.path)
    size = digest = None
    if fd is not None:
        try:
            size, digest = _digest(fd)
        finally:
            os.close(fd)
    return OutputFile(exp.id, d.task.instance_id, d.task.step, d.task.idx, d.name, d.path,
                      output_id(exp.id, d.path), str(d.task.state),
                      fd is not None, size, digest, note)


def outputs(ctx: Context, ref: str, *, task: str | None = None) -> list[OutputFile]:
    """Every declared output of the experiment's instances (or of `task`'s), with its size and
    sha256 when it exists as a regular file inside the experiment's directory."""
    exp, declared = _declared(ctx, ref, task)
    root = _root(exp)
    return [_describe(exp, root, d) for d in declared]


def archive(ctx: Context, ref: str, *, task: str | None = None) -> Iterator[bytes]:
    """A tar.gz of the existing outputs (members `<step>/<index>/<path>`), as a stream of
    chunks. Permission and `task` are checked now, before the first chunk is asked for, so a
    refusal is an error and never a broken stream."""
    exp, declared = _declared(ctx, ref, task)
    root = _root(exp)
    return tar_gz((d.path, fd) for d in declared
                  if (fd := _open_inside(root, d.path)[0]) is not None)


def copy_to(ctx: Context, ref: str, dest: Path, *, task: str | None = None) -> list[Path]:
    """Copy the existing outputs into `dest/<step>/<index>/<path>`; returns what was written."""
    exp, declared = _declared(ctx, ref, task)
    root = _root(exp)
    written = []
    for d in declared:
        fd, _ = _open_inside(root, d.path)
        if fd is None:
            continue
        try:
            written.append(write_inside(dest, d.path, chunks(fd, os.fstat(fd).st_size)))
        finally:
            os.close(fd)
    return written


__all__ = ["OutputFile", "archive", "copy_to", "digest_inside", "outputs"]
