"""How a bundle's instances start inside one allocation on a resource (a SLURM job array, a
detached session over SSH), what its scheduler says of instances that left no exit marker, and
reading those markers back. Each compute kind opens a `Session` with its own `Launcher`."""

from __future__ import annotations

import shlex
from collections.abc import Collection
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


__all__ = ["Launcher", "Session", "read_markers"]
