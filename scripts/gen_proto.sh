#!/usr/bin/env bash
# Regenerates the gRPC code from proto/agent.proto (tests/test_proto.py fails when it is stale).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. \
  airavata_prefect/proto/agent.proto
