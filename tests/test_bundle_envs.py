"""Software environments on registered resources: what a bundle's task files carry, and
run_one.sh + envs.sh executed for real on this machine (a bare-metal resource on LocalHost).

pip environments are real (a real virtual environment, a real package from the registry this
machine reaches). No conda tool can be installed here and no conda channel is reachable, so
conda is run against a stub `micromamba` placed first on PATH (tests/conda_stub.py)."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import pytest

from airavata_prefect.adapters.hosts import LocalHost, upload
from airavata_prefect.adapters.launcher import read_markers
from airavata_prefect.domain.bundle_layout import EXECUTABLE, Member, bundle_dir, bundle_files
from airavata_prefect.domain.compile import compile_graph
from airavata_prefect.domain.dag import TaskGraph
from airavata_prefect.domain.endings import Exit, judge
from airavata_prefect.domain.environments import CONDA_TOOLS, conda_name, pip_name
from airavata_prefect.domain.spec import parse_spec_text
from airavata_prefect.domain.states import TaskState
from tests.conda_stub import python_wrapper, recorded, stub_micromamba

CONDA = ["python=3.12", "numpy>=1.26,<3", "pandas 2.2.*"]


def _spec(command: str, resources: str, count: int = 1) -> str:
    return (f"tasks:\n  use:\n    command: |\n{textwrap.indent(command, ' ' * 6)}\n"
            f"    task_inputs: {{I: 1..{count}}}\n    task_outputs: {{OUT: out.txt}}\n"
            f"    resources: {resources}\n")


def _run(root: Path, spec: str, bundle: str, *, path: str, count: int = 1,
         env: dict[str, str] | None = None) -> tuple[dict[int, Exit | None], TaskGraph]:
    """The bundle's `count` instances, all at once, through run_all.sh as bare metal runs
    them; their endings by position."""
    g = compile_graph(parse_spec_text(spec, "e.yml"), {}, root=str(root))
    b = bundle_dir(str(root), bundle)
    host = LocalHost({"PATH": path, **(env or {})})
    upload(host, b, bundle_files(g, "use", [Member(g.instance("use", i), 0)
                                            for i in range(count)], experiment_id="exp1"),
           executable=EXECUTABLE)
    done = host.run(f"bash {b}/run_all.sh {b} {count} {count}", timeout=300)
    assert done.exit_status == 0, done.stderr
    return {k: m.end for k, m in read_markers(host, b).items()}, g


def _out(g: TaskGraph, index: int = 0) -> list[str]:
    return Path(g.workdir("use", index), "out.txt").read_text().split("\n")[:-1]


def test_the_task_file_names_the_environments() -> None:
    spec = _spec("true", f'{{conda: {CONDA!r}, pip: ["six==1.16.0", "tqdm"]}}')
    g = compile_graph(parse_spec_text(spec, "e.yml"), {}, root="/w/exp1")
    files = bundle_files(g, "use", [Member(g.instance("use", 0), 0)], experiment_id="exp1")
    lines = files["tasks/0.sh"].splitlines()
    assert lines[6:11] == [
        "AV_ENVS=/w/.airavata-envs",  # beside the experiments, shared by all of them
        f"AV_CONDA_ENV={conda_name(CONDA)}",
        "AV_CONDA=(python=3.12 'numpy>=1.26,<3' 'pandas 2.2.*')",
        f"AV_PIP_ENV={pip_name(['six==1.16.0', 'tqdm'], CONDA)}",
        "AV_PIP=(six==1.16.0 tqdm)",
    ]
    assert lines[11].startswith("export ")
    # Named by the set, whatever its order; a virtual environment on a conda one is another.
    assert pip_name(["tqdm", "six==1.16.0", "tqdm"]) == pip_name(["six==1.16.0", "tqdm"])
    assert pip_name(["tqdm"], CONDA) != pip_name(["tqdm"])
    assert conda_name(CONDA[::-1]) == conda_name(CONDA) != conda_name(["python=3.12"])
    envs = files["envs.sh"]
    assert not re.search(r"@[A-Z_]+@", envs)  # every constant filled in
    assert "env_tools=(micromamba mamba conda)" in envs
    assert "    micromamba) extra=(-c conda-forge) ;;" in envs  # it has no channel of its own


def test_a_step_with_no_environment_gets_no_settings() -> None:
    g = compile_graph(parse_spec_text(_spec("true", "{}"), "e.yml"), {}, root="/w/exp1")
    files = bundle_files(g, "use", [Member(g.instance("use", 0), 0)], experiment_id="exp1")
    assert "AV_ENVS" not in files["tasks/0.sh"] and "AV_PIP" not in files["tasks/0.sh"]


@pytest.mark.timeout(300)
def test_a_real_pip_environment_is_built_once_per_resource(tmp_path: Path) -> None:
    """Two instances at once build it once; a later bundle reuses it untouched."""
    bindir, calls = tmp_path / "bin", tmp_path / "python-calls"
    python_wrapper(bindir / "python3", calls)  # the resource's python3, counted
    path = f"{bindir}:/usr/local/bin:/usr/bin:/bin"
    spec = _spec('python -c "import six, sys; print(six.__file__); print(sys.prefix)" > "$OUT"\n'
                 'echo "$VIRTUAL_ENV" >> "$OUT"', '{pip: ["six==1.16.0"]}', count=2)
    root = tmp_path / "wd" / "exp1"
    ends, g = _run(root, spec, "B0", path=path, count=2)
    assert ends == {0: Exit(code=0), 1: Exit(code=0)}
    cache = tmp_path / "wd" / ".airavata-envs"
    venv = cache / pip_name(["six==1.16.0"])
    for i in (0, 1):
        six_file, prefix, virtual_env = _out(g, i)
        assert six_file.startswith(f"{venv}/lib/") and prefix == virtual_env == str(venv)
    builds = [c for c in recorded(calls) if c[:2] == ["-m", "venv"]]
    assert builds == [["-m", "venv", str(venv)]]  # once, for both
    log = cache / f"{venv.name}.log"
    assert "Successfully installed six-1.16.0" in log.read_text()
    marked = ((venv / ".complete").stat().st_mtime_ns, log.stat().st_mtime_ns)
    # Another bundle (another experiment, even) asking for the same set reuses it.
    ends, g = _run(tmp_path / "wd" / "exp2", spec, "B1", path=path)
    assert ends == {0: Exit(code=0)} and _out(g)[1] == str(venv)
    assert [c for c in recorded(calls) if c[:2] == ["-m", "venv"]] == builds
    assert ((venv / ".complete").stat().st_mtime_ns, log.stat().st_mtime_ns) == marked


@pytest.mark.timeout(300)
def test_conda_against_a_stub_micromamba_with_pip_layered_on_it(tmp_path: Path) -> None:
    """The stub stands in for micromamba (none can be installed here, no channel is reached);
    the virtual environment on top of it is real."""
    bindir, calls = tmp_path / "bin", tmp_path / "micromamba-calls"
    stub_micromamba(bindir, calls)
    path = f"{bindir}:/usr/local/bin:/usr/bin:/bin"
    spec = _spec('hello > "$OUT"\n'
                 'python -c "import six, sys; print(sys.prefix)" >> "$OUT"\n'
                 'echo "$CONDA_PREFIX" "$VIRTUAL_ENV" >> "$OUT"',
                 f'{{conda: {CONDA!r}, pip: ["six==1.16.0"]}}')
    ends, g = _run(tmp_path / "wd" / "exp1", spec, "B0", path=path)
    assert ends == {0: Exit(code=0)}
    cache = tmp_path / "wd" / ".airavata-envs"
    conda, venv = cache / conda_name(CONDA), cache / pip_name(["six==1.16.0"], CONDA)
    assert recorded(calls) == [["create", "-y", "-p", str(conda), "-c", "conda-forge", *CONDA]]
    assert _out(g) == ["conda-hello", str(venv), f"{conda} {venv}"]  # both active, pip first
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    assert (conda / ".complete").exists()


def test_a_failed_conda_build_is_reported_and_rebuilt_next_time(tmp_path: Path) -> None:
    bindir, calls = tmp_path / "bin", tmp_path / "micromamba-calls"
    stub_micromamba(bindir, calls)
    path = f"{bindir}:/usr/bin:/bin"
    spec = _spec('hello > "$OUT"', '{conda: ["nosuch"]}')
    ends, g = _run(tmp_path / "wd" / "exp1", spec, "B0", path=path, env={"STUB_FAIL": "1"})
    cache = tmp_path / "wd" / ".airavata-envs"
    conda = cache / conda_name(["nosuch"])
    log = cache / f"{conda.name}.log"
    why = (f"could not start: conda environment [nosuch] failed to build: error: nothing "
           f"provides the requested packages (log: {log})")
    assert ends == {0: Exit(code=74, failure=why)}
    assert judge(Exit(code=74, failure=why), missing=[])[:3] == (TaskState.FAILED, 74, why)
    assert (conda / "partial").exists() and not (conda / ".complete").exists()
    assert "critical libmamba Could not solve" in log.read_text()  # kept for a closer look
    assert not Path(g.workdir("use", 0), "stdout.log").exists()  # its script never started
    # The half-built one is removed and built again by the next instance that needs it.
    ends, g = _run(tmp_path / "wd" / "exp1", spec, "B1", path=path)
    assert ends == {0: Exit(code=0)} and _out(g) == ["conda-hello"]
    assert not (conda / "partial").exists() and (conda / ".complete").exists()
    assert len(recorded(calls)) == 2


def test_no_conda_tool_on_the_resource_fails_saying_so(tmp_path: Path) -> None:
    path = "/usr/bin:/bin"
    assert not any(shutil.which(t, path=path) for t in CONDA_TOOLS)
    ends, g = _run(tmp_path / "wd" / "exp1", _spec("true", '{conda: ["python=3.12"]}'), "B0",
                   path=path)
    assert ends == {0: Exit(code=73, failure=(
        "could not start: conda environment [python=3.12]: no conda tool on this resource: "
        "none of micromamba, mamba or conda is on PATH"))}
    assert not Path(g.workdir("use", 0), "stdout.log").exists()
