"""Storage resources as Prefect blocks: where inputs come from and outputs go."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from airavata_prefect.blocks.base import AiravataBlock
from airavata_prefect.blocks.credential import CredentialRef


class S3Storage(AiravataBlock):
    _block_type_name: ClassVar[str] = "Airavata S3 Storage"
    _block_type_slug: ClassVar[str] = "airavata-s3-storage"
    _description: ClassVar[str] = "An S3 bucket; its access keys live in OpenBao."

    bucket: str
    endpoint_url: str | None = Field(None, description="Empty: AWS")
    region: str | None = None
    prefix: str = ""
    credential: CredentialRef | None = None


class SFTPStorage(AiravataBlock):
    _block_type_name: ClassVar[str] = "Airavata SFTP Storage"
    _block_type_slug: ClassVar[str] = "airavata-sftp-storage"
    _description: ClassVar[str] = "A directory reached over SFTP; its key lives in OpenBao."

    host: str
    port: int = Field(22, ge=1, le=65535)
    username: str
    host_key: str = Field(..., description="Pinned public host key (not a secret)")
    root: str = "/"
    credential: CredentialRef | None = None


class LocalStorage(AiravataBlock):
    _block_type_name: ClassVar[str] = "Airavata Local Storage"
    _block_type_slug: ClassVar[str] = "airavata-local-storage"
    _description: ClassVar[str] = "A local or NFS path visible to the compute resource."

    path: str
