"""Our Prefect worker types, loaded through the `prefect.collections` entry point so that
`prefect work-pool create NAME --type slurm|baremetal` and `prefect worker start` know them."""

from agent.baremetal import BareMetalWorker
from agent.slurm import SlurmWorker

__all__ = ["BareMetalWorker", "SlurmWorker"]
