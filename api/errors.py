"""Errors the command line turns into one line and an exit status, without importing what
raises them (so `airavata experiment compile` does not pay for Prefect's import)."""


class ResourceError(ValueError):
    """Bad resource input: one line, exit status 2."""
