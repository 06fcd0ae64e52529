"""GET /metrics (usecases/metrics.py, api/rest/routes_metrics.py): a real API server's figures,
parsed with prometheus-client's own parser, moving as experiments run through its store; the
request histogram by route template, never by id; the token setting. Then the pure parts alone:
families from figures, the probe's period, the token check, the route templates, and every
query the collector makes served by an index."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi import APIRouter, FastAPI
from prometheus_client import Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry
from pydantic import SecretStr

from airavata_prefect.adapters.spicedb import Subject
from airavata_prefect.adapters.store import Store, utcnow
from airavata_prefect.adapters.store.staging import CacheTotals
from airavata_prefect.api.rest.routes_metrics import RequestTimer, RouteTemplates
from airavata_prefect.domain.pilot import AgentInfo, TaskPayload, WorkItem
from airavata_prefect.domain.records import NewTask
from airavata_prefect.domain.scheduler import Hooks
from airavata_prefect.domain.states import (
    BundleStatus,
    ExperimentStatus,
    TaskState,
    Transition,
)
from airavata_prefect.domain.usage import Usage
from airavata_prefect.usecases import run
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.health import Check
from airavata_prefect.usecases.metrics import (
    Probe,
    StoreCollector,
    StoreFigures,
    dependency_families,
    read_store,
    store_families,
    token_accepts,
)
from airavata_prefect.usecases.settings import Settings, get_settings
from airavata_prefect.usecases.submit import submit
from tests.api_harness import ADMIN, ApiServer, api_server

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SPEC = """\
name: metered
tasks:
  greet:
    command: 'echo hello $X'
    task_inputs: {X: 1..3}
  tally:
    command: 'true'
    depends_on: [greet]
"""
TOKEN = "metrics-token-4f1c9e"


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def labels_of(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(ls)[label] for n, ls in samples if n == name}


def scrape(api: ApiServer, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.get(f"{api.base}/metrics", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version="), r.headers
    return parse(r.text)


# -- a real server ---------------------------------------------------------------------------


@pytest.fixture()
def served(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ApiServer, Store]]:
    """The API on this test's home (no Prefect: experiments run here, in process), and the
    same store opened by the test."""
    monkeypatch.delenv("AIRAVATA_USER", raising=False)
    with api_server(home) as api:
        store = Store(get_settings().db_url)
        try:
            yield api, store
        finally:
            store.close()


def _submit(store: Store, spec: Path) -> str:
    """An experiment of the admin's, stored as submit stores it (placed on `local`)."""
    ctx = Context(get_settings(), store, ADMIN)
    exp_id = submit(ctx, spec, [], authorize=False)
    ctx.authz.relate("experiment", exp_id, "owner", Subject.user(ADMIN))
    ctx.authz.close()
    return exp_id


