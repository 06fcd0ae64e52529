"""The `airavata` console script's `main()` run in this process: the same argument parsing,
error mapping and exit codes as the installed command, without the seconds a new Python
spends importing Prefect. Tests keep one real subprocess per command family for the script
itself; the rest go through here."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from unittest import mock


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def airavata(*args: str, env: Mapping[str, str] | None = None, stdin: str = "") -> Ran:
    from airavata_prefect.api import cli
    from airavata_prefect.usecases import context

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with (mock.patch.dict(os.environ, dict(env if env is not None else os.environ),
                          clear=True),
          mock.patch.object(sys, "argv", ["airavata", *args]),
          mock.patch.object(sys, "stdin", io.StringIO(stdin)),
          contextlib.redirect_stdout(out), contextlib.redirect_stderr(err)):
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            context.allow_local()  # server mode is per invocation, as in a process
    return Ran(code, out.getvalue(), err.getvalue())


def cli(*args: str, timeout: float | None = None) -> Ran:
    """tests.test_cli.cli's signature, in process (`timeout` is for the subprocess one)."""
    return airavata(*args)
