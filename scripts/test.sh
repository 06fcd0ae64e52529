#!/usr/bin/env bash
# `make test`: lint, then the whole suite. The suite's harness (tests/conftest.py) starts the real
# services it needs: a Prefect API server, OpenBao, SLURM (with slurmrestd), sshd, an S3 server,
# and PostgreSQL when none answers on 127.0.0.1:5432. System packages come from system_deps.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/system_deps.sh
bash scripts/lint.sh
exec .venv/bin/pytest "$@"
