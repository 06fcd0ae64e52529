"""A long-lived process's (the REST API's) shared parts: one store, one permission graph kept
fresh from the journal, and a context per request acting as the identity it verified."""

from __future__ import annotations

import threading

from airavata_prefect.adapters.spicedb import Authz
from airavata_prefect.adapters.store import Store
from airavata_prefect.usecases import identity
from airavata_prefect.usecases.context import Context, authorizer
from airavata_prefect.usecases.settings import Settings


class SharedContext(Context):
    """A request's context: borrows the runtime's store and SpiceDB (closes neither)."""

    def close(self) -> None:
        pass


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(settings.db_url)
        self._authz: Authz | None = None
        self._lock = threading.Lock()

    @property
    def authz(self) -> Authz:
        with self._lock:
            if self._authz is None:
                self._authz = authorizer(self.settings, self.store)
        self._authz.sync()  # another process (a CLI, a flow run) may have written
        return self._authz

    def verify(self, token: str) -> identity.Principal:
        return identity.verify(self.store, self.settings, token)

    def context(self, who: str) -> Context:
        return SharedContext(self.settings, self.store, who, self.authz, auto_projects=False)

    def close(self) -> None:
        if self._authz is not None:
            self._authz.close()
        self.store.close()


__all__ = ["Runtime", "SharedContext"]
