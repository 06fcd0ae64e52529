"""`execute_bundle`: the flow a resource's work pool runs for each bundle of placed instances.

Its parameters are the experiment and bundle ids only (nothing secret, nothing from the spec).
The `slurm` and `baremetal` workers execute the bundle themselves and report this flow run's
state, so its body never runs on their infrastructure; a Prefect process worker in the same
pool would run the body, which refuses with a clear message instead of doing the wrong thing.
"""

from __future__ import annotations

from prefect import flow

FLOW_NAME = "execute_bundle"
ENTRYPOINT = "flows/bundle_flow.py:execute_bundle"


@flow(name=FLOW_NAME, flow_run_name="{bundle_id}", persist_result=False)
def execute_bundle(experiment_id: str, bundle_id: str) -> None:
    raise RuntimeError(
        f"bundle {bundle_id} of experiment {experiment_id} was picked up by a worker that is "
        "not an Airavata bundle worker: start `prefect worker start --pool POOL` with the "
        "pool's type (slurm or baremetal)")
