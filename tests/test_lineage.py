"""Lineage of outputs (domain/lineage.py, usecases/lineage.py): a real two-step foreach
experiment run on the `local` resource through the run path every mode shares (run.execute),
its records read through the use case, the CLI in process and the REST API of a real server;
and the pure parts (ids, script hash, what an instance consumed) on their own."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from airavata_prefect.adapters.spicedb import Subject
from airavata_prefect.adapters.store import Store
from airavata_prefect.adapters.store.staging import StagedFile
from airavata_prefect.domain.compile import compile_graph
from airavata_prefect.domain.dag import TaskGraph
from airavata_prefect.domain.errors import NotFound
from airavata_prefect.domain.instance import render_script
from airavata_prefect.domain.lineage import (
    OUTPUT_ID,
    experiments_in_path,
    output_id,
    output_path,
    parameters,
    script_sha256,
)
from airavata_prefect.domain.records import Experiment, load_graph
from airavata_prefect.domain.scheduler import Executor, Hooks
from airavata_prefect.domain.spec import parse_spec_text
from airavata_prefect.domain.states import ExperimentStatus
from airavata_prefect.usecases import lineage as use
from airavata_prefect.usecases import outputs, run
from airavata_prefect.usecases.context import Context, os_login
from airavata_prefect.usecases.errors import BadInput, Forbidden
from airavata_prefect.usecases.settings import get_settings
from airavata_prefect.usecases.submit import submit
from tests.api_harness import api_server
from tests.cli_inproc import airavata

SPEC = """\
name: lineage
parameters:
  GREETING: {type: string, default: hello}
tasks:
  a:
    command: 'echo "$GREETING $I" > "$OUT"'
    task_inputs: {I: 1..3}
    task_outputs: {OUT: made.txt}
  b:
    command: 'mkdir -p out && tr a-z A-Z < "$SRC" > "$RES" && echo "$K $MODE" >> "$RES"'
    foreach: [a]
    task_inputs: {SRC: "${a.OUT}", K: 7}
    task_outputs: {RES: ./out/result.txt}
    resources: {environment: ["MODE=upper"]}
