"""The CLI in server mode against a real API server: sign in, run with --watch (fed by the
live stream), cancel, sign out; the CLI process never opens a database (an audit hook in the
CLI process records any attempt). And local mode acts only as the OS login, unless the store
is the caller's own."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from tests.api_harness import ApiServer
from tests.conftest import experiment_stack

# Runs the CLI with an audit hook: any SQLite connection, and any socket connection to a port
# other than the API's, is written to the file named by AIRAVATA_TEST_VIOLATIONS.
WRAPPER = """
import os, sys
log, port = os.environ["AIRAVATA_TEST_VIOLATIONS"], int(os.environ["AIRAVATA_TEST_API_PORT"])
def hook(event, args):
    bad = None
    if event == "sqlite3.connect":
        bad = f"sqlite3.connect {args[0]!r}"
    elif event == "socket.connect" and isinstance(args[1], tuple) and args[1][1] != port:
        bad = f"socket.connect {args[1]!r}"
    elif event == "open" and isinstance(args[0], str) and args[0].endswith(("airavata.db",
                                                                           "jwt.key")):
        bad = f"open {args[0]!r}"
    if bad:
        with open(log, "a") as f:
            f.write(bad + "\\n")
sys.addaudithook(hook)
from airavata_prefect.api.cli import main
sys.argv[0] = "airavata"
main()
"""

SPEC = """\
name: hello-api
tasks:
  greet:
    command: 'echo "hello $WHO"'
    task_inputs: {WHO: [ada, grace, linus]}
"""
SLOW = """\
name: slow-api
tasks:
  nap:
    command: 'sleep 60'
