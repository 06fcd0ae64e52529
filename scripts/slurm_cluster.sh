#!/usr/bin/env bash
# A real single-node SLURM cluster (Debian's slurm-wlm 22.05) on loopback, without systemd.
#   scripts/slurm_cluster.sh start|stop|status|env
# State (config, munge key, spool, logs, JWT key) lives in $SLURM_DIR (default
# $AIRAVATA_HOME/slurm). Clients need `export SLURM_CONF=$SLURM_DIR/etc/slurm.conf` (`env` prints
# it). Settings that matter are explained in ../shared/COMPONENTS.md:
#   CPUS      CPUs the node advertises (default 16; more than the machine has, for throughput)
#   MEM_MB    memory the node advertises (default 4096 per CPU; config_overrides lets it exceed
#             what `slurmd -C` finds); a job without --mem gets its CPUs' share of it
#   REST_PORT slurmrestd port (default: none started); it runs as `nobody` with JWT auth.
set -euo pipefail
home=${AIRAVATA_HOME:-$HOME/.airavata}
dir=${SLURM_DIR:-$home/slurm}
cpus=${CPUS:-16}
node=airavata-node
conf="$dir/etc/slurm.conf"
export SLURM_CONF="$conf"

need() { command -v "$1" >/dev/null || { echo "$1 not found: apt-get install slurm-wlm slurmrestd munge slurm-wlm-jwt-plugin" >&2; exit 1; }; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_config() {
  mkdir -p "$dir"/{etc,munge,spool/ctld,spool/d,log,run}
  # Users who submit over SSH must reach the munge socket and read the config; the keys stay
  # readable by root alone.
  chmod 755 "$dir" "$dir/etc" "$dir/munge"
  [ -f "$dir/munge/munge.key" ] || { dd if=/dev/urandom bs=1 count=1024 of="$dir/munge/munge.key" 2>/dev/null; chmod 400 "$dir/munge/munge.key"; }
  [ -f "$dir/etc/jwt_hs256.key" ] || { dd if=/dev/urandom bs=32 count=1 of="$dir/etc/jwt_hs256.key" 2>/dev/null; chmod 600 "$dir/etc/jwt_hs256.key"; }
  local ctld_port d_port mem
  ctld_port=$(free_port); d_port=$(free_port)
  mem=${MEM_MB:-$(( cpus * 4096 ))}
  # Memory is enforced without cgroups (none here): jobacct_gather/linux samples each step's
  # processes every second and OverMemoryKill ends a step over its --mem (OUT_OF_MEMORY).
  cat >"$conf" <<CONF
ClusterName=airavata
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$dir/etc/jwt_hs256.key
CredType=cred/munge
StateSaveLocation=$dir/spool/ctld
SlurmdSpoolDir=$dir/spool/d
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(( mem / cpus ))
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherParams=OverMemoryKill
JobAcctGatherFrequency=task=1
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=600
MaxArraySize=1001
SlurmdParameters=config_overrides
MpiDefault=none
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
  chmod 644 "$conf"
}

start() {
  need slurmctld; need slurmd; need munged
  if pid_alive "$dir/run/slurmctld.pid" && pid_alive "$dir/run/slurmd.pid"; then
    echo "SLURM already up (SLURM_CONF=$conf)"; return 0
  fi
  write_config
  pid_alive "$dir/munge/munged.pid" || munged --socket="$dir/munge/munge.socket" \
    --key-file="$dir/munge/munge.key" --pid-file="$dir/munge/munged.pid" \
    --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed" --force
  slurmctld -i -f "$conf"
  slurmd -N "$node" -f "$conf"
  for _ in $(seq 100); do
    if sinfo -h -o '%t' 2>/dev/null | grep -q -E '^idle'; then break; fi
    sleep 0.1
  done
  sinfo -h -o '%t' 2>/dev/null | grep -q -E '^idle' || {
    echo "SLURM did not come up; see $dir/log" >&2; tail -n 20 "$dir"/log/*.log >&2; exit 1; }
  if [ -n "${REST_PORT:-}" ]; then
    # slurmrestd refuses to run as root; `nobody` reads the config, not the JWT key.
    SLURM_JWT=daemon nohup slurmrestd -u nobody -g nogroup -a rest_auth/jwt -s openapi/v0.0.38 \
      "127.0.0.1:$REST_PORT" >"$dir/log/slurmrestd.log" 2>&1 &
    echo $! >"$dir/run/slurmrestd.pid"
    for _ in $(seq 50); do
      curl -s -o /dev/null "http://127.0.0.1:$REST_PORT/" && break; sleep 0.1
    done
  fi
  echo "SLURM up: SLURM_CONF=$conf"
}

stop() {
  if pid_alive "$dir/run/slurmctld.pid"; then
    scancel --partition=debug 2>/dev/null || true  # job steps outlive slurmd
    sleep 0.5
  fi
  for p in run/slurmrestd.pid run/slurmd.pid run/slurmctld.pid munge/munged.pid; do
    if pid_alive "$dir/$p"; then kill "$(cat "$dir/$p")" 2>/dev/null || true; fi
  done
  for _ in $(seq 50); do
    alive=0
    for p in run/slurmd.pid run/slurmctld.pid munge/munged.pid; do pid_alive "$dir/$p" && alive=1; done
    [ $alive = 0 ] && break; sleep 0.1
  done
  rm -f "$dir"/run/*.pid
}

case "${1:-start}" in
start) start ;;
stop) stop ;;
status) if sinfo -h -o '%P %t %c' 2>/dev/null; then :; else echo "down"; exit 1; fi ;;
env) echo "export SLURM_CONF=$conf" ;;
*) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
