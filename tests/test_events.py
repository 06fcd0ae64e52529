"""Typed lifecycle events (domain/events.py) sent as Prefect events (adapters/prefect_events.py)
by the use cases, read back through a real Prefect server's events API; and what happens when
no Prefect server answers: nothing blocks, nothing raises, one warning."""

from __future__ import annotations

import logging
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from airavata_prefect.adapters import prefect_events
from airavata_prefect.domain.events import (
    LifecycleEvent,
    SeenEvent,
    Subject,
    instance_event_kind,
    instance_subject,
)
from airavata_prefect.domain.states import TaskState, Transition
from airavata_prefect.usecases import events, lifecycle
from airavata_prefect.usecases.context import open_context
from airavata_prefect.usecases.correlation import correlated
from airavata_prefect.usecases.submit import submit
from tests.conftest import _free_port
from tests.test_cli import cli

S = TaskState


# -- the records (no Prefect) --------------------------------------------------------------------


def test_an_experiment_event_names_its_request_project_experiment_and_actor() -> None:
    e = LifecycleEvent("experiment.submitted", Subject("experiment", "e-1", "sweep"),
                       "0123456789abcdef", "alice", project_id="lab", experiment_id="e-1",
                       detail={"tasks": 6})
    assert e.name == "airavata.experiment.submitted"
    assert e.resource() == {"prefect.resource.id": "airavata.experiment.e-1",
                            "prefect.resource.name": "sweep",
                            "airavata.correlation-id": "0123456789abcdef",
                            "airavata.project": "lab", "airavata.experiment": "e-1",
                            "airavata.actor": "alice"}
    assert [(r["prefect.resource.role"], r["prefect.resource.id"]) for r in e.related()] == [
        ("project", "airavata.project.lab"), ("actor", "airavata.user.alice"),
        ("correlation", "airavata.correlation.0123456789abcdef")]
    assert e.payload() == {"correlation_id": "0123456789abcdef", "project_id": "lab",
                           "experiment_id": "e-1", "actor": "alice", "tasks": 6}


def test_an_instance_event_is_related_to_its_experiment_and_flow_run() -> None:
    e = LifecycleEvent("instance.failed", instance_subject("e-1", "fit[3]"), "c" * 16, "bob",
                       project_id="lab", experiment_id="e-1", flow_run_id="f-9",
                       labels={"airavata.step": "fit"})
    assert e.resource()["prefect.resource.id"] == "airavata.instance.e-1.fit[3]"
    assert e.resource()["prefect.resource.name"] == "fit[3]"
    assert e.resource()["airavata.step"] == "fit"
    assert ("experiment", "airavata.experiment.e-1") in {
        (r["prefect.resource.role"], r["prefect.resource.id"]) for r in e.related()}
    assert ("flow-run", "prefect.flow-run.f-9") in {
        (r["prefect.resource.role"], r["prefect.resource.id"]) for r in e.related()}
    # A credential has no project or experiment: the fields are there, empty.
    c = LifecycleEvent("credential.created", Subject("credential", "alice-ssh"), "c" * 16,
                       "alice")
    assert c.payload() == {"correlation_id": "c" * 16, "project_id": None,
                           "experiment_id": None, "actor": "alice"}
    assert c.resource()["prefect.resource.id"] == "airavata.credential.alice-ssh"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"type": "experiment.exploded"}, "unknown event type 'experiment.exploded'"),
    ({"type": "credential.created"}, "cannot be about a experiment"),
    ({"detail": {"password": "x"}}, "event detail 'password' is not allowed"),
    ({"detail": {"api_token": "x"}}, "event detail 'api_token' is not allowed"),
    ({"detail": {"private_key": "x"}}, "event detail 'private_key' is not allowed"),
    ({"detail": {"secret_value": "x"}}, "event detail 'secret_value' is not allowed"),
    ({"detail": {"actor": "mallory"}}, "event detail 'actor' is not allowed"),
    ({"detail": {"values": {"k": "v"}}}, "a scalar, not dict"),
    ({"labels": {"owner": "x"}}, "event label 'owner' is not allowed"),
])
def test_events_that_could_carry_a_secret_or_lie_are_refused(kwargs: dict, message: str
                                                             ) -> None:
    args = {"type": "experiment.failed", "subject": Subject("experiment", "e-1"),
            "correlation_id": "c" * 16, "actor": "alice", **kwargs}
    with pytest.raises(ValueError, match=message):
        LifecycleEvent(**args)


