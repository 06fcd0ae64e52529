"""Tasks/s of the peers our agents are measured against (issue 13), on the same two workloads.

    python -m bench.peers [--n-true 10000] [--n-sleep 2000] [--peer hq ...] [--json]

Each task is one `bash -c CMD` (CMD `true` or `sleep 0.01`), with exactly 2 parallel slots:

- xargs: `xargs -P2 -n1 bash -c CMD`, fed N lines
- Parsl HighThroughputExecutor: 2 workers in one block (LocalProvider), a @bash_app
- Parsl ThreadPoolExecutor: max_threads=2, the same @bash_app
- HyperQueue: server and one worker with 2 CPUs (LocalCluster of its Python API: the PyPI wheel
  ships no `hq` binary, it embeds both); one job of N tasks, as `hq submit --array 1-N`
- Dask distributed: LocalCluster(n_workers=2, threads_per_worker=1), client.map of a function
  that runs subprocess.run(["bash", "-c", CMD])

A rate is N over the seconds from the first submission to the last result. The peer's cluster,
workers or pool are started first, and a warm-up of 4 x `true` has run on them: their startup
is not counted. That is the same rule as our agents' figure.

Each peer runs in a process of its own, bench/peer_driver.py under .venv-peers/bin/python
(scripts/bench_peers.sh installs it, apart from the project's pinned Prefect and SQLAlchemy), so
no peer's import ever reaches this process. A peer that cannot be installed or fails gives a row
with its error; the bench goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-peers"
INSTALL = REPO / "scripts" / "bench_peers.sh"
DRIVER = Path(__file__).resolve().parent / "peer_driver.py"

N_TRUE = 10_000
N_SLEEP = 2_000
SLOTS = 2  # bench/peer_driver.py's SLOTS
TIMEOUT_S = 600  # one peer on one workload, startup included
TARGET_VS_BEST_PEER = 2.0  # issue 13: ours >= 2x the best peer ...
TARGET_VS_XARGS = 0.8  # ... and >= 80% of xargs in the same run

PEERS = ("xargs", "parsl-htex", "parsl-tpe", "hq", "dask")
LABELS = {
    "xargs": f"xargs -P{SLOTS} -n1 bash -c",
    "parsl-htex": f"Parsl HighThroughputExecutor ({SLOTS} workers, LocalProvider, @bash_app)",
    "parsl-tpe": f"Parsl ThreadPoolExecutor (max_threads={SLOTS}, @bash_app)",
    "hq": f"HyperQueue (1 worker, {SLOTS} CPUs; one job of N tasks)",
    "dask": f"Dask distributed (LocalCluster, {SLOTS} workers x 1 thread; client.map)",
}
WORKLOADS = ("true", "sleep 0.01")


def install() -> str | None:
    """Install the peers (idempotent, quick once done); None, or why they could not be."""
    try:
        out = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True,
                             timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{INSTALL.name}: {exc}"
    if out.returncode:
        lines = (out.stderr or out.stdout).strip().splitlines()
        return lines[-1] if lines else f"{INSTALL.name} exited {out.returncode}"
    return None


def _end_session(sid: int) -> None:
    """Kill every process left in the session of the driver started as `sid`: its own process
    group, and the groups its peer made inside it (Parsl's LocalProvider puts HTEX's worker pool
    in one of its own)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) == sid:
                os.kill(int(entry.name), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _python(peer: str) -> Path:
    # xargs needs none of the peers' packages: it runs even where they could not be installed.
    return Path(sys.executable) if peer == "xargs" else VENV / "bin" / "python"


def run_peer(peer: str, n: int, cmd: str, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """One peer on one workload in its own process: a row, with `error` if it failed."""
    row: dict[str, Any] = {"peer": peer, "workload": cmd, "n": n, "seconds": None,
                           "rate": None}
    python = _python(peer)
    if not python.exists():
        return {**row, "error": f"{python} missing (scripts/bench_peers.sh)"}
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    with tempfile.TemporaryDirectory(prefix=f"bench-{peer}-") as cwd:
        env["TMPDIR"] = cwd  # the peer's own temporary files go too, even when it is killed
        # A session of its own, so that whatever the peer leaves behind can be found and ended
        proc = subprocess.Popen([str(python), str(DRIVER), "--peer", peer, "--n", str(n),
                                 "--cmd", cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _end_session(proc.pid)
            proc.communicate()
            return {**row, "error": f"no result within {timeout:.0f} s"}
        finally:
            _end_session(proc.pid)
            proc.wait()
    lines = out.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if proc.returncode == 0 and lines else None
    except json.JSONDecodeError:
        result = None
    if not result:
        tail = [x for x in err.strip().splitlines() if x.strip()][-1:] or ["no output"]
        return {**row, "error": f"exited {proc.returncode}: {tail[0][:300]}"}
    extra = {k: v for k, v in result.items() if k not in ("peer", "n", "cmd", "seconds", "rate")}
    return {**row, **extra, "seconds": result["seconds"], "rate": result["rate"]}


def run_peers(n_true: int = N_TRUE, n_sleep: int = N_SLEEP,
              peers: tuple[str, ...] = PEERS) -> list[dict]:
    """Rows {peer, workload, n, seconds, rate} (and version, error, ... where there are), every
    peer on `n_true` x `true` then on `n_sleep` x `sleep 0.01`. Never raises for a peer."""
    error = install() if any(p != "xargs" for p in peers) else None
    rows = []
    for cmd, n in (("true", n_true), ("sleep 0.01", n_sleep)):
        if n <= 0:
            continue
        for peer in peers:
            if error and peer != "xargs":
                rows.append({"peer": peer, "workload": cmd, "n": n, "seconds": None,
                             "rate": None, "error": f"not installed: {error}"})
                continue
            load = os.getloadavg()[0]  # another job on these 2 cores shows in the rate
            rows.append({**run_peer(peer, n, cmd), "load_before": round(load, 2)})
            time.sleep(1)  # let the last peer's processes go before the next one starts
    return rows


def _rate(row: dict) -> str:
    return f"{row['rate']:,.0f} tasks/s" if row.get("rate") else "-"


def rows(results: list[dict], ours: list[dict] | dict[str, float] | None = None
         ) -> list[tuple[str, str, str, str]]:
    """(benchmark, measured, baseline / target, ratio) rows for bench/__main__.py's table.

    `ours`: our agents measured in the same run, as rows of the same shape (bench.pilots'
    run_ours: workload, rate, or error) or as tasks/s by workload ("true", "sleep 0.01");
    given, each peer's ratio is ours over it, and two rows per workload hold issue 13's targets
    (>= 2x the best peer, >= 80% of xargs)."""
    if isinstance(ours, list):
        failed = {r["workload"]: r.get("error") for r in ours if not r.get("rate")}
        ours = {r["workload"]: float(r["rate"]) for r in ours if r.get("rate")}
    else:
        failed = {}
    out = []
    for cmd in WORKLOADS:
        mine = [r for r in results if r["workload"] == cmd]
        if not mine:
            continue
        if cmd in failed:
            out.append((f"`{cmd}`: ours (pilot agents)", "FAILED", str(failed[cmd]), "-"))
        xargs = next((r for r in mine if r["peer"] == "xargs" and r.get("rate")), None)
        for r in mine:
            what = f"{r['n']:,} x `{cmd}`, peer: {LABELS.get(r['peer'], r['peer'])}"
            if r.get("version"):  # no [brackets]: rich would take them for markup
                what += f"; version {str(r['version']).removeprefix('v')}"
            if r.get("error"):
                out.append((what, "FAILED", r["error"], "-"))
                continue
            measured = f"{_rate(r)} ({r['seconds']:.1f} s)"
            if r.get("seconds_extrapolated"):
                measured += (f"; {r['n'] / r['seconds_extrapolated']:,.0f}/s without its 1 s "
                             "polling")
            base = f"xargs -P{SLOTS}: {_rate(xargs)}" if xargs else "xargs: -"
            ratio = [f"{r['rate'] / xargs['rate']:.2f}x of xargs"] if xargs else []
            if ours and ours.get(cmd):
                ratio.insert(0, f"ours {ours[cmd] / r['rate']:.2f}x")
            out.append((what, measured, base, "; ".join(ratio) or "-"))
        peers = [r for r in mine if r["peer"] != "xargs" and r.get("rate")]
        if ours and ours.get(cmd):
            best = max(peers, key=lambda r: r["rate"], default=None)
            if best:
                out.append((f"{best['n']:,} x `{cmd}`: ours vs the best peer "
                            f"({LABELS[best['peer']].split(' (')[0]})",
                            f"{ours[cmd]:,.0f} tasks/s", f"{_rate(best)}; target >= "
                            f"{TARGET_VS_BEST_PEER:.1f}x",
                            f"{ours[cmd] / best['rate']:.2f}x"))
            if xargs:
                out.append((f"{xargs['n']:,} x `{cmd}`: ours vs xargs -P{SLOTS} (same run)",
                            f"{ours[cmd]:,.0f} tasks/s",
                            f"{_rate(xargs)}; target >= {TARGET_VS_XARGS:.2f}x",
                            f"{ours[cmd] / xargs['rate']:.2f}x"))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    parser.add_argument("--n-true", type=int, default=N_TRUE)
    parser.add_argument("--n-sleep", type=int, default=N_SLEEP)
    parser.add_argument("--peer", action="append", choices=PEERS,
                        help="only this peer (repeatable); all by default")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON lines")
    args = parser.parse_args(argv)
    results = run_peers(args.n_true, args.n_sleep, tuple(args.peer or PEERS))
    if args.json:
        for r in results:
            print(json.dumps(r))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"peers, {SLOTS} slots ({os.cpu_count()} CPUs)")
    for col in ("benchmark", "measured", "baseline / target", "ratio"):
        table.add_column(col)
    for row in rows(results):
        table.add_row(*row)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
