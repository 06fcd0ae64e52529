"""The REST API under load: CLIENTS concurrent clients creating and polling experiments for
SECONDS against the API on PostgreSQL, beside the same clients doing the same against Prefect's
own REST API alone, in the same run on the same stack.

The stack is the embedded default (`airavata server start`, as bench/deployment_path.py starts
it) in a temporary AIRAVATA_HOME on free ports, with the store and the Prefect server each on
a fresh PostgreSQL database (dropped at the end). USERS people, made by an admin through the
API, are members of project `bench`, whose deployment `run-experiment/bench` runs in the pool
its worker polls. Each client signs in as one of them (CLIENTS / USERS clients a person) and
loops with no pause between requests:

- ours: `POST /api/v1/experiments` (a 3-instance sweep of `true`, deployment `bench`), then
  POLLS x (`GET /api/v1/experiments/{id}`, `GET /api/v1/experiments/{id}/tasks`);
- Prefect alone: `POST /api/deployments/{id}/create_flow_run` (the same deployment), then
  POLLS x (`GET /api/flow_runs/{id}`, `POST /api/flow_runs/filter` by that id, limit 1).

Prefect alone runs before and after ours, and the two are pooled as the baseline, so a stack
that slows as its tables fill favours neither side. The work pool's concurrency limit is 1 and
one long experiment holds that slot throughout, so every flow run made during the bench waits
in the queue and none executes: the figures are the APIs', not the runs'. The write rate limit
(AIRAVATA_API_WRITE_RATE, 300 a minute per identity by default) is raised to WRITE_RATE for the
bench. Any 5xx (or failed connection) from our API fails the bench.

Run alone: `python -m bench.api_load [--seconds 60] [--clients 50] [--users 5]` (or
AIRAVATA_BENCH_API_SECONDS); PostgreSQL at AIRAVATA_BENCH_POSTGRES (an admin URL, default
postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench import deployment_path as dp

SECONDS = float(os.environ.get("AIRAVATA_BENCH_API_SECONDS", "60"))
CLIENTS = 50
USERS = 5
POLLS = 3  # status rounds after each create; a round is two requests
WRITE_RATE = 1_000_000  # AIRAVATA_API_WRITE_RATE for the bench (writes a minute per identity)
PG_ADMIN = os.environ.get("AIRAVATA_BENCH_POSTGRES",
                          "postgresql://postgres@127.0.0.1:5432/postgres")
PROJECT = DEPLOYMENT = "bench"
ADMIN, ADMIN_PASSWORD = "admin", "admin-password-1"
SPEC = "name: b\ntasks: {t: {command: 'true', task_inputs: {I: '1..3'}}}\n"
HOLD = "name: hold\ntasks: {hold: {command: 'sleep 86400'}}\n"  # the pool's only slot

Call = tuple[str, str, Any]  # method, path, JSON body (None: none)


# -- figures -------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil
    return ordered[int(rank) - 1]


@dataclass
class Tally:
    """One side's requests: latencies in seconds by kind, status codes, failed connections."""

    create_s: list[float] = field(default_factory=list)
    poll_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    seconds: float = 0.0  # from the first request's start to the last one's end
    load: list[float] = field(default_factory=list)  # 1-minute load average after each phase
    examples: list[str] = field(default_factory=list)  # a few failures, for the report

    def record(self, kind: str, status: int, seconds: float, detail: str) -> None:
        (self.create_s if kind == "create" else self.poll_s).append(seconds)
        self.statuses[status] += 1
        if status >= 300 and len(self.examples) < 5:
            self.examples.append(f"{status} {detail}")

    def merge(self, other: Tally) -> Tally:
        return Tally(self.create_s + other.create_s, self.poll_s + other.poll_s,
                     self.statuses + other.statuses,
                     self.transport_errors + other.transport_errors,
                     self.seconds + other.seconds, self.load + other.load,
                     (self.examples + other.examples)[:5])

    @property
    def requests(self) -> int:
        return len(self.create_s) + len(self.poll_s)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def creates_per_s(self) -> float:
        return len(self.create_s) / self.seconds if self.seconds else 0.0

    @property
    def server_errors(self) -> int:
        return sum(n for code, n in self.statuses.items() if code >= 500)

    @property
    def other_non_2xx(self) -> int:
        return sum(n for code, n in self.statuses.items() if code < 200 or 300 <= code < 500)

    def ms(self, kind: str, q: float) -> float:
        return 1000 * percentile(self.create_s if kind == "create" else self.poll_s, q)


