"""Experiments through real work pools: run_experiment dispatches bundles to SLURM (local sbatch,
SSH, slurmrestd) and a bare-metal host, each served by a `prefect worker start` process."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.grid import Grid, grid
from tests.haystack import file_bytes
from tests.services import Slurm, Sshd

pytestmark = pytest.mark.prefect


@pytest.fixture(scope="module")
def g(prefect_api: str, openbao_dev: tuple[str, str], slurm: Slurm, sshd: Sshd,
      tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    with grid(tmp_path_factory.mktemp("grid"), openbao_dev, slurm, sshd) as grid_:
        yield grid_


def _squeue(slurm: Slurm, jobs: list[str]) -> list[str]:
    r = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(jobs)],
                       env={"SLURM_CONF": str(slurm.conf), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True)
    return [line for line in r.stdout.splitlines()
            if line.split()[-1] in ("PENDING", "RUNNING", "COMPLETING")]


def test_every_slurm_ending_through_the_pool(g: Grid, tmp_path: Path, prefect_api: str) -> None:
    spec = g.spec(tmp_path, """\
        tasks:
          sweep:
            command: 'echo "task $I job $SLURM_JOB_ID" ; echo oops >&2'
            task_inputs: {I: 1..50}
          fail3: {command: 'exit 3'}
          fail255: {command: 'exit 255'}
          killed: {command: 'kill -9 $$'}
          interrupted: {command: 'kill -INT $$'}
          slow:
            command: 'sleep 300'
            resources: {compute: {time: "0:01:00", cpu: 2, ram_gb: 1}}
        """, on="slurm")
    exp_id = g.submit(spec)
    state = g.run(exp_id)
    assert state.is_failed()
    t = g.tasks(exp_id)
    assert all(t[f"sweep[{i}]"].state == "COMPLETED" for i in range(50))
    # The same endings as on `local` (domain/endings.py): a signal is a failure, not a cancel.
    ended = {s: (t[f"{s}[0]"].state, t[f"{s}[0]"].exit_code, t[f"{s}[0]"].reason)
             for s in ("fail3", "fail255", "killed", "interrupted")}
    assert ended == {"fail3": ("FAILED", 3, "exit code 3"),
                     "fail255": ("FAILED", 255, "exit code 255"),
                     "killed": ("FAILED", -9, "killed by signal 9 (SIGKILL)"),
                     "interrupted": ("FAILED", -2, "killed by signal 2 (SIGINT)")}
    assert (t["slow[0]"].state, t["slow[0]"].reason) == (
        "FAILED", "timeout: exceeded walltime 00:01:00")
    assert t["slow[0]"].exit_code != 0  # the signal SLURM stopped it with, not a clean exit
    assert all(r.resource == g.names["slurm"] for r in t.values())
    # One bundle, one array, one sbatch call per step: 50 instances went as one array.
    bundles = {b.step: b for b in g.bundles(exp_id)}
    assert set(bundles) == {"sweep", "fail3", "fail255", "killed", "interrupted", "slow"}
    shown = json.loads(subprocess.run(
        [str(Path(sys.executable).parent / "airavata"), "experiment", "bundles", exp_id, "--json"],
        capture_output=True, text=True, check=True).stdout)  # what a user sees of them
    assert {(b["step"], b["instances"], b["status"]) for b in shown} >= {
        ("sweep", 50, "COMPLETED"), ("slow", 1, "COMPLETED")}
    assert {tuple(b["jobs"]) for b in shown} == {b.infrastructure for b in bundles.values()}
    assert all(len(b.infrastructure) == 1 for b in bundles.values())
    # The job scripts on the cluster, as generated for this resource and step.
    exp_root = g.home.parent / "cluster" / exp_id
    sweep_job = (exp_root / ".bundles" / bundles["sweep"].id / "job_0.sh").read_text()
    assert "#SBATCH --array=0-49" in sweep_job.splitlines()
    slow_job = (exp_root / ".bundles" / bundles["slow"].id / "job_0.sh").read_text()
    assert {"#SBATCH --time=00:01:00", "#SBATCH --cpus-per-task=2", "#SBATCH --mem=1024M"} \
        <= set(slow_job.splitlines())
    # stdout/stderr came home into each task's logs.
    home = Path(g.store.experiments.get(exp_id).workdir)
    assert (home / "sweep" / "7" / "stdout.log").read_text().startswith("task 8 job ")
    assert (home / "sweep" / "7" / "stderr.log").read_text() == "oops\n"
    # Prefect shows each bundle as a flow run under the experiment's, in its final state.
    runs = httpx.post(f"{prefect_api}/flow_runs/filter", json={"flow_runs": {"id": {
        "any_": [b.flow_run_id for b in bundles.values()]}}}).json()
    by_id = {r["id"]: r for r in runs}
    assert by_id[bundles["sweep"].flow_run_id]["state"]["type"] == "COMPLETED"
    assert by_id[bundles["fail3"].flow_run_id]["state"]["type"] == "FAILED"
    assert all(r["parent_task_run_id"] for r in runs)
    assert all(r["parameters"] == {"experiment_id": exp_id, "bundle_id": b.id}
               for b in bundles.values() for r in runs if r["id"] == b.flow_run_id)


def _run_in_thread(g: Grid, exp_id: str) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(g.run(exp_id)), daemon=True)
    thread.start()
    return thread, result


def _wait_running(g: Grid, exp_id: str, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sum(t.state == "RUNNING" for t in g.tasks(exp_id).values()) < n:
        assert time.monotonic() < deadline, g.tasks(exp_id)
        time.sleep(0.3)


def test_cancelling_the_experiment_scancels_its_jobs(g: Grid, tmp_path: Path) -> None:
    exp_id = g.submit(g.spec(tmp_path, """\
        tasks:
          nap: {command: 'sleep 300', task_inputs: {I: 1..3}}
        """, on="slurm"))
    thread, result = _run_in_thread(g, exp_id)
    _wait_running(g, exp_id, 3)
    jobs = [j for b in g.bundles(exp_id) for j in b.infrastructure]
    assert _squeue(g.slurm, jobs)
    g.store.experiments.request_cancel(exp_id)  # what `airavata experiment cancel` does
    thread.join(90)
    assert result and result[0].is_cancelled()
    assert {t.state for t in g.tasks(exp_id).values()} == {"CANCELED"}
    assert _squeue(g.slurm, jobs) == []
    assert g.bundles(exp_id)[0].status == "CANCELED"


def test_cancelling_a_bundle_flow_run_in_prefect_scancels_it(g: Grid, tmp_path: Path,
                                                             prefect_api: str) -> None:
    exp_id = g.submit(g.spec(tmp_path, """\
        tasks:
          nap: {command: 'sleep 300', task_inputs: {I: 1..2}}
        """, on="slurm"))
    thread, result = _run_in_thread(g, exp_id)
    _wait_running(g, exp_id, 2)
    bundle = g.bundles(exp_id)[0]
    # What Cancel on the bundle's flow run in the Prefect UI does.
    r = httpx.post(f"{prefect_api}/flow_runs/{bundle.flow_run_id}/set_state",
                   json={"state": {"type": "CANCELLING"}, "force": True})
    assert r.status_code in (200, 201), r.text
    thread.join(90)
    assert result
    assert {t.state for t in g.tasks(exp_id).values()} == {"CANCELED"}
    assert _squeue(g.slurm, bundle.infrastructure) == []
    fr = httpx.get(f"{prefect_api}/flow_runs/{bundle.flow_run_id}").json()
    assert fr["state"]["type"] == "CANCELLED"


@pytest.mark.parametrize("route", ["slurm-ssh", "slurm-rest"])
def test_slurm_over_ssh_and_slurmrestd(g: Grid, tmp_path: Path, route: str) -> None:
    exp_id = g.submit(g.spec(tmp_path, """\
        tasks:
          who:
            command: 'id -un > "$OUT"'
            task_inputs: {I: 1..4}
            task_outputs: {OUT: who.txt}
        """, on=route))
    assert g.run(exp_id).is_completed()
    home = Path(g.store.experiments.get(exp_id).workdir)
    expected = g.sshd.user if route == "slurm-ssh" else "root"  # the JWT is root's
    assert (home / "who" / "3" / "who.txt").read_text().strip() == expected


def test_bare_metal_exit_codes_walltime_and_outputs(g: Grid, tmp_path: Path) -> None:
    exp_id = g.submit(g.spec(tmp_path, """\
        tasks:
          sim:
            command: 'echo "$I on $(hostname)" > "$OUT"; [ "$I" = 2 ] && exit 3;
                      [ "$I" = 3 ] && sleep 60; [ "$I" = 5 ] && exit 255;
                      [ "$I" = 6 ] && kill -INT $$; [ "$I" = 7 ] && kill -KILL $$; true'
            task_inputs: {I: 1..7}
            task_outputs: {OUT: out.txt}
            resources: {compute: {time: "0:00:03"}}
        """, on="baremetal"))
    assert g.run(exp_id).is_failed()
    t = g.tasks(exp_id)
    assert [t[f"sim[{i}]"].state for i in range(4)] == ["COMPLETED", "FAILED", "FAILED",
                                                       "COMPLETED"]
    assert t["sim[1]"].reason == "exit code 3"
    assert t["sim[2]"].reason == "timeout: exceeded walltime 00:00:03"
    # SIGINT reaches the script however the session was started over SSH.
    assert [(t[f"sim[{i}]"].exit_code, t[f"sim[{i}]"].reason) for i in (4, 5, 6)] == [
        (255, "exit code 255"), (-2, "killed by signal 2 (SIGINT)"),
        (-9, "killed by signal 9 (SIGKILL)")]
    home = Path(g.store.experiments.get(exp_id).workdir)
    assert (home / "sim" / "0" / "out.txt").read_text().startswith("1 on ")


def test_inputs_follow_their_upstream_across_resources(g: Grid, tmp_path: Path) -> None:
    """a runs here, b on SLURM (too big for this machine), c here again (too long for SLURM):
    each sees its upstream's output at the path `${t.OUT}` names where it runs."""
    exp_id = g.submit(g.spec(tmp_path, """\
        tasks:
          a:
            command: 'echo "from a" > "$OUT"'
            task_inputs: {I: 1..2}
            task_outputs: {OUT: a.txt}
          b:
            command: 'cat "$IN" > "$OUT"; echo "b in job $SLURM_JOB_ID" >> "$OUT"'
            foreach: [a]
            task_inputs: {IN: "${a.OUT}"}
            task_outputs: {OUT: b.txt}
            resources: {compute: {ram_gb: 1000}}
          c:
            command: 'cat "$IN" > "$OUT"'
            foreach: [b]
            task_inputs: {IN: "${b.OUT}"}
            task_outputs: {OUT: c.txt}
            resources: {compute: {time: "1:00:00"}}
        """, on=["local", "slurm"], preferred="local"))
    assert g.run(exp_id).is_completed()
    t = g.tasks(exp_id)
    assert [t[f"{s}[0]"].resource for s in "abc"] == ["local", g.names["slurm"], "local"]
    home = Path(g.store.experiments.get(exp_id).workdir)
    lines = (home / "c" / "1" / "c.txt").read_text().splitlines()
    assert lines[0] == "from a" and lines[1].startswith("b in job ") and lines[1][9:].isdigit()
    # a's outputs reached SLURM through its cache (one content, verified there, moved once).
    totals = {x.resource: x for x in g.store.staging.totals()}[g.names["slurm"]]
    assert totals.misses + totals.hits == 1 and totals.retries == 0, totals
    # Lineage across them: c[1] read b[1]'s output, made on SLURM from a[1]'s.
    import hashlib

    made = {r.instance_id: r for r in g.store.lineage.of_experiment(exp_id)}
    assert made["b[1]"].resource == g.names["slurm"] and made["c[1]"].resource == "local"
    assert [(u.instance_id, u.sha256) for u in made["c[1]"].upstream] == [
        ("b[1]", hashlib.sha256((home / "b" / "1" / "b.txt").read_bytes()).hexdigest())]
    assert [u.output_id for u in made["b[1]"].upstream] == [made["a[1]"].output_id]