"""
GENOME = StagedFile("nfs:/ref:./ref", "genome.fa", hashlib.sha256(b">chr1\n").hexdigest(), 6)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the pure parts -------------------------------------------------------------------------------


def _graph(text: str) -> TaskGraph:
    return compile_graph(parse_spec_text(textwrap.dedent(text), "t.yml"), {}, root="/runs/e")


def test_ids_paths_and_the_script_hash() -> None:
    oid = output_id("e1", "a/0/made.txt")
    assert OUTPUT_ID.fullmatch(oid) and oid == output_id("e1", "a/0/made.txt")
    assert len({oid, output_id("e2", "a/0/made.txt"), output_id("e1", "a/1/made.txt")}) == 3
    assert output_path("a", 0, "./out//r.txt") == "a/0/out/r.txt"
    graph = _graph(SPEC)
    b = graph.by_name["b"]
    assert script_sha256(b) == hashlib.sha256(
        render_script(b.script, ["MODE=upper"]).encode()).hexdigest()
    assert "export MODE=" in render_script(b.script, b.resources.environment)
    inst = graph.instance("b", 2)
    assert parameters(inst) == {"GREETING": "hello", "K": "7", "SRC": "/runs/e/a/2/made.txt"}
    exp = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
    assert experiments_in_path(f"/x/runs/{exp}/a/0/made.txt") == [exp]
    assert experiments_in_path("/tmp/a/b") == []


def test_consumed_outputs_name_exactly_what_the_inputs_refer_to() -> None:
    graph = _graph("""\
        tasks:
          a:
            command: 'true'
            task_inputs: {I: 1..2}
            task_outputs: {X: x.txt, Y: y.txt}
          one:
            command: 'true'
            task_outputs: {Z: z.txt}
          b:
            command: 'true'
            foreach: [a]
            task_inputs: {IN: "${a.Y}", ALSO: "${one.Z}:${a.Y}", N: [1, 2]}
          c:
            command: 'true'
            foreach: [a]
            task_inputs: {PICK: ["${a.X}", "${a.Y}"]}
          d:
            command: 'true'
            depends_on: [a]
        """)
    # b[3]: a[1] (foreach, outermost), N=2; a.Y named twice, once; one.Z has one instance.
    assert graph.consumed_outputs("b", 3) == [("a", 1, "Y"), ("one", 0, "Z")]
    assert graph.consumed_outputs("c", 2) == [("a", 1, "X")]  # a swept input: the chosen one
    assert graph.consumed_outputs("c", 3) == [("a", 1, "Y")]
    assert graph.consumed_outputs("d", 0) == []  # a barrier reads nothing it names
    assert graph.consumed_outputs("a", 1) == []


def test_a_run_with_no_outputs_is_not_wrapped(tmp_path: Path) -> None:
    """The throughput path (thousands of instances with no outputs) pays nothing for lineage."""
    graph = _graph("tasks:\n  t:\n    command: 'true'\n    task_inputs: {I: 1..3}\n")
    executor = cast(Executor, object())
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    try:
        assert use.recording(executor, store, "e", graph, lambda s, i: "local") is executor
        assert isinstance(use.recording(executor, store, "e", _graph(SPEC), lambda s, i: "local"),
                          use.LineageRecorder)
    finally:
        store.close()


# -- a real run -----------------------------------------------------------------------------------


@dataclass
class Ran:
    store: Store
    exp: Experiment
    root: Path  # the experiment's directory
    home: Path

    def ctx(self, user: str) -> Context:
        return Context(get_settings(), self.store, user)


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ran]:
    """The experiment run once for the module on this machine (no Prefect), its owner the OS
    login and alice; b's storage mounts as staging records them."""
    base = tmp_path_factory.mktemp("lineage")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRAVATA_HOME", str(base / "airavata"))
        for name in ("AIRAVATA_DATABASE_URL", "AIRAVATA_USER", "PREFECT_API_URL"):
            mp.delenv(name, raising=False)
        settings = get_settings()
        store = Store(settings.db_url)
        ctx = Context(settings, store, os_login())
        spec = base / "lineage.yml"
        spec.write_text(SPEC)
        exp_id = submit(ctx, spec, [], authorize=False)  # placed on this machine
        for who in (os_login(), "alice"):
            ctx.authz.relate("experiment", exp_id, "owner", Subject.user(who))
        ctx.authz.close()
        store.staging.record_inputs(exp_id, "b", [GENOME])
        claimed = run.claim(store, exp_id, None)
        status, _, _ = asyncio.run(run.execute(store, claimed, settings, Hooks(),
                                               flow_run_id=None))
        assert status == ExperimentStatus.COMPLETED, store.tasks.list(exp_id)
        exp = store.experiments.get(exp_id)
        try:
            yield Ran(store, exp, Path(exp.workdir), base / "airavata")
        finally:
            store.close()


