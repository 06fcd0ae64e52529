#!/usr/bin/env bash
# `make run`: start the embedded default (Prefect server, the default deployment and a worker;
# SQLite store) and run the example through it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
airavata="$here/.venv/bin/airavata"
port=${AIRAVATA_PREFECT_PORT:-4200}
"$airavata" server start
export PREFECT_API_URL="http://127.0.0.1:$port/api"
example=${EXAMPLE:-$here/examples/hello_sweep.yml}
echo
echo "running $example"
status=0
"$airavata" experiment run "$example" --watch || status=$?
echo
echo "Prefect UI:  http://127.0.0.1:$port  (deployment run-experiment/default)"
echo "CLI:         export PREFECT_API_URL=$PREFECT_API_URL; .venv/bin/airavata experiment list"
echo "stop it:     .venv/bin/airavata server stop"
exit $status
