"""What `/metrics` shows (Prometheus, through prometheus-client): one collector reads the store
at every scrape, so no figure is kept in memory to drift from it, and asks whether each outside
system answers (usecases/health.py, at most once per PROBE_SECONDS however often it is scraped).

Every query is an aggregate read from an index (adapters/store/schema.py): instances only of
the experiments not yet ended, found through the experiments' status index, then each one's
(experiment, step, state) index; the pilot queue from the claim index; bundles and agents from
their status indexes; staging totals are one row per resource. Labels are bounded: states,
statuses, resource names, the four outside systems; never an experiment, instance or user,
except in the per-running-instance gauge, which holds running instances only (at most
MAX_RUNNING_SERIES) so its series end with them. Instance durations are a histogram whose bucket
counts the store keeps as instances end (adapters/store/durations.py), never recounted.

A resource once seen keeps its per-resource series (at 0 once drained) for the life of the
process, so a queue that empties reads 0 rather than vanishing."""

from __future__ import annotations

import hmac
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from airavata_prefect.adapters.store import Store
from airavata_prefect.adapters.store.durations import Histogram
from airavata_prefect.adapters.store.staging import CacheTotals
from airavata_prefect.domain.records import Task
from airavata_prefect.domain.states import BUNDLE_ENDED, BundleStatus, ExperimentStatus, TaskState
from airavata_prefect.domain.usage import DURATION_BUCKETS
from airavata_prefect.usecases import health
from airavata_prefect.usecases.runtime import Runtime
from airavata_prefect.usecases.settings import Settings

log = logging.getLogger("airavata.metrics")
PROBE_SECONDS = 10.0  # reachability is checked at most this often (a scrape in between reuses it)
# Per-running-instance series are bounded: a sweep of 100,000 running instances shows the
# first this many (their states and the histogram still count every one).
MAX_RUNNING_SERIES = 1000
BUNDLE_ACTIVE = tuple(str(s) for s in BundleStatus if s not in BUNDLE_ENDED)


@dataclass(frozen=True)
class StoreFigures:
    """What the store holds now, in counts."""

    instances: dict[str, int]  # {state: n} of the experiments not yet ended
    experiments: dict[str, int]  # {status: n}, every experiment's
    queued: dict[str, int]  # {resource: pilot work items READY}
    bundles: dict[str, dict[str, int]]  # {resource: {status: n}} of the bundles not ended
    agents: dict[str, tuple[int, int]]  # {resource: (active agents, their slots)}
    staging: list[CacheTotals]  # per resource
    durations: list[Histogram] = field(default_factory=list)  # per resource, kept as they end
    running: list[tuple[Task, str | None]] = field(default_factory=list)  # (instance, owner)

    def resources(self) -> set[str]:
        return {*self.queued, *self.bundles, *self.agents, *(t.resource for t in self.staging),
                *(h.resource for h in self.durations)}


def read_store(store: Store) -> StoreFigures:
    """Eight queries, each served by an index; the running instances are bounded."""
    return StoreFigures(instances=store.tasks.live_state_counts(),
                        experiments=store.experiments.status_counts(),
                        queued=store.pilot.ready_by_resource(),
                        bundles=store.bundles.active_by_resource(),
                        agents=store.pilot.active_agents_by_resource(),
                        staging=store.staging.totals(),
                        durations=store.tasks.durations(),
                        running=store.tasks.running(MAX_RUNNING_SERIES))


def usage_families(figures: StoreFigures, now: datetime | None = None) -> list[Metric]:
    """How long ended instances took (a histogram per resource), and how long each running
    one has run so far (one series per running instance: gone when it ends)."""
    durations = HistogramMetricFamily(
        "airavata_instance_duration_seconds", "Wall time of ended task instances (their last "
        "attempt), by the resource they ran on", labels=["resource"])
    for h in figures.durations:
        cumulative, buckets = 0, []
        for bound, n in zip((*DURATION_BUCKETS, math.inf), h.counts, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == math.inf else f"{bound:g}", cumulative))
        durations.add_metric([h.resource], buckets, sum_value=h.seconds)
    running = GaugeMetricFamily(
        "airavata_instance_running_seconds", "How long each running task instance has run "
        f"(running ones only, at most {MAX_RUNNING_SERIES})",
        labels=["experiment", "step", "instance", "user", "resource"])
    cpu = GaugeMetricFamily(
        "airavata_instance_cpu_seconds", "CPU seconds a running task instance has used so far "
        "(sampled; instances on local)", labels=["experiment", "step", "instance", "user",
                                                 "resource"])
    memory = GaugeMetricFamily(
        "airavata_instance_memory_bytes", "Peak resident memory of a running task instance so "
        "far (sampled; instances on local)", labels=["experiment", "step", "instance", "user",
                                                     "resource"])
    now = now or datetime.now(UTC)
    for task, owner in figures.running:
        since = task.started_at or now
        labels = [task.experiment_id, task.step, task.instance_id, owner or "",
                  task.resource or "local"]
        running.add_metric(labels, max(0.0, (now - since).total_seconds()))
        if task.usage is not None:
            cpu.add_metric(labels, task.usage.cpu_seconds)
            memory.add_metric(labels, task.usage.max_rss_bytes)
    return [durations, running, cpu, memory]


