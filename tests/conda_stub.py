"""Stand-ins for a resource's conda tool and interpreter, for the environment tests.

No conda tool can be installed on this machine and no conda channel is reachable from it, so
conda environments are tested against `stub_micromamba`: it records how it was called and makes
the prefix it was asked for (a `bin/hello`, and a `bin/python3` that runs this machine's real
interpreter, as `python=3.12` would bring). `STUB_FAIL=1` in its environment makes it fail
half-way, as a real solve error would. pip environments are real everywhere.
"""

from __future__ import annotations

import sys
from pathlib import Path

SEP = "\x1f"  # between the recorded arguments (one call a line)


def real_python() -> str:
    """The interpreter behind this test run's virtual environment: it has venv and ensurepip."""
    return str(Path(sys.base_prefix) / "bin" / "python3")


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return path


def python_wrapper(path: Path, calls: Path) -> Path:
    """A `python3` at `path` that records its arguments and runs the real interpreter."""
    return _script(path, f"printf '%s{SEP}' \"$@\" >>'{calls}'; echo >>'{calls}'\n"
                         f"exec '{real_python()}' \"$@\"\n")


def stub_micromamba(bindir: Path, calls: Path) -> Path:
    """`bindir/micromamba`: `create -y -p PREFIX ...` makes PREFIX (see above)."""
    return _script(bindir / "micromamba", f"""\
printf '%s{SEP}' "$@" >>'{calls}'; echo >>'{calls}'
prefix=
while [ $# -gt 0 ]; do
  [ "$1" = -p ] && prefix=$2
  shift
done
mkdir -p "$prefix/bin" || exit 1
echo "Transaction starting"
if [ -n "$STUB_FAIL" ]; then
  echo partial >"$prefix/partial"
  echo "critical libmamba Could not solve for environment specs" >&2
  echo "error: nothing provides the requested packages" >&2
  exit 1
fi
printf '#!/bin/bash\\necho conda-hello\\n' >"$prefix/bin/hello"
printf '#!/bin/bash\\nexec %q "$@"\\n' '{real_python()}' >"$prefix/bin/python3"
chmod +x "$prefix/bin/hello" "$prefix/bin/python3"
""")


def recorded(calls: Path) -> list[list[str]]:
    """Each recorded call's arguments."""
    if not calls.exists():
        return []
    return [line.split(SEP)[:-1] for line in calls.read_text().splitlines()]
