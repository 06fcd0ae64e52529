"""On a real Kubernetes cluster (`make test-kubernetes`; never part of `make test`, since no
cluster can run on the machines that build this project). It needs:

  KUBECONFIG            the cluster, with a namespace the test may create Jobs in
  AIRAVATA_K8S_IMAGE    an image with this package installed (pip install .)
  AIRAVATA_K8S_NAMESPACE  default "default"; a Secret `airavata` there holds database-url
  PREFECT_API_URL and AIRAVATA_DATABASE_URL  a Prefect server and a PostgreSQL store that the
                        cluster's pods can reach, and a PersistentVolumeClaim `airavata-runs`
                        mounted at AIRAVATA_HOME on both sides

Missing any of these is a failure with a message, not a skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

NEEDED = ("KUBECONFIG", "AIRAVATA_K8S_IMAGE", "PREFECT_API_URL", "AIRAVATA_DATABASE_URL",
          "AIRAVATA_HOME")


def test_a_bundle_runs_as_a_job_on_the_cluster(tmp_path: Path) -> None:
    missing = [n for n in NEEDED if not os.environ.get(n)]
    if missing:
        pytest.fail(f"make test-kubernetes needs {', '.join(missing)} (see this file's "
                    "docstring)")
    from airavata_prefect.adapters.store import Store
    from airavata_prefect.blocks import KubernetesCluster
    from airavata_prefect.usecases.authorization import ensure_project
    from airavata_prefect.usecases.context import Context
    from airavata_prefect.usecases.lifecycle import start_runner
    from airavata_prefect.usecases.registration import register_compute
    from airavata_prefect.usecases.settings import get_settings
    from airavata_prefect.usecases.submit import submit

    name = f"k8s-it-{os.getpid()}"
    ctx = Context(get_settings(), Store(get_settings().db_url), get_settings().user)
    store = ctx.store
    ensure_project(ctx, "default")
    register_compute(
        ctx, project="default", name=name,
        block=KubernetesCluster(work_pool_name=name, cores_per_node=2,
                                namespace=os.environ.get("AIRAVATA_K8S_NAMESPACE", "default"),
                                image=os.environ["AIRAVATA_K8S_IMAGE"]))
    worker = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "worker", "start",
                               "--pool", name, "--type", "airavata-kubernetes"])
    try:
        spec = tmp_path / "k8s.yml"
        spec.write_text(textwrap.dedent("""\
            tasks:
              hello:
                command: 'echo "$I from $(hostname)" > "$OUT"'
                task_inputs: {I: 1..3}
                task_outputs: {OUT: out.txt}
            constraints: {excluded: [local]}
            """))
        exp_id = submit(ctx, spec, [])
        start_runner(store, store.experiments.get(exp_id))
        deadline = time.monotonic() + 900
        while store.experiments.get(exp_id).status not in ("COMPLETED", "FAILED", "CANCELED"):
            assert time.monotonic() < deadline, "the experiment did not end in 15 minutes"
            time.sleep(5)
        assert store.experiments.get(exp_id).status == "COMPLETED"
    finally:
        worker.terminate()
        ctx.close()
