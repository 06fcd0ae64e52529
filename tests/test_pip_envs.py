"""`pip:` environments on the local resource (usecases/pip_envs.py): a real virtual environment
with a real package from the registry this machine reaches, built once per requirement set and
reused by later runs; a package that does not exist fails the instance saying so; a pip option
in the spec is refused at submit with its file:line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from airavata_prefect.domain.problems import SpecError
from airavata_prefect.domain.spec import parse_spec_text
from airavata_prefect.domain.states import ExperimentStatus, TaskState
from airavata_prefect.usecases.pip_envs import COMPLETE, digest
from tests.local_runs import run_local

_run = run_local


SIX = """\
    tasks:
      use:
        command: 'python -c "import six, sys; print(six.__version__, sys.prefix)" > "$OUT"'
        task_inputs: {I: 1..2}
        task_outputs: {OUT: out.txt}
        resources: {pip: ["six==1.16.0"]}
    """


@pytest.mark.timeout(600)
def test_a_pip_environment_is_built_once_and_used(home: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # the local resource only
    store, exp_id, status = _run(tmp_path, SIX, "six")
    assert status == ExperimentStatus.COMPLETED, store.tasks.list(exp_id)
    (venv,) = [p for p in (home / "envs").iterdir() if p.is_dir()]
    assert venv.name == f"pip-{digest(['six==1.16.0'], sys.executable)}"
    built = (venv / COMPLETE).stat().st_mtime_ns
    workdir = Path(store.experiments.get(exp_id).workdir)
    for i in range(2):
        version, prefix = (workdir / "use" / str(i) / "out.txt").read_text().split()
        assert (version, prefix) == ("1.16.0", str(venv))  # ran inside it
    notes = [e.message for e in store.tasks.events(exp_id, "use[0]")
             if e.to_state == TaskState.ENV_SETUP]
    assert notes == ["pip environment [six==1.16.0]"]
    # A later run asking for the same set reuses it, untouched.
    store, _, status = _run(tmp_path, SIX, "six-again")
    assert status == ExperimentStatus.COMPLETED
    assert (venv / COMPLETE).stat().st_mtime_ns == built
    assert len([p for p in (home / "envs").iterdir() if p.is_dir()]) == 1
    # A package that does not exist: the instance fails, naming the environment and pip's why.
    store, bad, status = _run(tmp_path, """\
        tasks:
          use: {command: 'true', resources: {pip: ["airavata-no-such-package-3f9c"]}}
        """, "bad")
    assert status == ExperimentStatus.FAILED
    (t,) = store.tasks.list(bad)
    assert (t.reason or "").startswith(
        "environment: pip environment [airavata-no-such-package-3f9c] failed to build: "), \
        t.reason
    assert "airavata-no-such-package-3f9c" in (t.reason or "")


@pytest.mark.parametrize(("item", "message"), [
    ("--index-url=http://elsewhere/simple", "'--index-url=http://elsewhere/simple': pip "
                                            "options are not allowed here, only requirements "
                                            "like 'numpy>=2' or 'tqdm'"),
    ("-r /etc/passwd", "'-r /etc/passwd': pip options are not allowed here, only "
                       "requirements like 'numpy>=2' or 'tqdm'"),
    ("numpy>=>2", "'numpy>=>2' is not a pip requirement"),
])
def test_pip_entries_are_requirements_only(item: str, message: str) -> None:
    text = f'tasks:\n  a:\n    command: x\n    resources: {{pip: ["{item}"]}}\n'
    with pytest.raises(SpecError) as info:
        parse_spec_text(text, "exp.yml")
    (problem,) = info.value.problems
    assert problem.render().startswith(f"exp.yml:4:22: error: tasks.a.resources.pip: {message}")
