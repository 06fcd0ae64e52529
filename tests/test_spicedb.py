"""Permissions in a real (embedded) SpiceDB: the positive and negative matrix, by permission key."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from airavata_prefect.adapters.spicedb import (
    Authz,
    AuthzError,
    AuthzUnavailable,
    PermissionDenied,
    Subject,
)

U = Subject.user


@pytest.fixture(scope="module")
def world() -> Iterator[Authz]:
    """alice admins project A; bob and the service account svc-a are its members; erin is in
    project B; dave is in group inner, which is in group outer; carol is nobody."""
    az = Authz.embedded()
    az.relate("group", "inner", "member", U("dave"))
    az.relate("group", "outer", "member", Subject.group("inner"))
    az.relate("project", "A", "admin", U("alice"))
    az.relate("project", "A", "member", U("bob"))
    az.relate("project", "A", "member", U("svc-a"))
    az.relate("project", "B", "member", U("erin"))
    az.relate("credential", "cred-alice", "owner", U("alice"))
    az.relate("credential", "cred-alice", "reader", Subject.group("outer"))
    az.relate("credential", "cred-bob", "owner", U("bob"))
    az.relate("experiment", "exp-bob", "owner", U("bob"))
    az.relate("experiment", "exp-bob", "project", Subject("project", "A"))
    az.relate("experiment", "exp-erin", "owner", U("erin"))
    az.relate("experiment", "exp-erin", "project", Subject("project", "B"))
    az.relate("compute_resource", "cluster-a", "project", Subject("project", "A"))
    az.relate("compute_resource", "cluster-a", "bound_credential",
              Subject("credential", "cred-alice"))
    yield az
    az.close()


MATRIX = [
    ("carol", "credential.read", "cred-alice", False),   # a non-member reads a credential
    ("dave", "credential.read", "cred-alice", True),     # nested group, shared credential
    ("dave", "credential.write", "cred-alice", False),   # a reader cannot write
    ("dave", "credential.delete", "cred-alice", False),
    ("dave", "credential.share", "cred-alice", False),   # re-sharing is the owner's
    ("bob", "credential.read", "cred-alice", False),     # project members do not see it
    ("bob", "credential.bind", "cred-alice", False),     # bind without write
    ("alice", "credential.bind", "cred-alice", True),
    ("alice", "credential.delete", "cred-alice", True),
    ("alice", "credential.read", "cred-bob", False),     # another user's credential
    ("erin", "scheduler.queue.submit", "A", False),      # cross-project submit
    ("bob", "scheduler.queue.submit", "A", True),
    ("svc-a", "scheduler.queue.submit", "A", True),
    ("svc-a", "scheduler.queue.submit", "B", False),     # service account outside its project
    ("bob", "scheduler.queue.read", "exp-erin", False),  # reading another user's experiment
    ("erin", "scheduler.queue.read", "exp-erin", True),
    ("alice", "scheduler.queue.read", "exp-bob", True),  # the project's admin
    ("alice", "scheduler.queue.read", "exp-erin", False),
    ("erin", "scheduler.queue.cancel", "exp-bob", False),
    ("bob", "scheduler.queue.cancel", "exp-bob", True),
    ("bob", "scheduler.instance.delete", "exp-erin", False),
    ("svc-a", "scheduler.queue.cancel", "exp-bob", False),  # members cancel only their own
    ("carol", "scheduler.node.read", "cluster-a", False),
    ("bob", "scheduler.node.read", "cluster-a", True),
    ("bob", "scheduler.node.operate", "cluster-a", False),
    ("alice", "scheduler.node.operate", "cluster-a", True),
    ("bob", "resource.use", "cluster-a", True),
    ("erin", "resource.use", "cluster-a", False),        # another project's resource
]


@pytest.mark.parametrize(("user", "key", "obj", "allowed"), MATRIX,
                         ids=[f"{u}-{k}-{o}" for u, k, o, _ in MATRIX])
def test_permission_matrix(world: Authz, user: str, key: str, obj: str, allowed: bool) -> None:
    assert world.check(user, key, obj) is allowed
    if allowed:
        world.require(user, key, obj)
    else:
        with pytest.raises(PermissionDenied, match=re.escape(f"user {user} lacks {key} on ")):
            world.require(user, key, obj)


def test_removed_member_loses_access_at_once(world: Authz) -> None:
    world.relate("group", "inner", "member", U("frank"))
    assert world.check("frank", "credential.read", "cred-alice")
    world.unrelate("group", "inner", "member", U("frank"))
    assert not world.check("frank", "credential.read", "cred-alice")


def test_share_and_unshare(world: Authz) -> None:
    world.relate("credential", "cred-bob", "reader", U("carol"))
    assert world.check("carol", "credential.read", "cred-bob")
    assert not world.check("carol", "credential.write", "cred-bob")
    world.unrelate("credential", "cred-bob", "reader", U("carol"))
    assert not world.check("carol", "credential.read", "cred-bob")


def test_unknown_key_and_bad_object_type(world: Authz) -> None:
    with pytest.raises(AuthzError, match=r"unknown permission key 'credential\.steal'"):
        world.check("alice", "credential.steal", "cred-alice")
    with pytest.raises(AuthzError, match="SpiceDB refused write widget"):
        world.relate("widget", "w1", "owner", U("alice"))


def test_a_closed_spicedb_fails_closed() -> None:
    az = Authz.embedded()
    az.relate("project", "A", "member", U("bob"))
    az.close()
    with pytest.raises(AuthzUnavailable, match="SpiceDB could not answer"):
        az.check("bob", "scheduler.queue.submit", "A")


def test_embedded_permissions_survive_a_new_process_through_the_journal(tmp_path) -> None:
    from airavata_prefect.adapters.store import Store

    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    first = Authz.embedded(journal=store.relationships)
    first.relate("project", "P", "member", U("bob"))
    first.relate("project", "P", "member", U("eve"))
    first.unrelate("project", "P", "member", U("eve"))
    first.close()
    second = Authz.embedded(journal=store.relationships)  # what the next CLI invocation does
    assert second.check("bob", "scheduler.queue.submit", "P")
    assert not second.check("eve", "scheduler.queue.submit", "P")
    second.close()
    store.close()


class _Rows:
    """A journal of many relationships, as a store with a few thousand experiments holds."""

    def __init__(self, n: int) -> None:
        self.rows = [("experiment", f"e{i}", "owner", "user", f"u{i % 7}", "") for i in range(n)]

    def save_relationship(self, row: tuple[str, ...], *, present: bool) -> int:
        return 0

    def load_relationships(self) -> list[tuple[str, ...]]:
        return list(self.rows)

    def generation(self) -> int:
        return 0


def test_an_embedded_instance_rebuilds_beyond_one_write_call() -> None:
    """SpiceDB takes 1,000 updates a call: a journal of 2,500 rows is loaded whole."""
    az = Authz.embedded(journal=_Rows(2500))  # type: ignore[arg-type]
    try:
        assert az.check("u5", "scheduler.queue.read", "e2497")  # 2497 % 7 == 5
        assert az.check("u0", "scheduler.queue.read", "e1001")  # 1001 % 7 == 0
        assert not az.check("u1", "scheduler.queue.read", "e1001")
    finally:
        az.close()
