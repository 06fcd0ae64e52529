"""What every task instance gets, wherever it runs; one owner for each of these rules.

- Its environment, built from scratch: a few of the host's variables (`PASSTHROUGH`), then the
  instance's own (parameters, inputs, outputs), then `AIRAVATA_*`. Nothing else of the process
  that starts it (the runner's or a worker's variables may hold a database URL or a token).
- Its script: the step's script with the resource `environment` exported after the `#!` line.
- Its logs: `stdout.log` and `stderr.log` in its working directory; a retry first moves the
  earlier attempt's to `stdout.attemptN.log` / `stderr.attemptN.log`. The end of its stderr is
  where a program says memory ran out (domain/usage.py reads it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from airavata_prefect.domain.dag import TaskInstance

# The only variables an instance sees of the host that starts it.
PASSTHROUGH = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "TZ", "TMPDIR",
               "TERM")
PASSTHROUGH_PREFIXES = ("SLURM_",)  # where a scheduler describes the allocation
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
LOGS = ("stdout.log", "stderr.log")


def host_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of the host's environment an instance keeps."""
    out = {k: v for k, v in environ.items()
           if k in PASSTHROUGH or k.startswith(PASSTHROUGH_PREFIXES)}
    out.setdefault("PATH", DEFAULT_PATH)
    return out


def instance_environment(inst: TaskInstance, *, experiment_id: str, attempt: int,
                         workdir: str) -> dict[str, str]:
    """The instance's own variables: the spec's, then where and what it is."""
    return {**inst.env, "AIRAVATA_EXPERIMENT_ID": experiment_id, "AIRAVATA_TASK_ID": inst.id,
            "AIRAVATA_ATTEMPT": str(attempt), "AIRAVATA_WORKDIR": workdir}


def _quote_env_value(value: str) -> str:
    # Double quotes keep `$VAR` expansion (Airavata's `PATH=/x:$PATH` idiom) and allow spaces.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`") + '"'


def render_script(script: str, environment: list[str]) -> str:
    """The user's script with the resource `environment` exported ahead of it (after #!)."""
    if not environment:
        return script
    exports = "".join(f"export {k}={_quote_env_value(v)}\n"
                      for k, _, v in (e.partition("=") for e in environment))
    if script.startswith("#!"):
        first, _, rest = script.partition("\n")
        return f"{first}\n{exports}{rest}"
    return exports + script


def earlier_logs(attempt: int) -> list[tuple[str, str]]:
    """(log, where the previous attempt's copy goes) before attempt `attempt` runs."""
    if attempt <= 0:
        return []
    return [(name, name.replace(".log", f".attempt{attempt - 1}.log")) for name in LOGS]


def keep_earlier_logs(workdir: Path, attempt: int) -> None:
    """Move the previous attempt's logs aside in `workdir`, so a retry never overwrites them."""
    for name, kept in earlier_logs(attempt):
        log = workdir / name
        if log.exists():
            os.replace(log, workdir / kept)


def stderr_tail(path: Path, limit: int = 4096) -> str:
    """The end of an instance's stderr (where a program says memory ran out)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


__all__ = ["LOGS", "PASSTHROUGH", "PASSTHROUGH_PREFIXES", "earlier_logs", "host_environment",
           "instance_environment",
           "keep_earlier_logs", "render_script", "stderr_tail"]
