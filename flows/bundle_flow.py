"""`execute_bundle`: the flow a resource's work pool runs for each bundle of placed instances.

Its parameters are the experiment and bundle ids only (nothing secret, nothing from the spec).
The `slurm` and `baremetal` workers execute a bundle themselves on their resource and report
this flow run's state, so there its body never runs. Where Prefect does run the body (a
Kubernetes pod started by the `airavata-kubernetes` worker, or a process worker), it executes
the bundle in place, on the machine it runs on: the experiment's directory must be there too,
at the same path (a shared volume), and the store reachable (AIRAVATA_DATABASE_URL).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.runtime import flow_run

FLOW_NAME = "execute_bundle"
ENTRYPOINT = "airavata_prefect.flows.bundle_flow:execute_bundle"


@flow(name=FLOW_NAME, flow_run_name="{bundle_id}", persist_result=False)
async def execute_bundle(experiment_id: str, bundle_id: str) -> Any:
    from airavata_prefect.adapters.db import Store
    from airavata_prefect.adapters.hosts import LocalHost
    from airavata_prefect.agent.baremetal import BareMetalLauncher
    from airavata_prefect.agent.execute import Opener, Session
    from airavata_prefect.agent.execute import execute_bundle as run
    from airavata_prefect.agent.worker import final_state
    from airavata_prefect.blocks import BareMetalHost, KubernetesCluster, SlurmCluster
    from airavata_prefect.flows.settings import get_settings

    settings = get_settings()
    store = Store(settings.db_url)
    try:
        bundle = store.bundles.get(bundle_id)
        exp = store.get_experiment(experiment_id)
        block_type: Any = KubernetesCluster
        for cls in (KubernetesCluster, SlurmCluster, BareMetalHost):
            try:
                await cls.aload(bundle["resource"])
                block_type = cls
                break
            except ValueError:
                continue
        spec_cpu = _step_cpu(exp, bundle["step"])

        def here(block: Any, secret: dict[str, str] | None) -> Session:
            host = LocalHost()
            parallel = max(1, (os.cpu_count() or 1) // spec_cpu)
            return Session(host, BareMetalLauncher(host, parallel),
                           str(Path(exp["workdir"]).parent))  # in place: the same root

        async def cancelled() -> bool:
            if store.bundles.cancel_requested(bundle_id):
                return True
            try:
                async with get_client() as client:
                    state = (await client.read_flow_run(flow_run.id)).state
            except Exception:
                return False
            return state is not None and state.type in (StateType.CANCELLING,
                                                        StateType.CANCELLED)

        outcome = await run(store, settings, experiment_id, bundle_id,
                            Opener(block_type, bundle["resource"], here, compute_secret=False,
                                   enforce_walltime=True),
                            poll_seconds=1.0, logger=get_run_logger(), cancelled=cancelled)
        return final_state(outcome.counts, outcome.message, outcome.canceled)
    finally:
        store.close()


def _step_cpu(exp: dict, step: str) -> int:
    from airavata_prefect.flows.spec import parse_spec_text

    spec = parse_spec_text(exp["spec_text"], exp["source"]).spec
    compute = spec.resources.merged(spec.tasks[step].resources).compute
    return compute.cpu if compute else 1
