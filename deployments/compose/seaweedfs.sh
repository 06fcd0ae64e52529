#!/bin/sh
# The test profile's S3 (SeaweedFS's image): one identity with S3_ACCESS_KEY / S3_SECRET_KEY,
# written to a file only this container reads, then master, volume, filer and the S3 gateway in
# one process. Telemetry off.
set -eu
: "${S3_ACCESS_KEY:?}" "${S3_SECRET_KEY:?}"
umask 077
cat >/tmp/s3.json <<JSON
{"identities": [{"name": "admin",
  "credentials": [{"accessKey": "$S3_ACCESS_KEY", "secretKey": "$S3_SECRET_KEY"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
exec weed server -dir=/data -s3 -s3.port=8333 -s3.config=/tmp/s3.json -master.telemetry=false
