"""Data staging for a bundle: what must be on the resource before its instances run.

- Inputs from elsewhere: an instance whose upstream ran on another resource (or locally) gets
  that upstream's declared outputs from the experiment's home copy, at the same relative path,
  so `${t.OUT}` resolves on this resource too.
- Storage mounts (`"storage:/remote/path:./local/path"`): fetched once per bundle from the
  storage resource (S3, SFTP or a local path) and linked into each instance's working
  directory. Mounts are read-only inputs; results come home as declared outputs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from airavata_prefect.adapters.storage import StorageError, StorageReader
from airavata_prefect.adapters.store import Store
from airavata_prefect.domain.bundle_layout import Link, Member
from airavata_prefect.domain.dag import TaskGraph
from airavata_prefect.domain.spec import parse_mount
from airavata_prefect.usecases.bundles.runner import Staged


def dependency_inputs(store: Store, experiment_id: str, resource: str, members: Sequence[Member],
                      remote: TaskGraph, home: TaskGraph) -> dict[str, Path]:
    """Outputs of upstream instances that ran on another resource, by path under the
    experiment's directory on this one."""
    deps = {d for m in members for d in m.instance.depends_on if not d.endswith("[*]")}
    if not deps:
        return {}
    placed = store.tasks.resources_of(experiment_id, deps)
    files: dict[str, Path] = {}
    for dep, where in placed.items():
        if where == resource:
            continue  # already there
        step, _, rest = dep.partition("[")
        index = int(rest.rstrip("]"))
        for out in remote.by_name[step].outputs:
            local = Path(home.output_path(step, index, out))
            there = remote.output_path(step, index, out)
            if local.exists() and there.startswith(remote.root + "/"):
                files[there.removeprefix(remote.root + "/")] = local
    return files


def mount_names(graph: TaskGraph, step: str) -> list[str]:
    """The storage resources a step's mounts read from."""
    return sorted({parse_mount(m).storage for m in graph.by_name[step].resources.storage})


def fetch_mounts(graph: TaskGraph, step: str, reader_for: Callable[[str], StorageReader],
                 scratch: Path, skip: frozenset[str] = frozenset()
                 ) -> list[tuple[str, Path, str | None]]:
    """Fetch each mount of the step once, into `scratch/mount<n>`: (where it is linked in
    each instance's directory, its copy, the single file's name when it mounts one file).
    Mounts of the storage resources in `skip` are left out."""
    out: list[tuple[str, Path, str | None]] = []
    for n, text in enumerate(graph.by_name[step].resources.storage):
        mount = parse_mount(text)
        if mount.storage in skip:
            continue
        reader = reader_for(mount.storage)
        dest = scratch / f"mount{n}"
        try:
            reader.fetch(mount.remote, dest)
        except StorageError:
            raise
        except Exception as exc:  # a library's own error: say which mount
            raise StorageError(f"staging {text!r}: {type(exc).__name__}: {exc}") from None
        # A single file mounts as that file, a prefix or directory as a directory.
        name = mount.remote.rstrip("/").rsplit("/", 1)[-1]
        entries = list(dest.iterdir())
        single = len(entries) == 1 and entries[0].is_file() and entries[0].name == name \
            and not mount.remote.endswith("/")
        out.append((mount.local, dest, name if single else None))
    return out


def stage_mounts(graph: TaskGraph, step: str, bundle_prefix: str,
                 reader_for: Callable[[str], StorageReader], scratch: Path) -> Staged:
    """Fetch each mount of the step once; instances link to the bundle's copy."""
    staged = Staged()
    for n, (local, dest, single) in enumerate(fetch_mounts(graph, step, reader_for, scratch)):
        staged.files[f"{bundle_prefix}/mounts/{n}"] = dest
        staged.links.append(Link(f"mounts/{n}/{single}" if single else f"mounts/{n}", local))
    return staged


def scratch_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="airavata-staging-")


__all__ = ["dependency_inputs", "fetch_mounts", "mount_names", "scratch_dir", "stage_mounts"]
