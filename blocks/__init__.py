"""Prefect Block types that bind resources. A block stores where a secret lives, never the secret.

Register them with `prefect block register -m blocks` (or through the `prefect.collections`
entry point, which Prefect loads on start).
"""

from blocks.compute import BareMetalHost, KubernetesCluster, SlurmCluster
from blocks.credential import CredentialRef
from blocks.storage import LocalStorage, S3Storage, SFTPStorage

__all__ = ["BareMetalHost", "CredentialRef", "KubernetesCluster", "LocalStorage", "S3Storage",
           "SFTPStorage", "SlurmCluster"]
