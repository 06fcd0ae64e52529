"""Why a use case refused or could not act. Each door turns these into its own answer (the CLI:
one line and an exit status; the REST API: an error envelope), without a traceback."""

from __future__ import annotations

from airavata_prefect.usecases.correlation import correlation_id


class BadInput(ValueError):
    """Bad input that is not a spec problem (an argument, a field, an unknown name)."""


class Conflict(BadInput):
    """The request is sound but what exists forbids it: a name already taken, or an object in
    a state that does not allow the action (an ended experiment cannot be paused)."""


class NoPlacement(Exception):
    """No placement satisfies the experiment's needs and constraints."""


class Unavailable(Exception):
    """An outside service this action needs does not answer."""


class Forbidden(Exception):
    """A permission check refused the action; audited under the correlation id it names."""

    def __init__(self, message: str) -> None:
        self.correlation_id = correlation_id()
        super().__init__(f"{message} (correlation id {self.correlation_id})")


class Unauthenticated(Exception):
    """No verified identity: a missing, malformed, expired, revoked or forged token, or a wrong
    name or password (which of the two is never said)."""


class RateLimited(Exception):
    """Too many attempts by one identity in a window; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(message)


def describe(exc: Exception) -> str:
    """One line for an unexpected failure, naming the outside system where it is one (the
    database's URL without its password)."""
    from sqlalchemy.exc import SQLAlchemyError
    if isinstance(exc, SQLAlchemyError):
        from sqlalchemy.engine import make_url

        from airavata_prefect.usecases.settings import get_settings
        safe = make_url(get_settings().db_url).render_as_string(hide_password=True)
        return f"database {safe}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    return f"{type(exc).__name__}: {exc}"


__all__ = ["BadInput", "Conflict", "Forbidden", "NoPlacement", "RateLimited", "Unauthenticated",
           "Unavailable", "describe"]