@dataclass(frozen=True)
class Result:
    api: Tally
    prefect: Tally  # both Prefect-alone phases pooled
    prefect_phases: tuple[Tally, Tally]  # before and after ours
    clients: int
    users: int
    seconds: float
    load_before: float  # 1-minute load average before the first phase
    notes: tuple[str, ...] = ()

    @property
    def failures(self) -> list[str]:
        """Why the bench fails: any 5xx or failed connection from our API."""
        a = self.api
        if not a.server_errors and not a.transport_errors:
            return []
        return [f"our API answered {a.server_errors} x 5xx and {a.transport_errors} requests "
                f"failed to connect or timed out, in {a.requests} requests; e.g. "
                + "; ".join(a.examples)]


# -- the load --------------------------------------------------------------------------------


async def _request(http: httpx.AsyncClient, tally: Tally, kind: str, call: Call
                   ) -> httpx.Response | None:
    method, path, body = call
    start = time.perf_counter()
    try:
        r = await http.request(method, path, json=body)
    except httpx.HTTPError as exc:
        tally.transport_errors += 1
        if len(tally.examples) < 5:
            tally.examples.append(f"{method} {path}: {exc!r}")
        return None
    tally.record(kind, r.status_code, time.perf_counter() - start,
                 f"{method} {path}: {r.text[:300]}")
    return r


async def _client(http: httpx.AsyncClient, tally: Tally, create: Callable[[], Call],
                  ref_of: Callable[[Any], str], polls: Callable[[str], list[Call]],
                  stop_at: float) -> None:
    """Create, then poll what was created POLLS times; again until `stop_at` (no request
    starts after it; the one under way ends)."""
    while time.monotonic() < stop_at:
        r = await _request(http, tally, "create", create())
        if r is None or not 200 <= r.status_code < 300:
            continue
        ref = ref_of(r.json())
        for _ in range(POLLS):
            for call in polls(ref):
                if time.monotonic() >= stop_at:
                    return
                await _request(http, tally, "poll", call)


async def _phase(base: str, headers: list[dict[str, str]], create: Callable[[], Call],
                 ref_of: Callable[[Any], str], polls: Callable[[str], list[Call]],
                 seconds: float) -> Tally:
    """len(headers) clients, each with its own connection, for `seconds`."""
    tally = Tally()
    clients = [httpx.AsyncClient(base_url=base, headers=h, timeout=120,
                                 limits=httpx.Limits(max_connections=1)) for h in headers]
    try:
        start = time.monotonic()
        await asyncio.gather(*(_client(c, tally, create, ref_of, polls, start + seconds)
                               for c in clients))
        tally.seconds = time.monotonic() - start
    finally:
        for c in clients:
            await c.aclose()
    tally.load.append(os.getloadavg()[0])
    return tally


def ours(api: str, tokens: list[str], seconds: float) -> Tally:
    """The clients against our API: create an experiment, poll its status and tasks."""
    body = {"spec": SPEC, "project": PROJECT, "deployment": DEPLOYMENT}
    return asyncio.run(_phase(
        api, [{"Authorization": f"Bearer {t}"} for t in tokens],
        lambda: ("POST", "/experiments", body), lambda j: str(j["experiment_id"]),
        lambda ref: [("GET", f"/experiments/{ref}", None),
                     ("GET", f"/experiments/{ref}/tasks", None)], seconds))