def test_a_credential_unshared_after_submit_stops_the_bundle(g: Grid, tmp_path: Path) -> None:
    from airavata_prefect.adapters.spicedb import Subject
    from airavata_prefect.usecases.credentials import CredentialService

    svc = CredentialService(g.store, g.authz, g.bao)
    cred = g.store.credentials.at("secret", f"users/alice/ssh-{g.names['slurm'][3:]}")
    assert cred is not None
    g.authz.relate("project", "lab", "member", Subject.user("bob"))
    svc.share("alice", cred, Subject.user("bob"))
    exp_id = g.submit(g.spec(tmp_path, "tasks:\n  x: {command: 'true'}\n", on="baremetal"),
                      user="bob")
    g.authz.unrelate("credential", cred, "reader", Subject.user("bob"))  # access revoked
    assert g.run(exp_id).is_failed()
    reason = g.tasks(exp_id)["x[0]"].reason
    assert f"on compute:{g.names['baremetal']}" in reason
    assert f"user bob lacks credential.read on credential {cred}" in reason
    denied = [a for a in g.store.audit.trail(actor="bob") if a.outcome == "denied"]
    assert denied and denied[-1].action == "credential.read"
    # One id ties the submit, the worker's refusal and what the user reads.
    cid = g.store.audit.submit_correlation(exp_id)
    assert cid and denied[-1].correlation_id == cid and f"(correlation id {cid})" in reason


