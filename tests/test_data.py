"""`airavata data list|upload|upload-dir|download|download-dir` on a real SeaweedFS S3 (its keys
in a real OpenBao) and a local path, as users do: locally, and in server mode through the
REST API; only members of the storage's project may read it, only those who may submit to it
may write it, and the S3 secret shows up in no output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from airavata_prefect.adapters.store import Store
from airavata_prefect.usecases.authorization import ensure_project
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.settings import get_settings
from tests.api_harness import ApiServer, api_server
from tests.cli_inproc import Ran, airavata
from tests.storages import register_path, register_s3

pytestmark = pytest.mark.prefect
AIRAVATA = str(Path(sys.executable).parent / "airavata")


def _cli(*args: str, env: dict[str, str] | None = None, stdin: str = "") -> Ran:
    return airavata(*args, env=env, stdin=stdin)


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed console script itself."""
    return subprocess.run([AIRAVATA, *args], capture_output=True, text=True, timeout=120,
                          env=os.environ.copy())


@pytest.fixture()
def stores(home: Path, prefect_api: str, s3, openbao_dev: tuple[str, str], tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str, str]]:
    """An S3 storage (`s3-…`, keys in OpenBao) and a local path (`nfs-…`), in project lab
    (alice administers it); the S3 secret key."""
    url, root = openbao_dev
    for k, v in {"AIRAVATA_OPENBAO_URL": url, "AIRAVATA_OPENBAO_TOKEN": root,
                 "AIRAVATA_USER": "alice"}.items():
        monkeypatch.setenv(k, v)
    sfx = uuid.uuid4().hex[:6]
    settings = get_settings()
    store = Store(settings.db_url)
    ctx = Context(settings, store, "alice")
    ensure_project(ctx, "lab")
    register_s3(ctx, s3, openbao_dev, name=f"s3-{sfx}", bucket=f"data-{sfx}")
    register_path(ctx, tmp_path / "share", name=f"nfs-{sfx}")
    ctx.close()
    store.close()
    yield f"s3-{sfx}", f"nfs-{sfx}", s3.secret_key


def _tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    (src / "link").symlink_to("/etc/passwd")  # never followed, never sent
    return src


def test_data_commands_locally(stores: tuple[str, str, str], tmp_path: Path) -> None:
    s3_name, nfs_name, secret = stores
    src = _tree(tmp_path)
    r = _script("data", "list", f"{s3_name}:/", "--json")  # the console script itself
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stderr
    for storage in (s3_name, nfs_name):
        r = _cli("data", "upload-dir", str(src), f"{storage}:/runs/r1")
        assert r.returncode == 0 and "uploaded 2 file(s)" in r.stdout, r.stderr
        r = _cli("data", "upload", str(src / "a.txt"), f"{storage}:/single/a-copy.txt")
        assert r.returncode == 0, r.stderr
        r = _cli("data", "list", f"{storage}:/runs", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == [{"path": "runs/r1/a.txt", "size": 6},
                                        {"path": "runs/r1/sub/b.bin", "size": 300_000}]
        dest = tmp_path / f"back-{storage}"
        r = _cli("data", "download-dir", f"{storage}:/runs/r1", str(dest))
        assert r.returncode == 0 and "downloaded 2 file(s)" in r.stdout, r.stderr
        assert (dest / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
        assert not (dest / "link").exists()
        r = _cli("data", "download", f"{storage}:/single/a-copy.txt", str(dest / "one"))
        assert r.returncode == 0 and (dest / "one" / "a-copy.txt").read_text() == "alpha\n"
        assert secret not in r.stdout + r.stderr
    # One line for each bad input, no traceback.
    for args, message in [
        (("data", "list", "no-colon"), "expected STORAGE:/path"),
        (("data", "list", f"{s3_name}:/a/../../b"), "a path with '..' is not allowed"),
        (("data", "list", "nowhere-1:/x"), "no storage resource 'nowhere-1' is registered"),
        (("data", "upload", str(src), f"{s3_name}:/x"), "a directory (use upload-dir)"),
        (("data", "upload", str(tmp_path / "missing.txt"), f"{s3_name}:/x"),
         "missing.txt: no such file or directory"),
        (("data", "download", f"{s3_name}:/no/such/thing", str(tmp_path / "d")),
         "has nothing at"),
    ]:
        r = _cli(*args)
        assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr, \
            (args, r.stderr)
    # Someone outside the project may neither read nor write it (audited refusals).
    env = {**os.environ, "AIRAVATA_USER": "mallory"}
    r = _cli("data", "list", f"{s3_name}:/runs", env=env)
    assert r.returncode == 4 and "mallory lacks storage.read" in r.stderr, r.stderr
    r = _cli("data", "upload", str(src / "a.txt"), f"{s3_name}:/m.txt", env=env)
    assert r.returncode == 4 and "mallory lacks storage.use" in r.stderr, r.stderr


def test_data_commands_in_server_mode(stores: tuple[str, str, str], home: Path,
                                      tmp_path: Path) -> None:
    s3_name, _, secret = stores
    src = _tree(tmp_path)
    extra = {k: os.environ[k] for k in ("AIRAVATA_OPENBAO_URL", "AIRAVATA_OPENBAO_TOKEN",
                                        "PREFECT_API_URL")}
    with api_server(home, extra_env=extra) as api:
        _alice_account(api)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AIRAVATA_", "PREFECT_API"))}
        env.update(AIRAVATA_HOME=str(tmp_path / "cli-home"), AIRAVATA_API_URL=api.base)
        r = _cli("auth", "login", "-u", "alice", "--password-stdin", env=env,
                 stdin="alice-password-1\n")
        assert r.returncode == 0, r.stderr
        r = _cli("data", "upload-dir", str(src), f"{s3_name}:/srv/r2", env=env)
        assert r.returncode == 0 and "uploaded 2 file(s)" in r.stdout, r.stderr
        r = _cli("data", "list", f"{s3_name}:/srv", "--json", env=env)
        assert r.returncode == 0, r.stderr
        assert [x["path"] for x in json.loads(r.stdout)] == ["srv/r2/a.txt", "srv/r2/sub/b.bin"]
        dest = tmp_path / "back"
        r = _cli("data", "download-dir", f"{s3_name}:/srv/r2", str(dest), env=env)
        assert r.returncode == 0, r.stderr
        assert (dest / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
        r = _cli("data", "list", f"{s3_name}:/nothing/../x", env=env)
        assert r.returncode != 0 and "'..'" in r.stderr, r.stderr
        with api.add_user("mallory") as mallory:
            r = mallory.get(f"/storage/{s3_name}/files", params={"path": "/srv"})
            assert r.status_code == 403, r.text
            r = mallory.put(f"/storage/{s3_name}/files", params={"path": "/m.txt"},
                            content=b"x")
            assert r.status_code == 403, r.text
        assert secret not in api.log.read_text()


def _alice_account(api: ApiServer) -> None:
    """alice, who administers project lab in this home, as a person with a password."""
    with api.as_admin() as admin:
        r = admin.post("/users", json={"username": "alice", "password": "alice-password-1"})
        assert r.status_code == 201, r.text
