"""Accounts (people and API service accounts) and their refresh and API tokens: only argon2
password hashes and token digests are kept, never a password or a token."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from airavata_prefect.adapters.store.engine import utcnow
from airavata_prefect.adapters.store.schema import accounts, tokens


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    kind: str  # person | service
    project: str | None  # a service account's only project
    password_hash: str | None
    full_name: str | None
    email: str | None
    disabled: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TokenRow:
    id: str
    kind: str  # refresh | api
    account: str
    digest: str
    label: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every one we store is UTC."""
    from datetime import UTC
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _account(r: sa.RowMapping) -> Account:
    return Account(r["name"], r["kind"], r["project"], r["password_hash"], r["full_name"],
                   r["email"], bool(r["disabled"]), _aware(r["created_at"]) or utcnow())


def _token(r: sa.RowMapping) -> TokenRow:
    return TokenRow(r["id"], r["kind"], r["account"], r["digest"], r["label"],
                    _aware(r["created_at"]) or utcnow(), _aware(r["expires_at"]),
                    _aware(r["revoked_at"]))


class AccountRepo:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def create(self, name: str, *, kind: str, created_by: str, project: str | None = None,
               password_hash: str | None = None, full_name: str | None = None,
               email: str | None = None) -> bool:
        """False when the name is taken (nothing changes)."""
        with self.engine.begin() as conn:
            if conn.execute(sa.select(accounts.c.name).where(accounts.c.name == name)).first():
                return False
            conn.execute(accounts.insert().values(
                name=name, kind=kind, project=project, password_hash=password_hash,
                full_name=full_name, email=email, disabled=False, created_by=created_by,
                created_at=utcnow()))
        return True

    def get(self, name: str) -> Account | None:
        with self.engine.connect() as conn:
            row = conn.execute(accounts.select().where(accounts.c.name == name)).mappings().first()
        return None if row is None else _account(row)

    def list(self, kind: str | None = None, project: str | None = None) -> list[Account]:
        q = accounts.select().order_by(accounts.c.name)
        if kind:
            q = q.where(accounts.c.kind == kind)
        if project:
            q = q.where(accounts.c.project == project)
        with self.engine.connect() as conn:
            return [_account(r) for r in conn.execute(q).mappings()]

    def update(self, name: str, **values: object) -> bool:
        allowed = {"password_hash", "full_name", "email", "disabled"}
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        with self.engine.begin() as conn:
            return conn.execute(accounts.update().where(accounts.c.name == name)
                                .values(**values)).rowcount == 1

    def delete(self, name: str) -> bool:
        with self.engine.begin() as conn:
            conn.execute(tokens.update().where(tokens.c.account == name,
                                               tokens.c.revoked_at.is_(None))
                         .values(revoked_at=utcnow()))
            return conn.execute(accounts.delete().where(accounts.c.name == name)).rowcount == 1

    # tokens

    def add_token(self, token_id: str, *, kind: str, account: str, digest: str,
                  expires_at: datetime | None, label: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(tokens.insert().values(
                id=token_id, kind=kind, account=account, digest=digest, label=label,
                created_at=utcnow(), expires_at=expires_at, revoked_at=None))

    def token(self, token_id: str) -> TokenRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(tokens.select().where(tokens.c.id == token_id)).mappings().first()
        return None if row is None else _token(row)

    def tokens_of(self, account: str, kind: str | None = None) -> builtins.list[TokenRow]:
        q = tokens.select().where(tokens.c.account == account).order_by(tokens.c.created_at)
        if kind:
            q = q.where(tokens.c.kind == kind)
        with self.engine.connect() as conn:
            return [_token(r) for r in conn.execute(q).mappings()]

    def revoke(self, token_id: str) -> bool:
        """True when this call revoked it (a second revoke, or an unknown id, is False)."""
        with self.engine.begin() as conn:
            return conn.execute(tokens.update().where(
                tokens.c.id == token_id, tokens.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())).rowcount == 1


__all__ = ["Account", "AccountRepo", "TokenRow"]