def test_only_the_ends_of_attempts_that_ran_are_instance_events() -> None:
    assert instance_event_kind(S.OUTPUT_STAGING, S.COMPLETED, 0, 0) == "completed"
    assert instance_event_kind(S.RUNNING, S.FAILED, 0, 2) == "attempt-failed"
    assert instance_event_kind(S.RUNNING, S.FAILED, 2, 2) == "failed"
    assert instance_event_kind(S.QUEUED, S.FAILED, 0, 0) == "failed"
    assert instance_event_kind(S.RUNNING, S.CANCELED, 0, 0) == "canceled"
    for before, after in [(S.CREATED, S.QUEUED), (S.ENV_SETUP, S.RUNNING),
                          (S.RUNNING, S.OUTPUT_STAGING), (S.FAILED, S.QUEUED),
                          (S.CREATED, S.CANCELED), (S.CREATED, S.UPSTREAM_FAILED)]:
        assert instance_event_kind(before, after, 0, 0) is None, (before, after)


def test_read_back_parses_what_was_sent() -> None:
    e = LifecycleEvent("resource.tested", Subject("compute-resource", "hpc", "hpc"), "c" * 16,
                       "alice", project_id="lab", detail={"status": "failed"})
    seen = SeenEvent.from_json(prefect_events.to_prefect(e).model_dump(mode="json"))
    assert (seen.type, seen.resource_id, seen.actor, seen.payload["status"]) == (
        "resource.tested", "airavata.compute-resource.hpc", "alice", "failed")
    assert seen.occurred == e.occurred and seen.id == e.id
    assert ("correlation", "airavata.correlation." + "c" * 16) in seen.related


# -- no Prefect server ---------------------------------------------------------------------------


@pytest.fixture()
def own_sender(monkeypatch: pytest.MonkeyPatch) -> Iterator[prefect_events._Sender]:
    """A sender of this test's own (what it queues is dropped at the end, never sent later)."""
    sender = prefect_events._Sender()
    with prefect_events._sender.lock:  # what earlier tests left queued stays out of this one
        prefect_events._sender.queue.clear()
    monkeypatch.setattr(prefect_events, "_sender", sender)
    yield sender
    with sender.lock:
        sender.queue.clear()


def test_an_unreachable_prefect_never_blocks_or_raises(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        own_sender: prefect_events._Sender) -> None:
    dead = f"http://127.0.0.1:{_free_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", dead)
    caplog.set_level(logging.WARNING, logger="airavata.events")
    start = time.monotonic()
    with correlated("dead-prefect-1"):
        for i in range(500):
            events.credential_changed("alice", "created", f"c-{i}", version="1")
    assert time.monotonic() - start < 1.0  # queued, never sent on the caller's time
    deadline = time.monotonic() + 20
    while not own_sender.down and time.monotonic() < deadline:
        time.sleep(0.05)
    assert own_sender.down
    start = time.monotonic()
    assert prefect_events.flush(10, retry=False) is False  # as at exit: no waiting on it
    assert time.monotonic() - start < 1.0
    assert prefect_events.flush(1.0) is False  # tried again at once, and still down
    assert time.monotonic() - start < 3.0
    with correlated("dead-prefect-2"):
        for i in range(100):  # more, while it is down: still no error, no second warning
            events.credential_changed("alice", "rotated", f"c-{i}", version="2")
    time.sleep(1.5)  # a retry fails again meanwhile
    assert own_sender.thread is not None  # (an earlier test's sender may be retrying too)
    warnings = [r.getMessage() for r in caplog.records if r.name == "airavata.events"
                and r.thread == own_sender.thread.ident]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"Prefect events are not being sent: the Prefect API at "
                                  f"{dead} does not answer (ConnectError")
    with pytest.raises(prefect_events.EventsUnavailable,
                       match=rf"^the Prefect API at {dead} does not answer \(ConnectError"):
        prefect_events.read_events("dead-prefect-1")


def test_without_a_prefect_api_nothing_is_queued(monkeypatch: pytest.MonkeyPatch,
                                                 own_sender: prefect_events._Sender) -> None:
    monkeypatch.delenv("PREFECT_API_URL")
    events.credential_changed("alice", "created", "c-1")
    assert not own_sender.queue and own_sender.thread is None
    with pytest.raises(prefect_events.EventsUnavailable, match="PREFECT_API_URL is not set"):
        prefect_events.read_events("0123456789abcdef")


def test_an_event_that_cannot_be_made_is_logged_not_raised(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
        own_sender: prefect_events._Sender) -> None:
    caplog.set_level(logging.WARNING, logger="airavata.events")
    monkeypatch.setattr(events, "_unsent", set())
    for _ in range(3):
        events.credential_changed("alice", "created", "c-1", token="leak")  # refused
    assert not own_sender.queue
    assert [r.getMessage() for r in caplog.records] == [
        "event credential.created not sent: event detail 'token' is not allowed"]  # once


# -- a real Prefect server -----------------------------------------------------------------------


