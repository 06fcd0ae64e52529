"""The path the `run-experiment/default` deployment replaced, kept as a benchmark baseline: a
replica of the old `airavata experiment run` (submit, then start a detached runner process and
return) and of `python -m airavata_prefect.flows.runner EXPERIMENT_ID` (the runner: the flow
called in-process, against the same Prefect server, marking the experiment FAILED when it
cannot run). Removed from the product in 2209625; see `git show 2209625~1:flows/runner.py`.

    python -m bench.detached_runner run FILE [KEY=VALUE ...]   # the old `experiment run`
    python -m bench.detached_runner EXPERIMENT_ID               # the runner it started

The submit skips authorisation (`authorize=False`, as the other benchmarks of this machine do);
everything else is what the old path did. Both read AIRAVATA_HOME and PREFECT_API_URL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State

    from airavata_prefect.adapters.store import Store
    from airavata_prefect.domain.records import Experiment

MODULE = "bench.detached_runner"
REPO = Path(__file__).resolve().parent.parent


def start_runner(store: Store, exp: Experiment) -> int:
    """Start the experiment's runner as a detached process (its own session, stdin closed, its
    log `<workdir>/runner.log`), as `lifecycle.start_runner` did; its pid."""
    workdir = Path(exp.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}
    with open(workdir / "runner.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", MODULE, exp.id], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir, env=env)
    store.experiments.update(exp.id, runner_pid=proc.pid)
    return proc.pid


def submit_and_start(path: Path, params: list[str]) -> tuple[str, int]:
    """The old `airavata experiment run FILE`: store the experiment, start its runner; (the
    experiment id, the runner's pid)."""
    from airavata_prefect.usecases.context import open_context
    from airavata_prefect.usecases.settings import get_settings
    from airavata_prefect.usecases.submit import submit

    with open_context(get_settings()) as ctx:
        exp_id = submit(ctx, path, params, authorize=False)
        exp = ctx.store.experiments.get(exp_id)
        return exp_id, start_runner(ctx.store, exp)


def run_one(exp_id: str) -> int:
    """The runner process: the experiment's flow, in-process, under its submit's correlation
    id; whatever stops it marks the experiment FAILED with the reason. 0 when it completed."""
    # No telemetry from a temporary Prefect server (one starts when PREFECT_API_URL is unset).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from airavata_prefect.adapters.store import Store
    from airavata_prefect.domain.states import ExperimentStatus
    from airavata_prefect.flows.experiment_flow import run_experiment  # imports Prefect
    from airavata_prefect.usecases.correlation import correlated, log_to_stderr
    from airavata_prefect.usecases.lifecycle import fail_unfinished
    from airavata_prefect.usecases.settings import get_settings

    log_to_stderr()
    store = Store(get_settings().db_url)
    try:
        with correlated(store.audit.submit_correlation(exp_id)):
            # Prefect types an async flow's call as an Awaitable; it is a coroutine.
            flow_run = cast("Coroutine[Any, Any, State]",
                            run_experiment(experiment_id=exp_id, return_state=True))
            return 0 if asyncio.run(flow_run).is_completed() else 1
    except BaseException as exc:
        reason = f"runner stopped: {type(exc).__name__}: {exc}"
        logging.getLogger("airavata.runner").error(reason)
        fail_unfinished(store, exp_id, ExperimentStatus.FAILED, reason)
        return 1
    finally:
        store.close()


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[1] == "run":
        exp_id, pid = submit_and_start(Path(argv[2]), argv[3:])
        print(f"experiment {exp_id} submitted, runner pid {pid}", flush=True)
        return 0
    if len(argv) == 2 and argv[1] != "run":
        return run_one(argv[1])
    print(f"usage: python -m {MODULE} run FILE [KEY=VALUE ...] | EXPERIMENT_ID",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