def test_figures_move_as_experiments_run(served: tuple[ApiServer, Store], tmp_path: Path
                                         ) -> None:
    api, store = served
    empty = scrape(api)
    assert labels_of(empty, "airavata_instances", "state") == {str(s) for s in TaskState}
    assert labels_of(empty, "airavata_experiments", "status") == {str(s) for s in ExperimentStatus}
    assert not any(empty[k] for k in empty if k[0] in ("airavata_instances",
                                                       "airavata_experiments"))
    assert not labels_of(empty, "airavata_queue_depth", "resource")
    up = {dict(ls)["dependency"]: v for (n, ls), v in empty.items()
          if n == "airavata_dependency_up"}
    assert set(up) == {"store", "openbao", "spicedb", "prefect"}
    assert up["store"] == 1 and up["spicedb"] == 1  # (Prefect and OpenBao do not run here)

    spec = tmp_path / "metered.yml"
    spec.write_text(SPEC)
    done, live = _submit(store, spec), _submit(store, spec)
    stored = scrape(api)
    assert value(stored, "airavata_experiments", status="CREATED") == 2
    assert value(stored, "airavata_instances", state="CREATED") == 8

    # `live` runs elsewhere: claimed, two instances queued for pilot agents of `hpc`, one
    # bundle of it submitted to `slurm`, whose cache was used.
    run.claim(store, live, None)
    store.tasks.apply_transitions(live, [Transition(f"greet[{i}]", TaskState.CREATED,
                                                    TaskState.QUEUED, at=utcnow())
                                         for i in (0, 1)])
    payload = TaskPayload(script="true", script_sha256="0" * 64, workdir="w", env={},
                          walltime_seconds=60, outputs=())
    store.pilot.enqueue([WorkItem(live, f"greet[{i}]", 0, "hpc", payload) for i in (0, 1)])
    store.pilot.register(AgentInfo("agent-1", "hpc", (live,), "node1", slots=4))
    bundle = store.bundles.create(live, "slurm", "greet", [(2, 0)])
    store.bundles.update(bundle, status=BundleStatus.SUBMITTED)
    store.staging.add_totals(CacheTotals("slurm", hits=3, misses=1, bytes_moved=10,
                                         bytes_saved=30, retries=1))
    # `done` runs to its end, here.
    claimed = run.claim(store, done, None)
    status, _, _ = asyncio.run(run.execute(store, claimed, get_settings(), Hooks(),
                                           flow_run_id=None))
    assert status == ExperimentStatus.COMPLETED

    with api.as_admin() as admin:
        for ref in (done, live[:8]):
            assert admin.get(f"/experiments/{ref}").status_code == 200
    moved = scrape(api)
    assert value(moved, "airavata_experiments", status="COMPLETED") == 1
    assert value(moved, "airavata_experiments", status="RUNNING") == 1
    assert value(moved, "airavata_experiments", status="CREATED") == 0
    # Only `live`'s instances: an ended experiment's are not counted.
    assert {s: value(moved, "airavata_instances", state=s) for s in ("CREATED", "QUEUED",
                                                                    "COMPLETED")} == {
        "CREATED": 2, "QUEUED": 2, "COMPLETED": 0}
    assert value(moved, "airavata_queue_depth", resource="hpc") == 2
    assert value(moved, "airavata_agents_active", resource="hpc") == 1
    assert value(moved, "airavata_agent_slots", resource="hpc") == 4
    assert value(moved, "airavata_bundles_active", resource="slurm", status="SUBMITTED") == 1
    assert value(moved, "airavata_bundles_active", resource="slurm", status="CREATED") == 0
    assert {n: value(moved, n, resource="slurm") for n in (
        "airavata_staging_cache_hits_total", "airavata_staging_cache_misses_total",
        "airavata_staging_bytes_sent_total", "airavata_staging_bytes_spared_total",
        "airavata_staging_resent_total")} == {
        "airavata_staging_cache_hits_total": 3, "airavata_staging_cache_misses_total": 1,
        "airavata_staging_bytes_sent_total": 10, "airavata_staging_bytes_spared_total": 30,
        "airavata_staging_resent_total": 1}
    # The two reads are one series, by the route's template; no label names an experiment.
    assert value(moved, "airavata_api_request_seconds_count", method="GET",
                 route="/api/v1/experiments/{ref}", status="200") == 2
    assert value(moved, "airavata_api_request_seconds_count", method="GET", route="/metrics",
                 status="200") == 2  # the two scrapes before (this one counts once it answered)
    seen = {v for _, ls in moved for _, v in ls}
    assert not any(done in v or live[:8] in v for v in seen), seen
    # `done`'s four instances ended on `local`: the duration histogram counted them.
    assert value(moved, "airavata_instance_duration_seconds_count", resource="local") == 4
    assert value(moved, "airavata_instance_duration_seconds_bucket", resource="local",
                 le="+Inf") == 4
    assert 0 < (value(moved, "airavata_instance_duration_seconds_sum", resource="local")
                or 0) < 60
    assert not labels_of(moved, "airavata_instance_running_seconds", "instance")
    # The Grafana dashboard asks only for series this server exports.
    assert _dashboard_series() <= {name for name, _ in moved} | {
        "airavata_instance_running_seconds"}  # (present while something runs: below)

    # The queue drained, the agent gone, the bundle ended: their series read 0, not nothing.
    leased = store.pilot.claim("agent-1", "hpc", [live], 10, 60.0)
    assert len(leased) == 2
    store.pilot.stop_agent("agent-1", "done")
    store.bundles.update(bundle, status=BundleStatus.COMPLETED)
    drained = scrape(api)
    assert value(drained, "airavata_queue_depth", resource="hpc") == 0
    assert value(drained, "airavata_agents_active", resource="hpc") == 0
    assert value(drained, "airavata_bundles_active", resource="slurm", status="SUBMITTED") == 0

    # A running instance has a series of its own while it runs, named by its owner.
    store.tasks.apply_transitions(live, [
        Transition("greet[0]", a, b, at=utcnow()) for a, b in (
            (TaskState.QUEUED, TaskState.DATA_STAGING), (TaskState.DATA_STAGING,
                                                         TaskState.ENV_SETUP),
            (TaskState.ENV_SETUP, TaskState.RUNNING))])
    store.tasks.live_usage(live, {"greet[0]": Usage(3.0, 2.5, 64 * 2 ** 20),
                                  "greet[1]": Usage(1.0, 1.0, 1)})  # (greet[1] is not running)
    running = scrape(api)
    labels = {"experiment": live, "step": "greet", "instance": "greet[0]", "user": ADMIN,
              "resource": "local"}
    took = value(running, "airavata_instance_running_seconds", **labels)
    assert took is not None and 0 <= took < 60
    assert len(labels_of(running, "airavata_instance_running_seconds", "instance")) == 1
    assert value(running, "airavata_instance_cpu_seconds", **labels) == 2.5
    assert value(running, "airavata_instance_memory_bytes", **labels) == 64 * 2 ** 20
    assert labels_of(running, "airavata_instance_cpu_seconds", "instance") == {"greet[0]"}


