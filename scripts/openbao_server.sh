#!/usr/bin/env bash
# A persistent OpenBao server (raft storage) on loopback: start, init (once), unseal, stop.
#   scripts/openbao_server.sh start|stop|status      (BAO_PORT, default 8200)
# State in $AIRAVATA_HOME/openbao (default ~/.airavata/openbao). `init` writes the unseal key
# and root token to init.json there, mode 0600: production keeps them elsewhere (see README).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
home=${AIRAVATA_HOME:-$HOME/.airavata}
port=${BAO_PORT:-8200}
dir="$home/openbao"
bao="$here/.venv/bin/bao"
export BAO_ADDR="http://127.0.0.1:$port"
mkdir -p "$dir/data"
chmod 700 "$dir"

health() { curl -s -o /dev/null -w '%{http_code}' "$BAO_ADDR/v1/sys/health" 2>/dev/null || true; }

case "${1:-start}" in
start)
  if [ "$(health)" = "000" ] || [ -z "$(health)" ]; then
    cat >"$dir/config.hcl" <<HCL
storage "raft" {
  path    = "$dir/data"
  node_id = "airavata-1"
}
listener "tcp" {
  address     = "127.0.0.1:$port"
  tls_disable = true
}
api_addr     = "$BAO_ADDR"
cluster_addr = "http://127.0.0.1:$((port + 1))"
disable_mlock = true
HCL
    nohup "$bao" server -config="$dir/config.hcl" >"$dir/server.log" 2>&1 &
    echo $! >"$dir/server.pid"
    for _ in $(seq 100); do [ "$(health)" != "000" ] && [ -n "$(health)" ] && break; sleep 0.2; done
  fi
  if [ ! -f "$dir/init.json" ]; then
    (umask 077; "$bao" operator init -key-shares=1 -key-threshold=1 -format=json >"$dir/init.json")
  fi
  if [ "$(health)" = "503" ]; then  # sealed
    key=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["unseal_keys_b64"][0])' "$dir/init.json")
    "$bao" operator unseal "$key" >/dev/null
  fi
  for _ in $(seq 100); do [ "$(health)" = "200" ] && break; sleep 0.2; done
  [ "$(health)" = "200" ] || { echo "OpenBao did not become ready; see $dir/server.log" >&2; exit 1; }
  echo "OpenBao up and unsealed at $BAO_ADDR (state: $dir)" ;;
stop)
  [ -f "$dir/server.pid" ] && kill "$(cat "$dir/server.pid")" 2>/dev/null || true
  rm -f "$dir/server.pid" ;;
status)
  case "$(health)" in 200) echo "unsealed: $BAO_ADDR" ;; 503) echo "sealed: $BAO_ADDR"; exit 1 ;;
    *) echo "down"; exit 1 ;; esac ;;
*) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
