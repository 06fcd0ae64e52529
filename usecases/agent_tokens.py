"""Tokens for pilot agents: what lets an agent on a compute node talk to the scheduler service,
and only about the work it was spawned for.

Each agent holds one token, minted when it is spawned. It names one compute resource and the
experiments the agent may serve, and expires with the agent's allocation, so a token that leaks
from a compute node is worth little: it cannot act for another resource or experiment, and it
dies with the allocation.

The tokens are JWTs (HS256) signed with a key derived from the API's signing key (HMAC of that
key with a label only agents use), not with the signing key itself. A person's access token and
an agent token therefore never verify as each other, even if their claims were made to match;
the issuer and audience differ too. Refusals say why in a few words and never echo the token.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from airavata_prefect.usecases.accounts import PLATFORM, ensure_platform
from airavata_prefect.usecases.authorization import audit, require
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.errors import BadInput, Unauthenticated
from airavata_prefect.usecases.identity import signing_key
from airavata_prefect.usecases.settings import Settings

ISSUER = "airavata-scheduler"
AUDIENCE = "airavata-agent"
_KEY_LABEL = b"airavata-agent"  # domain separation: agent tokens only
_ALGORITHM = "HS256"
_REQUIRED = ["exp", "iat", "iss", "aud", "sub", "jti"]


@dataclass(frozen=True)
class AgentScope:
    """What a verified agent token allows: one resource, these experiments, until then."""

    resource: str
    experiments: tuple[str, ...]
    agent_key: str  # the token's jti: a random id of this spawn
    expires_at: datetime


def agent_key(settings: Settings) -> str:
    """The agents' signing key: AIRAVATA_AGENT_KEY, else derived from, and never equal to,
    the people's one (which it does not reveal)."""
    if settings.agent_key is not None:
        return settings.agent_key.get_secret_value()
    return hmac.new(signing_key(settings).encode(), _KEY_LABEL, hashlib.sha256).hexdigest()


def export_key(ctx: Context) -> str:
    """The agents' signing key, for a place that mints agents' tokens away from the server
    (a Kubernetes Secret's `agent-key`): platform admins only, audited."""
    ensure_platform(ctx)
    require(ctx, "platform.manage", PLATFORM)
    audit(ctx, "platform.manage", f"platform:{PLATFORM}", "ok", "agent key exported")
    return agent_key(ctx.settings)


def _key(settings: Settings) -> bytes:
    return agent_key(settings).encode()


def mint(settings: Settings, *, resource: str, experiments: Sequence[str],
         seconds: float) -> str:
    """A token for one agent spawn on `resource`, serving `experiments`, valid for `seconds`
    (the allocation's walltime)."""
    if not resource:
        raise BadInput("agent token: a resource is required")
    if isinstance(experiments, str):  # a str is a Sequence[str]: one name, not its letters
        raise BadInput("agent token: experiments must be a list of names, not one string")
    names = tuple(dict.fromkeys(experiments))  # deduplicated, in order
    if not names or not all(isinstance(n, str) and n for n in names):
        raise BadInput("agent token: at least one experiment, each a non-empty name")
    if not seconds > 0:
        raise BadInput("agent token: seconds must be positive")
    now = datetime.now(UTC)
    jti = uuid.uuid4().hex
    claims: dict[str, Any] = {
        "iss": ISSUER, "aud": AUDIENCE, "sub": f"agent:{jti}", "jti": jti,
        "resource": resource, "experiments": list(names),
        "iat": now, "exp": now + timedelta(seconds=seconds),
    }
    return jwt.encode(claims, _key(settings), algorithm=_ALGORITHM)


def verify(settings: Settings, token: str, *, resource: str | None = None,
           experiment: str | None = None) -> AgentScope:
    """The scope an agent token grants, checked against the `resource` and `experiment` the
    request is about (when given); Unauthenticated saying why not otherwise."""
    if not isinstance(token, str) or not token:
        raise Unauthenticated("agent token invalid")
    try:
        claims = jwt.decode(token, _key(settings), algorithms=[_ALGORITHM], issuer=ISSUER,
                            audience=AUDIENCE, options={"require": _REQUIRED})
    except jwt.ExpiredSignatureError:  # raised only once the signature has checked out
        raise Unauthenticated("agent token expired") from None
    except jwt.PyJWTError:
        raise Unauthenticated("agent token invalid") from None
    scope = _scope(claims)
    if resource is not None and scope.resource != resource:
        raise Unauthenticated(f"agent token is not for resource {resource}")
    if experiment is not None and experiment not in scope.experiments:
        raise Unauthenticated(f"agent token does not cover experiment {experiment}")
    return scope


def _scope(claims: dict[str, Any]) -> AgentScope:
    """The scope in claims whose signature is good, or Unauthenticated if they are not the
    shape `mint` makes."""
    jti, res, names, exp = (claims.get("jti"), claims.get("resource"),
                            claims.get("experiments"), claims.get("exp"))
    if not (isinstance(jti, str) and jti and claims.get("sub") == f"agent:{jti}"
            and isinstance(res, str) and res
            and isinstance(names, list) and names
            and all(isinstance(n, str) and n for n in names)
            and isinstance(exp, int | float)):
        raise Unauthenticated("agent token invalid")
    return AgentScope(resource=res, experiments=tuple(names), agent_key=jti,
                      expires_at=datetime.fromtimestamp(exp, UTC))


__all__ = ["AUDIENCE", "ISSUER", "AgentScope", "agent_key", "export_key", "mint", "verify"]
