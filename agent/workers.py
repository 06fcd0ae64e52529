"""Our Prefect worker types, loaded through the `prefect.collections` entry point so that
`prefect work-pool create NAME --type slurm|baremetal|airavata-kubernetes` and
`prefect worker start` know them."""

from airavata_prefect.agent.baremetal import BareMetalWorker
from airavata_prefect.agent.kubernetes import AiravataKubernetesWorker
from airavata_prefect.agent.slurm import SlurmWorker

WORKERS = {"slurm": SlurmWorker, "baremetal": BareMetalWorker,
           "kubernetes": AiravataKubernetesWorker}  # by resource type

__all__ = ["WORKERS", "AiravataKubernetesWorker", "BareMetalWorker", "SlurmWorker"]
