"""`python -m airavata_prefect.flows.runner EXPERIMENT_ID`: the detached process that runs one
experiment's flow.

Whatever stops the flow from starting (Prefect unreachable, a changed database) marks the
experiment FAILED with the reason, so nothing waits forever on a runner that is gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from airavata_prefect.adapters.db import Store
from airavata_prefect.flows.settings import get_settings
from airavata_prefect.flows.states import EXPERIMENT_TERMINAL, TERMINAL, ExperimentStatus, TaskState


def fail_unfinished(store: Store, exp_id: str, status: ExperimentStatus, message: str) -> None:
    """End an experiment whose runner is gone: cancel what never finished, keep what did."""
    for row in store.tasks(exp_id, states=[s for s in TaskState if s not in TERMINAL]):
        store.transition(exp_id, row["instance_id"], TaskState.CANCELED, message=message)
    store.update_experiment(exp_id, status=status, message=message,
                            expect=[s for s in ExperimentStatus if s not in EXPERIMENT_TERMINAL])


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m airavata_prefect.flows.runner EXPERIMENT_ID", file=sys.stderr)
        return 2
    exp_id = argv[1]
    # No telemetry from a temporary Prefect server (one starts when PREFECT_API_URL is unset).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from airavata_prefect.api.correlation import correlated, log_to_stderr
    from airavata_prefect.flows.experiment_flow import (
        run_experiment,  # imports Prefect: keep usage errors fast
    )

    log_to_stderr()  # runner.log: each line with the experiment's correlation id
    store = Store(get_settings().db_url)
    try:
        with correlated(store.submit_correlation(exp_id)):
            state = asyncio.run(run_experiment(exp_id, return_state=True))
        return 0 if state.is_completed() else 1
    except BaseException as exc:
        reason = f"runner stopped: {type(exc).__name__}: {exc}"
        logging.getLogger("airavata.runner").error(reason)
        fail_unfinished(store, exp_id, ExperimentStatus.FAILED, reason)
        return 1
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
