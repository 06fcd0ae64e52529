#!/usr/bin/env bash
# `make test`: lint, then the whole suite. The suite's harness (tests/conftest.py) starts the real
# services it needs: a Prefect API server, and PostgreSQL when none answers on 127.0.0.1:5432.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
.venv/bin/ruff check .
exec .venv/bin/pytest "$@"
