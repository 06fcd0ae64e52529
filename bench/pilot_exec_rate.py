"""The pilot agent's spawn path against the machine's ceiling: N x `true` with 2 slots.

Ours: N attempts through agent/pilot_exec.py directly (each in a workdir of its own, with its
two logs; the script copy shared), at most `slots` at once. The ceiling: `printf N lines |
xargs -P2 -n1 bash -c true`, in the same run. No scheduler, no gRPC: this is the part of an
agent's throughput that the node itself bounds.

A VM's speed drifts, so both run a warm-up first, then alternate in rounds over the same N; each
rate is N over the summed time of its rounds. Ours creates a workdir and two logs per instance
and xargs nothing, so the filesystem weighs in: on a disk that has just seen mass deletions
(ext4 without a journal scans past recently freed inodes) that can cost more than the spawn.
The run is made on the temp dir and on /dev/shm (tmpfs) when there is one, with the cost of
creating one instance's files printed beside each: the tmpfs line is the spawn path's ceiling.

    python -m bench.pilot_exec_rate [N] [--slots S] [--rounds R] [--root DIR ...]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from airavata_prefect.agent.pilot_exec import AttemptRunner
from airavata_prefect.domain.states import TaskState

SCRIPT = "true\n"


@dataclass(frozen=True)
class Spec:
    workdir: str
    attempt: int = 0
    script: str = SCRIPT
    script_sha256: str = hashlib.sha256(SCRIPT.encode()).hexdigest()
    env: dict[str, str] = field(default_factory=dict)
    walltime_seconds: int = 0
    outputs: tuple[str, ...] = ()
    ram_gb: float = 0.0


async def ours(runner: AttemptRunner, ids: range, slots: int, prefix: str) -> float:
    """Seconds for these attempts through the runner, `slots` workers pulling in turn."""
    todo = iter(ids)
    done: list[TaskState] = []

    async def slot() -> None:
        for i in todo:
            outcome, _ = await runner.run(Spec(f"{prefix}/{i}"))
            done.append(outcome.state)

    start = time.perf_counter()
    await asyncio.gather(*(slot() for _ in range(slots)))
    elapsed = time.perf_counter() - start
    if done.count(TaskState.COMPLETED) != len(ids):
        raise SystemExit(f"only {done.count(TaskState.COMPLETED)} of {len(ids)} completed")
    return elapsed


def xargs(n: int, slots: int) -> float:
    lines = "".join(f"{i}\n" for i in range(n))
    start = time.perf_counter()
    subprocess.run(["xargs", f"-P{slots}", "-n1", "bash", "-c", "true"], input=lines,
                   text=True, check=True)
    return time.perf_counter() - start


async def compare(n: int, slots: int, rounds: int, root: Path) -> tuple[float, float]:
    """(our tasks/s, xargs's tasks/s)."""
    runner = AttemptRunner(root)
    try:
        warm = max(200, n // 10)
        await ours(runner, range(warm), slots, "warmup")
        xargs(warm, slots)
        t_ours = t_xargs = 0.0
        per = -(-n // rounds)
        for r in range(rounds):
            ids = range(r * per, min(n, (r + 1) * per))
            if r % 2:  # alternate who goes first
                t_xargs += xargs(len(ids), slots)
                t_ours += await ours(runner, ids, slots, "bench")
            else:
                t_ours += await ours(runner, ids, slots, "bench")
                t_xargs += xargs(len(ids), slots)
    finally:
        runner.close()
    return n / t_ours, n / t_xargs


def files_cost(root: Path, n: int = 1000) -> float:
    """Microseconds to create one instance's workdir and its two logs on `root`'s filesystem
    (the part of ours xargs does not do)."""
    base = root / "files-cost"
    base.mkdir()
    start = time.perf_counter()
    for i in range(n):
        wd = base / str(i)
        wd.mkdir()
        for name in ("stdout.log", "stderr.log"):
            os.close(os.open(wd / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
    return (time.perf_counter() - start) / n * 1e6


def fs_type(path: Path) -> str:
    out = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=10_000)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--root", type=Path, action="append",
                        help="where the workdirs go (repeatable; default: the temp dir, and "
                             "/dev/shm when there is one)")
    args = parser.parse_args()
    roots = args.root or [Path(tempfile.gettempdir())] + (
        [Path("/dev/shm")] if Path("/dev/shm").is_dir() else [])
    print(f"{args.n:,} x true on {args.slots} slots, in rounds alternating with "
          f"xargs -P{args.slots} -n1 bash -c true (target: ratio >= 0.80)")
    for where in roots:
        with tempfile.TemporaryDirectory(prefix="pilot-exec-rate-", dir=where) as tmp:
            root = Path(tmp)
            cost = files_cost(root)
            rate, base = asyncio.run(compare(args.n, args.slots, args.rounds, root))
        print(f"  workdirs on {where} ({fs_type(where)}, {cost:,.0f} us to create a workdir "
              f"and its logs): pilot_exec {rate:,.0f}/s  xargs {base:,.0f}/s  "
              f"ratio {rate / base:.2f}")


if __name__ == "__main__":
    main()
