"""The REST API when a service it needs does not answer: a SpiceDB server that is down makes
every permission-checked request a 503 with the envelope (never a 500, never a guess), health
says which service, and signing in (which needs no permission check) still works."""

from __future__ import annotations

from pathlib import Path

from tests.api_harness import ADMIN, ADMIN_PASSWORD, api_server
from tests.services import free_port


def test_spicedb_down_is_503_with_the_envelope(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    with api_server(tmp_path / "home", extra_env={
            "AIRAVATA_SPICEDB_ENDPOINT": dead, "AIRAVATA_SPICEDB_TOKEN": "t",
            "AIRAVATA_SPICEDB_INSECURE": "true"}) as api:
        with api.client() as anon:
            health = anon.get("/health")
        assert health.status_code == 503
        checks = health.json()["checks"]
        assert checks["spicedb"]["ok"] is False and checks["store"]["ok"] is True
        token = api.login(ADMIN, ADMIN_PASSWORD)
        with api.client(token) as admin:
            for method, path, body in [("GET", "/projects", None),
                                       ("POST", "/projects", {"name": "lab"}),
                                       ("GET", "/resources/status", None),
                                       ("GET", "/credentials", None)]:
                r = admin.request(method, path, json=body)
                assert r.status_code == 503, (path, r.status_code, r.text)
                error = r.json()["error"]
                assert error["code"] == "unavailable" and "SpiceDB" in error["message"]
                assert error["correlation_id"] == r.headers["X-Correlation-ID"]
        assert "Traceback" not in api.log.read_text()
        assert ADMIN_PASSWORD not in api.log.read_text()
