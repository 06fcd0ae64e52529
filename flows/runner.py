"""`python -m airavata_prefect.flows.runner EXPERIMENT_ID`: the detached process that runs one
experiment's flow.

Whatever stops the flow from starting (Prefect unreachable, a changed database) marks the
experiment FAILED with the reason, so nothing waits forever on a runner that is gone.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, cast

from airavata_prefect.usecases.lifecycle import run_detached

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m airavata_prefect.flows.runner EXPERIMENT_ID", file=sys.stderr)
        return 2
    exp_id = argv[1]
    # No telemetry from a temporary Prefect server (one starts when PREFECT_API_URL is unset).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from airavata_prefect.flows.experiment_flow import run_experiment  # imports Prefect

    def run() -> bool:
        # Prefect types an async flow's call as an Awaitable; it is a coroutine.
        flow_run = cast("Coroutine[Any, Any, State]", run_experiment(exp_id, return_state=True))
        return bool(asyncio.run(flow_run).is_completed())

    return run_detached(exp_id, run)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
