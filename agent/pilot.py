"""`airavata-agent`: the pilot agent, one process per compute node (a SLURM allocation, an SSH
process on a bare-metal host, a local process), pulling task instances from the scheduler
service over gRPC and running them here.

Its launcher (usecases/agent_starters.py) gives it, on its command line, only where the
service is, the CA to trust and a file holding its token. The token is read once (the file may
then go) and is never in an environment an instance could read: AIRAVATA_AGENT_TOKEN, if set,
is taken out of this process's environment at start, and instances get an environment built
from scratch anyway (agent/pilot_exec.py). TLS always.

It starts fast (grpc and our domain, never Prefect): an allocation's first minute is its own.
Exit codes: 0 stopped as asked (idle, drained, preempted), 1 could not go on, 2 bad usage,
3 the scheduler refused its token.

    airavata-agent --server HOST:PORT --ca CA.pem --token-file FILE --root DIR [--slots N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import logging
import os
import signal
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import grpc

from airavata_prefect.agent.pilot_exec import AttemptRunner
from airavata_prefect.agent.pilot_session import AgentConfig, Session
from airavata_prefect.agent.pilot_status import AgentIdFilter
from airavata_prefect.proto import agent_pb2_grpc as pb_grpc

TOKEN_ENV = "AIRAVATA_AGENT_TOKEN"
log = logging.getLogger("airavata.agent")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="airavata-agent", description=(
        "Pilot agent: runs task instances the Airavata scheduler assigns to this node."))
    p.add_argument("--server", required=True, metavar="HOST:PORT",
                   help="the scheduler's agent service")
    p.add_argument("--ca", type=Path, metavar="FILE",
                   help="CA certificate to trust (default: the system's)")
    p.add_argument("--token-file", type=Path, metavar="FILE",
                   help=f"file holding this agent's token (else ${TOKEN_ENV})")
    p.add_argument("--root", type=Path, default=Path.cwd(), metavar="DIR",
                   help="instances' working directories are relative to it (default: .)")
    p.add_argument("--slots", type=int, metavar="N",
                   help="instances run at once (default: this node's usable CPUs)")
    p.add_argument("--idle-seconds", type=float, metavar="S",
                   help="stop after this long with nothing to do (default: the service's)")
    p.add_argument("--allocation-ends-at", type=float, metavar="UNIX",
                   help="when the allocation ends (default: SLURM's, inside a SLURM job)")
    p.add_argument("--resource", default="", metavar="NAME", help="for the logs")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = p.parse_args(argv)
    if args.slots is not None and args.slots < 1:
        p.error("--slots must be at least 1")
    return args


def read_token(token_file: Path | None) -> str:
    """The agent's token; the environment variable is removed whichever is used."""
    from_env = os.environ.pop(TOKEN_ENV, "").strip()
    if token_file is None:
        return from_env
    return token_file.read_text().strip()


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # a SLURM job's cpuset, not the whole node
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def memory_bytes() -> int:
    if mb := os.environ.get("SLURM_MEM_PER_NODE", "").strip():
        with contextlib.suppress(ValueError):
            return int(mb) * 1024 * 1024
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0


def gpus() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if n := os.environ.get("SLURM_GPUS_ON_NODE", "").strip():
        with contextlib.suppress(ValueError):
            return int(n)
    return len(glob.glob("/dev/nvidia[0-9]*"))


def slurm_end(job_id: str) -> float:
    """When the SLURM job ends (unix seconds); 0 when squeue cannot say."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%e"], capture_output=True,
                             text=True, timeout=10, check=True,
                             env={**os.environ, "SLURM_TIME_FORMAT": "%s"}).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return 0.0
    with contextlib.suppress(ValueError):
        return float(out)
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(out).timestamp()  # a site's own time format
    return 0.0


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("airavata-prefect")
    except PackageNotFoundError:
        return "unknown"


def channel(server: str, ca: bytes | None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=ca)
    return grpc.aio.secure_channel(server, creds, options=[
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # A restarted service is found again within a second, not grpc's default 2 minutes:
        # it gives its agents one lease period to come back before their work goes elsewhere.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 1_000),
    ])


async def serve(args: argparse.Namespace, token: str, ca: bytes | None) -> int:
    job = os.environ.get("SLURM_JOB_ID", "")
    ends_at = args.allocation_ends_at
    if ends_at is None:
        ends_at = await asyncio.to_thread(slurm_end, job) if job else 0.0
    root = args.root.absolute()
    root.mkdir(parents=True, exist_ok=True)
    cores = usable_cpus()
    config = AgentConfig(
        slots=args.slots or cores, hostname=socket.gethostname(), cores=cores,
        memory_bytes=memory_bytes(), gpus=gpus(), allocation_id=job,
        allocation_ends_at=ends_at, idle_seconds=args.idle_seconds, version=version())
    runner = AttemptRunner(root)
    chan = channel(args.server, ca)
    session = Session(pb_grpc.AgentServiceStub(chan), token, config, runner)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, session.preempt, f"the agent got {signal.Signals(sig).name}")
    log.info("starting on %s for %s: %d slots, root %s, scheduler %s%s", config.hostname,
             args.resource or "its resource", config.slots, root, args.server,
             f", allocation {job} ends at {datetime.fromtimestamp(ends_at):%H:%M:%S}"
             if ends_at else "")
    try:
        return await session.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await chan.close(grace=None)
        runner.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    handler = logging.StreamHandler()
    handler.addFilter(AgentIdFilter())
    handler.setFormatter(logging.Formatter(
        "%(asctime)s airavata-agent %(agent)s %(levelname)s %(message)s"))
    logging.basicConfig(level=args.log_level, handlers=[handler])
    try:
        token = read_token(args.token_file)
        ca = args.ca.read_bytes() if args.ca else None
    except OSError as exc:
        log.error("cannot read %s: %s", exc.filename, exc.strerror)
        sys.exit(2)
    if not token:
        log.error("no token: give --token-file FILE or set %s", TOKEN_ENV)
        sys.exit(2)
    sys.exit(asyncio.run(serve(args, token, ca)))


if __name__ == "__main__":
    main()
