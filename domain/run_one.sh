#!/bin/bash
# One task instance of a bundle:  bash run_one.sh BUNDLE_DIR POSITION
#
# Writes results/POSITION.start when the step's script starts and results/POSITION.exit when it
# ends, one line: "exit N", "signal S", "timeout" (stopped at its walltime) or "error N WHY"
# (this runner could not start it: its directory, a link, an environment). A task killed from
# outside (scancel, a scheduler's time limit, a dead node) leaves no .exit, and its scheduler
# says why. Before .exit, results/POSITION.usage says what it used, one line (domain/usage.py):
# wall and CPU seconds and peak memory, measured by measure.py where the host has a python3,
# else wall and CPU time from bash. A step's ram_gb is an address-space limit (`ulimit -v`,
# AV_MEMORY_KIB) on its script and all it starts. Its conda / pip environments are built by
# envs.sh; envs.sh and measure.py are shipped beside this file.
# Needs bash, coreutils and util-linux only (python3 is optional): nothing of Airavata is
# installed where this runs.
# @PASSTHROUGH@ is filled in when the bundle is written (domain/bundle_layout.py).
b=$1
k=$2
res="$b/results"
# shellcheck source=/dev/null
. "$b/tasks/$k.sh" || { echo "run_one: cannot read task $k of $b" >&2; exit 70; }
# shellcheck source=envs.sh
. "$b/envs.sh" || { echo "run_one: cannot read $b/envs.sh" >&2; exit 70; }

finish() {  # finish STATUS-LINE EXIT-CODE
  rm -f "$res/$k.said" "$res/$k.times"
  printf '%s\n' "$1" >"$res/$k.exit.tmp" && mv -f "$res/$k.exit.tmp" "$res/$k.exit"
  exit "$2"
}

mkdir -p "$AV_WORKDIR" && cd "$AV_WORKDIR" || finish "error 71 cannot create $AV_WORKDIR" 71
for pair in "${AV_KEEP_LOGS[@]}"; do  # a retry keeps the earlier attempt's logs
  [ -f "${pair%%|*}" ] && mv -f "${pair%%|*}" "${pair#*|}"
done
for link in "${AV_LINKS[@]}"; do  # staged storage mounts, shared by the bundle's instances
  src=${link%%|*}
  dst=${link#*|}
  mkdir -p "$(dirname "$dst")" && ln -sfn "$b/$src" "$dst" || finish "error 72 cannot link $dst" 72
done
# Its conda / pip environments, built if need be (the instance shows ENV_SETUP until .start).
env_prepare

# The script sees its own variables and a few of the host's, nothing else of this shell's.
keep=()
for v in $(compgen -e); do
  case $v in
    @PASSTHROUGH@) [ "$v" = PATH ] || keep+=("$v=${!v}") ;;
  esac
done
keep+=("PATH=$env_path$PATH" "${env_active[@]}")  # its environments first, then the host's
# Default signal dispositions whatever this shell inherited (a background job of a
# non-interactive shell ignores SIGINT and SIGQUIT, and bash cannot undo that): coreutils 8.31+.
reset=()
env --default-signal true 2>/dev/null && reset=(--default-signal)
# Its memory limit, set by its own shell: inherited by all it starts, and it cannot raise it.
# Where this fails, a hard limit already below it is stricter and stays.
limit='[ -z "$3" ] || ulimit -v "$3" 2>/dev/null || [ "$(ulimit -H -v)" != unlimited ] ||
  { echo "run_one: cannot limit its memory to $3 KiB" >&2; exit 70; }'
run=(env "${reset[@]}" -i "${keep[@]}" bash -c "$limit"'
  . "$1"; exec bash "$2"' task "$b/tasks/$k.sh" "$b/steps/$AV_STEP.sh" "${AV_MEMORY_KIB:-}")
if [ -n "$AV_WALLTIME" ]; then
  run=(timeout -k 5 "$AV_WALLTIME" "${run[@]}")
fi
# Measured by measure.py (the system's python3 first: a user's shim or environment may be slow
# or odd), which ends the way the command did, so what follows reads its status unchanged.
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3) || py=
measure=()
[ -n "$py" ] && measure=("$py" -E -s -S "$b/measure.py" "$res/$k.usage" --)

ms() {  # `times`' "1m2.345s" -> 62345 into $ms (no subshell: they are this shell's figures)
  ms=0
  [[ $1 =~ ^([0-9]+)m([0-9]+)[.,]([0-9]*)s$ ]] || return 0
  local frac=${BASH_REMATCH[3]}000
  ms=$(((10#${BASH_REMATCH[1]} * 60 + 10#${BASH_REMATCH[2]}) * 1000 + 10#${frac:0:3}))
}
children_cpu() {  # user + system ms of the processes this shell waited for, into $cpu
  local u s
  cpu=0
  times >"$res/$k.times" && { read -r _ && read -r u s; } <"$res/$k.times" || return 0
  ms "$u" && cpu=$ms && ms "$s" && cpu=$((cpu + ms))
}

# With job control on, the script runs as a job of its own and bash reports on this shell's
# stderr when a signal ended it, but not when it exited with 128+N: the one way bash tells a
# signal from an exit status.
set -m
rm -f "$res/$k.usage"
started=$(date +%s)
printf '%s\n' "$started" >"$res/$k.start"
t0=$(date +%s%N)
children_cpu
cpu0=$cpu
"${measure[@]}" "${run[@]}" </dev/null >stdout.log 2>stderr.log &
wait $! 2>"$res/$k.said"
code=$?
if [ ! -s "$res/$k.usage" ]; then  # nothing measured it: wall and CPU time from here
  children_cpu
  t1=$(date +%s%N)
  wall=$((t1 - t0)) cpu=$((cpu - cpu0))
  [ ${#measure[@]} = 0 ] || cpu=0  # measure.py was killed: its command's CPU is unknown
  printf 'wall=%d.%09d cpu=%d.%03d maxrss=0 queue=0\n' $((wall / 1000000000)) \
    $((wall % 1000000000)) $((cpu / 1000)) $((cpu % 1000)) >"$res/$k.usage"
fi
if [ -n "$AV_WALLTIME" ] && { [ "$code" = 124 ] || [ "$code" = 137 ]; } \
    && [ $(($(date +%s) - started)) -ge "$AV_WALLTIME" ]; then
  finish "timeout" "$code"
fi
if [ "$code" -gt 128 ] && [ -s "$res/$k.said" ]; then
  finish "signal $((code - 128))" "$code"
fi
finish "exit $code" "$code"
