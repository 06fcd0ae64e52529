"""A bundle's secrets: read with a child token scoped to exactly its credentials, then revoked.

The worker's own OpenBao token (AIRAVATA_OPENBAO_TOKEN) only mints child tokens: before it does,
SpiceDB is asked again whether the experiment's owner may read every credential (a credential
unshared since submit is refused here), and each grant is audited. The values read live in
memory for the bundle's life; a rotation after that never disturbs it (new bundles get the new
version).
"""

from __future__ import annotations

from collections.abc import Mapping

from airavata_prefect.adapters.openbao import OpenBao, SecretRef, TaskToken
from airavata_prefect.adapters.store import Store
from airavata_prefect.usecases.context import authorizer
from airavata_prefect.usecases.credentials import Binding, CredentialError, CredentialService
from airavata_prefect.usecases.settings import Settings


class BundleSecrets:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._bao: OpenBao | None = None
        self._token: TaskToken | None = None

    def open(self, owner: str, refs: Mapping[str, SecretRef], *, walltime_seconds: int,
             task: str) -> dict[str, dict[str, str]]:
        """{what: secret} for each {what (e.g. "compute:cluster-a"): where it lives}."""
        if not refs:
            return {}
        if self.settings.openbao_token is None:
            raise CredentialError("this worker has no OpenBao token (AIRAVATA_OPENBAO_TOKEN) "
                                  f"to read the credentials of {', '.join(refs)}")
        bindings = []
        for what, ref in refs.items():
            cid = self.store.credentials.at(ref.mount, ref.path)
            if cid is None:
                raise CredentialError(f"{what}: no credential is registered at "
                                      f"{ref.mount}/{ref.path} (airavata credential create)")
            bindings.append(Binding(what, cid, ref))
        self._bao = OpenBao(self.settings.openbao_url,
                            self.settings.openbao_token.get_secret_value())
        authz = authorizer(self.settings, self.store)
        try:
            service = CredentialService(self.store, authz, self._bao)
            self._token = service.token_for_task(owner, bindings,
                                                 walltime_seconds=walltime_seconds, task=task)
        finally:
            authz.close()
        as_task = self._bao.as_token(self._token.token)
        try:
            return {b.resource: as_task.get(b.ref) for b in bindings}
        except Exception as exc:
            raise CredentialError(f"reading the credentials of {task}: {exc}") from None

    def close(self) -> None:
        """Revoke the child token (idempotent)."""
        if self._bao is not None and self._token is not None:
            try:
                self._bao.revoke_task_token(self._token)
            finally:
                self._token = None


__all__ = ["BundleSecrets"]
