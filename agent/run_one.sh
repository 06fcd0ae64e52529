#!/bin/bash
# One task instance of a bundle:  bash run_one.sh BUNDLE_DIR POSITION
#
# Writes results/POSITION.start when the step's script starts and results/POSITION.exit (its
# exit code, then "timeout" when the walltime stopped it) when it ends; a task killed from
# outside (scancel, a time limit, a dead node) leaves no .exit and its scheduler says why.
# Needs bash and coreutils only: nothing of Airavata is installed where this runs.
b=$1
k=$2
res="$b/results"
# shellcheck source=/dev/null
. "$b/tasks/$k.sh" || { echo "run_one: cannot read task $k of $b" >&2; exit 70; }

finish() {  # finish STATUS-LINE EXIT-CODE
  printf '%s\n' "$1" >"$res/$k.exit.tmp" && mv -f "$res/$k.exit.tmp" "$res/$k.exit"
  exit "$2"
}

mkdir -p "$AV_WORKDIR" && cd "$AV_WORKDIR" || finish "71 cannot create $AV_WORKDIR" 71
if [ "$AV_ATTEMPT" -gt 0 ]; then  # keep earlier attempts' logs
  for n in stdout stderr; do
    [ -f "$n.log" ] && mv -f "$n.log" "$n.attempt$((AV_ATTEMPT - 1)).log"
  done
fi
for link in "${AV_LINKS[@]}"; do  # staged storage mounts, shared by the bundle's instances
  src=${link%%|*}
  dst=${link#*|}
  mkdir -p "$(dirname "$dst")" && ln -sfn "$b/$src" "$dst" || finish "72 cannot link $dst" 72
done

# The script sees its own variables and a few of the host's, nothing else of this shell's.
keep=()
for v in $(compgen -e); do
  case $v in
    PATH|HOME|USER|LOGNAME|SHELL|LANG|LC_ALL|TZ|TMPDIR|TERM|SLURM_*) keep+=("$v=${!v}") ;;
  esac
done
run=(env -i "${keep[@]}" bash -c '. "$1"; exec bash "$2"' task "$b/tasks/$k.sh"
     "$b/steps/$AV_STEP.sh")
if [ -n "$AV_WALLTIME" ]; then
  run=(timeout -k 5 "$AV_WALLTIME" "${run[@]}")
fi
date +%s >"$res/$k.start"
"${run[@]}" </dev/null >stdout.log 2>stderr.log
code=$?
if [ -n "$AV_WALLTIME" ] && [ "$code" = 124 ]; then
  finish "124 timeout" 124
fi
finish "$code" "$code"
