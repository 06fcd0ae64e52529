"""A reference to a secret in OpenBao. It says where the secret lives, never what it is."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from airavata_prefect.adapters.openbao import SecretRef
from airavata_prefect.blocks.base import AiravataBlock


class CredentialRef(AiravataBlock):
    """Where an SSH key, password, token or S3 key lives in OpenBao (KV v2)."""

    _block_type_name: ClassVar[str] = "Airavata Credential Reference"
    _block_type_slug: ClassVar[str] = "airavata-credential-ref"
    _description: ClassVar[str] = (
        "Where a secret lives in OpenBao (mount, path, version). The secret itself never "
        "enters Prefect.")

    mount: str = Field("secret", description="OpenBao KV v2 mount")
    path: str = Field(..., description="Path under the mount, e.g. users/alice/ssh/cluster-a")
    version: int | None = Field(None, ge=1, description="Pinned version; empty: the newest")

    def secret_ref(self) -> SecretRef:
        return SecretRef(path=self.path, mount=self.mount, version=self.version)
