"""`conda:` environments on the local resource (usecases/conda_envs.py), and conda specs checked
at submit with their file:line.

No conda tool can be installed on this machine and no conda channel is reachable from it, so
the local resource's conda is a stub `micromamba` first on PATH (tests/conda_stub.py): it must
be called as a real one would be, once per set of specs, and the instances must run with its
prefix active. The virtual environment layered on it is real."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from airavata_prefect.domain.environments import CONDA_TOOLS, conda_name
from airavata_prefect.domain.problems import SpecError
from airavata_prefect.domain.spec import parse_spec_text
from airavata_prefect.domain.states import ExperimentStatus, TaskState
from airavata_prefect.usecases.pip_envs import digest
from tests.conda_stub import recorded, stub_micromamba
from tests.local_runs import run_local

CONDA = ["python=3.12", "numpy>=1.26,<3"]


_run = run_local


SPEC = f"""\
    tasks:
      conda_only:
        command: 'hello > "$OUT"; echo "$CONDA_PREFIX" >> "$OUT"'
        task_inputs: {{I: 1..2}}
        task_outputs: {{OUT: out.txt}}
        resources: {{conda: {CONDA!r}}}
      both:
        command: |
          python -c "import six, sys; print(sys.prefix)" > "$OUT"
          echo "$CONDA_PREFIX" "$VIRTUAL_ENV" >> "$OUT"
        task_outputs: {{OUT: out.txt}}
        resources: {{conda: {CONDA!r}, pip: ["six==1.16.0"]}}
    """


@pytest.mark.timeout(300)
def test_a_conda_environment_from_a_stub_micromamba(home: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The stub stands in for micromamba: none can be installed here, no channel is reached."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # the local resource only
    bindir, calls = tmp_path / "bin", tmp_path / "micromamba-calls"
    stub_micromamba(bindir, calls)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    store, exp_id, status = _run(tmp_path, SPEC, "conda")
    assert status == ExperimentStatus.COMPLETED, [t.reason for t in store.tasks.list(exp_id)]
    prefix = home / "envs" / conda_name(CONDA)
    # Built once for all three instances, with the flags micromamba needs.
    assert recorded(calls) == [["create", "-y", "-p", str(prefix), "-c", "conda-forge", *CONDA]]
    workdir = Path(store.experiments.get(exp_id).workdir)
    for i in (0, 1):
        assert (workdir / "conda_only" / str(i) / "out.txt").read_text() == \
            f"conda-hello\n{prefix}\n"
    venv = home / "envs" / f"pip-{digest(['six==1.16.0'], '', over=prefix)}"
    assert (workdir / "both" / "0" / "out.txt").read_text() == f"{venv}\n{prefix} {venv}\n"
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    notes = [e.message for e in store.tasks.events(exp_id, "both[0]")
             if e.to_state == TaskState.ENV_SETUP]
    assert notes == ["conda environment [python=3.12, numpy>=1.26,<3]; "
                     "pip environment [six==1.16.0]"]
    # A later run reuses both, untouched.
    built = (prefix / ".complete").stat().st_mtime_ns
    store, _, status = _run(tmp_path, SPEC, "conda-again")
    assert status == ExperimentStatus.COMPLETED
    assert len(recorded(calls)) == 1 and (prefix / ".complete").stat().st_mtime_ns == built


def test_no_conda_tool_here_fails_the_instance_saying_so(home: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert not any(shutil.which(t) for t in CONDA_TOOLS)
    store, exp_id, status = _run(tmp_path, """\
        tasks:
          use: {command: 'true', resources: {conda: ["python=3.12"]}}
        """, "none")
    assert status == ExperimentStatus.FAILED
    (t,) = store.tasks.list(exp_id)
    assert t.reason == ("environment: conda environment [python=3.12]: no conda tool on this "
                        "resource: none of micromamba, mamba or conda is on PATH")


@pytest.mark.parametrize("item", ["python=3.12", "numpy>=1.26,<3", "pandas 2.2.*",
                                  "conda-forge::numpy", "numpy=1.26=py311*", "_libgcc_mutex"])
def test_conda_package_specs_are_accepted(item: str) -> None:
    text = f'tasks:\n  a:\n    command: x\n    resources: {{conda: ["{item}"]}}\n'
    assert parse_spec_text(text, "exp.yml").spec.tasks["a"].resources is not None


@pytest.mark.parametrize(("item", "message"), [
    ("--file=/etc/passwd", "'--file=/etc/passwd': conda options are not allowed here, only "
                           "package specs like 'python=3.12' or 'numpy'"),
    ("-c elsewhere", "'-c elsewhere': conda options are not allowed here, only package specs "
                     "like 'python=3.12' or 'numpy'"),
    ("./pkg.tar.bz2", "'./pkg.tar.bz2' is not a conda package spec (NAME, NAME=VERSION, "
                      "NAME>=VERSION, CHANNEL::NAME)"),
    ("https://x/y.conda", "'https://x/y.conda' is not a conda package spec"),
    ("numpy; rm -rf ~", "'numpy; rm -rf ~' is not a conda package spec"),
])
def test_conda_entries_are_package_specs_only(item: str, message: str) -> None:
    text = f'tasks:\n  a:\n    command: x\n    resources: {{conda: ["{item}"]}}\n'
    with pytest.raises(SpecError) as info:
        parse_spec_text(text, "exp.yml")
    (problem,) = info.value.problems
    assert problem.render().startswith(
        f"exp.yml:4:24: error: tasks.a.resources.conda: {message}")
