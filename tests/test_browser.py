"""A real browser (Debian's chromium, driven by Playwright) runs an experiment from the Prefect UI:
the deployment's Custom run form, a spec typed into it, the flow run and its task runs."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.conftest import experiment_stack

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.prefect

CHROMIUM = Path("/usr/bin/chromium")
SPEC = """\
name: browser-hello
tasks:
  hello: {command: 'echo hi', task_inputs: {I: 1..3}}
  join: {command: 'true', depends_on: [hello]}
"""
EXPECTED = {"hello[0]", "hello[1]", "hello[2]", "join[0]"}


def _post(api: str, path: str, body: dict) -> list[dict]:
    r = httpx.post(f"{api}{path}", json={**body, "limit": 200}, timeout=30)
    r.raise_for_status()
    return r.json()


def _wait_for_run(api: str, deployment_id: str, timeout: float = 120) -> dict:
    """The deployment's one flow run, once it has reached a final state."""
    deadline = time.monotonic() + timeout
    runs: list[dict] = []
    while time.monotonic() < deadline:
        runs = _post(api, "/flow_runs/filter",
                     {"deployments": {"id": {"any_": [deployment_id]}}})
        if runs and runs[0]["state"] and runs[0]["state"]["type"] in (
                "COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            assert len(runs) == 1, runs
            return runs[0]
        time.sleep(0.5)
    raise AssertionError(f"no finished flow run of the deployment after {timeout:.0f} s: "
                         f"{[(r['name'], r['state']) for r in runs]}")


def _task_runs(api: str, flow_run_id: str) -> list[dict]:
    """Task runs reach the API through events, asynchronously: wait until all have settled."""
    deadline = time.monotonic() + 60
    while True:
        runs = _post(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
        settled = {r["name"] for r in runs if r["state"] and r["state"]["type"] != "RUNNING"}
        if settled >= EXPECTED or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


def at(page: Page, path: str) -> None:
    """Wait for the single-page app to route to path (or, ending in /, under it). Ask the page:
    with Debian's chromium, Playwright's page.url was seen to miss the UI's in-app navigations."""
    page.wait_for_function("p => p.endsWith('/') ? location.pathname.startsWith(p)"
                           " : location.pathname === p", arg=path)


def test_custom_run_from_the_prefect_ui(prefect_api: str, home: Path, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium "
                    "(apt-get install chromium, or scripts/system_deps.sh as root)")
    from playwright.sync_api import expect, sync_playwright

    api = prefect_api
    ui = api.removesuffix("/api")
    artifacts = Path(os.environ.get("AIRAVATA_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "prefect-ui-run.png"
    with experiment_stack(home, "browser") as stack, sync_playwright() as p:
        r = httpx.get(f"{api}/deployments/name/run-experiment/browser", timeout=30)
        r.raise_for_status()
        deployment_id = r.json()["id"]
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox"])
        page: Page | None = None
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)  # a loaded CI machine
            # The deployment, as a user finds it: Deployments, then its name.
            page.goto(f"{ui}/deployments")
            page.get_by_role("link", name="browser", exact=True).first.click()
            at(page, f"/deployments/deployment/{deployment_id}")
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_text("Custom run", exact=True).click()
            at(page, f"/deployments/deployment/{deployment_id}/run")
            spec = page.locator(".schema-form-property", has_text="spec (Optional)")
            spec.locator("textarea").fill(SPEC)
            page.screenshot(path=artifacts / "prefect-ui-form.png")
            page.get_by_role("button", name="Submit", exact=True).click()
            # Back on the deployment, a toast for 5 s: "<run> scheduled to start now | View run".
            # Prefect 3.8's UI mounts its toast container twice: the last one is on top.
            toast = page.locator(".toast-flow-run-create").last
            expect(toast).to_contain_text("scheduled to start now")
            toast.get_by_role("button", name="View run").click()
            at(page, "/runs/flow-run/")
            shown = page.evaluate("location.pathname").rsplit("/", 1)[-1]

            run = _wait_for_run(api, deployment_id)
            assert run["state"]["type"] == "COMPLETED", run["state"]
            assert run["parameters"]["spec"] == SPEC
            assert shown == run["id"]  # where View run went
            assert run["name"].startswith("browser-hello-")  # the flow names it after the spec
            tasks = {t["name"]: t["state"]["type"] for t in _task_runs(api, run["id"])}
            assert tasks == dict.fromkeys(EXPECTED, "COMPLETED")
            listed = stack.airavata("experiment", "list")
            assert listed.returncode == 0, listed.stderr
            assert any("browser-hello" in row and "COMPLETED" in row
                       for row in listed.stdout.splitlines()), listed.stdout

            page.goto(f"{ui}/runs/flow-run/{run['id']}")
            expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
            expect(page.get_by_text("4 Task runs", exact=True)).to_be_visible()
            page.wait_for_load_state("networkidle")  # the run graph's data, before the shot
            page.screenshot(path=shot, full_page=True)
        except BaseException:
            if page is not None:  # what the browser showed when it failed
                with contextlib.suppress(Exception):
                    page.screenshot(path=artifacts / "prefect-ui-failure.png", full_page=True)
            raise
        finally:
            browser.close()
    assert shot.stat().st_size > 0
