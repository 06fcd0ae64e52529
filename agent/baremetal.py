"""The `baremetal` Prefect worker type: a bundle runs over SSH on a host, P instances at a time.

The bundle starts detached in a session of its own (`setsid`), its id recorded, so a dropped SSH
connection stops nothing: exit codes land in files the worker reads when it reconnects, and
cancel kills the whole session (`pkill -s`), whatever its processes started. Host keys are
pinned; an unknown host is refused. run_one.sh enforces each instance's walltime itself.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Collection
from typing import Any

from pydantic import Field

from airavata_prefect.adapters.hosts import Host, HostError, check
from airavata_prefect.adapters.slurm import Ending
from airavata_prefect.adapters.ssh import SSHEndpoint, SSHHost
from airavata_prefect.agent.bundle_run import Verdict
from airavata_prefect.agent.execute import Session
from airavata_prefect.agent.worker import BundleJobConfiguration, BundleVariables, BundleWorker
from airavata_prefect.blocks import BareMetalHost

KILL_GRACE_SECONDS = 5


def _t(name: str) -> dict[str, Any]:
    return {"template": "{{ " + name + " }}"}


class BareMetalJobConfiguration(BundleJobConfiguration):
    host: str | None = Field(None, json_schema_extra=_t("host"))
    port: int | None = Field(None, json_schema_extra=_t("port"))
    username: str | None = Field(None, json_schema_extra=_t("username"))
    working_directory: str | None = Field(None, json_schema_extra=_t("working_directory"))
    cpus_per_task: int = Field(1, json_schema_extra=_t("cpus_per_task"))
    max_parallel: int | None = Field(None, json_schema_extra=_t("max_parallel"))


class BareMetalVariables(BundleVariables):
    host: str | None = Field(None, description="Host (default: the resource's)")
    port: int | None = Field(None, ge=1, le=65535, description="SSH port (default: the "
                                                               "resource's)")
    username: str | None = Field(None, description="SSH user (default: the resource's)")
    working_directory: str | None = Field(None, description="Where experiments live on the "
                                                            "host (default: the resource's)")
    cpus_per_task: int = Field(1, ge=1, description="Cores each instance takes")
    max_parallel: int | None = Field(None, ge=1, description="Instances at once (default: "
                                                             "cores / cpus_per_task)")


class BareMetalLauncher:
    requeues = False

    def __init__(self, host: Host, parallel: int) -> None:
        self.host = host
        self.parallel = max(1, parallel)
        self.name = f"host {host.name}"

    def files(self, bdir: str, count: int) -> dict[str, str]:
        return {}

    def submit(self, bdir: str, count: int) -> list[str]:
        b = shlex.quote(bdir)
        check(self.host, f"rm -f {b}/session; (setsid bash {b}/run_all.sh {b} {count} "
                         f"{self.parallel} >{b}/run_all.log 2>&1 </dev/null &)", what="setsid")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # run_all.sh records its session id first thing
            out = self.host.run(f"cat {b}/session 2>/dev/null").text.strip()
            if out.isdigit():
                return [out]
            time.sleep(0.1)
        raise HostError(f"the bundle did not start on {self.host.name} "
                        f"(see {bdir}/run_all.log)")

    def _alive(self, session: str) -> bool:
        return self.host.run(f"pgrep -s {int(session)} >/dev/null").exit_status == 0

    def unmarked(self, ids: list[str], positions: Collection[int]) -> dict[int, Verdict]:
        if any(self._alive(s) for s in ids if s.isdigit()):
            return {}
        # Its session is gone and these never wrote an exit status: killed from outside.
        return {k: (Ending.FAILED, None, "ended without an exit status (its process was "
                                         "killed)") for k in positions}

    def cancel(self, ids: list[str]) -> None:
        sessions = " ".join(str(int(s)) for s in ids if s.isdigit())
        if not sessions:
            return
        self.host.run(f"for s in {sessions}; do pkill -TERM -s $s; done; "
                      f"sleep {KILL_GRACE_SECONDS}; "
                      f"for s in {sessions}; do pkill -KILL -s $s; done; true")

    def resubmit(self, bdir: str, positions: list[int]) -> list[str]:
        raise HostError("a bare-metal host never re-queues")


class BareMetalWorker(BundleWorker):
    type = "baremetal"
    job_configuration = BareMetalJobConfiguration
    job_configuration_variables = BareMetalVariables
    block_type = BareMetalHost
    enforce_walltime = True  # no scheduler here: run_one.sh stops an instance at its walltime
    _description = "Runs Airavata bundles on a host over SSH, in a detached process group."
    _documentation_url = "https://github.com/apache/airavata"

    def open_session(self, block: Any, configuration: Any,
                     secret: dict[str, str] | None) -> Session:
        if not secret or "private_key" not in secret:
            raise HostError(f"host {block.host}: its credential has no private_key")
        endpoint = SSHEndpoint(configuration.host or block.host,
                               configuration.port or block.port,
                               configuration.username or block.username, block.host_key)
        host = SSHHost(endpoint, secret["private_key"], passphrase=secret.get("passphrase"))
        parallel = configuration.max_parallel or max(
            1, block.cores_per_node // max(1, configuration.cpus_per_task))
        return Session(host, BareMetalLauncher(host, parallel),
                       configuration.working_directory or block.working_directory)



__all__ = ["BareMetalJobConfiguration", "BareMetalLauncher", "BareMetalVariables",
           "BareMetalWorker"]
