"""Property tests of the REST API from its own OpenAPI document (schemathesis): a real server
(tests/api_harness.py) with every outside system it needs answering (Prefect with a worker for
the default deployment, OpenBao), called as the admin with examples the schema generates, valid
and invalid. No answer may be a 5xx, and every answer must be one the document declares, in
the declared content type and shape.

The rate limits are raised for this server only: hundreds of writes a minute is what this test
is, and a 429 would hide the routes behind it.

Schemathesis runs as its CLI (`st run`, every phase), not through its pytest plugin: the lazy
loader a live server needs (`schemathesis.pytest.from_fixture`) reads `request.node._nodeid`,
which pytest 9 no longer has. One worker: two make Hypothesis describe filters from two threads
at once, which CPython 3.11's ast module fails at ("AST constructor recursion depth mismatch").
AIRAVATA_SCHEMA_EXAMPLES and AIRAVATA_SCHEMA_SEED widen or vary the search."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airavata_prefect.usecases.context import os_login
from tests.api_harness import ADMIN, ADMIN_PASSWORD, ApiServer, api_server
from tests.conftest import experiment_stack

pytestmark = pytest.mark.prefect

CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "response_headers_conformance",
          "negative_data_rejection", "ignored_auth", "unsupported_method",
          "allow_header_conformance", "missing_required_header", "use_after_free",
          "ensure_resource_availability"]
EXAMPLES = os.environ.get("AIRAVATA_SCHEMA_EXAMPLES", "20")  # per operation and phase
SEED = os.environ.get("AIRAVATA_SCHEMA_SEED", "20261205")
HELLO = "name: hello\ntasks:\n  greet:\n    command: 'echo hello'\n"


@pytest.fixture(scope="module")
def served(prefect_api: str, openbao_dev: tuple[str, str],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    home: Path = tmp_path_factory.mktemp("schema") / "airavata"
    env = {"AIRAVATA_API_WRITE_RATE": "1000000", "AIRAVATA_API_LOGIN_RATE": "1000000",
           "AIRAVATA_OPENBAO_URL": openbao_dev[0], "AIRAVATA_OPENBAO_TOKEN": openbao_dev[1]}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("AIRAVATA_USER", raising=False)
        mp.setenv("AIRAVATA_OPENBAO_URL", openbao_dev[0])
        with api_server(home, extra_env=env) as api:
            # The default deployment, in project default, where the operator (the OS login
            # that registers it) is an admin and so is the API's admin.
            with api.as_admin() as admin:
                assert admin.post("/projects", json={"name": "default"}).status_code == 201
                r = admin.post("/projects/default/members",
                               json={"username": os_login(), "role": "admin"})
                assert r.status_code == 200, r.text
            with experiment_stack(home, "default", project="default", user=None):
                yield api


def _finished_experiment(api: ApiServer) -> tuple[str, str]:
    """(experiment id, an instance id) of a real experiment that ran to its end."""
    with api.as_admin() as admin:
        r = admin.post("/experiments", json={"spec": HELLO})
        assert r.status_code == 201, r.text
        exp_id = r.json()["experiment_id"]
        deadline = time.monotonic() + 120
        while admin.get(f"/experiments/{exp_id}").json()["status"] != "COMPLETED":
            assert time.monotonic() < deadline, admin.get(f"/experiments/{exp_id}").text
            time.sleep(0.5)
        return exp_id, admin.get(f"/experiments/{exp_id}/tasks").json()[0]["instance_id"]


def test_every_answer_is_declared_and_none_is_a_server_error(served: ApiServer,
                                                             tmp_path: Path) -> None:
    """Every phase (the schema's examples, coverage of its boundaries, fuzzing, and stateful
    sequences that follow the links between operations), valid and invalid inputs."""
    exp_id, instance = _finished_experiment(served)
    with served.as_admin() as admin:
        made = admin.post("/projects/default/service-accounts", json={"name": "schema"})
        assert made.status_code == 201, made.text
    # Real objects for the routes that read or act on one (but not resubmit, each of whose
    # calls would start one more experiment), else they would only ever answer 404.
    config = tmp_path / "schemathesis.toml"
    config.write_text(f"""
[[operations]]
include-path-regex = "^/api/v1/experiments/[{{]ref[}}]"
exclude-path = "/api/v1/experiments/{{ref}}/resubmit"
parameters = {{ "path.ref" = "{exp_id}", "path.instance_id" = "{instance}" }}

[[operations]]
include-path-regex = "^/api/v1/service-accounts/"
parameters = {{ "path.name" = "svc-schema" }}
""")
    token = served.login(ADMIN, ADMIN_PASSWORD)
    st = Path(sys.executable).parent / "st"
    run = subprocess.run(
        [str(st), "--config-file", str(config), "run", f"{served.url}/openapi.json",
         "--url", served.base, "-H", f"Authorization: Bearer {token}", "--checks", ",".join(CHECKS),
         "--max-examples", EXAMPLES, "--seed", SEED, "--workers", "1",
         "--request-timeout", "60", "--generation-database", "none", "--no-color",
         "--report", "junit", "--report-dir", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    print(run.stdout[-8000:])  # (shown with -s, or on failure)
    # The whole report when anything failed (schemathesis prints how to reproduce each).
    assert run.returncode == 0, run.stdout[-30000:] + run.stderr[-3000:]
