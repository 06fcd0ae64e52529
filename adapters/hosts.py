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
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol


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
            timeout: float | None = None, stdout: BinaryIO | None = None) -> CommandResult:
        """`stdout`: a file its output is written to as it comes (the result's stdout is then
        empty), instead of held in memory."""
        ...

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


def download(host: Host, directory: str, paths: list[str],
             place: Callable[[str, IO[bytes]], None]) -> set[str]:
    """Fetch the files that exist among `paths` (relative to `directory`) in one round trip,
    handing each to `place(path, file)` as it comes out of the archive; returns the paths found
    (a missing file is simply absent). Nothing is held whole in memory: the archive lands in a
    temporary file and is read as a stream; a name that was not asked for is ignored."""
    if not paths:
        return set()
    wanted = set(paths)
    listing = ("\n".join(paths) + "\n").encode()  # `read` drops an unterminated last line
    d = shlex.quote(directory)
    # Keep only the files that exist, then tar them to stdout; an empty list gives no archive.
    cmd = (f"cd {d} 2>/dev/null || exit 0; "
           "while IFS= read -r f; do [ -f \"$f\" ] && printf '%s\\n' \"$f\"; done "
           "| tar czf - -T - --no-recursion 2>/dev/null || true")
    found: set[str] = set()
    with tempfile.TemporaryFile() as spool:
        host.run(cmd, stdin=listing, stdout=spool)
        if spool.seek(0, os.SEEK_END) == 0:
            return found
        spool.seek(0)
        try:
            with tarfile.open(fileobj=spool, mode="r|gz") as tar:
                for member in tar:
                    f = tar.extractfile(member) if member.isfile() else None
                    if f is not None and member.name in wanted:
                        place(member.name, f)
                        found.add(member.name)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise HostError(f"download from {host.name}:{directory} failed: {exc}") from None
    return found


class LocalHost:
    """This machine: the local `sbatch`, or a bare-metal run on localhost without SSH."""

    name = "local"

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        # Commands see only what we pass (e.g. SLURM_CONF), never our secrets.
        base = {k: v for k, v in os.environ.items()
                if k in ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "SLURM_CONF")}
        self.env = {**base, **(env or {})}

    def run(self, command: str, *, stdin: Stdin | None = None,
            timeout: float | None = None, stdout: BinaryIO | None = None) -> CommandResult:
        feed: dict[str, Any] = {"input": stdin} if not hasattr(stdin, "read") else {
            "stdin": stdin}  # a file: the child reads it where it stands
        if stdout is not None:
            stdout.flush()  # the child writes through its own descriptor, where it stands
        try:
            proc = subprocess.run(["bash", "-c", command], env=self.env, timeout=timeout,
                                  stdout=stdout if stdout is not None else subprocess.PIPE,
                                  stderr=subprocess.PIPE, **feed)
        except subprocess.TimeoutExpired:
            raise HostError(f"command on {self.name} timed out after {timeout} s: "
                            f"{command[:80]}") from None
        except OSError as exc:
            raise HostError(f"cannot run a command on {self.name}: {exc}") from None
        return CommandResult(proc.returncode, proc.stdout or b"", proc.stderr)

    def close(self) -> None:
        return None


__all__ = ["CommandResult", "Host", "HostError", "LocalHost", "Stdin", "check", "download",
           "pack", "upload"]
