"""Prefect Block types that bind resources. A block stores where a secret lives, never the secret.

Each compute or storage block class is its kind (blocks/compute.py, blocks/storage.py):
importing the kind's module registers it. Register the types with Prefect through the
`prefect.collections` entry point (loaded on start) or `prefect block register -m
airavata_prefect.blocks`.
"""

# The kinds register as they are imported, in the order users see them listed.
from airavata_prefect.blocks.compute import COMPUTE_KINDS, ComputeBlock
from airavata_prefect.blocks.slurm import SlurmCluster

# isort: split
from airavata_prefect.blocks.baremetal import BareMetalHost

# isort: split
from airavata_prefect.blocks.credential import CredentialRef
from airavata_prefect.blocks.kubernetes import KubernetesCluster
from airavata_prefect.blocks.storage import (
    STORAGE_KINDS,
    LocalStorage,
    S3Storage,
    SFTPStorage,
    StorageBlock,
)

__all__ = ["COMPUTE_KINDS", "STORAGE_KINDS", "BareMetalHost", "ComputeBlock", "CredentialRef",
           "KubernetesCluster", "LocalStorage", "S3Storage", "SFTPStorage", "SlurmCluster",
           "StorageBlock"]
