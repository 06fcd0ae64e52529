"""Storage mounts on the `local` resource (usecases/local_mounts.py): a real SeaweedFS S3 with
its keys in a real OpenBao, and a local path, registered as users do; an experiment that runs
on this machine reads them through links in each instance's directory. Each mount is fetched
once per run; the S3 secret is nowhere on disk afterwards."""

from __future__ import annotations

import asyncio
import hashlib
import textwrap
import uuid
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
from tests.haystack import all_bytes
from tests.storages import register_path, register_s3, s3_client

pytestmark = pytest.mark.prefect


def _run(store: Store, exp_id: str) -> ExperimentStatus:
    claimed = run.claim(store, exp_id, None)
    status, _, _ = asyncio.run(run.execute(store, claimed, get_settings(), Hooks(),
                                           flow_run_id=None))
    return status


def test_mounts_on_the_local_resource(home: Path, prefect_api: str, s3, tmp_path: Path,
                                      openbao_dev: tuple[str, str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = openbao_dev
    monkeypatch.setenv("AIRAVATA_OPENBAO_URL", url)
    monkeypatch.setenv("AIRAVATA_OPENBAO_TOKEN", root)
    sfx = uuid.uuid4().hex[:6]
    settings = get_settings()
    store = Store(settings.db_url)
    ctx = Context(settings, store, "alice")
    ensure_project(ctx, "lab")
    register_s3(ctx, s3, openbao_dev, name=f"s3-{sfx}", bucket=f"local-{sfx}")
    client = s3_client(s3)
    client.put_object(Bucket=f"local-{sfx}", Key="run1/params.txt", Body=b"alpha=0.5\n")
    client.put_object(Bucket=f"local-{sfx}", Key="run1/data/x.csv", Body=b"1,2\n")
    shared = tmp_path / "nfs"
    register_path(ctx, shared, name=f"nfs-{sfx}")
    (shared / "ref").mkdir(parents=True)
    (shared / "ref" / "genome.fa").write_text(">chr1\nACGT\n")
    spec = tmp_path / "mounts.yml"
    spec.write_text(textwrap.dedent(f"""\
        tasks:
          use:
            command: 'cat params.txt in/data/x.csv ref/genome.fa > "$OUT"'
            task_inputs: {{I: 1..3}}
            task_outputs: {{OUT: out.txt}}
            resources:
              storage: ["s3-{sfx}:/run1/params.txt:./params.txt", "s3-{sfx}:/run1:./in",
                        "nfs-{sfx}:/ref:./ref"]
        """))
    exp_id = submit(ctx, spec, [], project="lab")
    assert _run(store, exp_id) == ExperimentStatus.COMPLETED, store.tasks.list(exp_id)
    tasks = store.tasks.list(exp_id)
    assert {(t.state, t.resource) for t in tasks} == {(TaskState.COMPLETED, "local")}
    workdir = Path(store.experiments.get(exp_id).workdir)
    for i in range(3):
        assert (workdir / "use" / str(i) / "out.txt").read_text() == \
            "alpha=0.5\n1,2\n>chr1\nACGT\n"
    # Lineage names the mount files each output's instance read, with their checksums.
    (rec,) = [r for r in store.lineage.of_experiment(exp_id) if r.instance_id == "use[0]"]
    assert {m.mount for m in rec.mounts} == {f"s3-{sfx}:/run1/params.txt:./params.txt",
                                             f"s3-{sfx}:/run1:./in", f"nfs-{sfx}:/ref:./ref"}
    assert {m.sha256 for m in rec.mounts} >= {hashlib.sha256(b).hexdigest() for b in (
        b"alpha=0.5\n", b"1,2\n", b">chr1\nACGT\n")}
    # Fetched once for the run, linked into each instance's directory.
    copies = workdir / ".mounts" / "use"
    assert sorted(p.name for p in copies.iterdir()) == ["mount0", "mount1", "mount2"]
    assert (workdir / "use" / "2" / "in").resolve() == (copies / "mount1").resolve()
    assert (workdir / "use" / "0" / "params.txt").resolve() == \
        (copies / "mount0" / "params.txt").resolve()
    # What each mount held is recorded with its checksum (lineage reads it).
    held = sorted((f.mount.rsplit(":", 1)[-1], f.path, f.size)
                  for f in store.staging.inputs(exp_id, "use"))
    assert held == [("./in", "data/x.csv", 4), ("./in", "params.txt", 10),
                    ("./params.txt", "params.txt", 10), ("./ref", "genome.fa", 11)]
    assert {f.sha256 for f in store.staging.inputs(exp_id, "use") if f.path == "genome.fa"} \
        == {hashlib.sha256(b">chr1\nACGT\n").hexdigest()}
    # The S3 secret is in no file of the run and in no recorded event.
    everything = all_bytes(p for p in home.rglob("*") if p.is_file())
    assert s3.secret_key.encode() not in everything
    assert b"alpha=0.5" in everything  # the haystack holds what was fetched

    # A mount that cannot be fetched fails its instances, saying which and why.
    bad = tmp_path / "bad.yml"
    bad.write_text(textwrap.dedent(f"""\
        tasks:
          use:
            command: 'true'
            resources:
              storage: ["s3-{sfx}:/no/such/key.txt:./k.txt"]
        """))
    bad_id = submit(ctx, bad, [], project="lab")
    assert _run(store, bad_id) == ExperimentStatus.FAILED
    (t,) = store.tasks.list(bad_id)
    assert t.state == TaskState.FAILED and (t.reason or "").startswith("staging: ")
    assert "no/such/key.txt" in (t.reason or ""), t.reason

    # A storage resource nobody registered here (an example written for another site, like
    # the peer's sample): its mounts are left out, and the instance's events say so.
    elsewhere = tmp_path / "elsewhere.yml"
    elsewhere.write_text(textwrap.dedent(f"""\
        tasks:
          use:
            command: 'cat p.txt'
            resources:
              storage: ["global-scratch-{sfx}:/assets/example.txt:./example.txt",
                        "s3-{sfx}:/run1/params.txt:./p.txt"]
        """))
    other_id = submit(ctx, elsewhere, [], project="lab")
    assert _run(store, other_id) == ExperimentStatus.COMPLETED
    notes = [e.message for e in store.tasks.events(other_id, "use[0]")
             if e.to_state == TaskState.ENV_SETUP]
    assert notes == [f"not mounted: no storage resource global-scratch-{sfx} is registered "
                     "(airavata resource storage create)"]
    ctx.close()
    store.close()
