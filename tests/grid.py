"""A grid of real resources for integration tests: SLURM reached three ways and a bare-metal host,
each registered as our users do (credentials in OpenBao, blocks, work pools, deployments, SpiceDB)
and served by a real `prefect worker start` process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from airavata_prefect.adapters.openbao import OpenBao, SecretRef
from airavata_prefect.adapters.spicedb import Authz
from airavata_prefect.adapters.store import Store
from airavata_prefect.blocks import BareMetalHost, SlurmCluster
from airavata_prefect.domain.records import Bundle, Task
from airavata_prefect.usecases import registration
from airavata_prefect.usecases.authorization import ensure_project
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.credentials import CredentialService
from airavata_prefect.usecases.settings import get_settings
from airavata_prefect.usecases.submit import submit
from tests.services import Slurm, Sshd

USER, PROJECT = "alice", "lab"


@dataclass
class Grid:
    home: Path
    store: Store
    authz: Authz
    bao: OpenBao
    names: dict[str, str]  # role -> resource name
    sshd: Sshd
    slurm: Slurm
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def spec(self, tmp: Path, body: str, on: str | list[str], name: str = "exp.yml",
             preferred: str | None = None) -> Path:
        """An experiment placed on these resources of the grid (every other one excluded)."""
        keep = [on] if isinstance(on, str) else on
        others = [n for r, n in {"local": "local", **self.names}.items() if r not in keep]
        text = textwrap.dedent(body) + f"constraints:\n  excluded: [{', '.join(others)}]\n"
        if preferred:
            text += f"  preferred: [{preferred}]\n"
        path = tmp / name
        path.write_text(text)
        return path

    def submit(self, path: Path, user: str = USER) -> str:
        ctx = Context(get_settings(), self.store, user, _authz=self.authz)
        return submit(ctx, path, [], project=PROJECT)

    def run(self, exp_id: str):
        from airavata_prefect.flows.experiment_flow import run_experiment
        return asyncio.run(run_experiment(experiment_id=exp_id, return_state=True))

    def tasks(self, exp_id: str) -> dict[str, Task]:
        return {t.instance_id: t for t in self.store.tasks.list(exp_id)}

    def bundles(self, exp_id: str) -> list[Bundle]:
        return self.store.bundles.of_experiment(exp_id)


def _credential(svc: CredentialService, store: Store, cid: str, secret: dict[str, str]) -> None:
    ref = SecretRef(f"users/{USER}/{cid}")
    svc.create(USER, cid, ref, secret)
    store.credentials.add(cid, owner=USER, mount=ref.mount, path=ref.path)


def _start_worker(pool: str, kind: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    prefect = str(Path(sys.executable).parent / "prefect")
    out = open(log, "wb")  # noqa: SIM115  closed when the worker stops
    return subprocess.Popen([prefect, "worker", "start", "--pool", pool, "--type", kind],
                            env=env, stdout=out, stderr=subprocess.STDOUT)


BUNDLE_ROLES = ("slurm", "slurm-ssh", "slurm-rest", "baremetal")
AGENT = f"{sys.executable} -m airavata_prefect.agent.pilot"  # this install, on every node


@contextmanager
def grid(tmp: Path, openbao: tuple[str, str], slurm: Slurm, sshd: Sshd,
         roles: tuple[str, ...] = BUNDLE_ROLES) -> Iterator[Grid]:
    """The resources of `roles`; `slurm-pilot` (the local SLURM in pilot mode: 2 nodes of 2
    cores, an agent per node) and `baremetal-pilot` are asked for by name."""
    sfx = uuid.uuid4().hex[:4]
    names = {"slurm": f"sl-{sfx}", "slurm-ssh": f"ss-{sfx}", "slurm-rest": f"sr-{sfx}",
             "baremetal": f"bm-{sfx}", "slurm-pilot": f"sp-{sfx}",
             "baremetal-pilot": f"bp-{sfx}"}
    names = {r: n for r, n in names.items() if r in roles}
    url, root = openbao
    env = {"AIRAVATA_HOME": str(tmp / "home"), "AIRAVATA_USER": USER,
           "AIRAVATA_PROJECT": PROJECT, "AIRAVATA_OPENBAO_URL": url,
           "AIRAVATA_OPENBAO_TOKEN": root}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("AIRAVATA_DATABASE_URL", raising=False)
        store = Store(get_settings().db_url)
        ctx = Context(get_settings(), store, USER)
        authz = ctx.authz
        bao = OpenBao(url, root)
        svc = CredentialService(store, authz, bao)
        ensure_project(ctx, PROJECT)
        _credential(svc, store, f"ssh-{sfx}", {"private_key": sshd.private_key})
        _credential(svc, store, f"jwt-{sfx}", {"token": slurm.token("root")})
        ssh_ref = registration.credential_ref(ctx, f"ssh-{sfx}")
        jwt_ref = registration.credential_ref(ctx, f"jwt-{sfx}")
        conf = {"SLURM_CONF": str(slurm.conf)}
        placement = {"nodes": 1, "cores_per_node": 16, "max_walltime": "0:10:00"}
        blocks = {
            "slurm": ("slurm", SlurmCluster(
                work_pool_name=names.get("slurm", ""), submit_via="local", environment=conf,
                working_directory=str(tmp / "cluster"), **placement)),
            "slurm-ssh": ("slurm", SlurmCluster(
                work_pool_name=names.get("slurm-ssh", ""), submit_via="ssh", login_host=sshd.host,
                port=sshd.port, username=sshd.user, host_key=sshd.host_key, environment=conf,
                working_directory=f"~/grid-{sfx}", credential=ssh_ref, **placement)),
            "slurm-rest": ("slurm", SlurmCluster(
                work_pool_name=names.get("slurm-rest", ""), submit_via="rest",
                rest_url=slurm.rest_url,
                rest_user="root", environment=conf, working_directory=str(tmp / "rest"),
                credential=jwt_ref, **placement)),
            "baremetal": ("baremetal", BareMetalHost(
                work_pool_name=names.get("baremetal", ""), host=sshd.host, port=sshd.port,
                username=sshd.user, host_key=sshd.host_key, working_directory=f"~/bm-{sfx}",
                credential=ssh_ref, nodes=1, cores_per_node=4)),
            "slurm-pilot": ("slurm", SlurmCluster(
                work_pool_name=names.get("slurm-pilot", ""), submit_via="local",
                environment=conf, working_directory=str(tmp / "pilot"), mode="pilot",
                agent_command=AGENT, nodes=2, cores_per_node=2, max_walltime="0:10:00")),
            "baremetal-pilot": ("baremetal", BareMetalHost(
                work_pool_name=names.get("baremetal-pilot", ""), host=sshd.host, port=sshd.port,
                username=sshd.user, host_key=sshd.host_key, working_directory=f"~/bp-{sfx}",
                credential=ssh_ref, nodes=1, cores_per_node=2, mode="pilot",
                agent_command=AGENT)),
        }
        blocks = {r: b for r, b in blocks.items() if r in roles}
        for role, (_, block) in blocks.items():
            registration.register_compute(ctx, project=PROJECT, name=names[role], block=block)
        g = Grid(tmp / "home", store, authz, bao, names, sshd, slurm)
        worker_env = {**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "1",
                      "PREFECT_LOGGING_LEVEL": "INFO"}
        for role, (kind, _) in blocks.items():
            g.logs[role] = tmp / f"worker-{role}.log"
            g.workers[role] = _start_worker(names[role], kind, worker_env, g.logs[role])
        deadline = time.monotonic() + 90
        for role, proc in g.workers.items():
            while "started!" not in g.logs[role].read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker {role} did not start:\n"
                                       + g.logs[role].read_text()[-3000:])
                time.sleep(0.2)
        try:
            yield g
        finally:
            for proc in g.workers.values():
                proc.kill()
                proc.wait(10)
            authz.close()
            store.close()