def wait_for_events(cid: str, want: Callable[[list[SeenEvent]], bool],
                    timeout: float = 60) -> list[SeenEvent]:
    """The events of the correlation id, once `want` holds (the server persists them in
    batches, a few seconds after they arrive)."""
    assert prefect_events.flush(30)
    deadline = time.monotonic() + timeout
    while True:
        seen = prefect_events.read_events(cid)
        if want(seen) or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


SPEC = """\
name: evt
tasks:
  a: {command: 'true', task_inputs: {X: 0..3}, retries: 1}
  b: {command: 'true', depends_on: [a]}
"""


@pytest.mark.prefect
def test_submit_cancel_and_instances_reach_prefect(prefect_api: str, home: Path,
                                                   tmp_path: Path) -> None:
    spec = tmp_path / "evt.yml"
    spec.write_text(textwrap.dedent(SPEC))
    submitted, canceled, ran = (f"evt-{what}-{uuid.uuid4().hex[:8]}"
                                for what in ("submit", "cancel", "run"))
    with open_context(user="alice") as ctx:
        with correlated(submitted):
            exp_id = submit(ctx, spec, [], project="lab")
        exp = ctx.store.experiments.get(exp_id)
        now = datetime.now(UTC)
        with correlated(ran):  # what the run loop's sink hands over, in batches
            sent = events.instance_events(exp, [
                Transition("a[0]", S.ENV_SETUP, S.RUNNING, now),
                Transition("a[0]", S.OUTPUT_STAGING, S.COMPLETED, now, 0, None, 0),
                Transition("a[1]", S.RUNNING, S.FAILED, now, 0, "exit code 3", 3),
                Transition("a[1]", S.FAILED, S.QUEUED, now, 1, "retry 1 of 1"),
                Transition("a[1]", S.RUNNING, S.FAILED, now, 1, "exit code 3", 3),
                Transition("a[2]", S.RUNNING, S.CANCELED, now, 0, "canceled"),
                Transition("a[3]", S.CREATED, S.CANCELED, now, 0, "canceled"),
                Transition("b[0]", S.CREATED, S.UPSTREAM_FAILED, now, 0, "upstream"),
            ])
        assert sent == 4
        with correlated(canceled):
            assert lifecycle.cancel(ctx, exp_id).accepted

    seen = wait_for_events(submitted, lambda s: bool(s))
    assert [e.type for e in seen] == ["experiment.submitted"]
    e = seen[0]
    assert e.resource_id == f"airavata.experiment.{exp_id}" and e.resource_name == "evt"
    assert e.payload == {"correlation_id": submitted, "project_id": "lab",
                         "experiment_id": exp_id, "actor": "alice", "tasks": 5}
    assert {("project", "airavata.project.lab"), ("actor", "airavata.user.alice"),
            ("correlation", f"airavata.correlation.{submitted}")} <= set(e.related)

    seen = wait_for_events(canceled, lambda s: bool(s))
    assert [(e.type, e.actor, e.payload["experiment_id"]) for e in seen] == [
        ("experiment.canceled", "alice", exp_id)]

    seen = wait_for_events(ran, lambda s: len(s) >= 4)
    got = sorted((e.type, e.payload["instance_id"], e.payload["attempt"], e.payload["exit_code"])
                 for e in seen)
    assert got == [("instance.attempt-failed", "a[1]", 0, 3),
                   ("instance.canceled", "a[2]", 0, None),
                   ("instance.completed", "a[0]", 0, 0),
                   ("instance.failed", "a[1]", 1, 3)]
    for e in seen:
        assert e.resource_id == f"airavata.instance.{exp_id}.{e.payload['instance_id']}"
        assert ("experiment", f"airavata.experiment.{exp_id}") in e.related
        assert (e.payload["project_id"], e.actor) == ("lab", "alice")  # the run acts for her


@pytest.mark.prefect
def test_resource_registration_and_removal_are_events(
        prefect_api: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRAVATA_USER", "alice")
    name = f"scratch-{uuid.uuid4().hex[:6]}"
    with correlated() as made:
        r = cli("resource", "storage", "create", name, "--type", "local", "--set", "path=/d")
        assert r.returncode == 0, r.stderr
    with correlated() as removed:
        r = cli("resource", "storage", "delete", name)
        assert r.returncode == 0, r.stderr
    seen = wait_for_events(made, lambda s: bool(s))
    assert [(e.type, e.resource_id, e.actor, e.payload["project_id"], e.payload["kind"])
            for e in seen] == [("resource.registered", f"airavata.storage-resource.{name}",
                                "alice", "default", "local")]
    seen = wait_for_events(removed, lambda s: bool(s))
    assert [(e.type, e.payload["project_id"]) for e in seen] == [("resource.removed",
                                                                  "default")]
