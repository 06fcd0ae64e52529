"""Storage mounts for instances on the `local` resource, as bundles have them elsewhere: each
mount of a step is fetched once per experiment run (`<experiment>/.mounts/<step>/mount<n>`)
and linked into every instance's working directory at its target. The storage credentials are
read with a child OpenBao token scoped to exactly them (as a bundle's are) and revoked when the
run ends; nothing of them is written anywhere.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from airavata_prefect.adapters.openbao import SecretRef
from airavata_prefect.adapters.prefect_api import PrefectUnavailable
from airavata_prefect.adapters.storage import StorageReader
from airavata_prefect.adapters.store import Store
from airavata_prefect.blocks import StorageBlock
from airavata_prefect.domain.dag import TaskGraph
from airavata_prefect.domain.records import Experiment
from airavata_prefect.usecases.bundles.secrets import BundleSecrets
from airavata_prefect.usecases.bundles.staging import fetch_and_hash, mount_names
from airavata_prefect.usecases.catalog import load_storage
from airavata_prefect.usecases.errors import BadInput
from airavata_prefect.usecases.settings import Settings

MOUNTS_DIR = ".mounts"
SECRET_SECONDS = 24 * 3600  # a local run has no walltime: its child token lives this long


class MountError(Exception):
    """A mount could not be staged: the message says which and why."""


class LocalMounts:
    def __init__(self, store: Store, settings: Settings, exp: Experiment,
                 graph: TaskGraph) -> None:
        self.store, self.settings, self.exp, self.graph = store, settings, exp, graph
        self._staged: dict[str, list[tuple[str, Path]]] = {}  # step -> (target, copy)
        self._skipped: dict[str, list[str]] = {}  # step -> storage resources not registered
        self._locks: dict[str, asyncio.Lock] = {}
        self._secrets = BundleSecrets(store, settings)

    async def link(self, step: str, workdir: Path) -> str | None:
        """Link the step's mounts into `workdir`, fetching them first if this run has not.
        Returns a note when some were left out."""
        lock = self._locks.setdefault(step, asyncio.Lock())
        async with lock:
            if step not in self._staged:
                self._staged[step] = await self._fetch(step)
        await asyncio.to_thread(_link_all, self._staged[step], workdir)
        skipped = self._skipped.get(step)
        return (f"not mounted: no storage resource {', '.join(skipped)} is registered "
                "(airavata resource storage create)") if skipped else None

    async def _fetch(self, step: str) -> list[tuple[str, Path]]:
        blocks: dict[str, StorageBlock] = {}
        skipped: list[str] = []
        for name in mount_names(self.graph, step):
            try:
                blocks[name] = await load_storage(name)
            except (BadInput, PrefectUnavailable):
                # Not registered (or no registry at all): a run on this machine goes on
                # without it, saying so, as an example written for another site does.
                skipped.append(name)
            except Exception as exc:
                raise MountError(f"storage resource {name!r}: {exc}") from None
        self._skipped[step] = skipped
        refs: dict[str, SecretRef] = {f"storage:{n}": b.credential_ref.secret_ref()
                                      for n, b in blocks.items() if b.credential_ref is not None}
        try:
            values = await asyncio.to_thread(
                self._secrets.open, self.exp.owner or "", refs,
                walltime_seconds=SECRET_SECONDS,
                task=f"mounts of {step} in experiment {self.exp.id}")
        except Exception as exc:  # unshared since submit, no OpenBao token, OpenBao down
            raise MountError(str(exc)) from None

        def reader(name: str) -> StorageReader:
            return blocks[name].reader(name, values.get(f"storage:{name}"))

        scratch = Path(self.graph.root) / MOUNTS_DIR / step
        await asyncio.to_thread(shutil.rmtree, scratch, True)  # an earlier run's copy
        scratch.mkdir(parents=True)
        try:
            hashed = await asyncio.to_thread(fetch_and_hash, self.graph, step, reader, scratch,
                                             frozenset(skipped))
        except Exception as exc:
            raise MountError(str(exc)) from None
        # What each mount held, for lineage (no cache here: the copies are on this machine).
        await asyncio.to_thread(self.store.staging.record_inputs, self.exp.id, step,
                                hashed.inputs())
        return [(m.target, m.copy / m.single if m.single else m.copy) for m in hashed.mounts]

    def close(self) -> None:
        """Revoke the run's child token (the copies stay: later steps may read them)."""
        self._secrets.close()


def _link_all(staged: list[tuple[str, Path]], workdir: Path) -> None:
    root = workdir.resolve()
    for target, source in staged:
        link = workdir / target
        link.parent.mkdir(parents=True, exist_ok=True)
        # The spec keeps targets inside; an earlier attempt's symlinked folder must not
        # carry this one outside.
        if not link.parent.resolve().is_relative_to(root):
            raise MountError(f"mount target {target!r} leads outside {workdir}")
        if link.is_symlink() or link.is_file():
            link.unlink()  # a retry's earlier link
        elif link.exists():
            raise MountError(f"mount target {target!r} exists in {workdir} and is a directory")
        os.symlink(source, link)


__all__ = ["LocalMounts", "MountError"]
