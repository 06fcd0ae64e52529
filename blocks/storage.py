"""Storage resources as Prefect blocks. Each block class is its storage kind: its fields, and
how it is read with the secret a bundle was handed (never stored)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from airavata_prefect.adapters.storage import LocalPath, StorageError, StorageReader
from airavata_prefect.blocks.base import AiravataBlock
from airavata_prefect.blocks.credential import CredentialRef

# kind name -> its block class, filled as kinds are defined
STORAGE_KINDS: dict[str, type[StorageBlock]] = {}


class StorageBlock(AiravataBlock):
    kind: ClassVar[str] = ""
    needs_credential: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("kind"):
            STORAGE_KINDS[cls.kind] = cls

    @property
    def credential_ref(self) -> CredentialRef | None:
        return getattr(self, "credential", None)

    def reader(self, name: str, secret: dict[str, str] | None) -> StorageReader:
        raise NotImplementedError


class S3Storage(StorageBlock):
    _block_type_name: ClassVar[str] = "Airavata S3 Storage"
    _block_type_slug: ClassVar[str] = "airavata-s3-storage"
    _description: ClassVar[str] = "An S3 bucket; its access keys live in OpenBao."
    kind: ClassVar[str] = "s3"

    bucket: str
    endpoint_url: str | None = Field(None, description="Empty: AWS")
    region: str | None = None
    prefix: str = ""
    credential: CredentialRef | None = None

    def reader(self, name: str, secret: dict[str, str] | None) -> StorageReader:
        from airavata_prefect.adapters.s3 import S3
        if secret is None:
            raise StorageError(f"storage {name!r} has no credential bound to it")
        missing = [k for k in ("access_key", "secret_key") if k not in secret]
        if missing:
            raise StorageError(f"storage {name!r}: its credential lacks {', '.join(missing)}")
        return S3(self.bucket, access_key=secret["access_key"], secret_key=secret["secret_key"],
                  endpoint_url=self.endpoint_url, region=self.region, prefix=self.prefix)


class SFTPStorage(StorageBlock):
    _block_type_name: ClassVar[str] = "Airavata SFTP Storage"
    _block_type_slug: ClassVar[str] = "airavata-sftp-storage"
    _description: ClassVar[str] = "A directory reached over SFTP; its key lives in OpenBao."
    kind: ClassVar[str] = "sftp"

    host: str
    port: int = Field(22, ge=1, le=65535)
    username: str
    host_key: str = Field(..., description="Pinned public host key (not a secret)")
    root: str = "/"
    credential: CredentialRef | None = None

    def reader(self, name: str, secret: dict[str, str] | None) -> StorageReader:
        from airavata_prefect.adapters.sftp import SFTP
        from airavata_prefect.adapters.ssh import SSHEndpoint, SSHHost
        if secret is None:
            raise StorageError(f"storage {name!r} has no credential bound to it")
        host = SSHHost(SSHEndpoint(self.host, self.port, self.username, self.host_key),
                       secret.get("private_key", ""), passphrase=secret.get("passphrase"))
        return SFTP(host, self.root)


class LocalStorage(StorageBlock):
    _block_type_name: ClassVar[str] = "Airavata Local Storage"
    _block_type_slug: ClassVar[str] = "airavata-local-storage"
    _description: ClassVar[str] = "A local or NFS path visible to the compute resource."
    kind: ClassVar[str] = "local"
    needs_credential: ClassVar[bool] = False

    path: str

    def reader(self, name: str, secret: dict[str, str] | None) -> StorageReader:
        return LocalPath(self.path)


__all__ = ["STORAGE_KINDS", "LocalStorage", "S3Storage", "SFTPStorage", "StorageBlock"]
