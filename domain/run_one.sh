#!/bin/bash
# One task instance of a bundle:  bash run_one.sh BUNDLE_DIR POSITION
#
# Writes results/POSITION.start when the step's script starts and results/POSITION.exit when it
# ends, one line: "exit N", "signal S", "timeout" (stopped at its walltime) or "error N WHY"
# (this runner could not start it: its directory, a link, an environment). A task killed from
# outside (scancel, a scheduler's time limit, a dead node) leaves no .exit, and its scheduler
# says why. Its conda / pip environments are built by envs.sh, shipped beside this file.
# Needs bash, coreutils and util-linux only: nothing of Airavata is installed where this runs.
# @PASSTHROUGH@ is filled in when the bundle is written (domain/bundle_layout.py).
b=$1
k=$2
res="$b/results"
# shellcheck source=/dev/null
. "$b/tasks/$k.sh" || { echo "run_one: cannot read task $k of $b" >&2; exit 70; }
# shellcheck source=envs.sh
. "$b/envs.sh" || { echo "run_one: cannot read $b/envs.sh" >&2; exit 70; }

finish() {  # finish STATUS-LINE EXIT-CODE
  rm -f "$res/$k.said"
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
run=(env "${reset[@]}" -i "${keep[@]}" bash -c '. "$1"; exec bash "$2"' task "$b/tasks/$k.sh"
     "$b/steps/$AV_STEP.sh")
if [ -n "$AV_WALLTIME" ]; then
  run=(timeout -k 5 "$AV_WALLTIME" "${run[@]}")
fi

# With job control on, the script runs as a job of its own and bash reports on this shell's
# stderr when a signal ended it, but not when it exited with 128+N: the one way bash tells a
# signal from an exit status.
set -m
started=$(date +%s)
printf '%s\n' "$started" >"$res/$k.start"
"${run[@]}" </dev/null >stdout.log 2>stderr.log &
wait $! 2>"$res/$k.said"
code=$?
if [ -n "$AV_WALLTIME" ] && { [ "$code" = 124 ] || [ "$code" = 137 ]; } \
    && [ $(($(date +%s) - started)) -ge "$AV_WALLTIME" ]; then
  finish "timeout" "$code"
fi
if [ "$code" -gt 128 ] && [ -s "$res/$k.said" ]; then
  finish "signal $((code - 128))" "$code"
fi
finish "exit $code" "$code"
