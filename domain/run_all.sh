#!/bin/bash
# Every instance of a bundle on one host, P at a time:  setsid bash run_all.sh BUNDLE_DIR N P
#
# Started in a session of its own, so cancel can stop all it started (`pkill -s SESSION`), and
# detached, so a dropped SSH connection stops nothing: each instance's exit code lands in
# results/, where the worker reads it when it reconnects.
b=$1
n=$2
p=$3
echo $$ >"$b/session"
# An instance's exit code is recorded by run_one.sh; xargs must go on whatever it was (it
# would stop everything on an exit status of 255).
seq 0 $((n - 1)) | xargs -P "$p" -I{} bash -c 'bash "$1" "$2" "$3"; exit 0' all \
  "$b/run_one.sh" "$b" {}
echo 0 >"$b/all.done"
