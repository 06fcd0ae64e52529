"""Pilot agents' tokens (usecases/agent_tokens.py): an agent's token proves its scope (one
resource, its experiments, until its allocation ends) and nothing else; a person's access
token, a token from another server, a tampered or expired one proves nothing."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest

from airavata_prefect.usecases import agent_tokens, identity
from airavata_prefect.usecases.agent_tokens import AgentScope, mint, verify
from airavata_prefect.usecases.errors import BadInput, Unauthenticated
from airavata_prefect.usecases.settings import Settings


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(home=tmp_path, **kw)


def _refused(settings: Settings, token: str, message: str, **kw: str) -> None:
    with pytest.raises(Unauthenticated) as err:
        verify(settings, token, **kw)
    assert str(err.value) == message
    assert not token or token not in str(err.value)  # never echoed


def test_round_trip(tmp_path: Path) -> None:
    st = _settings(tmp_path)
    before = datetime.now(UTC)
    token = mint(st, resource="cluster-a", experiments=["exp-1", "exp-2", "exp-1"],
                 seconds=3600)
    scope = verify(st, token)
    assert isinstance(scope, AgentScope)
    assert scope.resource == "cluster-a" and scope.experiments == ("exp-1", "exp-2")
    assert before + timedelta(seconds=3598) <= scope.expires_at \
        <= datetime.now(UTC) + timedelta(seconds=3600)
    assert verify(st, token, resource="cluster-a", experiment="exp-2") == scope
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == "airavata-scheduler" and claims["aud"] == "airavata-agent"
    assert claims["sub"] == f"agent:{scope.agent_key}" and claims["jti"] == scope.agent_key
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    other = verify(st, mint(st, resource="cluster-a", experiments=["exp-1"], seconds=60))
    assert other.agent_key != scope.agent_key  # each spawn its own id


def test_scope_is_enforced(tmp_path: Path) -> None:
    st = _settings(tmp_path)
    token = mint(st, resource="cluster-a", experiments=["exp-1"], seconds=60)
    _refused(st, token, "agent token is not for resource cluster-b", resource="cluster-b")
    _refused(st, token, "agent token does not cover experiment exp-2", experiment="exp-2")
    _refused(st, token, "agent token does not cover experiment exp-2",
             resource="cluster-a", experiment="exp-2")


def test_expired_is_refused(tmp_path: Path) -> None:
    st = _settings(tmp_path)
    now = datetime.now(UTC)
    jti = uuid.uuid4().hex
    token = jwt.encode({"iss": agent_tokens.ISSUER, "aud": agent_tokens.AUDIENCE,
                        "sub": f"agent:{jti}", "jti": jti, "resource": "cluster-a",
                        "experiments": ["exp-1"], "iat": now - timedelta(hours=2),
                        "exp": now - timedelta(seconds=5)},
                       agent_tokens._key(st), algorithm="HS256")
    _refused(st, token, "agent token expired")


def test_tampered_is_refused(tmp_path: Path) -> None:
    st = _settings(tmp_path)
    token = mint(st, resource="cluster-a", experiments=["exp-1"], seconds=60)
    header, payload, signature = token.split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BA")
    _refused(st, f"{header}.{payload}.{flipped}", "agent token invalid")
    # Claims widened, signature kept.
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["experiments"] = ["exp-1", "exp-2"]
    widened = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    _refused(st, f"{header}.{widened}.{signature}", "agent token invalid")
    # alg none, and rubbish.
    unsigned = jwt.encode(claims, "", algorithm="none")
    _refused(st, unsigned, "agent token invalid")
    for rubbish in ["", "not-a-token", "a.b.c"]:
        _refused(st, rubbish, "agent token invalid")


def test_persons_access_token_is_refused(tmp_path: Path) -> None:
    st = _settings(tmp_path)
    now = datetime.now(UTC)
    key = identity.signing_key(st)
    person = jwt.encode({"iss": identity.ISSUER, "sub": "alice", "typ": "access", "iat": now,
                         "exp": now + timedelta(minutes=15), "jti": uuid.uuid4().hex},
                        key, algorithm="HS256")
    _refused(st, person, "agent token invalid")
    # Even with an agent's claims, a token signed with the people's key is no agent token...
    jti = uuid.uuid4().hex
    lookalike = jwt.encode({"iss": agent_tokens.ISSUER, "aud": agent_tokens.AUDIENCE,
                            "sub": f"agent:{jti}", "jti": jti, "resource": "cluster-a",
                            "experiments": ["exp-1"], "iat": now,
                            "exp": now + timedelta(minutes=15)}, key, algorithm="HS256")
    _refused(st, lookalike, "agent token invalid")
    # ...and an agent's token is no access token.
    agent = mint(st, resource="cluster-a", experiments=["exp-1"], seconds=60)
    with pytest.raises(jwt.PyJWTError):
        jwt.decode(agent, key, algorithms=["HS256"], issuer=identity.ISSUER,
                   options={"verify_aud": False})


def test_other_servers_secret_is_refused(tmp_path: Path) -> None:
    ours = _settings(tmp_path / "a", jwt_secret="s" * 48)
    theirs = _settings(tmp_path / "b", jwt_secret="t" * 48)
    token = mint(theirs, resource="cluster-a", experiments=["exp-1"], seconds=60)
    assert verify(theirs, token).resource == "cluster-a"
    _refused(ours, token, "agent token invalid")
    # The key made on first use in `home` differs per home too.
    made = mint(_settings(tmp_path / "c"), resource="cluster-a", experiments=["e"], seconds=60)
    _refused(_settings(tmp_path / "d"), made, "agent token invalid")


def test_mint_refuses_a_useless_scope(tmp_path: Path) -> None:
    st = _settings(tmp_path)
    cases: list[dict[str, Any]] = [
        {"resource": "", "experiments": ["e"], "seconds": 60.0},
        {"resource": "r", "experiments": [], "seconds": 60.0},
        {"resource": "r", "experiments": "exp-1", "seconds": 60.0},
        {"resource": "r", "experiments": [""], "seconds": 60.0},
        {"resource": "r", "experiments": ["e"], "seconds": 0.0},
    ]
    for kw in cases:
        with pytest.raises(BadInput):
            mint(st, **kw)


def test_the_agents_key_signs_agents_tokens_only(tmp_path: Path, home: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`airavata server agent-key`: what a Kubernetes pod holds to mint its agent's token.
    Tokens it mints verify on the server; it is not the key of people's tokens; only a
    platform admin gets it, and both the export and a refusal are audited."""
    import subprocess
    import sys

    from airavata_prefect.usecases.context import open_context
    from airavata_prefect.usecases.errors import Forbidden
    from tests.cli_inproc import airavata as in_process

    airavata = str(Path(sys.executable).parent / "airavata")
    monkeypatch.setenv("AIRAVATA_USER", "root")  # the first acting user administers it
    r = subprocess.run([airavata, "server", "agent-key"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    server = _settings(home)
    assert key == agent_tokens.agent_key(server) and len(key) == 64
    assert key != identity.signing_key(server)
    pod = _settings(tmp_path / "pod", agent_key=key)  # no access to the server's home
    token = mint(pod, resource="k8s", experiments=["exp-1"], seconds=60)
    assert verify(server, token, resource="k8s", experiment="exp-1").experiments == ("exp-1",)
    with pytest.raises(jwt.InvalidSignatureError):  # it signs no access token of a person
        jwt.decode(jwt.encode({"sub": "root"}, key, algorithm="HS256"),
                   identity.signing_key(server), algorithms=["HS256"])

    monkeypatch.setenv("AIRAVATA_USER", "bob")
    r = in_process("server", "agent-key")
    assert r.returncode != 0 and key not in r.stdout + r.stderr
    assert "bob lacks platform.manage" in r.stderr and "Traceback" not in r.stderr
    with open_context() as ctx, pytest.raises(Forbidden):
        agent_tokens.export_key(ctx)
    with open_context() as ctx:
        rows = [(a.actor, a.outcome, a.detail) for a in ctx.store.audit.trail()
                if a.action == "platform.manage"]
    assert ("root", "ok", "agent key exported") in rows
    assert ("bob", "denied", None) in rows
