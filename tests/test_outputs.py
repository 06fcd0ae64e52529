"""An experiment's declared outputs (usecases/outputs.py) through the use cases, the CLI in local
and server mode, and the REST API: a real store, real files written where instances write them,
among them links planted to lead outside the experiment's directory, which are never read."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pytest

from airavata_prefect.adapters.spicedb import Subject
from airavata_prefect.adapters.store import Store
from airavata_prefect.api.rest.routes_outputs import OutputOut
from airavata_prefect.domain.records import Experiment
from airavata_prefect.usecases import archives
from airavata_prefect.usecases import outputs as use
from airavata_prefect.usecases.context import Context, os_login
from airavata_prefect.usecases.errors import BadInput, Forbidden
from airavata_prefect.usecases.settings import get_settings
from airavata_prefect.usecases.submit import submit
from tests.api_harness import ApiServer, api_server
from tests.cli_inproc import Ran, airavata

AIRAVATA = str(Path(sys.executable).parent / "airavata")
SPEC = """\
name: outs
tasks:
  sweep:
    command: 'true'
    task_inputs: {X: 0..3}
    task_outputs: {RESULT: result.txt, EXTRA: sub/extra.log}
  summary:
    command: 'true'
    depends_on: [sweep]
    task_outputs: {SUMMARY: summary.txt}
