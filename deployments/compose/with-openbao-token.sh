#!/bin/sh
# Runs a command of ours with AIRAVATA_OPENBAO_TOKEN set from the file openbao-init.sh wrote
# (the `openbao-token` volume, mounted read-only): the token never appears in the compose file,
# in `docker inspect`, or in an image. Our settings read it from the environment only.
#   sh /compose/with-openbao-token.sh airavata ...
set -eu
token_file=/run/openbao/airavata.token
[ -r "$token_file" ] || { echo "no OpenBao token at $token_file (did openbao-init run?)" >&2; exit 1; }
AIRAVATA_OPENBAO_TOKEN=$(cat "$token_file")
export AIRAVATA_OPENBAO_TOKEN
exec "$@"