def prefect_alone(prefect: str, deployment_id: str, experiment_id: str, clients: int,
                  seconds: float) -> Tally:
    """The clients against Prefect's API: a flow run of the same deployment (the parameters
    and tags ours sends), poll it by id and through the filter."""
    def create() -> Call:
        key = str(uuid.uuid4())
        return ("POST", f"/deployments/{deployment_id}/create_flow_run",
                {"parameters": {"experiment_id": experiment_id}, "idempotency_key": key,
                 "name": f"b-{key[:8]}", "tags": [f"project:{PROJECT}", "user:bench"],
                 "state": {"type": "SCHEDULED", "name": "Scheduled"}})

    return asyncio.run(_phase(
        prefect, [{}] * clients, create, lambda j: str(j["id"]),
        lambda ref: [("GET", f"/flow_runs/{ref}", None),
                     ("POST", "/flow_runs/filter",
                      {"flow_runs": {"id": {"any_": [ref]}}, "limit": 1, "offset": 0})],
        seconds))


# -- the stack -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _databases(n: int) -> Iterator[list[str]]:
    """`n` fresh PostgreSQL databases (their names), dropped at the end."""
    import psycopg

    names = [f"airavata_bench_{uuid.uuid4().hex[:10]}" for _ in range(n)]
    made: list[str] = []
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            for name in names:
                conn.execute(f'CREATE DATABASE "{name}"')
                made.append(name)
        yield names
    finally:
        if made:
            with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
                for name in made:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _db_url(name: str, driver: str) -> str:
    head, _, _ = PG_ADMIN.rpartition("/")
    return f"{head.replace('postgresql://', f'postgresql+{driver}://', 1)}/{name}"


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), children first."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _stop(stack: dp.Stack) -> None:
    """`airavata server stop`, and whatever the worker started (flow runs start sessions of
    their own, which stopping the worker's process group leaves running)."""
    try:
        worker = int((stack.home / "server" / "worker.pid").read_text())
        left = _descendants(worker)
    except (OSError, ValueError):
        left = []
    try:
        dp._airavata(stack, "server", "stop", timeout=120)
    finally:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _make_admin(stack: dp.Stack, db_url: str) -> None:
    """The first admin, made as an operator does: locally, on the server's machine."""
    from airavata_prefect.usecases import accounts
    from airavata_prefect.usecases.context import open_context, os_login
    from airavata_prefect.usecases.settings import Settings

    with open_context(Settings(home=stack.home, database_url=db_url, user=os_login())) as ctx:
        accounts.create_person(ctx, ADMIN, ADMIN_PASSWORD, admin=True)


def _ok(r: httpx.Response, *codes: int) -> Any:
    if r.status_code not in (codes or (200,)):
        raise RuntimeError(f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:500]}")
    return r.json() if r.content else None


def _login(api: str, user: str, password: str) -> str:
    r = httpx.post(f"{api}/auth/login", json={"username": user, "password": password},
                   timeout=60)
    return str(_ok(r)["access_token"])


def _people(api: str, users: int) -> list[tuple[str, str]]:
    """Project PROJECT and `users` members of it, made by the admin through the API."""
    people = [(f"bench{i}", f"bench{i}-password-1") for i in range(users)]
    with httpx.Client(base_url=api, timeout=60, headers={
            "Authorization": f"Bearer {_login(api, ADMIN, ADMIN_PASSWORD)}"}) as admin:
        _ok(admin.post("/projects", json={"name": PROJECT}), 201)
        for name, password in people:
            _ok(admin.post("/users", json={"username": name, "password": password}), 201)
            _ok(admin.post(f"/projects/{PROJECT}/members",
                           json={"username": name, "role": "member"}))
    return people


