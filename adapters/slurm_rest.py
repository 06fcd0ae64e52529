"""slurmrestd (OpenAPI v0.0.38, the newest SLURM 22.05 speaks) with JWT auth.

The JWT is a secret: it comes from OpenBao, lives in this object's memory and in request
headers only, and never appears in a message. slurmrestd reads no #SBATCH lines, so the request
travels as job properties; the script is the same one the command line would submit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import httpx

from airavata_prefect.adapters.slurm import (
    DEFAULT_MAX_ARRAY_SIZE,
    WAITING_STATES,
    JobRequest,
    SlurmError,
    SlurmTask,
    expand_task_ids,
    job_refs,
    job_script,
)

API = "slurm/v0.0.38"


def job_properties(req: JobRequest) -> dict[str, Any]:
    props: dict[str, Any] = {
        "name": req.name, "current_working_directory": req.workdir,
        "standard_output": req.output if req.output.startswith("/")
        else f"{req.workdir}/{req.output}",
        "nodes": [req.nodes, req.nodes], "tasks": 1, "cpus_per_task": req.cpus_per_task,
        "requeue": req.requeue,
        # v0.0.38 insists on an environment; the script exports its own variables.
        "environment": {"PATH": "/usr/local/bin:/usr/bin:/bin"},
    }
    for key, value in (("partition", req.partition), ("account", req.account),
                       ("qos", req.qos), ("array", req.array), ("memory_per_node", req.mem_mb),
                       ("gres", req.gres)):
        if value:
            props[key] = value
    if req.gpus and not req.gres:
        props["gpus"] = str(req.gpus)
    if req.time_seconds:
        props["time_limit"] = max(1, math.ceil(req.time_seconds / 60))  # minutes
    return props


def _exit(raw: Any) -> tuple[int | None, int | None]:
    """slurmrestd reports the raw wait status: 768 is exit 3, 9 is signal 9."""
    if not isinstance(raw, int):
        return None, None
    if raw & 0x7F:
        return 0, raw & 0x7F
    return raw >> 8, None


def _queue(job: dict[str, Any]) -> float | None:
    """Start - submit (epoch seconds) once it started; None while it waits or where unknown."""
    submitted, started = job.get("submit_time"), job.get("start_time")
    if (not isinstance(submitted, int) or not isinstance(started, int) or not submitted
            or not started or str(job.get("job_state")) in WAITING_STATES):
        return None
    return float(max(0, started - submitted))


class SlurmRest:
    def __init__(self, url: str, user: str, token: str, *, timeout: float = 30.0) -> None:
        self.name = f"slurmrestd at {url}"
        self._client = httpx.Client(
            base_url=url.rstrip("/"), timeout=timeout,
            headers={"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": token})

    def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        try:
            resp = self._client.request(method, f"/{API}/{path}", **kw)
        except httpx.HTTPError as exc:
            raise SlurmError(f"{self.name} is unreachable: {type(exc).__name__}") from None
        if resp.status_code in (401, 403):
            raise SlurmError(f"{self.name} refused the token (HTTP {resp.status_code}): "
                             "expired, or for another user")
        try:
            body = resp.json()
        except ValueError:
            raise SlurmError(f"{self.name} answered HTTP {resp.status_code} with no "
                             "JSON") from None
        errors = [e for e in body.get("errors", []) if e.get("error_number")]
        if errors or resp.status_code >= 400:
            detail = "; ".join(str(e.get("error") or e.get("description")) for e in errors)
            raise SlurmError(f"{self.name} refused {method} {path}: "
                             f"{detail or f'HTTP {resp.status_code}'}")
        return body

    def submit(self, req: JobRequest, script_path: str = "") -> str:
        body = self._call("POST", "job/submit",
                          json={"script": job_script(req), "job": job_properties(req)})
        return str(body["job_id"])

    def tasks(self, job_ids: Iterable[str]) -> list[SlurmTask]:
        out: list[SlurmTask] = []
        for job in job_refs(job_ids):
            try:
                body = self._call("GET", f"job/{job}")
            except SlurmError as exc:
                if "Invalid job id" in str(exc) or "Unable to query JobId" in str(exc):
                    continue  # left the controller (MinJobAge)
                raise
            for j in body.get("jobs", []):
                code, sig = _exit(j.get("exit_code"))
                array_job = j.get("array_job_id") or j.get("job_id")
                task = j.get("array_task_id")
                ids: list[int | None]
                if isinstance(task, int):
                    ids = [task]
                elif j.get("array_task_string"):
                    ids = list(expand_task_ids(str(j["array_task_string"])))
                else:
                    ids = [None]
                out += [SlurmTask(str(array_job), t, str(j.get("job_state")), code, sig,
                                  j.get("state_reason"), _queue(j)) for t in ids]
        return out

    def cancel(self, job_ids: Iterable[str]) -> None:
        for job in job_refs(job_ids):
            self._call("DELETE", f"job/{job}")

    def max_array_size(self) -> int:
        return DEFAULT_MAX_ARRAY_SIZE

    def close(self) -> None:
        self._client.close()


__all__ = ["SlurmRest", "job_properties"]
