"""Errors the domain names, whichever adapter or use case raises them."""


class NotFound(LookupError):
    """No such experiment, task, bundle or credential: the message names what was asked for."""


class Conflict(RuntimeError):
    """A compare-and-set lost: the stored state is not the one the writer expected."""

