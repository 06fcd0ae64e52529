"""`execute_bundle`: the flow a resource's work pool runs for each bundle of placed instances.

Its parameters are the experiment and bundle ids only (nothing secret, nothing from the spec).
The `slurm` and `baremetal` workers execute a bundle themselves on their resource and report
this flow run's state, so there its body never runs. Where Prefect does run the body (a
Kubernetes pod started by the `airavata-kubernetes` worker, or a process worker), it executes
the bundle in place, on the machine it runs on: the experiment's directory must be there too,
at the same path (a shared volume), and the store reachable (AIRAVATA_DATABASE_URL).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from airavata_prefect.usecases.bundles.execute import InPlace, flow_state, run_bundle
from airavata_prefect.usecases.dispatch import BUNDLE_FLOW
from airavata_prefect.usecases.settings import get_settings


@flow(name=BUNDLE_FLOW, flow_run_name="{bundle_id}", persist_result=False)
async def execute_bundle(experiment_id: str, bundle_id: str) -> Any:
    """Run a bundle on this machine, in place."""
    settings = get_settings()
    result = await run_bundle(settings, experiment_id, bundle_id, InPlace(),
                              flow_run_id=flow_run.id, poll_seconds=1.0,
                              logger=get_run_logger())
    return flow_state(result)
