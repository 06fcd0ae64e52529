"""What an attempt used, and the one set of rules about memory limits; pure.

Every resource measures an attempt the way it can (rusage of the instance's process tree on
`local`, agents and bundles; a scheduler's accounting where there is one) and reports a `Usage`.
The memory rule (`ram_gb`) is one here for every resource we run processes on: the instance's
shell gets an address-space limit (`ulimit -v`, so every process it starts inherits it), and a
failed attempt under a limit whose stderr or peak says memory ran out is FAILED with a reason
naming memory, not a bare exit code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

# Headroom for what the shell and the C library map before the script allocates anything
# (bash, ld.so, locale archives): an address-space limit is not a resident-set limit.
_SHELL_AS_BYTES = 64 * 2 ** 20


@dataclass(frozen=True, slots=True)
class Usage:
    """Resources one attempt used. Zero where unknown (a scheduler that kept no record)."""

    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    max_rss_bytes: int = 0
    queue_seconds: float = 0.0  # waiting in a batch scheduler's queue before it started

    def to_line(self) -> str:
        """One line, as run_one.sh's measuring helper writes it into results/K.usage."""
        return (f"wall={self.wall_seconds:.6f} cpu={self.cpu_seconds:.6f} "
                f"maxrss={self.max_rss_bytes} queue={self.queue_seconds:.6f}")

    @classmethod
    def parse(cls, text: str) -> Usage | None:
        """The line `to_line` writes (fields in any order, unknown ones ignored); None when it
        holds none of ours or a value is not a number (a hostile or truncated file)."""
        fields = dict(part.partition("=")[::2] for part in text.split())
        try:
            wall = float(fields.get("wall", "nan"))
            cpu = float(fields.get("cpu", "0"))
            rss = int(fields.get("maxrss", "0"))
            queue = float(fields.get("queue", "0"))
        except ValueError:
            return None
        values = (wall, cpu, float(rss), queue)
        if not all(math.isfinite(v) and v >= 0 for v in values):
            return None
        return cls(wall, cpu, rss, queue)

    def queued(self, seconds: float) -> Usage:
        return replace(self, queue_seconds=max(0.0, seconds))


def memory_limit_bytes(ram_gb: float | None) -> int | None:
    """The address-space limit for a step asking for `ram_gb` (None: no limit)."""
    if not ram_gb:
        return None
    return int(ram_gb * 2 ** 30) + _SHELL_AS_BYTES


def limit_kib(ram_gb: float | None) -> int | None:
    """The same limit in KiB, as `ulimit -v` takes it."""
    limit = memory_limit_bytes(ram_gb)
    return None if limit is None else limit // 1024


def limited_argv(bash: str, script: str, ram_gb: float | None) -> list[str]:
    """The command that runs `script` with bash under the step's memory limit (a bash builtin
    sets it, then execs the script's own bash: no extra process stays behind)."""
    kib = limit_kib(ram_gb)
    if kib is None:
        return ["bash", script]
    return ["bash", "-c", f'ulimit -v {kib} || exit 70; exec "$0" "$1"', bash, script]


# What programs print when an allocation is refused: Python, C/glibc, C++, bash, Java, R, Go.
_MEMORY_WORDS = re.compile(
    r"MemoryError|Cannot allocate memory|[Oo]ut of memory|std::bad_alloc|memory exhausted|"
    r"xmalloc: cannot allocate|OutOfMemoryError|cannot allocate vector|"
    r"runtime: out of memory|Unable to allocate")


def memory_failure(ram_gb: float | None, stderr_tail: str, usage: Usage | None) -> str | None:
    """Why a failed attempt under a memory limit failed, when it was memory; else None."""
    if not ram_gb:
        return None
    limit = f"ram_gb {ram_gb:g} ({format_bytes(int(ram_gb * 2 ** 30))})"
    found = _MEMORY_WORDS.search(stderr_tail)
    if found:
        return f"out of memory: exceeded {limit}; stderr says {found.group(0)!r}"
    if usage is not None and usage.max_rss_bytes >= ram_gb * 2 ** 30:
        return (f"out of memory: exceeded {limit}, peak "
                f"{format_bytes(usage.max_rss_bytes)}")
    return None


def format_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # unreachable: the loop returns at GiB


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear between the closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class StepUsage:
    """What a step's measured instances used: medians and 90th percentiles, the peak."""

    step: str
    measured: int
    wall_p50: float | None = None
    wall_p90: float | None = None
    cpu_p50: float | None = None
    cpu_p90: float | None = None
    rss_p50: int | None = None
    rss_p90: int | None = None
    rss_max: int | None = None
    queue_p90: float | None = None

    def to_json(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}


def step_usage(step: str, usages: Sequence[Usage]) -> StepUsage:
    if not usages:
        return StepUsage(step, 0)
    walls = [u.wall_seconds for u in usages]
    cpus = [u.cpu_seconds for u in usages]
    rss = [float(u.max_rss_bytes) for u in usages if u.max_rss_bytes]

    def whole(value: float | None) -> int | None:
        return None if value is None else int(value)

    return StepUsage(step, len(usages), percentile(walls, 50), percentile(walls, 90),
                     percentile(cpus, 50), percentile(cpus, 90), whole(percentile(rss, 50)),
                     whole(percentile(rss, 90)), whole(max(rss, default=None)),
                     percentile([u.queue_seconds for u in usages], 90))


# Instance durations, seconds: the histogram's upper bounds (Prometheus `le`), from a blink
# to a day; one more bucket (+Inf) holds the rest.
DURATION_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)


def duration_bucket(seconds: float) -> int:
    """The index of the first bucket `seconds` fits in (len(DURATION_BUCKETS) for +Inf)."""
    for i, bound in enumerate(DURATION_BUCKETS):
        if seconds <= bound:
            return i
    return len(DURATION_BUCKETS)


__all__ = ["DURATION_BUCKETS", "StepUsage", "Usage", "duration_bucket", "format_bytes", "limit_kib",
           "limited_argv", "memory_failure", "memory_limit_bytes", "percentile", "step_usage"]
