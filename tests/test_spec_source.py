"""The `spec` parameter: YAML text, a path the worker can read, or STORAGE:/path on a registered
storage resource, read as the acting identity; one clear message for each bad one."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from airavata_prefect.blocks import LocalStorage
from airavata_prefect.domain.problems import SpecError
from airavata_prefect.usecases import registration
from airavata_prefect.usecases.authorization import ensure_project
from airavata_prefect.usecases.context import open_context
from airavata_prefect.usecases.errors import Forbidden
from airavata_prefect.usecases.spec_source import is_yaml_text, read_spec

SPEC = "name: stored\ntasks:\n  a: {command: 'true'}\n"


def test_text_and_paths(tmp_path: Path) -> None:
    assert is_yaml_text(SPEC) and not is_yaml_text("/some/exp.yml")
    assert read_spec(SPEC).name == "stored"
    f = tmp_path / "exp.yml"
    f.write_text(SPEC)
    assert read_spec(str(f), name="renamed").name == "renamed"
    for spec, message in (("", "empty"), (str(tmp_path / "nope.yml"), "no such file"),
                          (str(tmp_path), "is a directory")):
        with pytest.raises(SpecError) as exc:
            read_spec(spec)
        assert message in str(exc.value)
    with pytest.raises(SpecError) as exc:
        read_spec("tasks:\n  a: {command: 'true', retries: many}\n")
    assert str(exc.value).startswith("spec:2:") and "tasks.a.retries" in str(exc.value)


@pytest.mark.prefect
def test_a_spec_on_a_registered_storage(prefect_api: str, home: Path, tmp_path: Path) -> None:
    root = tmp_path / "shared"
    (root / "exps" / "sub").mkdir(parents=True)
    (root / "exps" / "exp.yml").write_text(SPEC)
    name = f"st-{uuid.uuid4().hex[:6]}"
    with open_context(user="alice") as ctx:
        ensure_project(ctx, "lab")
        registration.register_storage(ctx, project="lab", name=name,
                                      block=LocalStorage(path=str(root)))
        loaded = read_spec(f"{name}:/exps/exp.yml", ctx=ctx)
        assert (loaded.name, loaded.source, loaded.text) == ("stored", f"{name}:/exps/exp.yml",
                                                             SPEC)
        for path, message in (("/exps/missing.yml", "has nothing at"),
                              ("/exps", "is a directory"), ("/../../etc/passwd", "leaves")):
            with pytest.raises(SpecError) as exc:
                read_spec(f"{name}:{path}", ctx=ctx)
            assert message in str(exc.value) and f"{name}:{path}" in str(exc.value)
    with open_context(user="mallory") as ctx:  # not in the storage's project
        with pytest.raises(Forbidden):
            read_spec(f"{name}:/exps/exp.yml", ctx=ctx)
        denied = [a for a in ctx.store.audit.trail() if a.outcome == "denied"]
        assert [(a.actor, a.action, a.object) for a in denied] == [
            ("mallory", "storage.read", f"storage_resource:{name}")]
