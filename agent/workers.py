"""Our Prefect worker types, one per compute kind, loaded through the `prefect.collections`
entry point so that `prefect work-pool create NAME --type slurm|baremetal|airavata-kubernetes`
and `prefect worker start` know them. Each is made from its kind (a block class): adding a kind
adds its worker here without touching this module."""

from __future__ import annotations

from typing import Any

from prefect.workers.base import BaseWorker

from airavata_prefect.agent.bundle_worker import BundleWorker
from airavata_prefect.usecases.kinds import ComputeBlock, compute_kinds

DOCUMENTATION = "https://github.com/apache/airavata"


def worker_type(kind: type[ComputeBlock]) -> type[BaseWorker]:
    """The Prefect worker type of a compute kind: ours, which runs bundles from its own
    process, or the kind's own base (prefect-kubernetes) whose Job runs the bundle flow."""
    base: type[Any] = kind.worker_base or BundleWorker
    attrs: dict[str, Any] = {
        "type": kind.worker_type, "kind": kind, "__module__": __name__,
        "job_configuration": kind.job_configuration,
        "job_configuration_variables": kind.job_variables_schema,
        "_description": f"Runs Airavata bundles on {kind._block_type_name} resources.",
        "_documentation_url": DOCUMENTATION,
        "get_default_base_job_template": classmethod(lambda cls: kind.base_job_template()),
    }
    name = f"{kind.__name__}Worker"  # SlurmClusterWorker, ...
    return type(name, (base,), attrs)


WORKERS = {name: worker_type(kind) for name, kind in compute_kinds().items()}  # by kind
globals().update({w.__name__: w for w in WORKERS.values()})  # importable by name

__all__ = ["WORKERS", "worker_type"]