"""
BIG = os.urandom(3 * archives.CHUNK + 123)  # several chunks, incompressible
PASSWD = Path("/etc/passwd").read_bytes()


@dataclass
class Made:
    store: Store
    exp: Experiment
    files: dict[str, bytes]  # what exists, by `<step>/<index>/<path>`

    def ctx(self, user: str) -> Context:
        return Context(get_settings(), self.store, user)


def _make(owner: str) -> Made:
    """A stored experiment owned by `owner`, its instances' outputs written as a run would,
    plus planted links."""
    settings = get_settings()
    store = Store(settings.db_url)
    ctx = Context(settings, store, owner)
    spec = settings.home / "outs.yml"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(SPEC)
    exp_id = submit(ctx, spec, [], authorize=False)  # no Prefect: placed on this machine
    ctx.authz.relate("experiment", exp_id, "owner", Subject.user(owner))
    ctx.authz.close()
    exp = store.experiments.get(exp_id)
    root = Path(exp.workdir)
    files = {"sweep/0/result.txt": b"zero\n", "sweep/0/sub/extra.log": b"log 0\n",
             "sweep/2/result.txt": BIG}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    for d in ("sweep/1/sub", "sweep/2", "sweep/3", "summary/0"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "sweep/1/result.txt").symlink_to("/etc/passwd")  # a file outside
    (root / "sweep/2/sub").symlink_to("/etc")  # a directory outside, on the way
    (root / "sweep/3/sub").mkdir()
    os.mkfifo(root / "sweep/3/sub/extra.log")  # not a file: never opened for reading
    # A link inside the experiment's directory is followed, and read.
    (root / "summary/0/summary.txt").symlink_to("../../sweep/0/result.txt")
    files["summary/0/summary.txt"] = b"zero\n"
    return Made(store, exp, files)


@pytest.fixture()
def made(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Made]:
    monkeypatch.delenv("AIRAVATA_USER", raising=False)
    m = _make(os_login())
    yield m
    m.store.close()


def test_lists_every_declared_output_with_size_and_sha256(made: Made) -> None:
    rows = {r.path: r for r in use.outputs(made.ctx(os_login()), made.exp.short_id)}
    assert list(rows) == [  # the graph's step order, then index; outputs as declared
        *(f"sweep/{i}/{p}" for i in range(4) for p in ("result.txt", "sub/extra.log")),
        "summary/0/summary.txt"]
    for path, row in rows.items():
        data = made.files.get(path)
        assert row.exists == (data is not None), path
        assert row.size == (None if data is None else len(data))
        assert row.sha256 == (None if data is None else hashlib.sha256(data).hexdigest())
        assert (row.note is None) == (data is not None), path
    first = rows["sweep/0/result.txt"]
    assert (first.experiment_id, first.instance_id, first.step, first.index, first.name,
            first.state) == (made.exp.id, "sweep[0]", "sweep", 0, "RESULT", "CREATED")
    assert rows["sweep/1/sub/extra.log"].note == "missing"
    assert rows["sweep/3/result.txt"].note == "missing"
    for planted in ("sweep/1/result.txt", "sweep/2/sub/extra.log"):  # links to /etc
        assert rows[planted].note == "a link leading outside the experiment's directory: " \
                                     "not read", planted
    assert rows["sweep/3/sub/extra.log"].note == "not a regular file"
    assert hashlib.sha256(PASSWD).hexdigest() not in {r.sha256 for r in rows.values()}


def test_task_narrows_to_a_step_or_an_instance(made: Made) -> None:
    ctx = made.ctx(os_login())
    assert [r.path for r in use.outputs(ctx, made.exp.id, task="summary")] == [
        "summary/0/summary.txt"]
    assert [(r.instance_id, r.name) for r in use.outputs(ctx, made.exp.id, task="sweep[2]")] \
        == [("sweep[2]", "RESULT"), ("sweep[2]", "EXTRA")]
    assert len(use.outputs(ctx, made.exp.id, task="sweep")) == 8
    short = made.exp.short_id
    for task, message in [
            ("nope", f"experiment {short} has no step or instance 'nope' (its steps: sweep, "
                     "summary; an instance is STEP[INDEX])"),
            ("sweep[4]", f"experiment {short} has no instance 'sweep[4]' (step sweep has 4)"),
            ("sweep[x]", f"experiment {short} has no step or instance 'sweep[x]' (its steps: "
                         "sweep, summary; an instance is STEP[INDEX])")]:
        with pytest.raises(BadInput) as caught:
            use.outputs(ctx, made.exp.id, task=task)
        assert str(caught.value) == message
        with pytest.raises(BadInput):  # refused before anything streams
            use.archive(ctx, made.exp.id, task=task)


def test_someone_who_may_not_read_the_experiment_sees_nothing(made: Made,
                                                              tmp_path: Path) -> None:
    ctx = made.ctx("mallory")
    for call in (lambda: use.outputs(ctx, made.exp.id), lambda: use.archive(ctx, made.exp.id),
                 lambda: use.copy_to(ctx, made.exp.id, tmp_path / "d")):
        with pytest.raises(Forbidden, match=r"user mallory lacks scheduler\.queue\.read"):
            call()
    assert not (tmp_path / "d").exists()


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        out = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert m.isfile() and f is not None, m.name
            out[m.name] = f.read()
        return out


def test_archive_streams_the_existing_outputs_only(made: Made) -> None:
    chunks = list(use.archive(made.ctx(os_login()), made.exp.id))
    assert len(chunks) > 3 and max(map(len, chunks)) < 2 * archives.CHUNK  # streamed, bounded
    assert _members(b"".join(chunks)) == made.files  # no /etc/passwd, no FIFO
    one = b"".join(use.archive(made.ctx(os_login()), made.exp.id, task="sweep[0]"))
    assert _members(one) == {k: v for k, v in made.files.items() if k.startswith("sweep/0/")}


def test_copy_to_writes_existing_outputs_inside_dest(made: Made, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    written = use.copy_to(made.ctx(os_login()), made.exp.id, dest)
    assert sorted(written) == sorted(dest.resolve() / p for p in made.files)
    got = {str(p.relative_to(dest)): p.read_bytes()
           for p in dest.rglob("*") if p.is_file() or p.is_symlink()}
    assert got == made.files  # nothing else: no temporary names left, no planted link
    assert not any(p.is_symlink() for p in dest.rglob("*"))


def test_write_inside_refuses_other_places(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "sweep").mkdir(parents=True)
    (dest / "sweep" / "0").symlink_to(tmp_path)  # a link on the way out of dest
    for rel in ("../x", "/etc/x", "sweep/0/x", ""):
        with pytest.raises(BadInput, match="would be written outside"):
            archives.write_inside(dest, rel, [b"x"])
    assert not (tmp_path / "x").exists()
    assert archives.write_inside(dest, "a/b.txt", [b"1", b"2"]).read_bytes() == b"12"


# -- the CLI, local mode --------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None, stdin: str = "") -> Ran:
    return airavata(*args, env=env, stdin=stdin)


def test_cli_outputs_and_download_in_local_mode(made: Made, tmp_path: Path) -> None:
    short = made.exp.short_id
    r = subprocess.run([AIRAVATA, "experiment", "outputs", short, "--json"],  # the script
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert set(rows[0]) == {f.name for f in fields(use.OutputFile)} == set(OutputOut.model_fields)
    assert {x["path"]: x["sha256"] for x in rows if x["exists"]} == {
        p: hashlib.sha256(d).hexdigest() for p, d in made.files.items()}
    r = _cli("experiment", "outputs", short, "--task", "sweep[0]")
    assert r.returncode == 0 and "2 of 2 declared outputs exist" in r.stdout, r.stdout + r.stderr
    assert "sub/extra.log" in r.stdout and hashlib.sha256(b"zero\n").hexdigest()[:12] in r.stdout

    r = _cli("experiment", "download", short, "--output-dir", str(tmp_path / "files"))
    assert r.returncode == 0, r.stderr
    assert f"{len(made.files)} output files in {tmp_path / 'files'}" in r.stdout
    assert (tmp_path / "files" / "sweep/2/result.txt").read_bytes() == BIG
    r = _cli("experiment", "download", short, "-o", str(tmp_path / "arch"), "--archive",
             "-t", "sweep")
    assert r.returncode == 0, r.stderr
    archive = tmp_path / "arch" / f"{short}-outputs.tar.gz"
    assert f"wrote {archive.resolve()} (" in r.stdout
    assert _members(archive.read_bytes()) == {k: v for k, v in made.files.items()
                                              if k.startswith("sweep/")}


def test_cli_bad_input_is_one_line(made: Made, tmp_path: Path) -> None:
    dest = tmp_path / "nothing"
    for args, says in ((("outputs", "ffffffff"), "error: no experiment 'ffffffff'"),
                       (("download", made.exp.short_id, "--task", "nope", "-o", str(dest)),
                        f"error: experiment {made.exp.short_id} has no step or instance "
                        "'nope'")):
        r = _cli("experiment", *args)
        assert r.returncode == 2, r.stdout + r.stderr
        assert r.stderr.startswith(says) and r.stderr.count("\n") == 1, r.stderr
        assert "Traceback" not in r.stderr
    assert not dest.exists()


# -- the REST API and the CLI in server mode ------------------------------------------------------


@pytest.fixture()
def served(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ApiServer, Made]]:
    """The API on this test's home (no Prefect needed: nothing here runs), alice's experiment
    in its store."""
    monkeypatch.delenv("AIRAVATA_USER", raising=False)
    with api_server(home) as api:
        api.add_user("alice").close()
        m = _make("alice")
        try:
            yield api, m
        finally:
            m.store.close()


def test_rest_lists_and_streams_outputs_for_readers_only(served: tuple[ApiServer, Made]
                                                        ) -> None:
    api, made = served
    ref = made.exp.short_id
    with api.client(api.login("alice", "alice-password-1")) as alice:
        r = alice.get(f"/experiments/{ref}/outputs")
        assert r.status_code == 200, r.text
        assert r.json() == [OutputOut(**asdict(o)).model_dump()
                            for o in use.outputs(made.ctx("alice"), ref)]
        r = alice.get(f"/experiments/{ref}/outputs", params={"task": "sweep[1]"})
        assert [o["note"] for o in r.json()] == [
            "a link leading outside the experiment's directory: not read", "missing"]
        r = alice.get(f"/experiments/{ref}/outputs/archive")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/gzip"
        assert r.headers["content-disposition"] == f'attachment; filename="{ref}-outputs.tar.gz"'
        assert _members(r.content) == made.files
        for path in ("outputs", "outputs/archive"):
            r = alice.get(f"/experiments/{ref}/{path}", params={"task": "nope"})
            assert r.status_code == 400 and "has no step or instance 'nope'" in \
                r.json()["error"]["message"], r.text
    with api.add_user("mallory") as mallory:
        for path in ("outputs", "outputs/archive"):
            r = mallory.get(f"/experiments/{ref}/{path}")
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text


def test_cli_download_in_server_mode(served: tuple[ApiServer, Made], tmp_path: Path) -> None:
    api, made = served
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRAVATA_", "PREFECT_API"))}
    env.update(AIRAVATA_HOME=str(tmp_path / "cli-home"), AIRAVATA_API_URL=api.base)
    r = _cli("auth", "login", "-u", "alice", "--password-stdin", env=env,
             stdin="alice-password-1\n")
    assert r.returncode == 0, r.stderr
    short = made.exp.short_id
    r = _cli("experiment", "outputs", short, "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert {x["path"] for x in json.loads(r.stdout) if x["exists"]} == set(made.files)
    r = _cli("experiment", "download", short, "-o", str(tmp_path / "files"), env=env)
    assert r.returncode == 0, r.stderr
    got = {str(p.relative_to(tmp_path / "files")): p.read_bytes()
           for p in (tmp_path / "files").rglob("*") if p.is_file()}
    assert got == made.files
    r = _cli("experiment", "download", short, "-o", str(tmp_path), "--archive", env=env)
    assert r.returncode == 0, r.stderr
    assert _members((tmp_path / f"{short}-outputs.tar.gz").read_bytes()) == made.files
    r = _cli("experiment", "download", short, "--task", "nope", "-o", str(tmp_path), env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "has no step or instance 'nope'" in r.stderr
