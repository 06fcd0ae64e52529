"""Prefect Block types that bind resources. A block stores where a secret lives, never the secret.

Register them with `prefect block register -m airavata_prefect.blocks` (or through the
`prefect.collections` entry point, which Prefect loads on start).
"""

from airavata_prefect.blocks.compute import BareMetalHost, KubernetesCluster, SlurmCluster
from airavata_prefect.blocks.credential import CredentialRef
from airavata_prefect.blocks.storage import LocalStorage, S3Storage, SFTPStorage

__all__ = ["BareMetalHost", "CredentialRef", "KubernetesCluster", "LocalStorage", "S3Storage",
           "SFTPStorage", "SlurmCluster"]