def test_each_output_records_its_instance_inputs_script_parameters_and_resource(
        ran: Ran) -> None:
    records = {r.path: r for r in ran.store.lineage.of_experiment(ran.exp.id)}
    assert sorted(records) == [*(f"a/{i}/made.txt" for i in range(3)),
                               *(f"b/{i}/out/result.txt" for i in range(3))]
    for i in range(3):
        a, b = records[f"a/{i}/made.txt"], records[f"b/{i}/out/result.txt"]
        assert (ran.root / a.path).read_text() == f"hello {i + 1}\n"
        assert (ran.root / b.path).read_text() == f"HELLO {i + 1}\n7 upper\n"
        for rec in (a, b):
            assert rec.output_id == output_id(ran.exp.id, rec.path)
            assert rec.sha256 == sha(ran.root / rec.path)
            assert rec.size == (ran.root / rec.path).stat().st_size
            assert (rec.resource, rec.attempt, rec.experiment_id) == ("local", 0, ran.exp.id)
        assert (a.instance_id, a.name, b.instance_id, b.name) == (f"a[{i}]", "OUT", f"b[{i}]",
                                                                   "RES")
        # The script each ran, as the local resource wrote it (b's with its environment).
        assert a.script_sha256 == sha(ran.root / "a" / "script.sh")
        assert b.script_sha256 == sha(ran.root / "b" / "script.sh") != a.script_sha256
        assert a.parameters == {"GREETING": "hello", "I": str(i + 1)}
        assert b.parameters == {"GREETING": "hello", "K": "7",
                                "SRC": str(ran.root / f"a/{i}/made.txt")}
        # b[i] read a[i]'s output, as it was: its id and checksum.
        (up,) = b.upstream
        assert (up.output_id, up.instance_id, up.name, up.path, up.sha256) == (
            a.output_id, f"a[{i}]", "OUT", a.path, sha(ran.root / a.path))
        assert a.upstream == () and a.mounts == ()
        assert [(m.mount, m.path, m.sha256, m.size) for m in b.mounts] == [
            (GENOME.mount, GENOME.path, GENOME.sha256, GENOME.size)]
    listed = outputs.outputs(ran.ctx(os_login()), ran.exp.id, task="b[1]")
    assert [o.output_id for o in listed] == [records["b/1/out/result.txt"].output_id]


def test_lineage_walks_upstream_by_id_and_by_path(ran: Ran) -> None:
    ctx = ran.ctx(os_login())
    b1 = output_id(ran.exp.id, "b/1/out/result.txt")
    a1 = output_id(ran.exp.id, "a/1/made.txt")
    for ref in (b1, f"{ran.exp.short_id}:b/1/out/result.txt",
                f"{ran.exp.id}:./b/1/out//result.txt", str(ran.root / "b/1/out/result.txt")):
        found = use.lineage(ctx, ref)
        assert (found.output_id, found.experiment_id, found.truncated) == (
            b1, ran.exp.id, False), ref
        assert [o.output_id for o in found.outputs] == [b1, a1], ref
    assert use.lineage_at(ctx, ran.exp.short_id, str(ran.root / "a/1/made.txt")).outputs[0] \
        .output_id == a1
    shallow = use.lineage(ctx, b1, depth=0)
    assert [o.output_id for o in shallow.outputs] == [b1] and shallow.truncated


def test_refusals_and_unknowns_say_one_thing(ran: Ran, tmp_path: Path) -> None:
    b0 = output_id(ran.exp.id, "b/0/out/result.txt")
    with pytest.raises(Forbidden, match=r"user mallory lacks scheduler\.queue\.read") as no:
        use.lineage(ran.ctx("mallory"), b0)
    (denied,) = ran.store.audit.trail(correlation_id=no.value.correlation_id, actor="mallory")
    assert (denied.action, denied.object, denied.outcome) == (
        "scheduler.queue.read", f"experiment:{ran.exp.id}", "denied")
    ctx = ran.ctx(os_login())
    short = ran.exp.short_id
    for ref, error, says in [
            ("0123456789abcdef", NotFound, "no output '0123456789abcdef' has lineage recorded"),
            (f"{short}:b/0/stdout.log", NotFound, f"no lineage of b/0/stdout.log in experiment "
                                                  f"{short}"),
            (f"{short}:../x", BadInput, "a path in the experiment's directory has no '..'"),
            ("ffffffff:a/0/made.txt", NotFound, "no experiment 'ffffffff'"),
            (str(tmp_path / "x.txt"), BadInput, "not in any experiment's directory"),
            ("made.txt", BadInput, "expected an output id (16 hex digits), EXPERIMENT:PATH")]:
        with pytest.raises(error, match=None) as caught:
            use.lineage(ctx, ref)
        assert says in str(caught.value), (ref, str(caught.value))
    with pytest.raises(BadInput, match="not in experiment"):
        use.lineage_at(ctx, short, str(tmp_path / "x.txt"))


