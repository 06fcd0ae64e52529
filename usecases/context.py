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
    user: str  # who acts: a verified identity (the API's), or the local CLI's OS login
    _authz: Authz | None = field(default=None, repr=False)
    # Local mode makes a project on its first use; the REST API only uses projects someone
    # created (POST /projects).
    auto_projects: bool = True

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


def os_login() -> str:
    import getpass
    return getpass.getuser()


def _check_local_identity(settings: Settings, store: Store) -> None:
    """Local mode acts as the OS login. Naming another user (AIRAVATA_USER) is for the store's
    owner only, who could write its rows directly anyway; anyone else sharing a store must
    sign in to its REST API."""
    login = os_login()
    if settings.user == login:
        return
    owner = store.owner(login)
    if owner != login:
        from airavata_prefect.usecases.correlation import correlation_id
        from airavata_prefect.usecases.errors import Forbidden
        store.audit.record(actor=login, action="identity.assume", obj=f"user:{settings.user}",
                           correlation_id=correlation_id(), outcome="denied",
                           detail=f"AIRAVATA_USER names another user; the store is {owner}'s")
        raise Forbidden(f"AIRAVATA_USER={settings.user}: you are {login}, and this store "
                        f"belongs to {owner}; sign in to its REST API instead "
                        "(airavata config set server URL; airavata auth login)")


_local_refusal: list[str] = []


def forbid_local(reason: str) -> None:
    """This process must not open the store, OpenBao or SpiceDB (the CLI in server mode)."""
    _local_refusal[:] = [reason]


def allow_local() -> None:
    """Undo `forbid_local` (a process that runs the CLI more than once, as tests do)."""
    _local_refusal.clear()


@contextmanager
def open_context(settings: Settings | None = None, *, user: str | None = None
                 ) -> Iterator[Context]:
    """A context acting as `user` (an identity a door verified), else as the local user."""
    if _local_refusal:
        from airavata_prefect.usecases.errors import BadInput
        raise BadInput(_local_refusal[0])
    settings = settings or get_settings()
    store = Store(settings.db_url)
    try:
        if user is None:
            _check_local_identity(settings, store)
    except BaseException:
        store.close()
        raise
    ctx = Context(settings, store, user or settings.user)
    try:
        yield ctx
    finally:
        ctx.close()


def open_store(settings: Settings) -> Store:
    """The store alone, for a service that acts for no person (the agent service: its callers
    are agents, verified by their tokens)."""
    return Store(settings.db_url)


__all__ = ["Context", "allow_local", "authorizer", "forbid_local", "open_context", "open_store",
           "os_login"]
