"""Registering storage resources in tests as users do: an S3 bucket on the real SeaweedFS
with its keys in the real OpenBao (a credential alice owns), and a local path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3

from airavata_prefect.adapters.openbao import OpenBao, SecretRef
from airavata_prefect.blocks import LocalStorage, S3Storage
from airavata_prefect.usecases import registration
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.credentials import CredentialService


def s3_client(s3: Any) -> Any:
    return boto3.client("s3", endpoint_url=s3.url, aws_access_key_id=s3.access_key,
                        aws_secret_access_key=s3.secret_key, region_name="us-east-1")


def register_s3(ctx: Context, s3: Any, openbao: tuple[str, str], *, name: str, bucket: str,
                project: str = "lab") -> None:
    """Bucket `bucket` (made here) as storage resource `name`, its keys a credential of
    ctx.user's in OpenBao, bound to it."""
    s3_client(s3).create_bucket(Bucket=bucket)
    url, root = openbao
    ref = SecretRef(f"users/{ctx.user}/{name}")
    CredentialService(ctx.store, ctx.authz, OpenBao(url, root)).create(
        ctx.user, name, ref, {"access_key": s3.access_key, "secret_key": s3.secret_key})
    ctx.store.credentials.add(name, owner=ctx.user, mount=ref.mount, path=ref.path)
    registration.register_storage(ctx, project=project, name=name, block=S3Storage(
        bucket=bucket, endpoint_url=s3.url, credential=registration.credential_ref(ctx, name)))


def register_path(ctx: Context, path: Path, *, name: str, project: str = "lab") -> None:
    path.mkdir(parents=True, exist_ok=True)
    registration.register_storage(ctx, project=project, name=name,
                                  block=LocalStorage(path=str(path)))
