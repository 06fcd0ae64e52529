"""1,000 x `true` on a local SLURM: through our `slurm` work pool (submit, the run_experiment
flow, a bundle, a real `prefect worker start`, the job array, states and logs back) and through
pilot agents the same pool starts (`mode: pilot`: one agent per node pulls the instances over
gRPC from the agent service), against a raw `sbatch --array` of the same script on the same
cluster, in the same run.

The raw run goes before and after ours and its mean is the baseline, so a cluster that slows
as its job table fills does not favour either side.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N = 1000
SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def start_slurm(d: Path) -> dict[str, str]:
    env = {**os.environ, "SLURM_DIR": str(d), "CPUS": "16"}
    subprocess.run(["bash", str(SCRIPTS / "slurm_cluster.sh"), "start"], env=env, check=True,
                   capture_output=True)
    return {"SLURM_CONF": str(d / "etc" / "slurm.conf")}


def stop_slurm(d: Path) -> None:
    subprocess.run(["bash", str(SCRIPTS / "slurm_cluster.sh"), "stop"],
                   env={**os.environ, "SLURM_DIR": str(d)}, capture_output=True)


def raw_array(slurm_env: dict[str, str], work: Path) -> float:
    """Seconds from `sbatch --array=0-999` until the queue holds none of it."""
    env = {**os.environ, **slurm_env}
    work.mkdir(parents=True, exist_ok=True)
    (work / "true.sh").write_text("#!/bin/bash\ntrue\n")
    start = time.perf_counter()
    job = subprocess.run(["sbatch", "--parsable", f"--array=0-{N - 1}", "-o", "/dev/null",
                          str(work / "true.sh")], env=env, cwd=work, check=True,
                         capture_output=True, text=True).stdout.strip().split(";")[0]
    while subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True,
                         text=True).stdout.strip():
        time.sleep(0.2)
    return time.perf_counter() - start


def pool_run(home: Path, slurm_env: dict[str, str], *, mode: str = "bundle",
             ) -> tuple[float, int]:
    """(seconds from submit until the experiment ended, sbatch calls it made)."""
    from airavata_prefect.adapters.store import Store
    from airavata_prefect.blocks import SlurmCluster
    from airavata_prefect.flows.experiment_flow import run_experiment
    from airavata_prefect.usecases.authorization import ensure_project
    from airavata_prefect.usecases.context import Context
    from airavata_prefect.usecases.registration import register_compute
    from airavata_prefect.usecases.settings import get_settings
    from airavata_prefect.usecases.submit import submit

    ctx = Context(get_settings(), Store(get_settings().db_url), "bench")
    store = ctx.store
    ensure_project(ctx, "bench")
    name = f"bench-slurm-{mode}"
    register_compute(ctx, project="bench", name=name, block=SlurmCluster(
        work_pool_name=name, submit_via="local", environment=slurm_env, mode=mode,
        agent_command=f"{sys.executable} -m airavata_prefect.agent.pilot",
        cores_per_node=16, working_directory=str(home / "cluster")))
    log = open(home / f"worker-{mode}.log", "wb")  # noqa: SIM115  closed below
    worker = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool",
         name, "--type", "slurm"], stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "1",
             "PREFECT_LOGGING_LEVEL": "INFO"})
    try:
        while b"started!" not in (home / f"worker-{mode}.log").read_bytes():
            if worker.poll() is not None:
                raise SystemExit("the SLURM worker did not start:\n"
                                 + (home / f"worker-{mode}.log").read_text()[-2000:])
            time.sleep(0.2)
        spec = home / f"sweep-{mode}.yml"
        # Only on this resource (the bundle run's goes first, so it is the one to leave out).
        excluded = "local, bench-slurm-bundle" if mode == "pilot" else "local"
        spec.write_text(f"tasks:\n  t: {{command: 'true', task_inputs: {{I: 1..{N}}}}}\n"
                        f"constraints: {{excluded: [{excluded}]}}\n")
        start = time.perf_counter()
        exp_id = submit(ctx, spec, [], project="bench")
        state = asyncio.run(run_experiment(experiment_id=exp_id, return_state=True))
        seconds = time.perf_counter() - start
        assert state.is_completed(), state
        assert store.tasks.state_counts(exp_id) == {"t": {"COMPLETED": N}}
        calls = sum(len(b.infrastructure) for b in store.bundles.of_experiment(exp_id))
        return seconds, calls
    finally:
        worker.kill()
        worker.wait(10)
        log.close()
        ctx.close()


def pilot_run(home: Path, slurm_env: dict[str, str]) -> tuple[float, int]:
    """`pool_run` in pilot mode, with the agent service running as `airavata server start`
    runs it (its own process, TLS)."""
    from bench.pilots import free_port, start_service

    os.environ.update({"AIRAVATA_AGENT_PORT": str(free_port()),
                       "AIRAVATA_AGENT_IDLE_SECONDS": "5"})
    service = start_service(home)
    try:
        return pool_run(home, slurm_env, mode="pilot")
    finally:
        service.terminate()
        service.wait(10)


def run(home: Path) -> dict[str, float]:
    """Needs the Prefect server bench/__main__.py started (PREFECT_API_URL, AIRAVATA_HOME)."""
    d = Path(tempfile.mkdtemp(prefix="airavata-bench-slurm-"))
    os.chmod(d, 0o755)
    slurm_env = start_slurm(d)
    try:
        before = raw_array(slurm_env, home / "raw1")
        ours, calls = pool_run(home, slurm_env)
        pilots, pilot_calls = pilot_run(home, slurm_env)
        after = raw_array(slurm_env, home / "raw2")
    finally:
        stop_slurm(d)
    return {"pool_s": ours, "raw_before_s": before, "raw_after_s": after,
            "raw_s": (before + after) / 2, "sbatch_calls": calls,
            "pilot_s": pilots, "pilot_sbatch_calls": pilot_calls}
