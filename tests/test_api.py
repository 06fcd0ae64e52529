"""The REST API against a real server process (tests/api_harness.py)."""

from __future__ import annotations

from tests.api_harness import ApiServer


def test_sign_in_and_whoami(api: ApiServer) -> None:
    with api.as_admin() as admin:
        r = admin.get("/auth/whoami")
    assert r.status_code == 200 and r.json()["name"] == "admin"
