#!/usr/bin/env bash
# `make run`: start the embedded default (a Prefect server; SQLite store) and run the example.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
port=${PREFECT_PORT:-4200}
bash "$here/scripts/prefect_server.sh" start
export PREFECT_API_URL="http://127.0.0.1:$port/api"
example=${EXAMPLE:-$here/examples/hello_sweep.yml}
echo
echo "running $example"
status=0
"$here/.venv/bin/airavata" experiment run "$example" --watch || status=$?
echo
echo "Prefect UI:  http://127.0.0.1:$port  (flow 'run_experiment')"
echo "CLI:         export PREFECT_API_URL=$PREFECT_API_URL; .venv/bin/airavata experiment list"
exit $status
