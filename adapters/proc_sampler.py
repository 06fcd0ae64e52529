"""What running process groups use now, read from /proc: CPU seconds so far (their own, and
that of the children they already reaped) and resident memory, per process group. Linux only;
elsewhere it finds nothing.

One pass over /proc per sample, whatever the number of groups: an instance's group is its
session leader's pid (each instance runs in a session of its own)."""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class GroupSample:
    cpu_seconds: float
    rss_bytes: int


def parse_stat(text: str) -> tuple[int, float, int] | None:
    """(process group, CPU seconds with reaped children, RSS bytes) of a /proc/PID/stat line;
    None for a line that is not one (its command name may hold spaces and parentheses)."""
    _, paren, rest = text.rpartition(")")
    fields = rest.split()
    if not paren or len(fields) < 22:
        return None
    try:
        pgrp = int(fields[2])
        ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        rss = int(fields[21])
    except ValueError:
        return None
    return pgrp, ticks / _TICK, max(0, rss) * _PAGE


def sample(groups: Collection[int], proc: str = "/proc") -> dict[int, GroupSample]:
    """The groups' figures now; a group with no live process is left out."""
    wanted = set(groups)
    cpu: dict[int, float] = {}
    rss: dict[int, int] = {}
    if not wanted:
        return {}
    try:
        entries = os.scandir(proc)
    except OSError:
        return {}
    with entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"{proc}/{entry.name}/stat") as f:
                    parsed = parse_stat(f.read())
            except OSError:  # it ended meanwhile
                continue
            if parsed is None or parsed[0] not in wanted:
                continue
            pgrp, seconds, resident = parsed
            cpu[pgrp] = cpu.get(pgrp, 0.0) + seconds
            rss[pgrp] = rss.get(pgrp, 0) + resident
    return {g: GroupSample(cpu[g], rss[g]) for g in cpu}


__all__ = ["GroupSample", "parse_stat", "sample"]
