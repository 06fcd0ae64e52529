#!/usr/bin/env bash
# `make lint` (and the start of `make test`): style, the layer contracts, types.
#   ruff         style and imports; bare `flows`/`agent`/... imports are banned
#   lint-imports the layers of DESIGN.md (pyproject.toml [tool.importlinter]): no layer imports
#                one above it, doors never import adapters or blocks, nothing imports in a cycle
#   mypy         type hints everywhere, checked; a `# type: ignore` that hides nothing fails
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/lint-imports --no-cache | sed -n '/^Contracts$/,$p' | grep -v '^-*$'
.venv/bin/mypy
.venv/bin/python scripts/import_graph.py | tail -n 1