def test_a_missing_output_gets_no_record(ran: Ran) -> None:
    graph = load_graph(ran.exp)
    recorder = use.LineageRecorder(cast(Executor, None), ran.store, ran.exp.id, graph,
                                   lambda s, i: "local")
    kept = ran.root / "b/2/out/result.txt"
    moved = kept.with_name("moved")
    os.rename(kept, moved)
    try:
        assert recorder.record(graph.instance("b", 2), 1) == []
    finally:
        os.rename(moved, kept)
    (rec,) = recorder.record(graph.instance("b", 2), 1)  # again: the newest record replaces
    assert ran.store.lineage.get(rec.output_id) == rec and rec.attempt == 1


# -- the CLI (local mode, in process) and the REST API --------------------------------------------


def test_cli_prints_the_tree_and_json(ran: Ran) -> None:
    b2 = output_id(ran.exp.id, "b/2/out/result.txt")
    a2 = output_id(ran.exp.id, "a/2/made.txt")
    r = airavata("data", "lineage", str(ran.root / "b/2/out/result.txt"))
    assert r.returncode == 0, r.stderr
    for text in (f"b/2/out/result.txt  id {b2}", f"a/2/made.txt  id {a2}",
                 "made by b[2] (attempt ", "on local", "K=7", f"mount {GENOME.mount}: genome.fa",
                 f"script sha256 {sha(ran.root / 'b/script.sh')[:12]}",
                 f"sha256 {sha(ran.root / 'a/2/made.txt')[:12]}"):
        assert text in r.stdout, (text, r.stdout)
    r = airavata("data", "lineage", b2, "--json")
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)
    assert [o["output_id"] for o in found["outputs"]] == [b2, a2]
    assert found["outputs"][0]["upstream"][0]["sha256"] == sha(ran.root / "a/2/made.txt")
    for ref, says in (("0123456789abcdef", "error: no output '0123456789abcdef'"),
                      ("nothing-here.txt", "error: 'nothing-here.txt': expected an output id")):
        r = airavata("data", "lineage", ref)
        assert r.returncode == 2, r.stdout + r.stderr
        assert r.stderr.startswith(says) and r.stderr.count("\n") == 1, r.stderr
        assert "Traceback" not in r.stderr


def test_rest_answers_readers_only(ran: Ran) -> None:
    b0 = output_id(ran.exp.id, "b/0/out/result.txt")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRAVATA_HOME", str(ran.home))
        with api_server(ran.home) as api:
            with api.add_user("alice") as alice:
                r = alice.get(f"/lineage/{b0}")
                assert r.status_code == 200, r.text
                body = r.json()
                assert [o["output_id"] for o in body["outputs"]] == [
                    b0, output_id(ran.exp.id, "a/0/made.txt")]
                assert body["outputs"][0]["script_sha256"] == sha(ran.root / "b/script.sh")
                r = alice.get(f"/experiments/{ran.exp.short_id}/lineage",
                              params={"path": "b/0/out/result.txt", "depth": 0})
                assert r.status_code == 200 and r.json()["truncated"], r.text
                r = alice.get("/lineage/0123456789abcdef")
                assert r.status_code == 404 and "no output" in r.json()["error"]["message"]
                r = alice.get(f"/experiments/{ran.exp.short_id}/lineage",
                              params={"path": "../etc/passwd"})
                assert r.status_code == 400, r.text
            with api.add_user("mallory") as mallory:
                for path, params in ((f"/lineage/{b0}", {}),
                                     (f"/experiments/{ran.exp.id}/lineage",
                                      {"path": "b/0/out/result.txt"})):
                    r = mallory.get(path, params=params)
                    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
