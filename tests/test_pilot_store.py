"""The pilot work queue on SQLite and on a real PostgreSQL server: an item goes to one agent at a
time, only the lease the store holds now may report, and each attempt ends exactly once."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airavata_prefect.adapters.store import Store, utcnow
from airavata_prefect.adapters.store.pilot import item_key
from airavata_prefect.domain.errors import NotFound
from airavata_prefect.domain.pilot import (
    AgentInfo,
    AgentStatus,
    LeaseRef,
    StatusUpdate,
    TaskPayload,
    Usage,
    WorkItem,
)
from airavata_prefect.domain.records import NewTask
from airavata_prefect.domain.states import TERMINAL, TaskState

S = TaskState
LEASE = 60.0


def _experiment(store: Store) -> str:
    return store.experiments.create(
        name="e", source="e.yml", spec_text="tasks: {}", params={}, workdir_root=Path("/runs"),
        total=1, tasks_iter=iter([NewTask("s[0]", "s", 0, "/runs/x/s/0")]))


def _items(exp: str, n: int, *, resource: str = "hpc", attempt: int = 0,
           start: int = 0) -> list[WorkItem]:
    return [WorkItem(exp, f"s[{i}]", attempt, resource, TaskPayload(
        script=f"echo {i}", script_sha256="0" * 64, workdir=f"{exp}/s/{i}", env={"I": str(i)},
        walltime_seconds=60, outputs=("out.txt",))) for i in range(start, start + n)]


def _end(lease: LeaseRef, state: S = S.COMPLETED, **kw: object) -> StatusUpdate:
    return StatusUpdate(lease, state, utcnow(), **kw)  # type: ignore[arg-type]


def _terminal_events(store: Store, exp: str) -> Counter[int]:
    return Counter(e.item_id for e in store.pilot.events_after(exp, 0, limit=1_000_000)
                   if e.state in TERMINAL)


def test_enqueue_is_idempotent_per_attempt(store: Store) -> None:
    exp = _experiment(store)
    first = store.pilot.enqueue(_items(exp, 3))
    assert set(first) == {item_key(f"s[{i}]", 0) for i in range(3)}
    # A resumed flow enqueues them again, with one more: the earlier items keep their ids.
    again = store.pilot.enqueue(_items(exp, 4))
    assert {k: again[k] for k in first} == first and len(set(again.values())) == 4
    retry = store.pilot.enqueue(_items(exp, 1, attempt=1))  # a new attempt is a new item
    assert retry[item_key("s[0]", 1)] not in again.values()
    assert store.pilot.pending(exp) == {"READY": 5}
    assert [a[:2] for a in store.pilot.active_items(exp)] == [
        ("s[0]", 0), ("s[1]", 0), ("s[2]", 0), ("s[3]", 0), ("s[0]", 1)]
    with pytest.raises(ValueError, match="one experiment"):
        store.pilot.enqueue(_items(exp, 1) + _items(_experiment(store), 1))


def test_claim_respects_resource_scope_and_limit_oldest_first(store: Store) -> None:
    a, b = _experiment(store), _experiment(store)
    ids = store.pilot.enqueue(_items(a, 5))
    store.pilot.enqueue(_items(a, 2, resource="cloud", start=10))
    store.pilot.enqueue(_items(b, 3))
    assert store.pilot.ready_count("hpc", [a]) == 5 and store.pilot.ready_count("hpc", [a, b]) == 8
    got = store.pilot.claim("ag1", "hpc", [a], limit=3, lease_seconds=LEASE)
    assert [c.lease.item_id for c in got] == [ids[item_key(f"s[{i}]", 0)] for i in range(3)]
    assert all(c.lease.epoch == 1 and c.experiment_id == a for c in got)
    assert got[0].payload == _items(a, 1)[0].payload  # the payload round-trips
    rest = store.pilot.claim("ag2", "hpc", [a], limit=10, lease_seconds=LEASE)
    assert [c.instance_id for c in rest] == ["s[3]", "s[4]"]  # not the cloud ones, not b's
    assert store.pilot.claim("ag2", "hpc", [a], limit=10, lease_seconds=LEASE) == []
    assert store.pilot.claim("ag3", "hpc", [], limit=10, lease_seconds=LEASE) == []
    assert store.pilot.claim("ag3", "hpc", [a, b], limit=0, lease_seconds=LEASE) == []
    assert len(store.pilot.claim("ag3", "hpc", [a, b], limit=10, lease_seconds=LEASE)) == 3
    assert store.pilot.pending(a) == {"LEASED": 5, "READY": 2}


@pytest.mark.timeout(60)
def test_concurrent_claims_are_disjoint_and_cursors_miss_nothing(store: Store) -> None:
    """Four agents, each on its own engine (connections of its own), claim and end 2,000
    items at once, while the flow follows the events by cursor: every item goes to exactly
    one agent and ends once, and the cursor sees every event."""
    exp = _experiment(store)
    store.pilot.enqueue(_items(exp, 2000))
    url = store.engine.url.render_as_string(hide_password=False)
    got: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    done = threading.Event()

    def agent(name: str) -> None:
        s = Store(url)
        try:
            mine = got.setdefault(name, [])
            while claims := s.pilot.claim(name, "hpc", [exp], limit=16, lease_seconds=LEASE):
                mine += [c.lease.item_id for c in claims]
                assert s.pilot.report(name, [_end(c.lease) for c in claims]) == []
        except BaseException as e:  # reported by the test thread
            errors.append(e)
        finally:
            s.close()

    seen: list[int] = []

    def follow() -> None:
        cursor = 0
        while True:
            last = done.is_set()
            for e in store.pilot.events_after(exp, cursor, limit=300):
                seen.append(e.item_id)
                cursor = e.id
            if last:
                return
            time.sleep(0.005)

    threads = [threading.Thread(target=agent, args=(f"ag{i}",)) for i in range(4)]
    follower = threading.Thread(target=follow)
    for t in [*threads, follower]:
        t.start()
    for t in threads:
        t.join()
    done.set()
    follower.join()
    assert not errors, errors
    claimed = [i for ids in got.values() for i in ids]
    assert len(claimed) == len(set(claimed)) == 2000
    assert sum(1 for ids in got.values() if ids) >= 2  # they did run side by side
    assert sorted(seen) == sorted(claimed)  # the cursor skipped no late commit
    assert set(_terminal_events(store, exp).values()) == {1}
    assert store.pilot.pending(exp) == {"DONE": 2000}


def test_report_accepts_only_the_lease_held_now(store: Store) -> None:
    exp = _experiment(store)
    store.pilot.enqueue(_items(exp, 5))
    c = store.pilot.claim("ag1", "hpc", [exp], limit=5, lease_seconds=LEASE)
    l0, l1, l2, l3, l4 = (x.lease for x in c)
    stale = LeaseRef(l0.item_id, l0.epoch - 1)
    # Wrong epoch, wrong agent: refused; progress on a held lease is kept as the item's state.
    assert store.pilot.report("ag1", [_end(stale)]) == [stale]
    assert store.pilot.report("ag2", [_end(l0)]) == [l0]
    assert store.pilot.report("ag1", [StatusUpdate(l0, S.RUNNING, utcnow())]) == []
    # Ended once: a second COMPLETED (a retried report) of the same lease is refused.
    usage = Usage(wall_seconds=1.5, cpu_seconds=1.0, max_rss_bytes=1 << 20)
    assert store.pilot.report("ag1", [_end(l0, exit_code=0, usage=usage)]) == []
    assert store.pilot.report("ag1", [_end(l0), _end(l1), _end(l1, S.FAILED)]) == [l0, l1]
    # Handed back, or expired: the old lease can report nothing more.
    assert store.pilot.hand_back("ag1", [l2], "draining") == 1
    assert store.pilot.expire(utcnow() + timedelta(seconds=LEASE + 1)) == [
        (l3.item_id, "ag1"), (l4.item_id, "ag1")]
    assert store.pilot.report("ag1", [_end(l2), _end(l3), StatusUpdate(
        l4, S.RUNNING, utcnow())]) == [l2, l3, l4]
    events = store.pilot.events_after(exp, 0)
    assert [(e.item_id, e.state) for e in events] == [
        (l0.item_id, S.RUNNING), (l0.item_id, S.COMPLETED), (l1.item_id, S.COMPLETED),
        (l2.item_id, None), (l3.item_id, None), (l4.item_id, None)]
    assert events[1].usage == usage and events[1].exit_code == 0
    assert _terminal_events(store, exp) == {l0.item_id: 1, l1.item_id: 1}
    with pytest.raises(ValueError, match="QUEUED"):
        store.pilot.report("ag1", [StatusUpdate(l0, S.QUEUED, utcnow())])


def test_rejected_updates_do_not_block_accepted_ones(store: Store) -> None:
    exp = _experiment(store)
    store.pilot.enqueue(_items(exp, 3))
    a, b, c = (x.lease for x in store.pilot.claim("ag1", "hpc", [exp], 3, LEASE))
    ghost = LeaseRef(999_999, 1)
    rejected = store.pilot.report("ag1", [
        _end(LeaseRef(a.item_id, 7)), StatusUpdate(b, S.RUNNING, utcnow()), _end(ghost),
        _end(c, S.FAILED, exit_code=3, message="exit code 3")])
    assert rejected == [LeaseRef(a.item_id, 7), ghost]
    assert store.pilot.pending(exp) == {"LEASED": 2, "DONE": 1}
    ends = [e for e in store.pilot.events_after(exp, 0) if e.state == S.FAILED]
    assert [(e.item_id, e.exit_code, e.message) for e in ends] == [(c.item_id, 3, "exit code 3")]
    # A batch's progress then end of one lease: both events, in order; the item is DONE.
    store.pilot.report("ag1", [StatusUpdate(a, S.RUNNING, utcnow()), _end(a)])
    assert [e.state for e in store.pilot.events_after(exp, 0) if e.item_id == a.item_id] == [
        S.RUNNING, S.COMPLETED]


def test_expire_requeues_with_a_new_epoch_and_marks_silent_agents_gone(store: Store) -> None:
    exp = _experiment(store)
    store.pilot.enqueue(_items(exp, 2))
    for name in ("ag1", "ag2", "idle"):
        store.pilot.register(AgentInfo(name, "hpc", (exp,), "node", slots=1))
    (x,) = store.pilot.claim("ag1", "hpc", [exp], 1, lease_seconds=10)
    (y,) = store.pilot.claim("ag2", "hpc", [exp], 1, lease_seconds=10)
    later = utcnow() + timedelta(seconds=30)
    assert store.pilot.renew("ag2", [y.lease], lease_seconds=60) == []  # ag2 heartbeats
    assert store.pilot.expire(utcnow()) == []  # nothing expired yet
    assert store.pilot.expire(later) == [(x.lease.item_id, "ag1")]
    assert [a.id for a in store.pilot.agents("hpc")] == ["ag2", "idle"]  # ag1: GONE
    assert store.pilot.get_agent("ag1").status == AgentStatus.GONE
    (again,) = store.pilot.claim("ag2", "hpc", [exp], 5, LEASE)
    assert again.lease == LeaseRef(x.lease.item_id, x.lease.epoch + 2)  # requeued, reclaimed
    (e,) = [e for e in store.pilot.events_after(exp, 0) if e.state is None]
    assert (e.item_id, e.message) == (x.lease.item_id, "its agent ag1 stopped heartbeating")
    assert store.pilot.renew("ag1", [x.lease], LEASE) == [x.lease]  # lost
    # Agents not heard of for longer than a timeout are GONE too; leases alone requeue items.
    assert store.pilot.expire(later, agent_timeout=20) == []
    assert store.pilot.agents("hpc") == []
    assert store.pilot.pending(exp) == {"LEASED": 2}


def test_hand_back_and_renew(store: Store) -> None:
    exp = _experiment(store)
    store.pilot.enqueue(_items(exp, 4))
    leases = [c.lease for c in store.pilot.claim("ag1", "hpc", [exp], 4, LEASE)]
    assert store.pilot.hand_back("ag2", None, "not its own") == 0
    assert store.pilot.hand_back("ag1", [LeaseRef(leases[0].item_id, 99)], "stale") == 0
    assert store.pilot.hand_back("ag1", leases[:1], "draining") == 1
    assert store.pilot.renew("ag1", leases, LEASE) == leases[:1]
    assert store.pilot.hand_back("ag1", None, "allocation ends") == 3
    assert store.pilot.pending(exp) == {"READY": 4}
    assert [e.message for e in store.pilot.events_after(exp, 0)] == [
        "draining", "allocation ends", "allocation ends", "allocation ends"]
    assert {c.lease.epoch for c in store.pilot.claim("ag2", "hpc", [exp], 4, LEASE)} == {3}


def test_cancel_ends_ready_items_and_flags_leased_ones(store: Store) -> None:
    exp = _experiment(store)
    store.pilot.enqueue(_items(exp, 5))
    leased = [c.lease for c in store.pilot.claim("ag1", "hpc", [exp], 2, LEASE)]
    assert store.pilot.cancel(exp, ["s[0]", "s[2]"]) == [("ag1", leased[0])]
    assert store.pilot.cancel_requests("ag1") == [leased[0]]
    assert store.pilot.pending(exp) == {"LEASED": 2, "READY": 2, "DONE": 1}
    assert store.pilot.cancel(exp) == [("ag1", leased[0]), ("ag1", leased[1])]
    # The agent stops them: it reports CANCELED; or it dies, and they end CANCELED anyway.
    assert store.pilot.report("ag1", [_end(leased[0], S.CANCELED)]) == []
    assert store.pilot.hand_back("ag1", None, "agent stopped") == 1
    assert store.pilot.pending(exp) == {"DONE": 5}
    assert store.pilot.active_items(exp) == []
    assert set(_terminal_events(store, exp).values()) == {1}
    assert {e.state for e in store.pilot.events_after(exp, 0)} == {S.CANCELED}


def test_events_after_is_a_cursor(store: Store) -> None:
    exp, other = _experiment(store), _experiment(store)
    store.pilot.enqueue(_items(exp, 3))
    store.pilot.enqueue(_items(other, 3))
    for agent, e in (("ag1", exp), ("ag2", other)):
        claims = store.pilot.claim(agent, "hpc", [e], 3, LEASE)
        store.pilot.report(agent, [_end(c.lease) for c in claims])
    first = store.pilot.events_after(exp, 0, limit=2)
    rest = store.pilot.events_after(exp, first[-1].id)
    assert [e.instance_id for e in first + rest] == ["s[0]", "s[1]", "s[2]"]
    assert all(e.experiment_id == exp and e.at.tzinfo is not None for e in first + rest)
    assert first[0].id < first[1].id < rest[0].id
    assert store.pilot.events_after(exp, rest[-1].id) == []


def test_agents_register_list_and_stop(store: Store) -> None:
    a = AgentInfo("ag1", "hpc", ("e1", "e2"), "node1", slots=4, cores=8,
                  memory_bytes=64 << 30, gpus=1, allocation_id="job-1")
    store.pilot.register(a)
    store.pilot.register(AgentInfo("ag2", "cloud", ("e1",), "vm", slots=1))
    got = store.pilot.get_agent("ag1")
    assert (got.experiments, got.memory_bytes, got.allocation_id) == (("e1", "e2"), 64 << 30,
                                                                       "job-1")
    assert got.registered_at is not None and got.registered_at.tzinfo is not None
    assert [x.id for x in store.pilot.agents(experiment="e2")] == ["ag1"]
    assert [x.id for x in store.pilot.agents("cloud")] == ["ag2"]
    assert store.pilot.active_agents_by_resource() == {"hpc": (1, 4), "cloud": (1, 1)}
    store.pilot.stop_agent("ag1", "idle")
    assert [x.id for x in store.pilot.agents()] == ["ag2"]
    assert store.pilot.get_agent("ag1").stopped_reason == "idle"
    assert store.pilot.active_agents_by_resource() == {"cloud": (1, 1)}
    assert [x.id for x in store.pilot.agents(active_only=False)] == ["ag1", "ag2"]
    store.pilot.register(a)  # it comes back
    assert store.pilot.get_agent("ag1").status == AgentStatus.ACTIVE
    assert [x.id for x in store.pilot.agents("hpc", "e1")] == ["ag1"]
    assert store.pilot.agents("cloud", "e2") == []
    # A new token, other experiments: the old ones are no longer the agent's.
    store.pilot.register(dataclasses.replace(a, experiments=("e3",)))
    assert store.pilot.agents(experiment="e2") == []
    assert [x.id for x in store.pilot.agents(experiment="e3")] == ["ag1"]
    with pytest.raises(NotFound):
        store.pilot.get_agent("nobody")
    with pytest.raises(NotFound):
        store.pilot.stop_agent("nobody", "x")


@pytest.mark.timeout(60)
def test_ten_thousand_items_are_fast(store: Store) -> None:
    """The hot path: enqueue, claim in batches of 64, report ends in batches of 256 (the
    bounds are loose; the measured times are in the pull request)."""
    exp = _experiment(store)
    t0 = time.perf_counter()
    assert len(store.pilot.enqueue(_items(exp, 10_000))) == 10_000
    t1 = time.perf_counter()
    leases: list[LeaseRef] = []
    while claims := store.pilot.claim("ag1", "hpc", [exp], 64, LEASE):
        leases += [c.lease for c in claims]
    t2 = time.perf_counter()
    for i in range(0, len(leases), 256):
        assert store.pilot.report("ag1", [_end(x) for x in leases[i:i + 256]]) == []
    t3 = time.perf_counter()
    assert store.pilot.pending(exp) == {"DONE": 10_000}
    assert (t1 - t0, t2 - t1, t3 - t2) < (3.0, 10.0, 10.0), (t1 - t0, t2 - t1, t3 - t2)


@pytest.fixture(scope="module")
def shared_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path_factory.mktemp('pilot') / 'a.db'}")
    yield s
    s.close()


_OPS = st.lists(st.tuples(
    st.sampled_from(["claim", "end", "stale_end", "progress", "expire", "hand_back", "cancel"]),
    st.sampled_from(["ag1", "ag2"]), st.integers(0, 5)), max_size=30)


@settings(max_examples=60, deadline=None)
@given(ops=_OPS)
def test_any_interleaving_ends_each_item_at_most_once(shared_sqlite: Store,
                                                      ops: list[tuple[str, str, int]]) -> None:
    """Random claims, progress, ends, stale ends, expiries, hand-backs and cancels (each example
    in an experiment of its own, in one SQLite store): no item ever ends twice."""
    store = shared_sqlite
    exp = _experiment(store)
    store.pilot.enqueue(_items(exp, 4))
    held: dict[str, list[LeaseRef]] = {"ag1": [], "ag2": []}
    old: list[LeaseRef] = []
    now = utcnow()
    for op, agent, k in ops:
        mine = held[agent]
        if op == "claim":
            mine += [c.lease for c in store.pilot.claim(agent, "hpc", [exp], k, LEASE)]
        elif op in ("end", "progress") and mine:
            lease = mine[k % len(mine)]
            state = S.COMPLETED if op == "end" else S.RUNNING
            store.pilot.report(agent, [StatusUpdate(lease, state, utcnow())])
            old.append(lease)
        elif op == "stale_end" and old:
            for a in held:
                store.pilot.report(a, [_end(old[k % len(old)], S.FAILED)])
        elif op == "expire":
            now += timedelta(seconds=LEASE * 2)
            store.pilot.expire(now)
        elif op == "hand_back" and mine:
            store.pilot.hand_back(agent, [mine[k % len(mine)]], "test")
        elif op == "cancel":
            store.pilot.cancel(exp, [f"s[{k % 4}]"])
    ends = _terminal_events(store, exp)
    assert all(n == 1 for n in ends.values())
    done = 4 - sum(n for s, n in store.pilot.pending(exp).items() if s != "DONE")
    assert len(ends) == done  # every DONE item has exactly one end event, no other has one
    # An item's events: requeues and progress, then at most one end, which is the last.
    by_item: dict[int, list[S | None]] = {}
    for e in store.pilot.events_after(exp, 0):
        by_item.setdefault(e.item_id, []).append(e.state)
    for states in by_item.values():
        assert all(s not in TERMINAL for s in states[:-1])

