"""An experiment submitted and run to its end on the `local` resource, in process (what the
experiment flow does, without Prefect), for tests of what instances run with."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

from airavata_prefect.adapters.spicedb import Subject
from airavata_prefect.adapters.store import Store
from airavata_prefect.domain.scheduler import Hooks
from airavata_prefect.domain.states import ExperimentStatus
from airavata_prefect.usecases import run
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.settings import get_settings
from airavata_prefect.usecases.submit import submit


def run_local(tmp_path: Path, text: str, name: str, *, owner: str | None = None
              ) -> tuple[Store, str, ExperimentStatus]:
    """Submit the YAML `text` (dedented) as `tester`, without permission checks, and run it;
    `owner` (e.g. the OS login, for CLI tests) is made its owner in the permission store."""
    settings = get_settings()
    store = Store(settings.db_url)
    spec = tmp_path / f"{name}.yml"
    spec.write_text(textwrap.dedent(text))
    ctx = Context(settings, store, "tester")
    exp_id = submit(ctx, spec, [], authorize=False)
    if owner is not None:
        ctx.authz.relate("experiment", exp_id, "owner", Subject.user(owner))
        ctx.authz.close()
    claimed = run.claim(store, exp_id, None)
    status, _, _ = asyncio.run(run.execute(store, claimed, settings, Hooks(),
                                           flow_run_id=None))
    return store, exp_id, ExperimentStatus(status)
