"""OpenBao (hvac): where every secret lives. Blocks, the database and Prefect hold references.

- KV v2 holds SSH keys, passwords, tokens and S3 keys, versioned: writing a new version (a
  rotation) never disturbs a task that was handed the old one.
- A task gets a short-lived child token whose policy reads exactly its bound credentials' paths,
  with TTL = walltime + margin, revoked when the task ends.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from typing import Any

import hvac
import requests
from hvac import exceptions as hv

TASK_TOKEN_MARGIN_SECONDS = 300


class SecretStoreError(RuntimeError):
    """OpenBao refused or could not be reached; the message says which and where."""


class SecretUnavailable(SecretStoreError):
    """Sealed, unreachable, or not answering: nothing can be read or dispatched."""


class SecretDenied(SecretStoreError):
    """The token may not do this (wrong path, expired, revoked)."""


class SecretNotFound(SecretStoreError):
    pass


@dataclass(frozen=True)
class SecretRef:
    """Where a secret lives: never the secret itself."""

    path: str
    mount: str = "secret"
    version: int | None = None  # None: the newest

    def policy_path(self) -> str:
        return f"{self.mount}/data/{self.path}"


@dataclass(frozen=True)
class TaskToken:
    token: str
    accessor: str
    ttl_seconds: int
    policy: str


class OpenBao:
    def __init__(self, url: str, token: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self._client = hvac.Client(url=url, token=token, timeout=timeout)

    # -- health ------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise SecretUnavailable unless OpenBao answers, initialised and unsealed."""
        try:
            status = self._client.sys.read_health_status(method="GET")
        except requests.exceptions.RequestException as exc:
            raise SecretUnavailable(f"OpenBao at {self.url} is unreachable: "
                                    f"{type(exc).__name__}") from None
        body = status.json() if hasattr(status, "json") else status
        if isinstance(body, dict):
            if body.get("sealed"):
                raise SecretUnavailable(f"OpenBao at {self.url} is sealed: unseal it "
                                        "(bao operator unseal) before running experiments")
            if body.get("initialized") is False:
                raise SecretUnavailable(f"OpenBao at {self.url} is not initialised")

    def _call(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except requests.exceptions.RequestException as exc:
            raise SecretUnavailable(f"OpenBao at {self.url} is unreachable ({what}): "
                                    f"{type(exc).__name__}") from None
        except hv.VaultDown:
            raise SecretUnavailable(f"OpenBao at {self.url} is sealed ({what})") from None
        except hv.Forbidden:
            raise SecretDenied(f"OpenBao denied {what}: permission denied, or the token "
                               "expired or was revoked") from None
        except hv.InvalidPath:
            raise SecretNotFound(f"OpenBao has nothing at {what}") from None
        except hv.VaultError as exc:
            raise SecretStoreError(f"OpenBao refused {what}: {exc}") from None

    # -- KV v2 -------------------------------------------------------------------------------

    def put(self, ref: SecretRef, data: dict[str, str]) -> int:
        """Write a new version; returns its number. Older versions stay readable."""
        resp = self._call(f"write {ref.mount}/{ref.path}",
                          self._client.secrets.kv.v2.create_or_update_secret,
                          path=ref.path, secret=data, mount_point=ref.mount)
        return int(resp["data"]["version"])

    def get(self, ref: SecretRef) -> dict[str, str]:
        resp = self._call(f"{ref.mount}/{ref.path}", self._client.secrets.kv.v2.read_secret_version,
                          path=ref.path, version=ref.version, mount_point=ref.mount,
                          raise_on_deleted_version=True)
        return dict(resp["data"]["data"])

    def destroy(self, ref: SecretRef) -> None:
        """Every version of the secret and its metadata, gone (KV v2)."""
        self._call(f"delete {ref.mount}/{ref.path}",
                   self._client.secrets.kv.v2.delete_metadata_and_all_versions,
                   path=ref.path, mount_point=ref.mount)

    # -- task tokens -------------------------------------------------------------------------

    def issue_task_token(self, refs: list[SecretRef], walltime_seconds: int, *, task: str,
                         margin_seconds: int = TASK_TOKEN_MARGIN_SECONDS) -> TaskToken:
        """A child token that reads exactly `refs` (each at any version) and nothing else,
        expiring after the walltime plus a margin."""
        policy = f"task-{uuid.uuid4().hex[:12]}"
        rules = "\n".join(f'path "{r.policy_path()}" {{ capabilities = ["read"] }}'
                          for r in sorted(set(refs), key=lambda r: r.policy_path()))
        self._call(f"create policy {policy}", self._client.sys.create_or_update_policy,
                   name=policy, policy=rules)
        ttl = walltime_seconds + margin_seconds
        resp = self._call("create a task token", self._client.auth.token.create,
                          policies=[policy], ttl=f"{ttl}s", explicit_max_ttl=f"{ttl}s",
                          renewable=False, no_default_policy=True,
                          meta={"task": task})
        auth = resp["auth"]
        return TaskToken(auth["client_token"], auth["accessor"], ttl, policy)

    def revoke_task_token(self, token: TaskToken) -> None:
        """Revoke the token (and its policy). Idempotent: an expired token is already gone."""
        with contextlib.suppress(SecretDenied, SecretNotFound):  # expired: nothing to revoke
            self._call("revoke a task token", self._client.auth.token.revoke_accessor,
                       token.accessor)
        self._call(f"delete policy {token.policy}", self._client.sys.delete_policy,
                   name=token.policy)

    def as_token(self, token: str) -> OpenBao:
        """The same server, acting with another token (what a task would do)."""
        return OpenBao(self.url, token)
