"""Opening the resource a bundle runs on, with the bundle's short-lived secrets: by a `slurm`
or `baremetal` worker itself (SSH, sbatch, slurmrestd), or in place where the `execute_bundle`
flow runs (a Kubernetes pod, a process worker: the resource is the machine it runs on).
Shared by instance bundles (execute.py) and agents bundles (agents.py)."""

from __future__ import annotations

import asyncio
import os
import shlex
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from airavata_prefect.adapters.detached import BareMetalLauncher
from airavata_prefect.adapters.hosts import Host, LocalHost, check
from airavata_prefect.adapters.launcher import Session
from airavata_prefect.adapters.openbao import SecretRef
from airavata_prefect.adapters.store import Store
from airavata_prefect.blocks import ComputeBlock, StorageBlock
from airavata_prefect.domain.dag import TaskGraph
from airavata_prefect.domain.records import Bundle, Experiment
from airavata_prefect.usecases.bundles.secrets import BundleSecrets
from airavata_prefect.usecases.catalog import load_compute, load_storage
from airavata_prefect.usecases.settings import Settings

TOKEN_MARGIN_SECONDS = 3600  # a bundle's queue wait is unknown: its token outlives the walltime


class Opener(Protocol):
    """How the resource a bundle runs on is opened."""

    compute_secret: bool  # whether opening it needs the resource's credential
    enforce_walltime: bool  # run_one.sh stops instances at their walltime (no scheduler does)

    def open(self, block: ComputeBlock, secret: dict[str, str] | None, home: TaskGraph,
             step: str) -> Session: ...


@dataclass
class ThroughWorker:
    """A resource the worker reaches itself: its kind opens the session (SSH, sbatch, REST)."""

    configuration: Any  # the pool's job configuration for this flow run
    enforce_walltime: bool = False
    compute_secret: bool = True

    def open(self, block: ComputeBlock, secret: dict[str, str] | None, home: TaskGraph,
             step: str) -> Session:
        return block.open_session(self.configuration, secret)


@dataclass
class InPlace:
    """This machine is the resource (a pod, a process worker): the experiment's directory is
    here at the same path (a shared volume), instances run as many at once as cores allow."""

    enforce_walltime: bool = True
    compute_secret: bool = False

    def open(self, block: ComputeBlock, secret: dict[str, str] | None, home: TaskGraph,
             step: str) -> Session:
        host = LocalHost()
        if step not in home.by_name:  # an agents bundle: its agents run at once
            return Session(host, BareMetalLauncher(host, block.nodes), str(Path(home.root).parent))
        compute = home.by_name[step].resources.compute
        parallel = max(1, (os.cpu_count() or 1) // (compute.cpu if compute else 1))
        return Session(host, BareMetalLauncher(host, parallel), str(Path(home.root).parent))


@dataclass
class BundleResult:
    counts: dict[str, int]
    message: str
    canceled: bool = False


def resolve_directory(host: Host, directory: str) -> str:
    """An absolute path on the host (`~` expanded there), created if needed."""
    if directory == "~" or directory.startswith("~/"):
        target = '"$HOME"' + shlex.quote(directory[1:]) if directory != "~" else '"$HOME"'
    else:
        target = shlex.quote(directory)
    out = check(host, f"mkdir -p {target} && cd {target} && pwd -P", what="mkdir").text
    return out.strip().splitlines()[-1]


async def open_resource(stack: ExitStack, store: Store, settings: Settings, bundle: Bundle,
                        exp: Experiment, home: TaskGraph, opener: Opener, *,
                        walltime: int | None, mounts: list[str]
                        ) -> tuple[Session, dict[str, StorageBlock], dict[str, Any]]:
    """The resource opened with the bundle's short-lived secrets (closed by `stack`), and the
    storage blocks and secret values its mounts need."""
    secrets = BundleSecrets(store, settings)
    stack.callback(secrets.close)
    block = await load_compute(bundle.resource)
    storage = {name: await load_storage(name) for name in mounts}
    refs: dict[str, SecretRef] = {}
    if opener.compute_secret and block.credential is not None:
        refs[f"compute:{bundle.resource}"] = block.credential.secret_ref()
    refs |= {f"storage:{n}": b.credential_ref.secret_ref() for n, b in storage.items()
             if b.credential_ref is not None}
    values = await asyncio.to_thread(
        secrets.open, exp.owner or "", refs,
        walltime_seconds=(walltime or 0) + TOKEN_MARGIN_SECONDS,
        task=f"bundle {bundle.id} of experiment {exp.id}")
    session = await asyncio.to_thread(opener.open, block,
                                      values.get(f"compute:{bundle.resource}"), home,
                                      bundle.step)
    stack.callback(session.host.close)
    return session, storage, values


__all__ = ["TOKEN_MARGIN_SECONDS", "BundleResult", "InPlace", "Opener", "ThroughWorker",
           "open_resource", "resolve_directory"]
