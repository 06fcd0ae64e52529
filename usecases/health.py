"""Is each outside system this installation needs answering? One check each, all four at
once, a few seconds at most in all (`/health`, and `/metrics` at every scrape), nothing secret
sent (OpenBao's health needs no token)."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass

import sqlalchemy as sa

from airavata_prefect.adapters import prefect_api
from airavata_prefect.adapters.openbao import OpenBao, SecretUnavailable
from airavata_prefect.usecases.runtime import Runtime


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float


TIMEOUT = 5.0  # a check still waiting then is down (one that hangs holds up no caller)


def _timed(name: str, fn: Callable[[], str]) -> Check:
    start = time.monotonic()
    try:
        detail = fn()
        return Check(name, True, str(detail or "ok"), time.monotonic() - start)
    except Exception as exc:
        return Check(name, False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                     if str(exc) else type(exc).__name__, time.monotonic() - start)


def checks(rt: Runtime, timeout: float = TIMEOUT) -> list[Check]:
    """Each system's check (store, openbao, spicedb, prefect, in this order), run side by
    side: the whole takes as long as the slowest, and no longer than `timeout`."""
    def store() -> str:
        with rt.store.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return rt.store.engine.dialect.name

    def openbao() -> str:
        try:
            OpenBao(rt.settings.openbao_url, "", timeout=3).check()
        except SecretUnavailable as exc:
            raise RuntimeError(str(exc)) from None
        return rt.settings.openbao_url

    def spicedb() -> str:
        rt.authz.check("health-probe", "project.read", "health-probe")
        return "remote" if rt.settings.spicedb_endpoint else "embedded"

    def prefect() -> str:
        url = prefect_api.api_url()
        if not url:
            raise RuntimeError("PREFECT_API_URL is not set")
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=3) as r:
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}")
        return url

    probes: dict[str, Callable[[], str]] = {"store": store, "openbao": openbao,
                                            "spicedb": spicedb, "prefect": prefect}
    pool = ThreadPoolExecutor(max_workers=len(probes), thread_name_prefix="health")
    try:
        futures = {name: pool.submit(_timed, name, fn) for name, fn in probes.items()}
        wait_for(futures.values(), timeout=timeout)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return [f.result() if f.done() else Check(name, False, f"no answer within {timeout:g} s",
                                               timeout)
            for name, f in futures.items()]


__all__ = ["TIMEOUT", "Check", "checks"]
