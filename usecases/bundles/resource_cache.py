"""A content-addressed cache of staged files on each compute resource.

Files a bundle needs from storage go to the resource once, whatever the number of instances,
bundles or experiments that read them: `<working directory>/.airavata-cache/sha256/<digest>`,
read-only. A bundle links its mounts to the cache entries (`.bundles/<id>/mounts/<n>/...`).

Every file is verified on arrival: it lands under `incoming/` and moves into the cache only
when the resource's own `sha256sum` agrees with the digest computed here. A mismatch is sent
again (ATTEMPTS in all), then staging fails naming the file; a partial or corrupted file never
stands in for a whole one.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from airavata_prefect.adapters.hosts import Host, check, upload
from airavata_prefect.adapters.storage import StorageError, sha256_of
from airavata_prefect.adapters.store.staging import CacheTotals

CACHE_DIR = ".airavata-cache"
ATTEMPTS = 2


@dataclass(frozen=True)
class CachedFile:
    """A file as staged: `rel` under its mount's copy, its digest and size."""

    rel: str
    local: Path
    sha256: str
    size: int


def hashed_files(root: Path) -> list[CachedFile]:
    """Every regular file under `root` (or `root` itself), hashed. Names the line protocol
    with the resource cannot carry (a newline or a tab) are refused."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*")
                                                 if p.is_file() and not p.is_symlink())
    out: list[CachedFile] = []
    for p in files:
        rel = p.name if p == root else p.relative_to(root).as_posix()
        if "\n" in rel or "\t" in rel:
            raise StorageError(f"{rel!r}: a file name with a newline or tab cannot be staged")
        out.append(CachedFile(rel, p, sha256_of(p), p.stat().st_size))
    return out


# Move each verified arrival into the cache; print "<digest> <what arrived>" for the others.
_VERIFY = """\
set -u
cd {root} || exit 3
mkdir -p sha256
while IFS= read -r d; do
  got=$(sha256sum "incoming/$d" 2>/dev/null | cut -d' ' -f1)
  if [ "$got" = "$d" ]; then
    chmod 0444 "incoming/$d" && mv -f "incoming/$d" "sha256/$d" || exit 4
  else
    rm -f "incoming/$d"
    echo "$d ${{got:-missing}}"
  fi
done
"""

# Which of the digests on stdin the cache holds.
_PRESENT = """\
cd {root} 2>/dev/null || exit 0
while IFS= read -r d; do [ -f "sha256/$d" ] && echo "$d"; done
exit 0
"""

# Link `<directory>/<rel>` to each cache entry named on stdin ("<digest>\\t<rel>").
_LINK = """\
set -u
mkdir -p {directory} && cd {directory} || exit 3
while IFS=$'\\t' read -r d rel; do
  mkdir -p "$(dirname "$rel")" && ln -sfn {root}/sha256/"$d" "$rel" || exit 4
done
"""


class ResourceCache:
    def __init__(self, host: Host, base: str, resource: str) -> None:
        self.host = host
        self.root = f"{base.rstrip('/')}/{CACHE_DIR}"
        self.resource = resource

    def _run(self, script: str, lines: Iterable[str], what: str) -> str:
        stdin = "".join(f"{line}\n" for line in lines).encode()
        return check(self.host, script, stdin=stdin, what=what).text

    def present(self, digests: Iterable[str]) -> set[str]:
        script = _PRESENT.format(root=shlex.quote(self.root))
        return set(self._run(script, sorted(set(digests)), "cache lookup").split())

    def place(self, files: Mapping[str, CachedFile]) -> CacheTotals:
        """Make every file (by digest) present in the cache: the missing ones are sent and
        verified there. Returns what this cost (misses sent, hits spared)."""
        have = self.present(files)
        missing = {d: f for d, f in files.items() if d not in have}
        moved = retries = 0
        for attempt in range(1, ATTEMPTS + 1):
            if not missing:
                break
            upload(self.host, f"{self.root}/incoming", {d: f.local for d, f in missing.items()},
                   compress=False)  # staged data is mostly incompressible: gzip would cost
            moved += sum(f.size for f in missing.values())
            report = self._run(_VERIFY.format(root=shlex.quote(self.root)), sorted(missing),
                               "checksum verification")
            bad = {d: got for d, _, got in (line.partition(" ") for line in report.splitlines())}
            missing = {d: f for d, f in missing.items() if d in bad}
            if missing and attempt == ATTEMPTS:
                d, f = next(iter(missing.items()))
                raise StorageError(
                    f"{f.rel!r} arrived corrupted at {self.resource} {ATTEMPTS} times "
                    f"(sha256 sent {d[:16]}…, found {bad[d][:16]}…)")
            retries += len(missing)
        sent = {d for d in files if d not in have}
        return CacheTotals(self.resource, hits=len(have & set(files)), misses=len(sent),
                           bytes_moved=moved,
                           bytes_saved=sum(files[d].size for d in have & set(files)),
                           retries=retries)

    def link(self, directory: str, entries: Iterable[tuple[str, str]]) -> None:
        """Link `directory/<rel>` to the cache entry of each (rel, digest)."""
        script = _LINK.format(directory=shlex.quote(directory), root=shlex.quote(self.root))
        self._run(script, (f"{d}\t{rel}" for rel, d in entries), "linking staged files")


__all__ = ["ATTEMPTS", "CACHE_DIR", "CachedFile", "ResourceCache", "hashed_files"]