def _hold_the_slot(api: str, token: str, timeout: float = 180) -> str:
    """An experiment that runs for the whole bench in the pool's only slot; its id once its
    task runs."""
    with httpx.Client(base_url=api, timeout=60,
                      headers={"Authorization": f"Bearer {token}"}) as http:
        exp = _ok(http.post("/experiments", json={"spec": HOLD, "project": PROJECT,
                                                  "deployment": DEPLOYMENT}), 201)
        ref = str(exp["experiment_id"])
        deadline = time.monotonic() + timeout
        while True:
            got = _ok(http.get(f"/experiments/{ref}"))
            if (got.get("steps") or {}).get("hold", {}).get("RUNNING"):
                return ref
            if got["status"] in ("COMPLETED", "FAILED", "CANCELED") \
                    or time.monotonic() > deadline:
                raise RuntimeError(f"the slot-holding experiment is {got['status']} "
                                   f"({got.get('message')}), not running")
            time.sleep(0.5)


def _warm_up(api: str, prefect: str, tokens: list[str], deployment_id: str, ref: str) -> None:
    """Not counted: each identity's first create and poll, and Prefect's."""
    for token in tokens:
        with httpx.Client(base_url=api, timeout=60,
                          headers={"Authorization": f"Bearer {token}"}) as http:
            made = _ok(http.post("/experiments", json={"spec": SPEC, "project": PROJECT,
                                                       "deployment": DEPLOYMENT}), 201)
            _ok(http.get(f"/experiments/{made['experiment_id']}"))
            _ok(http.get(f"/experiments/{made['experiment_id']}/tasks"))
    with httpx.Client(base_url=prefect, timeout=60) as http:
        run = _ok(http.post(f"/deployments/{deployment_id}/create_flow_run",
                            json={"parameters": {"experiment_id": ref}}), 201)
        _ok(http.get(f"/flow_runs/{run['id']}"))


def run(seconds: float = SECONDS, clients: int = CLIENTS, users: int = USERS,
        log: Callable[[str], None] | None = None) -> Result:
    """Prefect alone, ours, Prefect alone again, on one stack of our own (started and stopped
    here, its databases dropped)."""
    from airavata_prefect.usecases.deployments import FLOW

    say = log or (lambda _m: None)
    if clients < users or users < 1:
        raise ValueError("need at least one user and one client a user")
    with _databases(2) as (store_db, prefect_db):
        stack = dp.new_stack()
        store_url = _db_url(store_db, "psycopg")
        api_port = dp._free_port()
        stack.env.update(AIRAVATA_DATABASE_URL=store_url,
                         AIRAVATA_PREFECT_DATABASE_URL=_db_url(prefect_db, "asyncpg"),
                         AIRAVATA_API_PORT=str(api_port),
                         AIRAVATA_API_WRITE_RATE=str(WRITE_RATE),
                         # tokens outlive the bench (a default one lasts 15 min)
                         AIRAVATA_ACCESS_TOKEN_SECONDS=str(int(max(900, 4 * seconds + 600))))
        api = f"http://127.0.0.1:{api_port}/api/v1"
        try:
            _make_admin(stack, store_url)
            say("starting the stack (`airavata server start`, PostgreSQL)")
            dp.start_stack(stack)
            dp._http(f"{stack.api}/work_pools/{dp.POOL}", {"concurrency_limit": 1},
                     method="PATCH")
            people = _people(api, users)
            admin_env = dataclasses.replace(stack, env={**stack.env, "AIRAVATA_USER": ADMIN})
            dp._airavata(admin_env, "deployment", "create", DEPLOYMENT, "--project", PROJECT,
                         "--pool", dp.POOL)
            dep_id = str(dp._http(f"{stack.api}/deployments/name/{FLOW}/{DEPLOYMENT}")["id"])
            logins = [_login(api, name, password) for name, password in people]
            tokens = [logins[i % users] for i in range(clients)]
            held = _hold_the_slot(api, logins[0])
            say(f"slot held by experiment {held}; warming up")
            _warm_up(api, stack.api, logins, dep_id, held)
            load_before = os.getloadavg()[0]
            say(f"Prefect alone, {clients} clients, {seconds:.0f} s (load {load_before:.1f})")
            before = prefect_alone(stack.api, dep_id, held, clients, seconds)
            say(f"  {before.requests} requests, {before.throughput:.0f}/s")
            say(f"ours, {clients} clients as {users} people, {seconds:.0f} s")
            mine = ours(api, tokens, seconds)
            say(f"  {mine.requests} requests, {mine.throughput:.0f}/s, "
                f"{mine.server_errors} x 5xx")
            say(f"Prefect alone again, {seconds:.0f} s")
            after = prefect_alone(stack.api, dep_id, held, clients, seconds)
            say(f"  {after.requests} requests, {after.throughput:.0f}/s")
            if mine.server_errors or mine.transport_errors:
                stack.notes.append("last lines of the API's log:\n"
                                   + dp._tail(stack.home / "server" / "api.log", 20))
        finally:
            _stop(stack)
            shutil.rmtree(stack.home, ignore_errors=True)
    return Result(mine, before.merge(after), (before, after), clients, users, seconds,
                  load_before, tuple(stack.notes))


