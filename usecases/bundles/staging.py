"""Data staging for a bundle: what must be on the resource before its instances run.

- Inputs from elsewhere: an instance whose upstream ran on another resource (or locally) gets
  that upstream's declared outputs from the experiment's home copy, at the same relative path,
  so `${t.OUT}` resolves on this resource too.
- Storage mounts (`"storage:/remote/path:./local/path"`): fetched from the storage resource
  (S3, SFTP or a local path), hashed, sent to the resource's content-addressed cache only when
  it lacks them (verified there on arrival: usecases/bundles/resource_cache.py) and linked into
  each instance's working directory. Mounts are read-only inputs; results come home as
  declared outputs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from airavata_prefect.adapters.storage import StorageError, StorageReader, sha256_of
from airavata_prefect.adapters.store import Store
from airavata_prefect.adapters.store.staging import CacheTotals, StagedFile
from airavata_prefect.domain.bundle_layout import Link, Member
from airavata_prefect.domain.dag import TaskGraph
from airavata_prefect.domain.spec import parse_mount
from airavata_prefect.usecases.bundles.resource_cache import (
    CachedFile,
    ResourceCache,
    hashed_files,
)
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


def stage_dependencies(files: dict[str, Path], experiment_root: str,
                       cache: ResourceCache) -> CacheTotals:
    """Upstream outputs from elsewhere (`dependency_inputs`) through the resource's cache,
    verified on arrival, linked at their paths under the experiment's directory there."""
    described = [CachedFile(rel, path, sha256_of(path), path.stat().st_size)
                 for rel, path in sorted(files.items())]
    totals = cache.place({f.sha256: f for f in described})
    cache.link(experiment_root, [(f.rel, f.sha256) for f in described])
    return totals


def mount_names(graph: TaskGraph, step: str) -> list[str]:
    """The storage resources a step's mounts read from."""
    return sorted({parse_mount(m).storage for m in graph.by_name[step].resources.storage})


@dataclass(frozen=True)
class Fetched:
    """One mount fetched: its spec text, where it is linked in each instance's directory, its
    copy here, and the single file's name when it mounts one file."""

    spec: str
    target: str
    copy: Path
    single: str | None


def fetch_mounts(graph: TaskGraph, step: str, reader_for: Callable[[str], StorageReader],
                 scratch: Path, skip: frozenset[str] = frozenset()) -> list[Fetched]:
    """Fetch each mount of the step once, into `scratch/mount<n>`. Mounts of the storage
    resources in `skip` are left out."""
    out: list[Fetched] = []
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
        out.append(Fetched(text, mount.local, dest, name if single else None))
    return out


@dataclass(frozen=True)
class HashedMounts:
    """A step's mounts fetched, and every file of each hashed (in the same order)."""

    mounts: list[Fetched]
    files: list[list[CachedFile]]

    def inputs(self) -> list[StagedFile]:
        """Every file staged, with its digest: what lineage records a step read."""
        return [StagedFile(m.spec, f.rel, f.sha256, f.size)
                for m, files in zip(self.mounts, self.files, strict=True) for f in files]


def fetch_and_hash(graph: TaskGraph, step: str, reader_for: Callable[[str], StorageReader],
                   scratch: Path, skip: frozenset[str] = frozenset()) -> HashedMounts:
    """`fetch_mounts`, then each mount's files hashed (bundles and `local` alike)."""
    fetched = fetch_mounts(graph, step, reader_for, scratch, skip)
    return HashedMounts(fetched, [hashed_files(m.copy) for m in fetched])


def stage_mounts(graph: TaskGraph, step: str, bundle_dir: str,
                 reader_for: Callable[[str], StorageReader], scratch: Path,
                 cache: ResourceCache) -> tuple[Staged, CacheTotals, list[StagedFile]]:
    """Fetch each mount of the step once, place its files in the resource's cache and link
    them under `bundle_dir/mounts/<n>`; instances link to that. Returns what to link, what
    the cache saved, and every file staged (its digest, for lineage)."""
    staged = Staged()
    hashed = fetch_and_hash(graph, step, reader_for, scratch)
    unique: dict[str, CachedFile] = {f.sha256: f for files in hashed.files for f in files}
    totals = cache.place(unique)
    for n, (m, files) in enumerate(zip(hashed.mounts, hashed.files, strict=True)):
        cache.link(f"{bundle_dir}/mounts/{n}", [(f.rel, f.sha256) for f in files])
        staged.links.append(Link(f"mounts/{n}/{m.single}" if m.single else f"mounts/{n}",
                                 m.target))
    return staged, totals, hashed.inputs()


def scratch_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="airavata-staging-")


__all__ = ["Fetched", "HashedMounts", "dependency_inputs", "fetch_and_hash", "fetch_mounts",
           "mount_names", "scratch_dir", "stage_dependencies", "stage_mounts"]