def store_families(figures: StoreFigures, resources: Iterable[str] = ()) -> list[Metric]:
    """The store's figures as metric families: every state and status present (0 when none),
    and every resource of `resources` or of the figures in each per-resource family."""
    instances = GaugeMetricFamily(
        "airavata_instances", "Task instances of the experiments not yet ended, by state "
        "(an ended experiment's instances are not counted)", labels=["state"])
    for state in TaskState:
        instances.add_metric([str(state)], figures.instances.get(state, 0))
    experiments = GaugeMetricFamily("airavata_experiments", "Experiments in the store, by status",
                                    labels=["status"])
    for status in ExperimentStatus:
        experiments.add_metric([str(status)], figures.experiments.get(status, 0))
    queue = GaugeMetricFamily(
        "airavata_queue_depth", "Pilot work items waiting for an agent of the resource (READY, "
        "not yet leased)", labels=["resource"])
    bundles = GaugeMetricFamily(
        "airavata_bundles_active", "Bundles not yet ended, by resource and status (CREATED: "
        "waiting for a worker, STAGING, SUBMITTED: on the resource)",
        labels=["resource", "status"])
    agents = GaugeMetricFamily("airavata_agents_active", "Pilot agents registered on the "
                               "resource and not known to be gone", labels=["resource"])
    slots = GaugeMetricFamily("airavata_agent_slots", "Instances the resource's active pilot "
                              "agents can run at once", labels=["resource"])
    for resource in sorted({*resources, *figures.resources()}):
        queue.add_metric([resource], figures.queued.get(resource, 0))
        for bundle_status in BUNDLE_ACTIVE:
            bundles.add_metric([resource, bundle_status],
                               figures.bundles.get(resource, {}).get(bundle_status, 0))
        n, s = figures.agents.get(resource, (0, 0))
        agents.add_metric([resource], n)
        slots.add_metric([resource], s)
    staging = {
        "hits": CounterMetricFamily("airavata_staging_cache_hits_total", "Files a staging found "
                                    "in the resource's cache already", labels=["resource"]),
        "misses": CounterMetricFamily("airavata_staging_cache_misses_total", "Files a staging "
                                      "sent to the resource's cache", labels=["resource"]),
        "bytes_moved": CounterMetricFamily("airavata_staging_bytes_sent_total", "Bytes sent to "
                                           "the resource's cache (resends included)",
                                           labels=["resource"]),
        "bytes_saved": CounterMetricFamily("airavata_staging_bytes_spared_total", "Bytes not "
                                           "sent: the resource's cache held them",
                                           labels=["resource"]),
        "retries": CounterMetricFamily("airavata_staging_resent_total", "Files sent again "
                                       "after the resource's checksum disagreed",
                                       labels=["resource"]),
    }
    for totals in figures.staging:
        for attr, family in staging.items():
            family.add_metric([totals.resource], getattr(totals, attr))
    return [instances, experiments, queue, bundles, agents, slots, *staging.values()]


def dependency_families(checks: Sequence[health.Check]) -> list[Metric]:
    up = GaugeMetricFamily("airavata_dependency_up", "Whether the outside system answered its "
                           "health check (1) or not (0)", labels=["dependency"])
    took = GaugeMetricFamily("airavata_dependency_check_seconds", "How long its last health "
                             "check took", labels=["dependency"])
    for c in checks:
        up.add_metric([c.name], 1 if c.ok else 0)
        took.add_metric([c.name], round(c.seconds, 6))
    return [up, took]


class Probe:
    """`check()` at most once per `seconds`: a call in between gets the last answer, and calls
    that arrive while one runs wait for it rather than start their own."""

    def __init__(self, check: Callable[[], list[health.Check]], seconds: float = PROBE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._check, self._seconds, self._clock = check, seconds, clock
        self._lock = threading.Lock()
        self._last: tuple[float, list[health.Check]] | None = None

    def __call__(self) -> list[health.Check]:
        with self._lock:
            if self._last is None or self._clock() - self._last[0] >= self._seconds:
                self._last = (self._clock(), self._check())
            return self._last[1]


class StoreCollector(Collector):
    """The store's figures and the outside systems' reachability, read at scrape time."""

    def __init__(self, store: Store, probe: Callable[[], list[health.Check]]) -> None:
        self._store, self._probe = store, probe
        self._lock = threading.Lock()
        self._seen: set[str] = set()  # resources with series already

    def collect(self) -> Iterator[Metric]:
        try:
            figures: StoreFigures | None = read_store(self._store)
        except Exception as exc:  # the store down: its figures are left out, `store` reads 0
            log.warning("metrics: cannot read the store: %s", exc)
            figures = None
        if figures is not None:
            with self._lock:
                self._seen |= figures.resources()
                seen = set(self._seen)
            yield from store_families(figures, seen)
            yield from usage_families(figures)
        yield from dependency_families(self._probe())


def registry(rt: Runtime, probe_seconds: float = PROBE_SECONDS) -> CollectorRegistry:
    """A registry of its own (never the process-wide default) with the store's collector: each
    app made in one process (tests make many) exposes only what is its own."""
    reg = CollectorRegistry(auto_describe=False)  # nothing read until the first scrape
    reg.register(StoreCollector(rt.store, Probe(lambda: health.checks(rt), probe_seconds)))
    return reg


def token_accepts(settings: Settings, authorization: str | None) -> bool:
    """Whether a scrape may read the metrics: any when AIRAVATA_METRICS_TOKEN is unset; else
    one whose Authorization header is `Bearer <that token>`, compared in constant time."""
    if settings.metrics_token is None:
        return True
    scheme, _, presented = (authorization or "").strip().partition(" ")
    expected = settings.metrics_token.get_secret_value().encode()
    matches = hmac.compare_digest(presented.strip().encode(), expected)
    return matches and scheme.lower() == "bearer"


__all__ = ["PROBE_SECONDS", "Probe", "StoreCollector", "StoreFigures", "dependency_families",
           "read_store", "registry", "store_families", "token_accepts"]
