"""The peer's sample experiment (../shared/peers/airavata/sample_experiment.yml), end to end on
the `local` resource, as written but for its sleeps (SLEEP_TIME 0..1 instead of 1..100: ten
instances of each step, not a thousand): its storage resource `global-scratch` is a real S3
bucket on SeaweedFS with its keys in OpenBao, its `pip: [tqdm]` a real virtual environment
from the package index. Its `conda:` environment comes from the stub micromamba
(tests/conda_stub.py): no conda tool can be installed here and no conda channel is reachable.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from airavata_prefect.adapters.store import Store
from airavata_prefect.domain.scheduler import Hooks
from airavata_prefect.domain.states import ExperimentStatus, TaskState
from airavata_prefect.usecases import run
from airavata_prefect.usecases.authorization import ensure_project
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.settings import get_settings
from airavata_prefect.usecases.submit import submit
from tests.conda_stub import recorded, stub_micromamba
from tests.conftest import SAMPLE
from tests.storages import register_s3, s3_client

pytestmark = pytest.mark.prefect


def test_the_peers_sample_runs_with_its_mounts_and_environments(
        home: Path, prefect_api: str, s3, tmp_path: Path, openbao_dev: tuple[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = openbao_dev
    monkeypatch.setenv("AIRAVATA_OPENBAO_URL", url)
    monkeypatch.setenv("AIRAVATA_OPENBAO_TOKEN", root)
    bindir, calls = tmp_path / "bin", tmp_path / "micromamba.calls"
    stub_micromamba(bindir, calls)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    settings = get_settings()
    store = Store(settings.db_url)
    ctx = Context(settings, store, "alice")
    ensure_project(ctx, "lab")
    register_s3(ctx, s3, openbao_dev, name="global-scratch", bucket="global-scratch")
    client = s3_client(s3)
    client.put_object(Bucket="global-scratch", Key="assets/example.txt", Body=b"an example\n")
    for n in range(3):
        client.put_object(Bucket="global-scratch", Key=f"datasets/mnist/part-{n}.csv",
                          Body=f"{n},{n * n}\n".encode())

    text = SAMPLE.read_text()
    assert "SLEEP_TIME: 1..100" in text
    spec = tmp_path / "sample_experiment.yml"
    spec.write_text(text.replace("SLEEP_TIME: 1..100", "SLEEP_TIME: 0..1"))
    exp_id = submit(ctx, spec, [], project="lab")
    claimed = run.claim(store, exp_id, None)
    status, _, _ = asyncio.run(run.execute(store, claimed, settings, Hooks(),
                                           flow_run_id=None))
    tasks = store.tasks.list(exp_id)
    assert status == ExperimentStatus.COMPLETED, [(t.instance_id, t.reason) for t in tasks]
    assert len(tasks) == 20 and {t.state for t in tasks} == {TaskState.COMPLETED}

    workdir = Path(store.experiments.get(exp_id).workdir)
    messages = {(workdir / "task1" / str(i) / "output.1.txt").read_text() for i in range(10)}
    assert messages == {f"{m}\n" for m in ("hello", "this", "is", "a", "test")}
    second = (workdir / "task2" / "3" / "output.2.txt").read_text()
    assert second.startswith("read file: ") and second.rstrip().endswith("output.1.txt")
    # The mounts are there, from the bucket, in every instance's directory.
    inst = workdir / "task2" / "7"
    assert (inst / "example.txt").read_text() == "an example\n"
    assert sorted(p.name for p in (inst / "mnist").iterdir()) == [
        "part-0.csv", "part-1.csv", "part-2.csv"]
    staged = {f.path: f.sha256 for f in store.staging.inputs(exp_id, "task1")}
    assert staged["example.txt"] == hashlib.sha256(b"an example\n").hexdigest()
    # One conda environment for both steps, built once; the pip one on top of it.
    creates = [c for c in recorded(calls) if c[:1] == ["create"]]
    assert len(creates) == 1 and creates[0][-4:] == ["python=3.12", "pip", "numpy", "pandas"]
    envs = list((settings.home / "envs").glob("pip-*/lib/python3*/site-packages/tqdm"))
    assert len(envs) == 1, "tqdm is installed once, in one environment"
    ctx.close()
    store.close()
