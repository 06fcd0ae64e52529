"""The store on SQLite and on a real PostgreSQL server: transitions enforced, nothing half-lost."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from airavata_prefect.adapters.store import Store, utcnow
from airavata_prefect.adapters.store.schema import metadata
from airavata_prefect.domain.errors import Conflict
from airavata_prefect.domain.records import NewTask
from airavata_prefect.domain.states import IllegalTransition, TaskState, Transition

S = TaskState


def _experiment(store: Store, n: int = 3) -> str:
    return store.experiments.create(
        name="e", source="e.yml", spec_text="tasks: {}", params={"N": "1"},
        workdir_root=Path("/runs"), total=n,
        tasks_iter=(NewTask(f"s[{i}]", "s", i, f"/runs/x/s/{i}") for i in range(n)))


def T(iid: str, a: S, b: S, **kw: object) -> Transition:
    return Transition(iid, a, b, utcnow(), **kw)  # type: ignore[arg-type]


def test_schema_matches_the_models(store: Store) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    Store(str(store.engine.url.render_as_string(hide_password=False))).close()  # re-open: no-op


def test_full_lifecycle_and_events(store: Store) -> None:
    exp = _experiment(store)
    path = [S.CREATED, S.QUEUED, S.DATA_STAGING, S.ENV_SETUP, S.RUNNING, S.OUTPUT_STAGING,
            S.COMPLETED]
    store.tasks.apply_transitions(exp, [T("s[0]", a, b) for a, b in itertools.pairwise(path)])
    row = store.tasks.get(exp, "s[0]")
    assert row.state == "COMPLETED"
    assert row.started_at is not None and row.finished_at is not None
    assert [e.to_state for e in store.tasks.events(exp, "s[0]")] == [str(p) for p in path[1:]]
    assert store.tasks.state_counts(exp) == {"s": {"COMPLETED": 1, "CREATED": 2}}


def test_retry_edge_and_exit_code(store: Store) -> None:
    exp = _experiment(store)
    store.tasks.apply_transitions(exp, [
        T("s[1]", S.CREATED, S.QUEUED), T("s[1]", S.QUEUED, S.DATA_STAGING),
        T("s[1]", S.DATA_STAGING, S.ENV_SETUP), T("s[1]", S.ENV_SETUP, S.RUNNING),
        T("s[1]", S.RUNNING, S.FAILED, exit_code=3, message="exit code 3")])
    assert store.tasks.get(exp, "s[1]").exit_code == 3
    store.tasks.apply_transitions(exp, [T("s[1]", S.FAILED, S.QUEUED, attempt=1)])
    row = store.tasks.get(exp, "s[1]")
    assert (row.state, row.attempt) == ("QUEUED", 1)


@pytest.mark.parametrize(("a", "b"), [(S.CREATED, S.COMPLETED), (S.CREATED, S.RUNNING),
                                      (S.QUEUED, S.RUNNING)])
def test_illegal_transition_is_an_error_and_writes_nothing(store: Store, a: S, b: S) -> None:
    exp = _experiment(store)
    batch = [T("s[0]", S.CREATED, S.QUEUED)]
    if a == S.QUEUED:
        batch.append(T("s[0]", a, b))
    else:
        batch = [T("s[0]", a, b)]
    with pytest.raises(IllegalTransition):
        store.tasks.apply_transitions(exp, batch)
    assert store.tasks.get(exp, "s[0]").state == "CREATED"
    assert store.tasks.events(exp) == []


def test_terminal_states_stay_terminal(store: Store) -> None:
    exp = _experiment(store)
    store.tasks.transition(exp, "s[2]", S.CANCELED, message="canceled")
    for target in (S.QUEUED, S.RUNNING, S.COMPLETED):
        with pytest.raises(IllegalTransition):
            store.tasks.transition(exp, "s[2]", target)
    assert store.tasks.get(exp, "s[2]").state == "CANCELED"


def test_a_stale_writer_loses_and_the_batch_is_atomic(store: Store) -> None:
    exp = _experiment(store)
    store.tasks.apply_transitions(exp, [T("s[0]", S.CREATED, S.QUEUED)])
    # s[1] is fine on its own, s[0] is stale (it is QUEUED, not CREATED): nothing is written.
    with pytest.raises(Conflict):
        store.tasks.apply_transitions(exp, [T("s[1]", S.CREATED, S.QUEUED),
                                      T("s[0]", S.CREATED, S.CANCELED)])
    assert store.tasks.get(exp, "s[1]").state == "CREATED"
    assert store.tasks.get(exp, "s[0]").state == "QUEUED"
    assert len(store.tasks.events(exp)) == 1


def test_experiment_lookup_and_cancel_flag(store: Store) -> None:
    exp = _experiment(store)
    assert store.experiments.get(exp[:8]).id == exp
    assert store.experiments.list()[0].params == {"N": "1"}
    assert store.experiments.request_cancel(exp) and store.experiments.cancel_requested(exp)
    store.experiments.update(exp, status="COMPLETED")
    assert store.experiments.get(exp).finished_at is not None
    assert not store.experiments.request_cancel(exp)  # an ended experiment cannot be canceled


def test_many_tasks_insert_in_chunks(store: Store) -> None:
    exp = _experiment(store, n=45_000)
    assert store.tasks.state_counts(exp) == {"s": {"CREATED": 45_000}}


def test_projects_known_only_to_the_journal_get_their_rows(tmp_path: Path) -> None:
    """A store from before 0009 knew its projects through the permission journal alone: the
    migration records each once, and the repository adds, describes and removes them."""
    import sqlalchemy as sa
    from alembic import command

    from airavata_prefect.adapters.store.engine import _alembic_config, make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "0008")
        for project, who, relation in [("lab", "alice", "admin"), ("lab", "bob", "member"),
                                       ("zoo", "carol", "admin")]:
            conn.execute(sa.text(
                "INSERT INTO relationships VALUES ('project', :p, :r, 'user', :u, '')"),
                {"p": project, "r": relation, "u": who})
    engine.dispose()
    store = Store(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        assert store.projects.names() == ["lab", "zoo"]
        assert store.projects.add("new", created_by="dave", description="d") is True
        assert store.projects.add("new", created_by="eve") is False  # exists: unchanged
        row = store.projects.get("new")
        assert row is not None and (row.created_by, row.description) == ("dave", "d")
        store.projects.set_description("new", None)
        assert store.projects.get("new").description is None  # type: ignore[union-attr]
        store.projects.delete("new")
        assert store.projects.get("new") is None
    finally:
        store.close()


def test_agents_from_before_0011_are_found_by_their_experiments(tmp_path: Path) -> None:
    """0011 moved the experiments an agent may take into their own indexed rows: agents
    registered before it are still found by each of theirs."""
    import sqlalchemy as sa
    from alembic import command

    from airavata_prefect.adapters.store.engine import _alembic_config, make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "0010")
        conn.execute(sa.text(
            "INSERT INTO agents (id, resource, experiments, hostname, slots, status, "
            "registered_at) VALUES ('ag1', 'hpc', '[\"e1\", \"e2\"]', 'n1', 2, 'ACTIVE', "
            "'2026-01-01 00:00:00')"))
    engine.dispose()
    store = Store(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        assert [a.id for a in store.pilot.agents(experiment="e2")] == ["ag1"]
        assert [a.id for a in store.pilot.agents("hpc", "e1")] == ["ag1"]
        assert store.pilot.agents(experiment="e3") == []
    finally:
        store.close()
