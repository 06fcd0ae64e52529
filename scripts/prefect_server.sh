#!/usr/bin/env bash
# Start or stop the local Prefect API + UI server the embedded default uses.
#   scripts/prefect_server.sh start|stop|status
# PREFECT_PORT (default 4200); state in $AIRAVATA_HOME/prefect (default ~/.airavata/prefect).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
home=${AIRAVATA_HOME:-$HOME/.airavata}
port=${PREFECT_PORT:-4200}
dir="$home/prefect"
pidfile="$dir/server.pid"
url="http://127.0.0.1:$port"
mkdir -p "$dir"

healthy() { curl -sf "$url/api/health" >/dev/null 2>&1; }

case "${1:-start}" in
start)
  if healthy; then echo "Prefect server already up at $url"; exit 0; fi
  echo "starting Prefect server at $url (log: $dir/server.log) ..."
  PREFECT_HOME="$dir" PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_UI_API_URL="$url/api" \
    nohup "$here/.venv/bin/prefect" server start --host 127.0.0.1 --port "$port" \
    >"$dir/server.log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 120); do
    if healthy; then echo "Prefect server up: $url"; exit 0; fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "Prefect server exited; last lines of $dir/server.log:" >&2
      tail -n 20 "$dir/server.log" >&2; exit 1
    fi
    sleep 1
  done
  echo "Prefect server did not answer within 120 s; see $dir/server.log" >&2; exit 1 ;;
stop)
  if [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null; then echo "stopped"; fi
  rm -f "$pidfile" ;;
status)
  if healthy; then echo "up: $url"; else echo "down"; exit 1; fi ;;
*) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