def test_a_token_guards_metrics_once_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    monkeypatch.delenv("AIRAVATA_USER", raising=False)
    with api_server(tmp_path / "home", extra_env={"AIRAVATA_METRICS_TOKEN": TOKEN}) as api:
        for headers in ({}, {"Authorization": "Bearer wrong-token"},
                        {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}x"}):
            r = httpx.get(f"{api.base}/metrics", headers=headers, timeout=30)
            assert r.status_code == 401, (headers, r.text)
            assert r.json()["error"]["code"] == "unauthenticated"
            assert r.headers["WWW-Authenticate"] == "Bearer"
        samples = scrape(api, TOKEN)
        assert value(samples, "airavata_api_request_seconds_count", method="GET",
                     route="/metrics", status="401") == 4
        # Not in the OpenAPI document (it is not JSON), and the API's own routes unchanged.
        paths = httpx.get(f"{api.url}/openapi.json", timeout=30).json()["paths"]
        assert "/metrics" not in paths and "/api/v1/health" in paths
        assert TOKEN not in api.log.read_text()


# -- the pure parts ----------------------------------------------------------------------------


class _Fixed(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _render(families: Iterable[Metric]) -> Samples:
    registry = CollectorRegistry()
    registry.register(_Fixed(families))
    return parse(generate_latest(registry).decode())


def test_families_name_every_state_and_every_resource_seen() -> None:
    figures = StoreFigures(
        instances={"RUNNING": 3}, experiments={"RUNNING": 1, "COMPLETED": 2},
        queued={"hpc": 4}, bundles={"slurm": {"SUBMITTED": 2}}, agents={"hpc": (2, 8)},
        staging=[CacheTotals("slurm", hits=5, misses=1, bytes_moved=100, bytes_saved=500,
                             retries=1)])
    s = _render(store_families(figures, resources={"drained"}))
    assert value(s, "airavata_instances", state="RUNNING") == 3
    assert value(s, "airavata_instances", state="UPSTREAM_FAILED") == 0
    assert value(s, "airavata_experiments", status="COMPLETED") == 2
    assert value(s, "airavata_experiments", status="CANCELING") == 0
    assert {r: value(s, "airavata_queue_depth", resource=r)
            for r in labels_of(s, "airavata_queue_depth", "resource")} == {
        "hpc": 4, "slurm": 0, "drained": 0}
    assert value(s, "airavata_bundles_active", resource="slurm", status="SUBMITTED") == 2
    assert value(s, "airavata_bundles_active", resource="hpc", status="STAGING") == 0
    assert labels_of(s, "airavata_bundles_active", "status") == {"CREATED", "STAGING",
                                                                  "SUBMITTED"}
    assert (value(s, "airavata_agents_active", resource="hpc"),
            value(s, "airavata_agent_slots", resource="hpc")) == (2, 8)
    assert value(s, "airavata_staging_bytes_spared_total", resource="slurm") == 500
    assert labels_of(s, "airavata_staging_cache_hits_total", "resource") == {"slurm"}


def test_dependencies_up_or_down() -> None:
    s = _render(dependency_families([Check("store", True, "sqlite", 0.001),
                                     Check("prefect", False, "refused", 0.25)]))
    assert value(s, "airavata_dependency_up", dependency="store") == 1
    assert value(s, "airavata_dependency_up", dependency="prefect") == 0
    assert value(s, "airavata_dependency_check_seconds", dependency="prefect") == 0.25


def test_a_broken_store_leaves_its_figures_out_not_the_scrape() -> None:
    class Broken:
        def __getattr__(self, name: str) -> object:
            raise sa.exc.OperationalError("SELECT", {}, Exception("gone"))

    checks = [Check("store", False, "gone", 0.0)]
    s = _render(StoreCollector(Broken(), lambda: checks).collect())  # type: ignore[arg-type]
    assert value(s, "airavata_dependency_up", dependency="store") == 0
    assert not labels_of(s, "airavata_instances", "state")


def test_the_probe_runs_at_most_once_a_period() -> None:
    now, calls = [0.0], []

    def check() -> list[Check]:
        calls.append(now[0])
        return [Check("store", True, "ok", 0.0)]

    probe = Probe(check, seconds=10, clock=lambda: now[0])
    for t in (0.0, 3.0, 9.9, 10.0, 12.0, 25.0):
        now[0] = t
        assert probe()[0].ok
    assert calls == [0.0, 10.0, 25.0]


def test_the_token_check() -> None:
    open_ = Settings(home=Path("/nonexistent"))
    assert token_accepts(open_, None) and token_accepts(open_, "Bearer anything")
    guarded = Settings(home=Path("/nonexistent"), metrics_token=SecretStr(TOKEN))
    assert token_accepts(guarded, f"Bearer {TOKEN}") and token_accepts(guarded,
                                                                      f"bearer  {TOKEN} ")
    for header in (None, "", "Bearer", f"Basic {TOKEN}", f"Bearer {TOKEN[:-1]}",
                   f"Bearer {TOKEN}{TOKEN}", TOKEN):
        assert not token_accepts(guarded, header), header
    with pytest.raises(ValueError, match="metrics_token"):
        Settings(home=Path("/nonexistent"), metrics_token="")


def test_requests_are_timed_by_their_full_route_template() -> None:
    inner = APIRouter(prefix="/b")

    @inner.get("/{item}")
    def item(item: str) -> dict[str, str]:
        return {"item": item}

    @inner.get("/boom/now")
    def boom() -> None:
        raise RuntimeError("boom")

    outer = APIRouter(prefix="/a")
    outer.include_router(inner)
    app = FastAPI()
    app.include_router(outer)
    registry = CollectorRegistry()
    histogram = Histogram("t_seconds", "t", ["method", "route", "status"], registry=registry)
    app.add_middleware(RequestTimer, histogram=histogram,
                       templates=RouteTemplates(lambda: app.routes))

    async def calls() -> list[int]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return [(await client.request(m, p)).status_code for m, p in (
                ("GET", "/a/b/one"), ("GET", "/a/b/two"), ("GET", "/nowhere"),
                ("BREW", "/a/b/one"), ("GET", "/a/b/boom/now"))]

    assert asyncio.run(calls()) == [200, 200, 404, 405, 500]
    s = parse(generate_latest(registry).decode())
    assert {(dict(ls)["method"], dict(ls)["route"], dict(ls)["status"]): v
            for (n, ls), v in s.items() if n == "t_seconds_count"} == {
        ("GET", "/a/b/{item}", "200"): 2, ("GET", "unmatched", "404"): 1,
        ("OTHER", "/a/b/{item}", "405"): 1, ("GET", "/a/b/boom/now", "500"): 1}


# -- the queries ------------------------------------------------------------------------------


def _experiment(store: Store, n: int) -> str:
    return store.experiments.create(
        name="e", source="e.yml", spec_text="tasks: {}", params={}, workdir_root=Path("/runs"),
        total=n, tasks_iter=(NewTask(f"s[{i}]", "s", i, f"/runs/x/s/{i}", "hpc")
                             for i in range(n)))


def test_read_store_counts_from_indexes(store: Store) -> None:
    live, ended = _experiment(store, 3), _experiment(store, 5)
    store.experiments.update(live, status=ExperimentStatus.RUNNING)
    store.experiments.update(ended, status=ExperimentStatus.FAILED)
    store.tasks.apply_transitions(live, [Transition("s[0]", TaskState.CREATED, TaskState.QUEUED,
                                                    at=utcnow())])
    payload = TaskPayload(script="true", script_sha256="0" * 64, workdir="w", env={},
                          walltime_seconds=60, outputs=())
    store.pilot.enqueue([WorkItem(live, "s[0]", 0, "hpc", payload)])
    store.pilot.register(AgentInfo("a1", "hpc", (live,), "n1", slots=2))
    store.pilot.register(AgentInfo("a2", "hpc", (live,), "n2", slots=3))
    store.pilot.stop_agent("a2", "gone")
    store.bundles.create(live, "slurm", "s", [(1, 0), (2, 0)])
    store.bundles.update(store.bundles.create(ended, "slurm", "s", [(0, 0)]),
                         status=BundleStatus.FAILED)
    store.staging.add_totals(CacheTotals("slurm", hits=1))
    store.staging.add_totals(CacheTotals("slurm", hits=2, bytes_saved=7))

    statements: list[str] = []

    def record(*args: object) -> None:
        if "FROM" in str(args[2]).split():
            statements.append(str(args[2]))

    sa.event.listen(store.engine, "before_cursor_execute", record)
    try:
        figures = read_store(store)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", record)
    assert figures == StoreFigures(
        instances={"CREATED": 2, "QUEUED": 1}, experiments={"RUNNING": 1, "FAILED": 1},
        queued={"hpc": 1}, bundles={"slurm": {"CREATED": 1}}, agents={"hpc": (1, 2)},
        staging=[CacheTotals("slurm", hits=3, bytes_saved=7)])
    assert len(statements) == 8
    if store.engine.dialect.name == "sqlite":  # PostgreSQL plans by its statistics
        with store.engine.connect() as conn:
            for sql in statements:
                plan = [row[-1] for row in conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN " + sql, tuple(["?"] * sql.count("?")))]
                # (the histogram's table is read whole: a row per resource and bucket)
                bare = [p for p in plan if p.startswith("SCAN ") and " INDEX " not in p
                        and p != "SCAN instance_durations"]
                assert not bare, (sql, plan)


DEPLOYMENTS = Path(__file__).resolve().parent.parent / "deployments"


def _dashboard_series() -> set[str]:
    """The airavata_* series deployments/grafana/airavata-dashboard.json queries."""
    import json
    import re

    doc = json.loads((DEPLOYMENTS / "grafana" / "airavata-dashboard.json").read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    return {m for e in exprs for m in re.findall(r"\bairavata_[a-z_]+", e)}


def test_the_scrape_config_points_at_the_api_servers_metrics() -> None:
    import yaml

    doc = yaml.safe_load((DEPLOYMENTS / "prometheus.yml").read_text())
    (job,) = doc["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["authorization"]["type"] == "Bearer"
    assert job["static_configs"][0]["targets"] == [f"127.0.0.1:{Settings().api_port}"]
    assert {"airavata_instances", "airavata_api_request_seconds_bucket",
            "airavata_staging_cache_hits_total"} <= _dashboard_series()
