"""Storage blocks, by name, turned into readers with the secrets the worker was handed."""

from __future__ import annotations

from typing import Any

from airavata_prefect.adapters.storage import LocalPath, StorageError, StorageReader
from airavata_prefect.blocks import LocalStorage, S3Storage, SFTPStorage

STORAGE_TYPES = (S3Storage, SFTPStorage, LocalStorage)


async def load_storage(name: str) -> Any:
    """The storage block called `name`, whichever of its types it is."""
    for cls in STORAGE_TYPES:
        try:
            return await cls.aload(name)
        except ValueError:
            continue
    raise StorageError(f"no storage resource {name!r} is registered "
                       "(airavata resource storage create)")


def storage_reader(name: str, block: Any, secret: dict[str, str] | None) -> StorageReader:
    if isinstance(block, LocalStorage):
        return LocalPath(block.path)
    if secret is None:
        raise StorageError(f"storage {name!r} has no credential bound to it")
    if isinstance(block, S3Storage):
        from airavata_prefect.adapters.s3 import S3
        missing = [k for k in ("access_key", "secret_key") if k not in secret]
        if missing:
            raise StorageError(f"storage {name!r}: its credential lacks {', '.join(missing)}")
        return S3(block.bucket, access_key=secret["access_key"], secret_key=secret["secret_key"],
                  endpoint_url=block.endpoint_url, region=block.region, prefix=block.prefix)
    if isinstance(block, SFTPStorage):
        from airavata_prefect.adapters.sftp import SFTP
        from airavata_prefect.adapters.ssh import SSHEndpoint, SSHHost
        host = SSHHost(SSHEndpoint(block.host, block.port, block.username, block.host_key),
                       secret.get("private_key", ""), passphrase=secret.get("passphrase"))
        return SFTP(host, block.root)
    raise StorageError(f"storage {name!r} is of an unknown type {type(block).__name__}")


__all__ = ["STORAGE_TYPES", "load_storage", "storage_reader"]
