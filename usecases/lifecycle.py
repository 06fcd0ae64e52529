"""An experiment's life after submit: its runner process, cancel, and ending an experiment
whose runner is gone so that no view shows it running for ever."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from airavata_prefect.adapters.store import Store
from airavata_prefect.domain.records import Experiment
from airavata_prefect.domain.states import (
    EXPERIMENT_TERMINAL,
    TERMINAL,
    ExperimentStatus,
    TaskState,
)
from airavata_prefect.usecases.authorization import audit, require
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.correlation import correlated, log_to_stderr
from airavata_prefect.usecases.settings import get_settings

RUNNER_MODULE = "airavata_prefect.flows.runner"


def fail_unfinished(store: Store, exp_id: str, status: ExperimentStatus, message: str) -> None:
    """End an experiment whose runner is gone: cancel what never finished, keep what did."""
    for task in store.tasks.list(exp_id, states=[s for s in TaskState if s not in TERMINAL]):
        store.tasks.transition(exp_id, task.instance_id, TaskState.CANCELED, message=message)
    store.experiments.update(exp_id, status=status, message=message,
                             expect=[s for s in ExperimentStatus if s not in EXPERIMENT_TERMINAL])


def start_runner(store: Store, exp: Experiment) -> int:
    """Start the experiment's runner as a detached process; its log is `<workdir>/runner.log`."""
    workdir = Path(exp.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "runner.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", RUNNER_MODULE, exp.id], stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir)
    store.experiments.update(exp.id, runner_pid=proc.pid)
    return proc.pid


def runner_alive(exp: Experiment) -> bool:
    pid = exp.runner_pid
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own exited child, not yet reaped) is not alive.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def reconcile(store: Store, exp: Experiment) -> Experiment:
    """An experiment whose runner process is gone mid-run is ended here. Safe against a runner
    that just finished: only non-terminal rows change."""
    if exp.status in EXPERIMENT_TERMINAL or not exp.runner_pid or runner_alive(exp):
        return exp
    if exp.status == ExperimentStatus.CANCELING:
        fail_unfinished(store, exp.id, ExperimentStatus.CANCELED, "canceled")
    else:
        fail_unfinished(store, exp.id, ExperimentStatus.FAILED,
                        f"runner exited unexpectedly; see {exp.workdir}/runner.log")
    return store.experiments.get(exp.id)


def run_detached(exp_id: str, run: Callable[[], bool]) -> int:
    """The runner process's life: `run` the experiment's flow under the correlation id of its
    submit (every log line carries it, to runner.log); whatever stops it marks the experiment
    FAILED with the reason. 0 when it completed."""
    log_to_stderr()
    store = Store(get_settings().db_url)
    try:
        with correlated(store.audit.submit_correlation(exp_id)):
            return 0 if run() else 1
    except BaseException as exc:
        reason = f"runner stopped: {type(exc).__name__}: {exc}"
        logging.getLogger("airavata.runner").error(reason)
        fail_unfinished(store, exp_id, ExperimentStatus.FAILED, reason)
        return 1
    finally:
        store.close()


@dataclass
class CancelResult:
    accepted: bool
    message: str


def cancel(ctx: Context, exp_ref: str) -> CancelResult:
    """Running instances are stopped, waiting ones never start. Needs scheduler.queue.cancel."""
    exp = ctx.store.experiments.get(exp_ref)
    require(ctx, "scheduler.queue.cancel", exp.id)
    ended = exp.status in EXPERIMENT_TERMINAL
    audit(ctx, "scheduler.queue.cancel", f"experiment:{exp.id}",
          "refused" if ended else "ok", str(exp.status))
    if ended:
        return CancelResult(False, f"experiment {exp.id} already ended ({exp.status})")
    ctx.store.experiments.request_cancel(exp.id)
    ctx.store.experiments.update(exp.id, status=ExperimentStatus.CANCELING,
                                 expect=[ExperimentStatus.RUNNING])
    if exp.status == ExperimentStatus.CREATED or not runner_alive(exp):
        # No runner will act on the request: cancel what is left here.
        fail_unfinished(ctx.store, exp.id, ExperimentStatus.CANCELED, "canceled")
        return CancelResult(True, f"experiment {exp.id} canceled")
    return CancelResult(True, f"cancel requested for experiment {exp.id}; "
                              "running tasks are being stopped")


__all__ = ["CancelResult", "cancel", "fail_unfinished", "reconcile", "run_detached",
           "runner_alive", "start_runner"]
