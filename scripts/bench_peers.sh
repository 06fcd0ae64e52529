#!/usr/bin/env bash
# The peers that `make bench` measures our agents against (bench/peers.py), installed into a
# virtualenv of their own, .venv-peers, so that they never meet the project's pinned Prefect and
# SQLAlchemy in .venv. Idempotent: a stamp file records what was installed; quiet; exits non-zero
# with one clear line when something cannot be installed.
#
#   parsl                   HighThroughputExecutor and ThreadPoolExecutor
#   hyperqueue              HyperQueue's Python API. The PyPI wheel ships no `hq` binary: its
#                           extension module (hyperqueue.abi3.so) embeds the server and the worker,
#                           started through hyperqueue.LocalCluster. (The `hq` package on PyPI is an
#                           unrelated HTML tool.)
#   dask[distributed]       LocalCluster with 2 workers
#
# Versions are not pinned (the bench compares against the peers as their users get them today);
# the versions installed are printed by `python -m bench.peers` beside each row.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv="$here/.venv-peers"
packages=(parsl hyperqueue "dask[distributed]")
stamp="$venv/.installed"
want="${packages[*]}"
[ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && exit 0

fail() { echo "bench_peers.sh: $*" >&2; exit 1; }
python=${PYTHON:-python3}
command -v "$python" >/dev/null || fail "$python not found (set PYTHON=...)"
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || fail "the peers need Python 3.10+ (found $("$python" -V 2>&1))"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv" 2>/dev/null \
    || fail "cannot create $venv: install python3-venv (apt-get install python3-venv)"
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >"$log" 2>&1 \
  || { tail -n 20 "$log" >&2; fail "cannot upgrade pip in $venv"; }
"$venv/bin/python" -m pip install -q --disable-pip-version-check "${packages[@]}" >"$log" 2>&1 \
  || { tail -n 20 "$log" >&2; fail "cannot install the peers (${packages[*]}) into $venv"; }
"$venv/bin/python" -c 'import parsl, hyperqueue, dask.distributed' >"$log" 2>&1 \
  || { tail -n 20 "$log" >&2; fail "the peers installed into $venv but do not import"; }
echo "$want" >"$stamp"
echo "bench peers installed in $venv: $("$venv/bin/python" -m pip list --format=freeze \
  --disable-pip-version-check 2>/dev/null | grep -iE '^(parsl|hyperqueue|dask|distributed)==' \
  | tr '\n' ' ')"
