"""What a use case acts with: the settings, the store, the permission graph, and who acts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from airavata_prefect.adapters.spicedb import Authz
from airavata_prefect.adapters.store import Store
from airavata_prefect.usecases.settings import Settings, get_settings


def authorizer(settings: Settings, store: Store) -> Authz:
    """SpiceDB: a server when one is configured, else embedded and rebuilt from the store's
    journal (it keeps nothing itself)."""
    if settings.spicedb_endpoint:
        token = settings.spicedb_token.get_secret_value() if settings.spicedb_token else ""
        return Authz.remote(settings.spicedb_endpoint, token,
                            insecure=settings.spicedb_insecure)
    return Authz.embedded(journal=store.relationships)


@dataclass
class Context:
    settings: Settings
    store: Store
    user: str  # who acts: the OS user the CLI runs as (a verified identity once the API is)
    _authz: Authz | None = field(default=None, repr=False)

    @property
    def authz(self) -> Authz:
        if self._authz is None:
            self._authz = authorizer(self.settings, self.store)
        return self._authz

    def close(self) -> None:
        if self._authz is not None:
            self._authz.close()
            self._authz = None
        self.store.close()


@contextmanager
def open_context(settings: Settings | None = None, *, user: str | None = None
                 ) -> Iterator[Context]:
    settings = settings or get_settings()
    ctx = Context(settings, Store(settings.db_url), user or settings.user)
    try:
        yield ctx
    finally:
        ctx.close()


__all__ = ["Context", "authorizer", "open_context"]