"""


def _cli(env: dict[str, str], *args: str, stdin: str | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WRAPPER, *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_in_server_mode_runs_watches_cancels_and_never_opens_the_store(
        api: ApiServer, tmp_path: Path) -> None:
    with experiment_stack(api.home, "door-api", project="default", user=None) as stack:
        made = stack.airavata("project", "add-member", "default", "alice")
        assert made.returncode == 0, made.stderr
        api.add_user("alice", "alice-password-1").close()
        violations = tmp_path / "violations.log"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AIRAVATA_", "PREFECT_API"))}
        env.update(AIRAVATA_HOME=str(tmp_path / "cli-home"),
                   AIRAVATA_TEST_VIOLATIONS=str(violations),
                   AIRAVATA_TEST_API_PORT=api.base.rsplit(":", 1)[1])
        r = _cli(env, "config", "set", "server", api.base)
        assert r.returncode == 0, r.stderr
        r = _cli(env, "experiment", "list")
        assert r.returncode == 4 and "airavata auth login" in r.stderr, r.stderr
        r = _cli(env, "auth", "login", "-u", "alice", "--password-stdin",
                 stdin="wrong-password\n")
        assert r.returncode == 4 and "wrong name or password" in r.stderr, r.stderr
        r = _cli(env, "auth", "login", "-u", "alice", "--password-stdin",
                 stdin="alice-password-1\n")
        assert r.returncode == 0, r.stderr
        token_file = tmp_path / "cli-home" / "cli" / "token.json"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert "alice-password-1" not in token_file.read_text()
        r = _cli(env, "auth", "status", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["name"] == "alice", r.stderr

        spec = tmp_path / "hello.yml"
        spec.write_text(SPEC)
        r = _cli(env, "experiment", "run", str(spec), "--deployment", "door-api", "--watch")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "COMPLETED" in r.stdout
        r = _cli(env, "experiment", "list", "--json")
        listed = json.loads(r.stdout)
        assert [e["status"] for e in listed] == ["COMPLETED"]
        exp_id = listed[0]["id"]
        r = _cli(env, "experiment", "logs", exp_id[:8], "greet[1]")
        assert r.returncode == 0 and r.stdout.strip() == "hello grace", r.stdout + r.stderr
        r = _cli(env, "experiment", "tasks", exp_id, "--json")
        assert sorted(t["state"] for t in json.loads(r.stdout)) == ["COMPLETED"] * 3

        slow = tmp_path / "slow.yml"
        slow.write_text(SLOW)
        r = _cli(env, "experiment", "run", str(slow), "--deployment", "door-api")
        assert r.returncode == 0, r.stderr
        slow_id = r.stdout.split("experiment ", 1)[1].split()[0]
        deadline = time.monotonic() + 90
        while True:
            r = _cli(env, "experiment", "status", slow_id, "--json")
            if json.loads(r.stdout)["steps"]["nap"].get("RUNNING"):
                break
            assert time.monotonic() < deadline, r.stdout
            time.sleep(1)
        r = _cli(env, "experiment", "cancel", slow_id)
        assert r.returncode == 0 and "cancel requested" in r.stdout, r.stdout + r.stderr
        r = _cli(env, "experiment", "watch", slow_id, timeout=120)
        assert r.returncode == 1 and "CANCELED" in r.stdout, r.stdout + r.stderr

        # Her own audit trail, through the API; one request's rows by its correlation id.
        r = _cli(env, "audit", "--json")
        assert r.returncode == 0, r.stderr
        trail = json.loads(r.stdout)
        assert trail and all(row["correlation_id"] for row in trail)
        one = trail[-1]["correlation_id"]
        r = _cli(env, "audit", "-c", one, "--json")
        assert {row["correlation_id"] for row in json.loads(r.stdout)} == {one}, r.stdout
        # That request's timeline: her own rows and events only, through the API.
        r = _cli(env, "trace", one, "--json")
        assert r.returncode == 0, r.stderr
        lines = json.loads(r.stdout)["lines"]
        assert lines and {x["actor"] for x in lines} == {"alice"}, lines
        assert {x["source"] for x in lines} <= {"audit", "event"}
        # What the first experiment's instances used, per step.
        r = _cli(env, "experiment", "usage", exp_id, "--json")
        assert r.returncode == 0, r.stderr
        (greet,) = json.loads(r.stdout)
        assert greet["step"] == "greet" and greet["measured"] == 3 and greet["wall_p90"] > 0
        # A command with no server mode refuses rather than open the store.
        r = _cli(env, "deployment", "list")
        assert r.returncode == 2 and "no server mode" in r.stderr, r.stderr
        r = _cli(env, "auth", "logout")
        assert r.returncode == 0 and not token_file.exists(), r.stderr
        r = _cli(env, "experiment", "list")
        assert r.returncode == 4, r.stderr
        assert not violations.exists(), violations.read_text()


def test_local_mode_refuses_another_user_unless_the_store_is_yours(
        home: Path, tmp_path: Path) -> None:
    env = {**os.environ, "AIRAVATA_HOME": str(home)}
    env.pop("AIRAVATA_USER", None)
    airavata = str(Path(sys.executable).parent / "airavata")
    ok = subprocess.run([airavata, "experiment", "list"], env=env, capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr  # the first user claims the store: it is theirs
    mine = subprocess.run([airavata, "experiment", "list"],
                          env={**env, "AIRAVATA_USER": "alice"}, capture_output=True,
                          text=True, timeout=120)
    assert mine.returncode == 0, mine.stderr  # their own store: acting as others is theirs
    engine = sa.create_engine(f"sqlite:///{home / 'airavata.db'}")
    with engine.begin() as conn:  # a shared store, owned by its operator
        conn.execute(sa.text("UPDATE store_info SET value = 'operator' WHERE key = 'owner'"))
    refused = subprocess.run([airavata, "experiment", "cancel", "x"],
                             env={**env, "AIRAVATA_USER": "alice"}, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 4, refused.stderr
    assert "AIRAVATA_USER=alice" in refused.stderr and "REST API" in refused.stderr
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT actor, action, outcome FROM audit_events "
                                    "WHERE action = 'identity.assume'")).all()
    assert [tuple(r) for r in rows] == [(os.environ.get("USER") or _login(), "identity.assume",
                                         "denied")]
    own = subprocess.run([airavata, "experiment", "list"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert own.returncode == 0, own.stderr  # as themselves, anyone may use it
    engine.dispose()


def _login() -> str:
    import getpass
    return getpass.getuser()
