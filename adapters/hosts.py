"""Where commands run and files move: this machine, or a remote one over SSH (adapters/ssh.py).

SLURM submission, bare-metal execution and bundle staging all speak to a `Host`, so the same
code drives the local `sbatch` and a login node reached over SSH. Files move as tar streams
through one command each way (one round trip for a whole bundle, not one per file).
"""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol


class HostError(RuntimeError):
    """A host could not be reached or refused us; the message says which host and why."""


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")

    def error_text(self) -> str:
        return (self.stderr or self.stdout).decode(errors="replace").strip()


Stdin = bytes | BinaryIO  # a file is streamed from where it stands (never read whole)


class Host(Protocol):
    name: str  # for messages: "local" or "user@host:port"

    def run(self, command: str, *, stdin: Stdin | None = None,
            timeout: float | None = None) -> CommandResult: ...

    def close(self) -> None: ...


def check(host: Host, command: str, *, stdin: Stdin | None = None,
          timeout: float | None = None, what: str = "") -> CommandResult:
    """Run and raise HostError (with the command's own message) unless it exits 0."""
    result = host.run(command, stdin=stdin, timeout=timeout)
    if result.exit_status != 0:
        raise HostError(f"{what or command.split()[0]} on {host.name} failed "
                        f"(exit {result.exit_status}): {result.error_text()[-500:]}")
    return result


Content = bytes | str | Path  # a Path is a local file (or directory tree) to send as it is


def pack(files: Mapping[str, Content], *, executable: frozenset[str] = frozenset(),
         private: frozenset[str] = frozenset(), compress: bool = True) -> BinaryIO:
    """A tar (.gz unless `compress` is off) of relative paths -> contents (`private` ones
    readable by the owner only), in an unnamed temporary file at its start: a staged gigabyte
    never sits in memory."""
    buf = tempfile.TemporaryFile()  # noqa: SIM115 (the caller closes it: upload)
    try:
        with (tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) if compress
              else tarfile.open(fileobj=buf, mode="w")) as tar:
            for path, content in files.items():
                if isinstance(content, Path):
                    tar.add(str(content), arcname=path)
                    continue
                data = content.encode() if isinstance(content, str) else content
                info = tarfile.TarInfo(path)
                info.size = len(data)
                info.mode = 0o600 if path in private else 0o755 if path in executable else 0o644
                tar.addfile(info, io.BytesIO(data))
        buf.seek(0)
    except BaseException:
        buf.close()
        raise
    return buf


def upload(host: Host, directory: str, files: Mapping[str, Content], *,
           executable: frozenset[str] = frozenset(),
           private: frozenset[str] = frozenset(), compress: bool = True) -> None:
    """Write files under `directory` on the host (created as needed), in one round trip;
    `private` ones are created 0600 (tar keeps an archive's modes, less the umask). Data that
    does not compress (what is staged mostly is) goes faster with `compress` off."""
    d = shlex.quote(directory)
    with pack(files, executable=executable, private=private, compress=compress) as archive:
        check(host, f"mkdir -p {d} && tar x{'z' if compress else ''}f - -C {d}",
              stdin=archive, what=f"upload to {directory}")


def download(host: Host, directory: str, paths: list[str]) -> dict[str, bytes]:
    """Read the files that exist among `paths` (relative to `directory`), in one round trip.
    Missing files are simply absent from the result."""
    if not paths:
        return {}
    listing = ("\n".join(paths) + "\n").encode()  # `read` drops an unterminated last line
    d = shlex.quote(directory)
    # Keep only the files that exist, then tar them to stdout; an empty list gives no archive.
    cmd = (f"cd {d} 2>/dev/null || exit 0; "
           "while IFS= read -r f; do [ -f \"$f\" ] && printf '%s\\n' \"$f\"; done "
           "| tar czf - -T - --no-recursion 2>/dev/null || true")
    result = host.run(cmd, stdin=listing)
    if not result.stdout:
        return {}
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(result.stdout), mode="r:gz") as tar:
            for member in tar.getmembers():
                f = tar.extractfile(member)
                if f is not None:
                    out[member.name] = f.read()
    except (tarfile.TarError, EOFError) as exc:
        raise HostError(f"download from {host.name}:{directory} failed: {exc}") from None
    return out


class LocalHost:
    """This machine: the local `sbatch`, or a bare-metal run on localhost without SSH."""

    name = "local"

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        # Commands see only what we pass (e.g. SLURM_CONF), never our secrets.
        base = {k: v for k, v in os.environ.items()
                if k in ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "SLURM_CONF")}
        self.env = {**base, **(env or {})}

    def run(self, command: str, *, stdin: Stdin | None = None,
            timeout: float | None = None) -> CommandResult:
        feed: dict[str, Any] = {"input": stdin} if not hasattr(stdin, "read") else {
            "stdin": stdin}  # a file: the child reads it where it stands
        try:
            proc = subprocess.run(["bash", "-c", command], capture_output=True, env=self.env,
                                  timeout=timeout, **feed)
        except subprocess.TimeoutExpired:
            raise HostError(f"command on {self.name} timed out after {timeout} s: "
                            f"{command[:80]}") from None
        except OSError as exc:
            raise HostError(f"cannot run a command on {self.name}: {exc}") from None
        return CommandResult(proc.returncode, proc.stdout, proc.stderr)

    def close(self) -> None:
        return None


__all__ = ["CommandResult", "Host", "HostError", "LocalHost", "Stdin", "check", "download",
           "pack", "upload"]
