"""How a bundle's instances start inside one allocation on a resource (a SLURM job array, a
detached session over SSH), what its scheduler says of instances that left no exit marker, and
reading those markers back. Each compute kind opens a `Session` with its own `Launcher`."""

from __future__ import annotations

import secrets
import shlex
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from airavata_prefect.adapters.hosts import Host, HostError
from airavata_prefect.domain.bundle_layout import Marker, parse_markers
from airavata_prefect.domain.endings import Exit, Requeue


class Launcher(Protocol):
    name: str
    requeues: bool  # its scheduler may put a killed task back in the queue (SLURM)

    def files(self, bdir: str, count: int) -> dict[str, str]:
        """Files the launch needs beside the bundle's own (e.g. batch scripts)."""
        ...

    def submit(self, bdir: str, count: int) -> list[str]:
        """Start positions 0..count-1; the ids that cancel and follow them."""
        ...

    def unmarked(self, ids: list[str], positions: Collection[int]
                 ) -> dict[int, Exit | Requeue]:
        """What the scheduler says of positions that left no exit marker (absent: active)."""
        ...

    def queued(self, ids: list[str], positions: Collection[int]) -> dict[int, float]:
        """Seconds each position waited in its scheduler's queue before it started, by the
        scheduler's own record (absent where unknown, or where nothing queues)."""
        ...

    def cancel(self, ids: list[str]) -> None: ...

    def resubmit(self, bdir: str, positions: list[int]) -> list[str]: ...


@dataclass
class Session:
    """An opened resource: where commands run, how bundles launch, where they live."""

    host: Host
    launcher: Launcher
    working_directory: str


def read_markers(host: Host, directory: str) -> dict[int, Marker]:
    """The markers run_one.sh left in a bundle directory, in one command."""
    result = host.run(f"cd {shlex.quote(directory)}/results && grep -r '' . 2>/dev/null; true")
    if result.exit_status != 0:
        raise HostError(f"cannot read the results of {directory} on {host.name}: "
                        f"{result.error_text()[-300:]}")
    return parse_markers(result.text)


def read_tails(host: Host, paths: Mapping[int, str], limit: int = 4096) -> dict[int, str]:
    """The last `limit` bytes of each file (absolute paths, by position), in one command; a
    missing file reads as empty. A random boundary keeps a file from forging another's."""
    if not paths:
        return {}
    mark = secrets.token_hex(12)
    listing = "".join(f"{k} {p}\n" for k, p in paths.items()).encode()
    result = host.run(f"while read -r k f; do printf '\\n{mark} %s\\n' \"$k\"; "
                      f"tail -c {int(limit)} -- \"$f\" </dev/null 2>/dev/null; done; true",
                      stdin=listing)
    if result.exit_status != 0:
        raise HostError(f"cannot read logs on {host.name}: {result.error_text()[-300:]}")
    out: dict[int, str] = {}
    for chunk in result.text.split(f"\n{mark} ")[1:]:
        k, _, text = chunk.partition("\n")
        if k.isdigit() and int(k) in paths:
            out[int(k)] = text
    return out


__all__ = ["Launcher", "Session", "read_markers", "read_tails"]