# -- the report ------------------------------------------------------------------------------


def rows(r: Result) -> list[tuple[str, str, str, str]]:
    """(benchmark, measured, baseline, ratio) rows for bench/__main__.py's table."""
    a, p = r.api, r.prefect
    first, last = r.prefect_phases
    who = (f"{r.clients} clients as {r.users} people, {r.seconds:.0f} s, store and Prefect on "
           f"PostgreSQL, write limit raised to {WRITE_RATE:,}/min")
    base = f"Prefect alone (before and after, pooled; {first.throughput:.0f} and " \
           f"{last.throughput:.0f} req/s)"
    out = [
        (f"REST API under load ({who}): requests/s (create an experiment, then {POLLS} x "
         "status + tasks)", f"{a.throughput:.0f} req/s ({a.requests:,} requests)",
         f"{base}: {p.throughput:.0f} req/s (create_flow_run, then {POLLS} x read + filter)",
         f"{a.throughput / p.throughput:.2f}x" if p.throughput else "-"),
        ("REST API under load: creates/s (POST /experiments vs POST "
         "/deployments/{id}/create_flow_run)", f"{a.creates_per_s:.1f}/s",
         f"Prefect alone: {p.creates_per_s:.1f}/s",
         f"{a.creates_per_s / p.creates_per_s:.2f}x" if p.creates_per_s else "-"),
    ]
    for kind, label in (("create", "create"), ("poll", "poll")):
        out.append((f"REST API under load: {label} latency p50 / p99",
                    f"{a.ms(kind, 50):.0f} / {a.ms(kind, 99):.0f} ms",
                    f"Prefect alone: {p.ms(kind, 50):.0f} / {p.ms(kind, 99):.0f} ms",
                    f"{a.ms(kind, 50) / p.ms(kind, 50):.2f}x / "
                    f"{a.ms(kind, 99) / p.ms(kind, 99):.2f}x" if p.ms(kind, 99) else "-"))
    out.append(("REST API under load: 5xx (must be 0) / other non-2xx / failed connections "
                f"(load average before: {r.load_before:.1f}; after: "
                f"{', '.join(f'{x:.1f}' for x in a.load)})",
                f"{a.server_errors} / {a.other_non_2xx} / {a.transport_errors}",
                f"Prefect alone: {p.server_errors} / {p.other_non_2xx} / "
                f"{p.transport_errors} (load after: "
                f"{', '.join(f'{x:.1f}' for x in p.load)})",
                "FAILED" if r.failures else "ok"))
    out.extend(("note (API load benchmark)", note, "", "") for note in r.notes)
    return out


def main(argv: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(prog="python -m bench.api_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=SECONDS,
                        help="each phase's length (default %(default)s)")
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--users", type=int, default=USERS)
    args = parser.parse_args(argv)
    r = run(args.seconds, args.clients, args.users, log=lambda m: print(m, flush=True))
    table = Table(title=f"airavata REST API under load ({os.cpu_count() or 1} CPUs)")
    for col in ("benchmark", "measured", "baseline", "ratio"):
        table.add_column(col)
    for row in rows(r):
        table.add_row(*row)
    Console(width=160).print(table)
    if r.failures:
        raise SystemExit("; ".join(r.failures))


if __name__ == "__main__":
    main()
