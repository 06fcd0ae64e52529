"""Is each outside system this installation needs answering? One check each, a few seconds
at most, nothing secret sent (OpenBao's health needs no token)."""

from __future__ import annotations

import time
import urllib.request
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


def _timed(name: str, fn: object) -> Check:
    start = time.monotonic()
    try:
        detail = fn()  # type: ignore[operator]
        return Check(name, True, str(detail or "ok"), time.monotonic() - start)
    except Exception as exc:
        return Check(name, False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                     if str(exc) else type(exc).__name__, time.monotonic() - start)


def checks(rt: Runtime) -> list[Check]:
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

    return [_timed("store", store), _timed("openbao", openbao), _timed("spicedb", spicedb),
            _timed("prefect", prefect)]


__all__ = ["Check", "checks"]
