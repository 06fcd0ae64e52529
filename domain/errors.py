"""Errors the domain names, whichever adapter or use case raises them."""


class NotFound(LookupError):
    """No such experiment, task, bundle or credential: the message names what was asked for."""


class ServiceDown(RuntimeError):
    """A service the request needs (SpiceDB, OpenBao, Prefect) does not answer: nothing may
    proceed on a guess, and the caller may try again later (HTTP 503, not a 500)."""


class Conflict(RuntimeError):
    """A compare-and-set lost: the stored state is not the one the writer expected."""