def test_openbao_down_stops_a_submit_before_anything_is_stored(
        g: Grid, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airavata_prefect.usecases.errors import Unavailable
    from tests.services import free_port

    before = len(g.store.experiments.list(1000))
    monkeypatch.setenv("AIRAVATA_OPENBAO_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(Unavailable, match=r"cannot run: OpenBao at http://127\.0\.0\.1:\d+ "
                                          "is unreachable"):
        g.submit(g.spec(tmp_path, "tasks:\n  x: {command: 'true'}\n", on="baremetal"))
    assert len(g.store.experiments.list(1000)) == before


def _needles(g: Grid, s3_secret: str) -> dict[str, bytes]:
    """The secrets this module's runs used, and distinctive fragments of the SSH key (a leak
    of any part of it counts)."""
    key_lines = g.sshd.private_key.strip().splitlines()[1:-1]
    needles = {"s3 secret key": s3_secret.encode(),
               "slurmrestd token": g.slurm.token("root").split(".")[-1].encode(),
               "openbao token": g.bao._client.token.encode()}
    for i, line in enumerate(key_lines[1:], 1):  # line 0 is the same in every OpenSSH key
        needles[f"ssh key line {i}"] = line.encode()
    return needles


def _scan_files(roots: list[Path], needles: dict[str, bytes]) -> list[str]:
    found = []
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if not path.is_file() or path.is_symlink():
                continue
            data = file_bytes(path)
            found += [f"{what} in {path}" for what, n in needles.items() if n in data]
    return found


def _pages(api: str, path: str, body: dict) -> list[bytes]:
    """Every page of a Prefect listing (offset-paged), so no leak hides past the first."""
    pages, offset = [], 0
    while True:
        resp = httpx.post(f"{api}{path}", json={**body, "limit": 200, "offset": offset})
        assert resp.status_code == 200, (path, resp.text[:300])
        pages.append(resp.content)
        if len(resp.json()) < 200:
            return pages
        offset += 200


def _event_pages(api: str) -> list[bytes]:
    resp = httpx.post(f"{api}/events/filter", json={"limit": 50})
    assert resp.status_code == 200, resp.text[:300]
    pages = [resp.content]
    while (nxt := resp.json().get("next_page")) and len(pages) < 200:
        resp = httpx.get(nxt)
        pages.append(resp.content)
    return pages


def _scan_prefect(api: str, needles: dict[str, bytes]) -> list[str]:
    everything = {
        "block documents (include_secrets)": _pages(api, "/block_documents/filter",
                                                    {"include_secrets": True}),
        "flow runs (parameters, job variables)": _pages(api, "/flow_runs/filter", {}),
        "task runs": _pages(api, "/task_runs/filter", {}),
        "deployments": _pages(api, "/deployments/filter", {}),
        "work pools": _pages(api, "/work_pools/filter", {}),
        "logs": _pages(api, "/logs/filter", {}),
        "artifacts": _pages(api, "/artifacts/filter", {}),
        "events": _event_pages(api),
    }
    return [f"{n} in Prefect {what}" for what, pages in everything.items()
            for n, v in needles.items() if any(v in page for page in pages)]


def _scan_database(url: str, needles: dict[str, bytes]) -> list[str]:
    """Every row of every table of Prefect's own (PostgreSQL) database, as text."""
    import psycopg

    found = []
    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for table in tables:
            for (row,) in conn.execute(f'SELECT t::text FROM "{table}" t'):
                data = row.encode()
                found += [f"{n} in Prefect's table {table}" for n, v in needles.items()
                          if v in data]
    return found


def test_s3_mounts_on_bare_metal_and_no_secret_anywhere(g: Grid, tmp_path: Path, s3,
                                                         prefect_api: str) -> None:
    """A full run that used an SSH key (bare metal, SLURM over SSH) and an S3 secret: neither
    value is in our database, Prefect's database or API, logs, job scripts, or the task's
    recorded environment."""
    import os

    import boto3

    from airavata_prefect.adapters.openbao import SecretRef
    from airavata_prefect.blocks import S3Storage
    from airavata_prefect.usecases import registration
    from airavata_prefect.usecases.context import Context
    from airavata_prefect.usecases.credentials import CredentialService
    from airavata_prefect.usecases.settings import get_settings

    bucket = f"inputs-{g.names['slurm'][3:]}"
    client = boto3.client("s3", endpoint_url=s3.url, aws_access_key_id=s3.access_key,
                          aws_secret_access_key=s3.secret_key, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="run1/params.txt", Body=b"alpha=0.5\n")
    client.put_object(Bucket=bucket, Key="run1/data/x.csv", Body=b"1,2\n")
    cid = f"s3-{bucket}"
    ref = SecretRef(f"users/alice/{cid}")
    CredentialService(g.store, g.authz, g.bao).create(
        "alice", cid, ref, {"access_key": s3.access_key, "secret_key": s3.secret_key})
    g.store.credentials.add(cid, owner="alice", mount=ref.mount, path=ref.path)
    storage = f"s3d-{g.names['slurm'][3:]}"
    ctx = Context(get_settings(), g.store, "alice", _authz=g.authz)
    registration.register_storage(ctx, project="lab", name=storage,
                                  block=S3Storage(bucket=bucket, endpoint_url=s3.url,
                                                  credential=registration.credential_ref(
                                                      ctx, cid)))
    body = f"""\
        tasks:
          use:
            command: 'cat params.txt > "$OUT"; cat inputs/data/x.csv >> "$OUT"; env > env.txt'
            task_inputs: {{I: 1..2}}
            task_outputs: {{OUT: out.txt}}
            resources:
              storage: ["{storage}:/run1/params.txt:./params.txt", "{storage}:/run1:./inputs"]
        """
    exp_id = g.submit(g.spec(tmp_path, body, on="baremetal"))
    assert g.run(exp_id).is_completed(), g.tasks(exp_id)
    home = Path(g.store.experiments.get(exp_id).workdir)
    assert (home / "use" / "1" / "out.txt").read_text() == "alpha=0.5\n1,2\n"
    # Staged once into the resource's cache, verified there; what each mount held is kept.
    import hashlib

    staged = {(f.mount.rsplit(":", 1)[-1], f.path): f.sha256
              for f in g.store.staging.inputs(exp_id, "use")}
    digest = {b: hashlib.sha256(b).hexdigest() for b in (b"alpha=0.5\n", b"1,2\n")}
    assert staged == {("./params.txt", "params.txt"): digest[b"alpha=0.5\n"],
                      ("./inputs", "params.txt"): digest[b"alpha=0.5\n"],
                      ("./inputs", "data/x.csv"): digest[b"1,2\n"]}
    totals = {t.resource: t for t in g.store.staging.totals()}[g.names["baremetal"]]
    assert (totals.misses + totals.hits, totals.retries) == (2, 0)
    from airavata_prefect.usecases import resources

    shown = resources.get(ctx, "compute", g.names["baremetal"]).staging  # `resource show`
    assert shown == {"cache_hits": totals.hits, "cache_misses": totals.misses,
                     "bytes_sent": totals.bytes_moved, "bytes_spared": totals.bytes_saved,
                     "resent_after_mismatch": 0} and totals.bytes_moved + totals.bytes_saved \
        == len(b"alpha=0.5\n1,2\n")
    ssh_exp = g.submit(g.spec(tmp_path, "tasks:\n  e: {command: 'env > env.txt'}\n",
                              on="slurm-ssh", name="ssh.yml"))
    assert g.run(ssh_exp).is_completed()

    from tests.conftest import PREFECT_DATABASE

    needles = _needles(g, s3.secret_key)
    prefect_home = Path(os.environ["PREFECT_HOME"])
    remote = [p for p in g.sshd.home.iterdir() if p.name.startswith(("bm-", "grid-"))]
    roots = [g.home, *g.logs.values(), g.home.parent / "cluster", g.home.parent / "rest",
             prefect_home, *remote]
    assert (g.home / "airavata.db").exists()
    leaks = (_scan_files(roots, needles) + _scan_prefect(prefect_api, needles)
             + _scan_database(PREFECT_DATABASE[0], needles))
    assert leaks == []
    # Prefect's database is really the haystack: it holds this run.
    assert _scan_database(PREFECT_DATABASE[0], {"experiment": exp_id.encode()}) != []
    # The haystacks hold what a leak would be in: the tasks' recorded environments were
    # among the files scanned, and the scan finds what they do hold.
    recorded = [p for r in remote for p in r.rglob("env.txt")]
    assert len(recorded) >= 3
    assert _scan_files(recorded, {"task id": b"AIRAVATA_TASK_ID=use[1]"}) != []


def test_a_killed_run_readopts_its_slurm_array(g: Grid, tmp_path: Path, prefect_api: str) -> None:
    """The process running the experiment dies while its array runs on SLURM: the resuming
    run follows that array to its end and never submits the bundle again."""
    import asyncio
    import os
    import signal

    exp_id = g.submit(g.spec(tmp_path, """\
        tasks:
          nap: {command: 'sleep 6; echo "$I" > "$OUT"', task_inputs: {I: 1..4},
                task_outputs: {OUT: out.txt}}
        """, on="slurm"))
    code = ("import asyncio; from airavata_prefect.flows.experiment_flow import run_experiment;"
            f" asyncio.run(run_experiment(experiment_id={exp_id!r}))")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while not (g.bundles(exp_id) and g.bundles(exp_id)[0].infrastructure):
        assert time.monotonic() < deadline and proc.poll() is None, "the array never went out"
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    dead = g.store.experiments.get(exp_id).flow_run_id
    assert dead
    # What the worker does to a flow run whose process died.
    r = httpx.post(f"{prefect_api}/flow_runs/{dead}/set_state",
                   json={"state": {"type": "CRASHED", "name": "Crashed"}, "force": True})
    assert r.status_code in (200, 201), r.text
    from airavata_prefect.flows.experiment_flow import run_experiment
    state = asyncio.run(run_experiment(resume_of=dead, return_state=True))
    assert state.is_completed(), state.message
    t = g.tasks(exp_id)
    assert {x.state for x in t.values()} == {"COMPLETED"}
    assert {x.attempt for x in t.values()} == {0}
    bundles = g.bundles(exp_id)
    assert len(bundles) == 1 and bundles[0].status == "COMPLETED"
    exp = g.store.experiments.get(exp_id)
    assert exp.resumes == 1 and exp.flow_run_id != dead
    # One array on the cluster for this experiment: submitted once.
    out = subprocess.run(["squeue", "--states=all", "-h", "-o", "%F|%Z"],
                         env={"SLURM_CONF": str(g.slurm.conf), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True).stdout
    arrays = {line.split("|")[0] for line in out.splitlines() if exp_id in line}
    assert arrays == {bundles[0].infrastructure[0].split("_")[0]}, out
    home = Path(exp.workdir)
    assert (home / "nap" / "3" / "out.txt").read_text() == "4\n"
