#!/bin/sh
# openbao-init (docker-compose, DEVELOPMENT ONLY): initialise OpenBao once, unseal it at every
# `docker compose up`, and give our services a token of their own. POSIX sh (the OpenBao image's
# busybox); the same steps as scripts/openbao_server.sh without containers.
#
# The unseal key and the root token go to $KEYS_DIR/init.json (the `openbao-keys` volume,
# mode 0600): whoever can read that volume holds every secret. One key share, kept beside the
# data it unseals, is a development convenience; production splits the key among people (or
# auto-unseals through a KMS) and keeps the root token nowhere.
#
# Then, with the root token: KV v2 at secret/ (where adapters/openbao.py keeps credentials),
# the policy `airavata` ($POLICY_FILE), and an orphan periodic token with that policy alone in
# $TOKEN_DIR/airavata.token (the `openbao-token` volume, read-only in the services, owned by
# TOKEN_OWNER_UID, mode 0400). A token still valid is renewed, not replaced.
set -eu
: "${BAO_ADDR:?BAO_ADDR: where OpenBao answers}"
KEYS_DIR=${KEYS_DIR:-/openbao/keys}
TOKEN_DIR=${TOKEN_DIR:-/run/openbao}
POLICY_FILE=${POLICY_FILE:-/compose/openbao-policy.hcl}
TOKEN_OWNER_UID=${TOKEN_OWNER_UID:-10001}
TOKEN_PERIOD=${TOKEN_PERIOD:-768h}
umask 077
unset BAO_TOKEN VAULT_TOKEN

# `bao status` exits 0 unsealed, 2 sealed (or not initialised), 1 when nothing answers.
i=0
while :; do
  rc=0
  state=$(bao status -format=json 2>/dev/null) || rc=$?
  [ "$rc" -ne 1 ] && break
  i=$((i + 1))
  [ "$i" -lt 120 ] || { echo "openbao-init: nothing answers at $BAO_ADDR" >&2; exit 1; }
  sleep 1
done

mkdir -p "$KEYS_DIR" "$TOKEN_DIR"
chmod 700 "$KEYS_DIR"
chmod 755 "$TOKEN_DIR"  # the services (another uid) reach the token file; it is theirs alone
if printf '%s\n' "$state" | grep -q '"initialized": *false'; then
  if [ -s "$KEYS_DIR/init.json" ]; then
    echo "openbao-init: OpenBao is not initialised but $KEYS_DIR/init.json exists (keys of" \
         "an older data volume?): move it away first" >&2
    exit 1
  fi
  bao operator init -key-shares=1 -key-threshold=1 -format=json >"$KEYS_DIR/init.json.new"
  mv "$KEYS_DIR/init.json.new" "$KEYS_DIR/init.json"
  echo "openbao-init: initialised; unseal key and root token in $KEYS_DIR/init.json"
fi
[ -s "$KEYS_DIR/init.json" ] || {
  echo "openbao-init: OpenBao was initialised elsewhere ($KEYS_DIR/init.json is missing):" \
       "unseal it and configure it by hand" >&2
  exit 1
}

# `bao operator init -format=json` writes one field per line, lists one item per line.
unseal_key=$(sed -n '/"unseal_keys_b64"/{n;s/^[[:space:]]*"\([^"]*\)".*/\1/p;}' "$KEYS_DIR/init.json")
root_token=$(sed -n 's/^[[:space:]]*"root_token":[[:space:]]*"\([^"]*\)".*/\1/p' "$KEYS_DIR/init.json")
[ -n "$unseal_key" ] && [ -n "$root_token" ] || {
  echo "openbao-init: cannot read the unseal key and root token from $KEYS_DIR/init.json" >&2
  exit 1
}

if [ "$rc" -eq 2 ]; then  # sealed (a fresh init is too)
  bao operator unseal "$unseal_key" >/dev/null
  echo "openbao-init: unsealed"
fi

export BAO_TOKEN="$root_token"
i=0
until mounts=$(bao secrets list -format=json 2>/dev/null); do  # unsealed, raft has a leader
  i=$((i + 1))
  [ "$i" -lt 60 ] || { echo "openbao-init: OpenBao does not become active" >&2; exit 1; }
  sleep 1
done

if ! printf '%s\n' "$mounts" | grep -q '"secret/"'; then
  bao secrets enable -path=secret -version=2 kv >/dev/null
  echo "openbao-init: KV v2 enabled at secret/"
fi
bao policy write airavata "$POLICY_FILE" >/dev/null

token_file="$TOKEN_DIR/airavata.token"
if [ -s "$token_file" ] && BAO_TOKEN=$(cat "$token_file") bao token renew >/dev/null 2>&1; then
  echo "openbao-init: the services' token renewed"
else
  bao token create -orphan -policy=airavata -period="$TOKEN_PERIOD" \
    -display-name=airavata-services -field=token >"$token_file.new"
  mv "$token_file.new" "$token_file"
  echo "openbao-init: a new token for the services (policy airavata)"
fi
chown "$TOKEN_OWNER_UID" "$token_file"
chmod 0400 "$token_file"
echo "openbao-init: OpenBao ready at $BAO_ADDR"
